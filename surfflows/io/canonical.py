"""The reader of reference-set folders into canonical DFT reference documents.

A *reference set* is a folder of extended-XYZ files in the format of
``surfflows/data/references/FORMAT.md`` (``slabs.extxyz``, ``slabs_initial.extxyz``,
``bulks.extxyz``, ``adslabs.extxyz``) plus a README naming source, licence and level of
theory. :func:`read_reference_set` turns one into the
:class:`~surfflows.schemas.references.ReferenceSlabDoc`,
:class:`~surfflows.schemas.references.ReferenceBulkDoc` and
:class:`~surfflows.schemas.references.ReferenceAdslabDoc` documents that share the
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
cell of no volume, non-finite positions, a ``gamma_ref`` that is not a finite, non-negative
number on a slab without ``flags``, a missing required ``info`` key, a slab with neither
``ref_energy`` nor ``gamma_ref``, a ``ref_forces`` array that is not [N, 3], a duplicate id, a
malformed Miller index, a
``formula`` that is not the atoms', an initial geometry of other atoms) raise ``ValueError``
naming file, frame and field. Records that are well formed but unusable are counted in
:attr:`~surfflows.io.reference_set.ReferenceSet.skipped` under a reason with their ids:

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
from importlib.resources import as_file, files
from pathlib import Path

from ase import Atoms
from pymatgen.core import Structure

from surfflows.core.thermo import slab_area
from surfflows.io.frames import (
    FRAME_FILES,
    SkipRecord,
    fixed_atom_indices,
    info_number,
    initial_structures,
    parse_miller,
    read_frames,
    record_fields,
    same_frame,
    slab_gamma,
    take_initial,
    validated_rows,
)
from surfflows.io.packaged_sets import PACKAGED_SETS
from surfflows.io.reference_set import ReferenceSet, ReferenceSetInfo
from surfflows.schemas.references import (
    ReferenceAdslabDoc,
    ReferenceBulkDoc,
    ReferenceFrameDoc,
    ReferenceSlabDoc,
)

__all__ = [
    "FRAME_FILES",
    "PACKAGED_SETS",
    "documents_from_frames",
    "read_frames",
    "read_reference_set",
]

#: Initial geometries by (kind, id): (frame index, structure); popped as records claim them.
InitialGeometries = dict[tuple[str, str], tuple[int, Structure]]
#: Flags the reader sets itself (counted under their own reasons, not as ``flagged``).
_READER_FLAGS = {"bulk_missing", "slab_missing", "gamma_only_without_bulk", "gamma_ref_not_finite"}


def _bulk_documents(
    rows: list[tuple[int, Atoms, str]],
    info: ReferenceSetInfo,
    source: str,
    skipped: defaultdict[str, list[str]],
) -> dict[str, ReferenceBulkDoc]:
    """Bulk id -> document; exact repeats kept once, conflicting cells under one id dropped."""
    bulks: dict[str, ReferenceBulkDoc] = {}
    first_frame: dict[str, Atoms] = {}
    conflicts: list[str] = []
    for index, atoms, bulk_id in rows:
        if bulk_id in first_frame:
            same = same_frame(atoms, first_frame[bulk_id])
            if not same and bulk_id not in conflicts:
                conflicts.append(bulk_id)
            skipped["duplicate_bulk_frame" if same else "conflicting_bulk_frames"].append(bulk_id)
            continue
        first_frame[bulk_id] = atoms
        where = f"{source}, frame {index}"
        try:
            fields = record_fields(atoms, "bulks", where, info, bulk_id)
        except SkipRecord as skip:
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
    return bulks


def _slab_documents(
    rows: list[tuple[int, Atoms, str]],
    info: ReferenceSetInfo,
    sources: Mapping[str, str],
    bulks: Mapping[str, ReferenceBulkDoc],
    initial: InitialGeometries,
    skipped: defaultdict[str, list[str]],
) -> dict[str, ReferenceSlabDoc]:
    """Slab id -> document, linked to its bulk with the recomputed gamma where one exists."""
    slabs: dict[str, ReferenceSlabDoc] = {}
    for index, atoms, slab_id in rows:
        where = f"{sources['slabs']}, frame {index}"
        miller_index = parse_miller(atoms.info.get("miller"), where)
        gamma_ref = info_number(atoms, "gamma_ref", where)
        try:
            fields = record_fields(atoms, "slabs", where, info, slab_id)
        except SkipRecord as skip:
            skipped[str(skip)].append(slab_id)
            continue
        usable = gamma_ref is None or (math.isfinite(gamma_ref) and gamma_ref >= 0)
        if not usable and not fields["flags"]:
            raise ValueError(
                f"{where}: info key 'gamma_ref' is {gamma_ref}: a published surface energy is "
                "finite and not negative (J/m²); mark a record known to be bad with 'flags'"
            )
        if gamma_ref is not None and not math.isfinite(gamma_ref):  # a flagged record
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
            (None, None) if bulk is None else slab_gamma(structure, fields["ref_energy"], bulk)
        )
        slabs[slab_id] = ReferenceSlabDoc(
            **fields,
            slab_id=slab_id,
            material_id=str(atoms.info["material_id"]),
            bulk_id=bulk_id,
            bulk_key=None if bulk is None else bulk.key,
            miller_index=miller_index,
            area=slab_area(structure.lattice),
            initial_structure=take_initial(
                initial, ("slab", slab_id), structure, sources["slabs_initial"]
            ),
            published=published,
            gamma_ref=gamma_ref,
            gamma_ref_recomputed=gamma,
            is_stoichiometric=stoichiometric,
            fixed_indices=fixed_atom_indices(atoms),
        )
    return slabs


def _adslab_documents(
    rows: list[tuple[int, Atoms, str]],
    info: ReferenceSetInfo,
    sources: Mapping[str, str],
    slabs: Mapping[str, ReferenceSlabDoc],
    initial: InitialGeometries,
    skipped: defaultdict[str, list[str]],
) -> list[ReferenceAdslabDoc]:
    """Adslab documents, linked to their clean slab where it is among the documents."""
    adslabs: list[ReferenceAdslabDoc] = []
    for index, atoms, adslab_id in rows:
        where = f"{sources['adslabs']}, frame {index}"
        try:
            fields = record_fields(atoms, "adslabs", where, info, adslab_id)
        except SkipRecord as skip:
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
                initial_structure=take_initial(
                    initial, ("adslab", adslab_id), fields["structure"], sources["slabs_initial"]
                ),
                fixed_indices=fixed_atom_indices(atoms),
            )
        )
    return adslabs


def _frame_documents(
    rows: list[tuple[int, Atoms, str]],
    info: ReferenceSetInfo,
    source: str,
    skipped: defaultdict[str, list[str]],
) -> list[ReferenceFrameDoc]:
    """Trajectory-frame documents; a frame without forces is counted under ``no_forces``."""
    frames: list[ReferenceFrameDoc] = []
    for index, atoms, frame_id in rows:
        where = f"{source}, frame {index}"
        miller_index = parse_miller(atoms.info.get("miller"), where)
        parent_kind = str(atoms.info["parent_kind"])
        if parent_kind not in ("slab", "adslab"):
            raise ValueError(f"{where}: info key 'parent_kind' is {parent_kind!r}, not slab/adslab")
        if "ref_forces" not in atoms.arrays:
            skipped["no_forces"].append(frame_id)
            continue
        try:
            fields = record_fields(atoms, "frames", where, info, frame_id)
        except SkipRecord as skip:
            skipped[str(skip)].append(frame_id)
            continue
        parent_id = str(atoms.info["parent_id"])
        slab_id = atoms.info.get("slab_id", parent_id if parent_kind == "slab" else None)
        fid = info_number(atoms, "fid", where)
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
                fixed_indices=fixed_atom_indices(atoms),
            )
        )
    return frames


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
    bulk_rows = validated_rows(bulk_frames, "bulks", sources["bulks"], unique=False)
    slab_rows = validated_rows(slab_frames, "slabs", sources["slabs"])
    adslab_rows = validated_rows(adslab_frames, "adslabs", sources["adslabs"])
    frame_rows = validated_rows(trajectory_frames, "frames", sources["frames"])
    initial = initial_structures(initial_frames, sources["slabs_initial"])
    skipped: defaultdict[str, list[str]] = defaultdict(list)
    bulks = _bulk_documents(bulk_rows, info, sources["bulks"], skipped)
    slabs = _slab_documents(slab_rows, info, sources, bulks, initial, skipped)
    adslabs = _adslab_documents(adslab_rows, info, sources, slabs, initial, skipped)
    skipped["initial_without_record"].extend(record_id for _, record_id in initial)
    frames = _frame_documents(frame_rows, info, sources["frames"], skipped)
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
