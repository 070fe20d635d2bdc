"""Canonical DFT reference documents and the reader of reference-set folders.

A *reference set* is a folder of extended-XYZ files in the format of
``surfflows/data/references/FORMAT.md`` (``slabs.extxyz``, ``slabs_initial.extxyz``,
``bulks.extxyz``, ``adslabs.extxyz``) plus a README naming source, licence and level of
theory. :func:`read_reference_set` turns one into :class:`ReferenceSlabDoc`,
:class:`ReferenceBulkDoc` and :class:`ReferenceAdslabDoc` documents that share the
``references`` store (told apart by ``doc_type``, keyed by ``key = "<set>:<id>"``).

Conventions
-----------
* Energies are raw DFT total energies (eV) of one set's level of theory; energies of two
  sets are never combined.
* ``gamma_ref_recomputed = (E_slab - (N_slab / N_bulk) E_bulk) / 2A`` (J/m², via
  :func:`surfflows.core.thermo.surface_energy`) for a slab that is stoichiometric with respect to
  its bulk; ``A = |a x b|`` of the slab cell.
* A **gamma-only** slab (``gamma_ref`` and no ``ref_energy``, e.g. ``mp_elemental_surfaces``)
  is kept with ``ref_energy=None`` and ``published=["gamma_ref"]``: it is judged on gamma only,
  and nothing downstream invents a slab energy for it (no energy error, no energy term in
  fine-tuning). A slab frame with neither quantity is an error.

Bad input is never dropped silently. Structural problems (an empty or non-periodic frame, a
missing required ``info`` key, a slab with neither ``ref_energy`` nor ``gamma_ref``, a
``ref_forces`` array that is not [N, 3], a duplicate id, a malformed Miller index, a
``formula`` that is not the atoms', an initial geometry of other atoms) raise ``ValueError``
naming file, frame and field. Records that are well formed but unusable are counted in
:attr:`ReferenceSet.skipped` under a reason with their ids:

``non_finite_energy``, ``non_finite_forces``, ``unsupported_element``
    the record is dropped (unsupported: an atomic number above 94, beyond CHGNet).
``bulk_missing``
    the slab names a bulk that is not in the bulk frames: the slab is kept with
    ``bulk_id=None`` and the flag ``bulk_missing``.
``slab_missing``
    likewise for an adslab whose clean slab is absent (flag ``slab_missing``).
``duplicate_bulk_frame``
    a bulk frame repeating an earlier one exactly (JARVIS writes one bulk cell per slab):
    one document is kept.
``conflicting_bulk_frames``
    different bulk cells under one ``bulk_id``: neither is kept, since which one a slab
    means is ambiguous, and the slabs naming it count as ``bulk_missing``.
``initial_without_record``
    an initial geometry whose slab / adslab is not among the documents.
``no_forces``
    a trajectory frame (training sample of energy and forces) without ``ref_forces``.
``gamma_only_without_bulk``
    a gamma-only slab without ``bulk_id``: no model gamma can be computed for it; it is kept
    with that flag.
``flagged``
    records carrying ``flags`` (known to be doubtful): kept with their flags so that builders
    and fine-tuning exclude and count them.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import as_file, files
from pathlib import Path
from typing import Annotated, Any, Literal

import ase.io
import numpy as np
from ase import Atoms
from monty.json import jsanitize
from pydantic import BaseModel, Field, PlainSerializer
from pymatgen.core import Composition, Lattice, Structure

from surfflows.core.thermo import bulk_units_and_excess, slab_area, surface_energy, to_j_per_m2
from surfflows.core.timestamps import now_iso
from surfflows.core.validation import check_elements

#: A pymatgen Structure stored as its ``as_dict()`` (read back by monty's pydantic hook).
StructureField = Annotated[Structure, PlainSerializer(Structure.as_dict, return_type=dict)]

#: Frame files of a reference set, by kind.
FRAME_FILES = {
    "slabs": "slabs.extxyz",
    "slabs_initial": "slabs_initial.extxyz",
    "bulks": "bulks.extxyz",
    "adslabs": "adslabs.extxyz",
    "frames": "frames.extxyz",
}
#: ``info`` keys without which a frame of each kind is malformed.
REQUIRED_KEYS = {
    "slabs": ("slab_id", "material_id"),
    "slabs_initial": ("slab_id",),
    "bulks": ("bulk_id", "material_id", "ref_energy"),
    "adslabs": ("adslab_id", "slab_id", "adsorbate", "ref_energy"),
    "frames": ("frame_id", "parent_id", "parent_kind", "material_id", "ref_energy"),
}
#: ``info`` keys that become document fields (``formula`` is checked against the atoms and
#: recomputed); any other key goes to ``extra``.
_KNOWN_INFO = {
    "slabs": {"slab_id", "material_id", "bulk_id", "miller", "ref_energy", "gamma_ref"},
    "bulks": {"bulk_id", "material_id", "ref_energy"},
    "adslabs": {"adslab_id", "slab_id", "material_id", "adsorbate", "ref_energy"},
    "frames": {
        "frame_id",
        "parent_id",
        "parent_kind",
        "slab_id",
        "material_id",
        "miller",
        "adsorbate",
        "traj_id",
        "fid",
        "ref_energy",
    },
}
_COMMON_INFO = {"formula", "flags"}
#: Flags the reader sets itself (counted under their own reasons, not as ``flagged``).
_READER_FLAGS = {"bulk_missing", "slab_missing", "gamma_only_without_bulk", "gamma_ref_not_finite"}
#: Published quantities of a record; a slab needs at least one, other kinds ``ref_energy``.
SLAB_QUANTITIES = ("ref_energy", "gamma_ref")
#: Per-atom arrays that become document fields; any other array becomes a site property.
_KNOWN_ARRAYS = {"numbers", "positions", "fixed", "ref_forces"}


class ReferenceSetInfo(BaseModel):
    """Provenance of one reference set; every document of the set carries it."""

    name: str = Field(description="Set name (folder name); prefix of every document key.")
    level_of_theory: str = Field(
        description="DFT code and functional of all energies of the set, e.g. 'VASP PBE'."
    )
    source: str | None = Field(default=None, description="Where the data come from.")
    licence: str | None = Field(default=None, description="Licence of the data.")
    citation: str | None = Field(default=None, description="Reference to cite with the data.")


#: The sets shipped in ``surfflows/data/references`` (details in each folder's README.md).
PACKAGED_SETS = {
    info.name: info
    for info in (
        ReferenceSetInfo(
            name="jarvis_surfaces",
            level_of_theory="VASP OptB88vdW",
            source="JARVIS-DFT surface database (surface_db_dd.json, NIST), "
            "figshare doi:10.6084/m9.figshare.25832614",
            licence="CC BY 4.0",
            citation='K. Choudhary et al., "InterMat", Digital Discovery (2024), '
            "doi:10.1039/D4DD00031E",
        ),
        ReferenceSetInfo(
            name="pbe_metal_surfaces",
            level_of_theory="VASP PBE",
            source="pymatgen test files tests/files/surfaces (Materials Project-style runs)",
            licence="MIT (pymatgen)",
            citation='R. Tran et al., "Surface energies of elemental crystals", '
            "Sci. Data 3, 160080 (2016)",
        ),
        ReferenceSetInfo(
            name="rutile_oxide_slabs",
            level_of_theory="VASP PBE+U (Materials Project U values)",
            source="H. Choubisa et al., public repository mmo/datasets/*.pkl",
            licence="BSD-3-Clause",
            citation="H. Choubisa et al., Matter (2022), doi:10.1016/j.matt.2022.11.031",
        ),
        ReferenceSetInfo(
            name="mp_elemental_surfaces",
            level_of_theory="VASP PBE",
            source="Materials Project surface database via SE-CGCNN (GNscSHI/SE-CGCNN, "
            "commit 68ca723c60) data/surface_property2; bulks: matcalc MP-PBE-Element-Refs",
            licence="CC BY 4.0 (Materials Project); MIT (SE-CGCNN); BSD-3-Clause (matcalc)",
            citation='R. Tran et al., "Surface energies of elemental crystals", '
            "Sci. Data 3, 160080 (2016), doi:10.1038/sdata.2016.80",
        ),
        ReferenceSetInfo(
            name="wbm_bulks",
            level_of_theory="VASP PBE",
            source="matcalc (commit aa76b41edb) benchmark_data/"
            "wbm-random-pbe52-equilibrium-2025.1.json.gz",
            licence="CC BY 4.0 (WBM); BSD-3-Clause (matcalc)",
            citation="H.-C. Wang, S. Botti, M. A. L. Marques, npj Comput. Mater. 7, 12 (2021), "
            "doi:10.1038/s41524-020-00481-6",
        ),
        ReferenceSetInfo(
            name="mp_elemental_refs",
            level_of_theory="VASP PBE",
            source="matcalc (commit aa76b41edb) src/matcalc/elemental_refs/"
            "MP-PBE-Element-Refs.json.gz",
            licence="CC BY 4.0 (Materials Project); BSD-3-Clause (matcalc)",
            citation="A. Jain et al., APL Mater. 1, 011002 (2013)",
        ),
        ReferenceSetInfo(
            name="bo2_bulk_eos",
            level_of_theory="VASP PBE",
            source="FAIR Chemistry repository, fine-tuning tutorial data",
            licence="MIT (FAIR Chemistry)",
            citation="Z. Mehta, M. Salvador, J. R. Kitchin, ACS Appl. Mater. Interfaces 6, "
            "3630 (2014), doi:10.1021/am4059149",
        ),
    )
}


class _ReferenceDoc(BaseModel):
    """Fields shared by all reference documents."""

    key: str = Field(description="Unique key in the references store: '<set_name>:<id>'.")
    set_name: str = Field(description="Reference set the record belongs to.")
    level_of_theory: str = Field(description="Level of theory of ref_energy (the set's).")
    formula: str = Field(description="Reduced formula of the structure.")
    n_atoms: int = Field(description="Number of atoms.")
    structure: StructureField = Field(
        description="DFT geometry (relaxed for slabs and adslabs). Atoms fixed in the DFT run "
        "have selective_dynamics [False, False, False]; other per-atom arrays of the frame "
        "(e.g. OC22 tags) are site properties."
    )
    ref_energy: float = Field(allow_inf_nan=False, description="DFT total energy, eV.")
    ref_forces: list[list[float]] | None = Field(
        default=None, description="DFT forces per atom, eV/Å, where the set has them."
    )
    flags: list[str] = Field(
        default_factory=list, description="Known problems of the record (kept, not dropped)."
    )
    source: str | None = Field(default=None, description="Source of the set.")
    licence: str | None = Field(default=None, description="Licence of the set.")
    citation: str | None = Field(default=None, description="Citation of the set.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Set-specific info keys of the frame (e.g. OC22 sid, traj_id, nads).",
    )
    ingested_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


class ReferenceBulkDoc(_ReferenceDoc):
    """A DFT bulk reference cell."""

    doc_type: Literal["bulk"] = Field(default="bulk", description="Document kind.")
    bulk_id: str = Field(description="Id of the bulk cell in its set.")
    material_id: str = Field(description="Material the cell belongs to.")
    ref_energy_per_atom: float = Field(description="ref_energy / n_atoms, eV/atom.")


class ReferenceSlabDoc(_ReferenceDoc):
    """A clean DFT slab, with its surface energy where a bulk reference allows it."""

    doc_type: Literal["slab"] = Field(default="slab", description="Document kind.")
    slab_id: str = Field(description="Id of the slab in its set.")
    material_id: str = Field(description="Bulk material the slab was cut from.")
    bulk_id: str | None = Field(description="Id of the bulk reference cell, None if absent.")
    bulk_key: str | None = Field(description="Key of the bulk document, None if absent.")
    miller_index: tuple[int, int, int] | None = Field(
        description="Miller index (three-index; hexagonal four-index given as (h, k, l)), "
        "None where the set does not record it."
    )
    area: float = Field(description="|a x b| of the slab cell, Å².")
    initial_structure: StructureField | None = Field(
        default=None, description="Geometry before the DFT relaxation, where the set has it."
    )
    ref_energy: float | None = Field(
        allow_inf_nan=False,
        description="DFT total energy, eV; None for a gamma-only slab (published gamma, no "
        "total energy), which then enters gamma terms only: no energy error, no energy term "
        "in fine-tuning.",
    )
    published: list[str] = Field(
        description="Quantities the set publishes for this slab: 'ref_energy' and/or 'gamma_ref'."
    )
    gamma_ref: float | None = Field(default=None, description="Published surface energy, J/m².")
    gamma_ref_recomputed: float | None = Field(
        default=None,
        description="(E_slab - N_slab/N_bulk E_bulk) / 2A from the reference energies, J/m²; "
        "None without a bulk or for a non-stoichiometric slab.",
    )
    is_stoichiometric: bool | None = Field(
        default=None, description="Slab composition is whole bulk cells; None without a bulk."
    )
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


class ReferenceAdslabDoc(_ReferenceDoc):
    """A DFT slab with an adsorbate."""

    doc_type: Literal["adslab"] = Field(default="adslab", description="Document kind.")
    adslab_id: str = Field(description="Id of the adslab in its set.")
    slab_id: str = Field(description="Id of its clean slab.")
    slab_key: str | None = Field(description="Key of the clean-slab document, None if absent.")
    material_id: str | None = Field(
        description="Bulk material (the frame's, else its clean slab's); None if neither."
    )
    adsorbate: str = Field(description="Adsorbate formula, e.g. 'OH'.")
    initial_structure: StructureField | None = Field(
        default=None, description="Geometry before the DFT relaxation, where the set has it."
    )
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


class ReferenceFrameDoc(_ReferenceDoc):
    """One single-point frame of a DFT relaxation trajectory (e.g. OC22 S2EF), a training sample.

    Every frame of one relaxation shares ``parent_key`` (its clean slab or adslab) and
    ``traj_id``; ``material_id`` is the parent's bulk, so a split by material keeps all frames
    of a material on one side.
    """

    doc_type: Literal["frame"] = Field(default="frame", description="Document kind.")
    frame_id: str = Field(description="Id of the frame in its set, unique per frame.")
    parent_id: str = Field(description="Id of the relaxed slab or adslab the trajectory ends in.")
    parent_kind: Literal["slab", "adslab"] = Field(description="Kind of the parent record.")
    parent_key: str = Field(
        description="Key of the parent document (present once its relaxed record is ingested "
        "into the same set)."
    )
    slab_id: str | None = Field(
        description="Id of the clean slab (the parent itself for a slab; for an adslab its "
        "clean slab), None if unknown."
    )
    material_id: str = Field(description="Bulk material (split unit).")
    miller_index: tuple[int, int, int] | None = Field(description="Miller index, if recorded.")
    adsorbate: str | None = Field(default=None, description="Adsorbate of an adslab frame.")
    traj_id: str | None = Field(description="Trajectory id of the relaxation, if recorded.")
    frame_index: int | None = Field(description="Index of the frame in its trajectory (fid).")
    ref_forces: list[list[float]] = Field(description="DFT forces per atom, eV/Å (required).")
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


ReferenceDoc = ReferenceSlabDoc | ReferenceBulkDoc | ReferenceAdslabDoc | ReferenceFrameDoc


@dataclass
class ReferenceSet:
    """The documents of one reference set and the records that became none.

    Attributes
    ----------
    info
        Provenance and level of theory of the set.
    slabs, bulks, adslabs, frames
        Documents, in file order (frames: single points of relaxation trajectories).
    skipped
        Reason -> ids of records skipped (or, for ``bulk_missing`` / ``slab_missing``, kept
        without their link); see the module docstring for the reasons.
    """

    info: ReferenceSetInfo
    slabs: list[ReferenceSlabDoc] = field(default_factory=list)
    bulks: list[ReferenceBulkDoc] = field(default_factory=list)
    adslabs: list[ReferenceAdslabDoc] = field(default_factory=list)
    frames: list[ReferenceFrameDoc] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def documents(self) -> list[ReferenceDoc]:
        """All documents: bulks, then slabs, then adslabs, then frames."""
        return [*self.bulks, *self.slabs, *self.adslabs, *self.frames]


class _Skip(Exception):
    """A well-formed record that cannot become a document, with the reason."""


def _validated(
    frames: Sequence[Atoms], kind: str, source: str, *, unique: bool = True
) -> list[tuple[int, Atoms, str]]:
    """Check every frame's shape and required keys; return ``(index, frame, id)`` triples.

    Raises
    ------
    ValueError
        On an empty or non-periodic frame, a missing required key or (``unique``) a repeated id.
    """
    id_key = REQUIRED_KEYS[kind][0]
    rows: list[tuple[int, Atoms, str]] = []
    first_index: dict[str, int] = {}
    for index, atoms in enumerate(frames):
        where = f"{source}, frame {index}"
        if len(atoms) == 0:
            raise ValueError(f"{where}: the frame has no atoms")
        if not atoms.pbc.all() or atoms.cell.rank < 3:
            raise ValueError(f"{where}: the frame is not periodic in 3D (pbc={atoms.pbc.tolist()})")
        for key in REQUIRED_KEYS[kind]:
            if key not in atoms.info:
                raise ValueError(f"{where}: missing required info key {key!r}")
        if kind == "slabs" and not any(key in atoms.info for key in SLAB_QUANTITIES):
            raise ValueError(
                f"{where}: missing info key 'ref_energy' (a gamma-only slab needs 'gamma_ref' "
                "instead): the slab has neither"
            )
        forces = atoms.arrays.get("ref_forces")
        if forces is not None and np.shape(forces) != (len(atoms), 3):
            raise ValueError(
                f"{where}: per-atom array 'ref_forces' has shape {np.shape(forces)}, "
                f"not ({len(atoms)}, 3)"
            )
        record_id = str(atoms.info[id_key])
        if unique and record_id in first_index:
            raise ValueError(
                f"{where}: duplicate {id_key} {record_id!r} (also frame {first_index[record_id]})"
            )
        first_index.setdefault(record_id, index)
        rows.append((index, atoms, record_id))
    return rows


def _structure(atoms: Atoms) -> Structure:
    """The frame as a Structure; ``fixed`` -> selective_dynamics, other arrays -> site props."""
    site_properties = {
        name: values.tolist() for name, values in atoms.arrays.items() if name not in _KNOWN_ARRAYS
    }
    if "fixed" in atoms.arrays:
        free = ~np.asarray(atoms.arrays["fixed"], dtype=bool)
        site_properties["selective_dynamics"] = np.repeat(free[:, None], 3, axis=1).tolist()
    return Structure(
        Lattice(atoms.cell.array),
        atoms.get_chemical_symbols(),
        atoms.positions,
        coords_are_cartesian=True,
        site_properties=site_properties,
    )


def _number(atoms: Atoms, key: str, where: str) -> float | None:
    """``info[key]`` as a float (None if absent); a non-number is a ValueError."""
    if key not in atoms.info:
        return None
    try:
        return float(atoms.info[key])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: info key {key!r} is not a number: {atoms.info[key]!r}") from exc


def _reduced(formula: Any) -> str | None:
    """Reduced formula of an ``info["formula"]`` value, None if it is not a formula."""
    try:
        return Composition(str(formula)).reduced_formula
    except ValueError:
        return None


def _record_fields(
    atoms: Atoms, kind: str, where: str, info: ReferenceSetInfo, record_id: str
) -> dict[str, Any]:
    """Fields every document has, from one frame.

    Raises
    ------
    _Skip
        For a non-finite energy or force, or an element CHGNet cannot embed. A slab may
        lack ``ref_energy`` (gamma-only; ``"ref_energy": None``).
    ValueError
        If the frame's ``formula`` does not match its atoms.
    """
    energy = _number(atoms, "ref_energy", where)
    if energy is not None and not math.isfinite(energy):
        raise _Skip("non_finite_energy")
    structure = _structure(atoms)
    formula = structure.composition.reduced_formula
    if "formula" in atoms.info and _reduced(atoms.info["formula"]) != formula:
        raise ValueError(
            f"{where}: info key 'formula' is {atoms.info['formula']!r} but the atoms are {formula}"
        )
    try:
        check_elements(structure, where)
    except ValueError as exc:
        raise _Skip("unsupported_element") from exc
    forces = atoms.arrays.get("ref_forces")
    if forces is not None and not np.isfinite(forces).all():
        raise _Skip("non_finite_forces")
    flags = str(atoms.info.get("flags", ""))
    return {
        "key": f"{info.name}:{record_id}",
        "set_name": info.name,
        "level_of_theory": info.level_of_theory,
        "source": info.source,
        "licence": info.licence,
        "citation": info.citation,
        "formula": formula,
        "n_atoms": len(structure),
        "structure": structure,
        "ref_energy": energy,
        "ref_forces": None if forces is None else forces.tolist(),
        "flags": [flag.strip() for flag in flags.split(",") if flag.strip()],
        "extra": jsanitize(
            {k: v for k, v in atoms.info.items() if k not in _KNOWN_INFO[kind] | _COMMON_INFO}
        ),
    }


def _fixed_indices(atoms: Atoms) -> list[int]:
    return np.flatnonzero(atoms.arrays.get("fixed", np.zeros(len(atoms), bool))).tolist()


def _miller(value: Any, where: str) -> tuple[int, int, int] | None:
    """Three-index Miller index from an ``info["miller"]`` value (hexagonal (h k i l) allowed)."""
    if value is None:
        return None
    hkl = np.ravel(value)
    if (
        hkl.size not in (3, 4)
        or not np.issubdtype(hkl.dtype, np.number)
        or not np.all(hkl == np.round(hkl))
    ):
        raise ValueError(f"{where}: info key 'miller' must be 3 or 4 integers, got {value!r}")
    hkl = hkl.astype(int)
    if hkl.size == 4:
        if hkl[2] != -(hkl[0] + hkl[1]):
            raise ValueError(f"{where}: info key 'miller' {hkl.tolist()} has i != -(h + k)")
        hkl = hkl[[0, 1, 3]]
    if not hkl.any():
        raise ValueError(f"{where}: info key 'miller' (0, 0, 0) does not define a plane")
    return tuple(hkl.tolist())


def _same_frame(a: Atoms, b: Atoms) -> bool:
    """Same atoms, cell, per-atom arrays and info."""
    return (
        a == b
        and a.arrays.keys() == b.arrays.keys()
        and all(np.array_equal(values, b.arrays[name]) for name, values in a.arrays.items())
        and jsanitize(a.info) == jsanitize(b.info)
    )


def _gamma(
    structure: Structure, energy: float | None, bulk: ReferenceBulkDoc
) -> tuple[bool, float | None]:
    """(is_stoichiometric, gamma in J/m² or None) of a slab against its bulk.

    A gamma-only slab (``energy`` None) gets its stoichiometry and no recomputed gamma.
    """
    try:
        _, excess = bulk_units_and_excess(structure.composition, bulk.structure.composition)
    except ValueError:  # the slab has elements the bulk lacks
        return False, None
    if excess:
        return False, None
    if energy is None:
        return True, None
    gamma = surface_energy(
        energy,
        structure.composition,
        bulk.ref_energy,
        bulk.structure.composition,
        slab_area(structure.lattice),
    )
    return True, to_j_per_m2(gamma)


def _initial_structures(
    frames: Sequence[Atoms], source: str
) -> dict[tuple[str, str], tuple[int, Structure]]:
    """(kind, id) -> (frame index, structure); adslab frames are those with ``adslab_id``."""
    initial: dict[tuple[str, str], tuple[int, Structure]] = {}
    for index, atoms, slab_id in _validated(frames, "slabs_initial", source, unique=False):
        adslab_id = atoms.info.get("adslab_id")
        target = ("slab", slab_id) if adslab_id is None else ("adslab", str(adslab_id))
        if target in initial:
            raise ValueError(
                f"{source}, frame {index}: duplicate initial geometry for {target[0]} "
                f"{target[1]!r} (also frame {initial[target][0]})"
            )
        initial[target] = (index, _structure(atoms))
    return initial


def _take_initial(
    initial: dict[tuple[str, str], tuple[int, Structure]],
    target: tuple[str, str],
    structure: Structure,
    source: str,
) -> Structure | None:
    """Pop the initial geometry of ``target``; it must have the relaxed one's composition."""
    if target not in initial:
        return None
    index, start = initial.pop(target)
    if start.composition != structure.composition:
        raise ValueError(
            f"{source}, frame {index}: initial geometry of {target[0]} {target[1]!r} is "
            f"{start.composition.formula}, the relaxed one {structure.composition.formula}"
        )
    return start


