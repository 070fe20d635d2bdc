"""Checks of extended-XYZ reference frames and the document fields read from one frame."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from monty.json import jsanitize
from pymatgen.core import Composition, Lattice, Structure

from surfflows.core.thermo import bulk_units_and_excess, slab_area, surface_energy, to_j_per_m2
from surfflows.core.validation import check_elements
from surfflows.io.reference_set import ReferenceSetInfo
from surfflows.schemas.references import ReferenceBulkDoc

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
#: Published quantities of a record; a slab needs at least one, other kinds ``ref_energy``.
SLAB_QUANTITIES = ("ref_energy", "gamma_ref")
#: Smallest cell volume of a frame, Å³ (a flat or degenerate cell is an error).
MIN_CELL_VOLUME = 1.0
#: Per-atom arrays that become document fields; any other array becomes a site property.
_KNOWN_ARRAYS = {"numbers", "positions", "fixed", "ref_forces"}


class SkipRecord(Exception):
    """A well-formed record that cannot become a document, with the reason."""


def validated_rows(
    frames: Sequence[Atoms], kind: str, source: str, *, unique: bool = True
) -> list[tuple[int, Atoms, str]]:
    """Check every frame's shape and required keys; return ``(index, frame, id)`` triples.

    Raises
    ------
    ValueError
        On an empty or non-periodic frame, a cell of no volume, non-finite positions or cell,
        a missing required key or (``unique``) a repeated id.
    """
    id_key = REQUIRED_KEYS[kind][0]
    rows: list[tuple[int, Atoms, str]] = []
    first_index: dict[str, int] = {}
    for index, atoms in enumerate(frames):
        where = f"{source}, frame {index}"
        if len(atoms) == 0:
            raise ValueError(f"{where}: the frame has no atoms")
        if not atoms.pbc.all():
            raise ValueError(f"{where}: the frame is not periodic in 3D (pbc={atoms.pbc.tolist()})")
        if not (np.isfinite(atoms.cell.array).all() and np.isfinite(atoms.positions).all()):
            raise ValueError(f"{where}: the cell or the positions are not finite numbers")
        if abs(atoms.cell.volume) < MIN_CELL_VOLUME:
            raise ValueError(
                f"{where}: the cell has volume {abs(atoms.cell.volume):.3g} Å³ (its vectors "
                "are not independent)"
            )
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


def frame_structure(atoms: Atoms) -> Structure:
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


def info_number(atoms: Atoms, key: str, where: str) -> float | None:
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


def record_fields(
    atoms: Atoms, kind: str, where: str, info: ReferenceSetInfo, record_id: str
) -> dict[str, Any]:
    """Fields every document has, from one frame.

    Raises
    ------
    SkipRecord
        For a non-finite energy or force, or an element CHGNet cannot embed. A slab may
        lack ``ref_energy`` (gamma-only; ``"ref_energy": None``).
    ValueError
        If the frame's ``formula`` does not match its atoms.
    """
    energy = info_number(atoms, "ref_energy", where)
    if energy is not None and not math.isfinite(energy):
        raise SkipRecord("non_finite_energy")
    structure = frame_structure(atoms)
    formula = structure.composition.reduced_formula
    if "formula" in atoms.info and _reduced(atoms.info["formula"]) != formula:
        raise ValueError(
            f"{where}: info key 'formula' is {atoms.info['formula']!r} but the atoms are {formula}"
        )
    try:
        check_elements(structure, where)
    except ValueError as exc:
        raise SkipRecord("unsupported_element") from exc
    forces = atoms.arrays.get("ref_forces")
    if forces is not None and not np.isfinite(forces).all():
        raise SkipRecord("non_finite_forces")
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


def fixed_atom_indices(atoms: Atoms) -> list[int]:
    """Indices of the atoms the frame's per-atom ``fixed`` array marks (none without it)."""
    return np.flatnonzero(atoms.arrays.get("fixed", np.zeros(len(atoms), bool))).tolist()


def parse_miller(value: Any, where: str) -> tuple[int, int, int] | None:
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


def same_frame(a: Atoms, b: Atoms) -> bool:
    """Same atoms, cell, per-atom arrays and info."""
    return (
        a == b
        and a.arrays.keys() == b.arrays.keys()
        and all(np.array_equal(values, b.arrays[name]) for name, values in a.arrays.items())
        and jsanitize(a.info) == jsanitize(b.info)
    )


def slab_gamma(
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


def initial_structures(
    frames: Sequence[Atoms], source: str
) -> dict[tuple[str, str], tuple[int, Structure]]:
    """(kind, id) -> (frame index, structure); adslab frames are those with ``adslab_id``."""
    initial: dict[tuple[str, str], tuple[int, Structure]] = {}
    for index, atoms, slab_id in validated_rows(frames, "slabs_initial", source, unique=False):
        adslab_id = atoms.info.get("adslab_id")
        target = ("slab", slab_id) if adslab_id is None else ("adslab", str(adslab_id))
        if target in initial:
            raise ValueError(
                f"{source}, frame {index}: duplicate initial geometry for {target[0]} "
                f"{target[1]!r} (also frame {initial[target][0]})"
            )
        initial[target] = (index, frame_structure(atoms))
    return initial


def take_initial(
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