def documents_from_frames(
    info: ReferenceSetInfo,
    slab_frames: Sequence[Atoms] = (),
    bulk_frames: Sequence[Atoms] = (),
    adslab_frames: Sequence[Atoms] = (),
    initial_frames: Sequence[Atoms] = (),
    trajectory_frames: Sequence[Atoms] = (),
    *,
    sources: Mapping[str, str] | None = None,
) -> ReferenceSet:
    """Build the reference documents of one set from frames in the canonical format.

    Parameters
    ----------
    info
        Name, level of theory and provenance of the set.
    slab_frames, bulk_frames, adslab_frames
        Frames whose ``info`` follows FORMAT.md (slabs: ``slab_id, material_id, ref_energy``,
        optional ``bulk_id, miller, gamma_ref, flags``; bulks: ``bulk_id, material_id,
        ref_energy``; adslabs: ``adslab_id, slab_id, adsorbate, ref_energy``). Other info keys
        go to ``extra``; per-atom ``fixed`` (bool) gives the fixed atoms, ``ref_forces`` the
        DFT forces, and any other per-atom array becomes a site property.
    initial_frames
        Geometries before relaxation, matched to slabs by ``slab_id`` (to adslabs by
        ``adslab_id`` where a frame has one).
    trajectory_frames
        Single points of relaxation trajectories (``frames.extxyz``; OC22 S2EF): ``frame_id``
        (unique), ``parent_id`` and ``parent_kind`` (``slab`` / ``adslab``: the relaxed record
        the trajectory belongs to), ``material_id``, ``ref_energy`` and per-atom
        ``ref_forces`` (required: a frame without them is counted under ``no_forces``);
        optional ``slab_id``, ``miller``, ``adsorbate``, ``traj_id``, ``fid``.
    sources
        Kind (``"slabs"``, ``"bulks"``, ``"adslabs"``, ``"slabs_initial"``) -> name of the
        file the frames came from, used in error messages; default the canonical file names.

    Returns
    -------
    ReferenceSet
        The documents and the skipped records by reason.

    Raises
    ------
    ValueError
        For malformed input, naming file, frame index and field (see the module docstring);
        nothing is returned in that case.
    """
    sources = {**FRAME_FILES, **(sources or {})}
    # Structural validation of every frame first, so that a malformed file fails as a whole.
    bulk_rows = _validated(bulk_frames, "bulks", sources["bulks"], unique=False)
    slab_rows = _validated(slab_frames, "slabs", sources["slabs"])
    adslab_rows = _validated(adslab_frames, "adslabs", sources["adslabs"])
    frame_rows = _validated(trajectory_frames, "frames", sources["frames"])
    initial = _initial_structures(initial_frames, sources["slabs_initial"])
    skipped: defaultdict[str, list[str]] = defaultdict(list)

    bulks: dict[str, ReferenceBulkDoc] = {}
    first_frame: dict[str, Atoms] = {}
    conflicts: list[str] = []
    for index, atoms, bulk_id in bulk_rows:
        if bulk_id in first_frame:
            same = _same_frame(atoms, first_frame[bulk_id])
            if not same and bulk_id not in conflicts:
                conflicts.append(bulk_id)
            skipped["duplicate_bulk_frame" if same else "conflicting_bulk_frames"].append(bulk_id)
            continue
        first_frame[bulk_id] = atoms
        where = f"{sources['bulks']}, frame {index}"
        try:
            fields = _record_fields(atoms, "bulks", where, info, bulk_id)
        except _Skip as skip:
            skipped[str(skip)].append(bulk_id)
            continue
        bulks[bulk_id] = ReferenceBulkDoc(
            **fields,
            bulk_id=bulk_id,
            material_id=str(atoms.info["material_id"]),
            ref_energy_per_atom=fields["ref_energy"] / fields["n_atoms"],
        )
    for bulk_id in conflicts:
        bulks.pop(bulk_id, None)

    slabs: dict[str, ReferenceSlabDoc] = {}
    for index, atoms, slab_id in slab_rows:
        where = f"{sources['slabs']}, frame {index}"
        miller_index = _miller(atoms.info.get("miller"), where)
        gamma_ref = _number(atoms, "gamma_ref", where)
        try:
            fields = _record_fields(atoms, "slabs", where, info, slab_id)
        except _Skip as skip:
            skipped[str(skip)].append(slab_id)
            continue
        if gamma_ref is not None and not math.isfinite(gamma_ref):
            gamma_ref = None
            fields["flags"].append("gamma_ref_not_finite")
        structure = fields["structure"]
        published = [
            key
            for key, value in (("ref_energy", fields["ref_energy"]), ("gamma_ref", gamma_ref))
            if value is not None
        ]
        if not published:  # gamma_ref was given but not finite, and there is no energy
            skipped["no_usable_quantity"].append(slab_id)
            continue
        bulk_id = None if "bulk_id" not in atoms.info else str(atoms.info["bulk_id"])
        bulk = bulks.get(bulk_id)
        if bulk_id is not None and bulk is None:
            skipped["bulk_missing"].append(slab_id)
            fields["flags"].append("bulk_missing")
            fields["extra"]["missing_bulk_id"] = bulk_id
            bulk_id = None
        elif bulk_id is None and fields["ref_energy"] is None:
            skipped["gamma_only_without_bulk"].append(slab_id)
            fields["flags"].append("gamma_only_without_bulk")
        stoichiometric, gamma = (
            (None, None) if bulk is None else _gamma(structure, fields["ref_energy"], bulk)
        )
        slabs[slab_id] = ReferenceSlabDoc(
            **fields,
            slab_id=slab_id,
            material_id=str(atoms.info["material_id"]),
            bulk_id=bulk_id,
            bulk_key=None if bulk is None else bulk.key,
            miller_index=miller_index,
            area=slab_area(structure.lattice),
            initial_structure=_take_initial(
                initial, ("slab", slab_id), structure, sources["slabs_initial"]
            ),
            published=published,
            gamma_ref=gamma_ref,
            gamma_ref_recomputed=gamma,
            is_stoichiometric=stoichiometric,
            fixed_indices=_fixed_indices(atoms),
        )

    adslabs: list[ReferenceAdslabDoc] = []
    for index, atoms, adslab_id in adslab_rows:
        where = f"{sources['adslabs']}, frame {index}"
        try:
            fields = _record_fields(atoms, "adslabs", where, info, adslab_id)
        except _Skip as skip:
            skipped[str(skip)].append(adslab_id)
            continue
        slab = slabs.get(str(atoms.info["slab_id"]))
        if slab is None:
            skipped["slab_missing"].append(adslab_id)
            fields["flags"].append("slab_missing")
        material_id = atoms.info.get("material_id", None if slab is None else slab.material_id)
        adslabs.append(
            ReferenceAdslabDoc(
                **fields,
                adslab_id=adslab_id,
                slab_id=str(atoms.info["slab_id"]),
                slab_key=None if slab is None else slab.key,
                material_id=None if material_id is None else str(material_id),
                adsorbate=str(atoms.info["adsorbate"]),
                initial_structure=_take_initial(
                    initial, ("adslab", adslab_id), fields["structure"], sources["slabs_initial"]
                ),
                fixed_indices=_fixed_indices(atoms),
            )
        )
    skipped["initial_without_record"].extend(record_id for _, record_id in initial)

    frames: list[ReferenceFrameDoc] = []
    for index, atoms, frame_id in frame_rows:
        where = f"{sources['frames']}, frame {index}"
        miller_index = _miller(atoms.info.get("miller"), where)
        parent_kind = str(atoms.info["parent_kind"])
        if parent_kind not in ("slab", "adslab"):
            raise ValueError(f"{where}: info key 'parent_kind' is {parent_kind!r}, not slab/adslab")
        if "ref_forces" not in atoms.arrays:
            skipped["no_forces"].append(frame_id)
            continue
        try:
            fields = _record_fields(atoms, "frames", where, info, frame_id)
        except _Skip as skip:
            skipped[str(skip)].append(frame_id)
            continue
        parent_id = str(atoms.info["parent_id"])
        slab_id = atoms.info.get("slab_id", parent_id if parent_kind == "slab" else None)
        fid = _number(atoms, "fid", where)
        frames.append(
            ReferenceFrameDoc(
                **fields,
                frame_id=frame_id,
                parent_id=parent_id,
                parent_kind=parent_kind,
                parent_key=f"{info.name}:{parent_id}",
                slab_id=None if slab_id is None else str(slab_id),
                material_id=str(atoms.info["material_id"]),
                miller_index=miller_index,
                adsorbate=None if "adsorbate" not in atoms.info else str(atoms.info["adsorbate"]),
                traj_id=None if "traj_id" not in atoms.info else str(atoms.info["traj_id"]),
                frame_index=None if fid is None else int(fid),
                fixed_indices=_fixed_indices(atoms),
            )
        )
    for doc in [*bulks.values(), *slabs.values(), *adslabs, *frames]:
        if set(doc.flags) - _READER_FLAGS:
            skipped["flagged"].append(doc.key.split(":", 1)[1])

    refset = ReferenceSet(
        info=info,
        slabs=list(slabs.values()),
        bulks=list(bulks.values()),
        adslabs=adslabs,
        frames=frames,
        skipped={reason: ids for reason, ids in skipped.items() if ids},
    )
    owner: dict[str, str] = {}
    for doc in refset.documents:
        if doc.key in owner:
            raise ValueError(
                f"set {info.name}: key {doc.key!r} is used by a {owner[doc.key]} and a "
                f"{doc.doc_type}; ids must be unique across the set's files"
            )
        owner[doc.key] = doc.doc_type
    return refset


def _readme_fields(path: Path) -> dict[str, str]:
    """``key: value`` lines (level_of_theory, source, licence, citation) of a README."""
    if not path.is_file():
        return {}
    # The level of theory only as the machine key ``level_of_theory:``: a prose line
    # such as "Level of theory: the slab energies are ..." is text, not a value.
    pattern = re.compile(
        r"^[ \t]*(level_of_theory|source|licen[cs]e|citation)[ \t]*:[ \t]*(\S.*?)[ \t]*$",
        re.IGNORECASE | re.MULTILINE,
    )
    fields = {}
    for key, value in pattern.findall(path.read_text()):
        name = key.lower().replace(" ", "_").replace("license", "licence")
        fields.setdefault(name, value)
    return fields


def _set_info(
    folder: Path, root: Path, level_of_theory: str | None, set_name: str | None = None
) -> ReferenceSetInfo:
    """Provenance of a set folder: the packaged table, else its README and the argument."""
    name = set_name or folder.name
    if name in PACKAGED_SETS and folder.resolve() == (root / name).resolve():
        info = PACKAGED_SETS[name]
    elif name in PACKAGED_SETS:
        raise ValueError(
            f"folder {folder} has the name of the packaged reference set {name}; ingesting it "
            "would overwrite that set's documents: give it another set name (--set-name)"
        )
    else:
        fields = _readme_fields(folder / "README.md")
        stated = fields.get("level_of_theory") or level_of_theory
        if stated is None:
            raise ValueError(
                f"reference set {folder} states no level of theory: pass level_of_theory= or "
                "add a 'level_of_theory: <code functional>' line to its README.md, so that "
                "energies of different theories are never mixed"
            )
        info = ReferenceSetInfo(name=name, **{**fields, "level_of_theory": stated})
    if (
        level_of_theory is not None
        and level_of_theory.casefold() != info.level_of_theory.casefold()
    ):
        raise ValueError(
            f"reference set {name} is {info.level_of_theory!r}, not {level_of_theory!r}"
        )
    return info


def read_frames(path: Path) -> list[Atoms]:
    """Every frame of an extxyz file; ValueError naming the file for an unreadable one."""
    try:
        frames = ase.io.read(path, ":", format="extxyz")
    except Exception as exc:  # ase raises many types on garbage or truncated files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable extxyz file ({reason})") from None
    if not frames:
        raise ValueError(f"{path}: holds no frames")
    return frames


def read_reference_set(
    path_or_name: str | Path, *, level_of_theory: str | None = None, set_name: str | None = None
) -> ReferenceSet:
    """Read a reference-set folder in the canonical format into documents.

    Parameters
    ----------
    path_or_name
        A folder, or the name of a set packaged in ``surfflows/data/references``
        (see :data:`PACKAGED_SETS`).
    level_of_theory
        Level of theory of the set's energies. Required for a folder whose README.md has no
        ``level_of_theory:`` line; elsewhere it must agree with the stated one.
    set_name
        Name of the set in the store (default: the folder name). A folder named like a
        packaged set needs another one.

    Returns
    -------
    ReferenceSet
        Documents and skipped records.

    Raises
    ------
    ValueError
        If the folder does not exist or has neither ``slabs.extxyz`` nor ``bulks.extxyz``,
        if the level of theory is unknown or contradicts the stated one, or for malformed
        frames (see :func:`documents_from_frames`).
    """
    with as_file(files("surfflows") / "data" / "references") as root:
        folder = Path(path_or_name)
        if not folder.is_dir():
            if str(path_or_name) not in PACKAGED_SETS:
                raise ValueError(
                    f"{path_or_name!r} is neither a folder nor a packaged reference set "
                    f"({', '.join(PACKAGED_SETS)})"
                )
            folder = root / str(path_or_name)
        info = _set_info(folder, root, level_of_theory, set_name)
        paths = {kind: folder / name for kind, name in FRAME_FILES.items()}
        if not any(paths[kind].is_file() for kind in ("slabs", "bulks", "frames")):
            raise ValueError(
                f"reference set {folder} has none of slabs.extxyz, bulks.extxyz, frames.extxyz"
            )
        frames = {kind: read_frames(path) if path.is_file() else [] for kind, path in paths.items()}
    return documents_from_frames(
        info,
        frames["slabs"],
        frames["bulks"],
        frames["adslabs"],
        frames["slabs_initial"],
        frames["frames"],
        sources={kind: str(path) for kind, path in paths.items()},
    )
