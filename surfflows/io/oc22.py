"""OC22 records as canonical reference frames and reference sets (with Materials Project bulks).

The download lives in :mod:`surfflows.io.oc22_download`, the LMDB and metadata readers in
:mod:`surfflows.io.oc22_lmdb`; both are re-exported here.

The Open Catalyst 2022 dataset (R. Tran, J. Lan, M. Shuaibi et al., ACS Catal. 2023,
arXiv:2206.08917; CC BY 4.0) holds DFT relaxations of oxide slabs and adslabs (VASP PBE+U).
``surfflows/data/references/oc22/README.md`` describes the published files; this module follows
it and reads the LMDB shards without ``torch_geometric``.

Records become the canonical frames of ``surfflows/data/references/FORMAT.md``: periodic
:class:`ase.Atoms` whose ``info`` carries ``slab_id`` / ``adslab_id``, ``material_id``,
``bulk_id``, ``miller``, ``ref_energy`` (raw DFT total energy, eV) and the OC22 identifiers
``sid``, ``traj_id`` and ``nads``, with per-atom arrays ``fixed`` (bool) and ``tags`` (int).
A record that becomes no frame is counted under a reason in :class:`OC22Frames`.

LMDB values and ``oc22_metadata.pkl`` are pickles: they are read with
:class:`~surfflows.io.safe_pickle.RestrictedUnpickler`, which builds PyG data, numpy and
torch tensors only and refuses anything else, naming the file and record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from pymatgen.core import Composition
from pymatgen.io.ase import AseAtomsAdaptor

from surfflows.io.oc22_download import OC22_BASE_URL, OC22_FILES, OC22File, download
from surfflows.io.oc22_lmdb import iter_lmdb, iter_split, read_metadata

__all__ = [
    "MAX_Z",
    "MP_SETTINGS_MISMATCH",
    "OC22_BASE_URL",
    "OC22_FILES",
    "OC22File",
    "OC22Frames",
    "bulks_from_materials_project",
    "download",
    "frames_from_is2re",
    "frames_from_s2ef",
    "iter_lmdb",
    "iter_split",
    "oc22_reference_set",
    "oc22_s2ef_set",
    "read_metadata",
]

#: Highest atomic number accepted in a record (Pu).
MAX_Z = 94

#: How Materials Project bulk energies differ in settings from OC22's slab calculations.
MP_SETTINGS_MISMATCH = (
    "Materials Project GGA/GGA+U relaxation (MPRelaxSet: ENCUT 520 eV, 64 k-points per "
    "reciprocal atom) differs from OC22 (ENCUT 500 eV, Gamma-centred k-mesh ceil(30/a) x "
    "ceil(30/b) x 1 on slabs)"
)


# --------------------------------------------------------------------------- frames


@dataclass
class OC22Frames:
    """Canonical frames from one OC22 split, with every record accounted for.

    Each record of the split is either one frame in ``slabs`` / ``adslabs`` or counted once in
    ``skipped``.

    Attributes
    ----------
    slabs
        Clean-slab frames (metadata ``nads == 0``).
    adslabs
        Adsorbate+slab frames; ``info["slab_id"]`` names their clean slab.
    skipped
        Reason -> number of records that became no frame. Reasons: ``no_metadata`` (sid not in
        the metadata), ``bad_metadata`` (its entry lacks a needed key), ``no_target`` (energy,
        relaxed positions or forces absent, as in the test splits), ``nan_energy``,
        ``nonfinite_array`` (positions, cell or forces not finite), ``unknown_element``
        (atomic number outside 1..94), ``no_forces`` and ``bad_force_shape`` (S2EF: ``force``
        absent or not [natoms, 3]) and ``malformed`` (a field missing or of the wrong shape).
    skipped_sids
        Reason -> sids skipped for it (records without a readable sid are only counted).
    """

    slabs: list[Atoms] = field(default_factory=list)
    adslabs: list[Atoms] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_sids: dict[str, list[int]] = field(default_factory=dict)

    def _skip(self, reason: str, sid: int | None) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        sids = self.skipped_sids.setdefault(reason, [])
        if sid is not None:
            sids.append(sid)


class _Skip(Exception):
    """A record that becomes no frame, with the reason and (when known) its sid."""

    def __init__(self, reason: str, sid: int | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sid = sid


def _scalar(record: Mapping[str, Any], key: str, kind: type, sid: int | None) -> Any:
    """``record[key]`` (a number or a one-element array) converted by ``kind``."""
    try:
        return kind(np.asarray(record[key]).item())
    except (KeyError, TypeError, ValueError) as exc:
        raise _Skip("malformed", sid) from exc


def _array(record: Mapping[str, Any], key: str, shape: tuple[int, ...], sid: int) -> np.ndarray:
    """``record[key]`` as a float array reshaped to ``shape`` (so a [1, 3, 3] cell gives [3, 3])."""
    value = record.get(key)
    if value is None:
        raise _Skip("malformed", sid)
    try:
        return np.asarray(value, dtype=float).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise _Skip("malformed", sid) from exc


def _frame(
    record: Mapping[str, Any],
    metadata: Mapping[int, Mapping[str, Any]],
    *,
    pos_key: str,
    energy_key: str | None,
    forces_key: str | None,
    targets: tuple[str, ...],
) -> Atoms:
    """One record as a canonical frame; raises :class:`_Skip` if it cannot be one."""
    sid = _scalar(record, "sid", int, None)
    meta = metadata.get(sid)
    if meta is None:
        raise _Skip("no_metadata", sid)
    if any(record.get(key) is None for key in targets):
        raise _Skip("no_target", sid)

    numbers = _array(record, "atomic_numbers", (-1,), sid)
    natoms = len(numbers)
    positions = _array(record, pos_key, (natoms, 3), sid)
    cell = _array(record, "cell", (3, 3), sid)
    tags = _array(record, "tags", (natoms,), sid).astype(int)
    fixed = _array(record, "fixed", (natoms,), sid) != 0
    forces = None
    if forces_key:
        if record.get(forces_key) is None:
            raise _Skip("no_forces", sid)
        if np.size(record[forces_key]) != 3 * natoms:
            raise _Skip("bad_force_shape", sid)
        forces = _array(record, forces_key, (natoms, 3), sid)
    if not np.all((numbers >= 1) & (numbers <= MAX_Z) & (numbers == np.round(numbers))):
        raise _Skip("unknown_element", sid)
    energy = _scalar(record, energy_key, float, sid) if energy_key else None
    if energy is not None and not math.isfinite(energy):
        raise _Skip("nan_energy", sid)
    if not all(np.isfinite(a).all() for a in (positions, cell, forces) if a is not None):
        raise _Skip("nonfinite_array", sid)

    try:
        nads = int(meta["nads"])
        common = {
            "material_id": str(meta["bulk_id"]),
            "bulk_id": str(meta["bulk_id"]),
            "miller": np.array(meta["miller_index"], dtype=int),
        }
        if nads:
            ids = {
                "adslab_id": f"oc22-{sid}",
                "slab_id": f"oc22-{int(meta['slab_sid'])}",
                "adsorbate": str(meta["ads_symbols"]),
            }
        else:
            ids = {"slab_id": f"oc22-{sid}"}
        traj_id = str(meta["traj_id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _Skip("bad_metadata", sid) from exc

    atoms = Atoms(numbers=numbers.astype(int), positions=positions, cell=cell, pbc=True)
    atoms.set_tags(tags)
    atoms.new_array("fixed", fixed)
    if forces is not None:
        atoms.new_array("ref_forces", forces)
    atoms.info.update(ids)
    if energy is not None:
        atoms.info["ref_energy"] = energy
    atoms.info.update(common)
    if not nads:
        atoms.info["formula"] = Composition(atoms.get_chemical_formula()).reduced_formula
    atoms.info.update(sid=sid, traj_id=traj_id, nads=nads)
    if record.get("fid") is not None:
        atoms.info["fid"] = _scalar(record, "fid", int, sid)
    return atoms


def _frames_from_split(
    split_dir: str | Path,
    metadata: Mapping[int, Mapping[str, Any]],
    *,
    pos_key: str,
    energy_key: str | None,
    forces_key: str | None,
    targets: tuple[str, ...],
) -> OC22Frames:
    frames = OC22Frames()
    for shard, index, record in iter_split(split_dir):
        try:
            atoms = _frame(
                record,
                metadata,
                pos_key=pos_key,
                energy_key=energy_key,
                forces_key=forces_key,
                targets=targets,
            )
        except _Skip as skip:
            frames._skip(skip.reason, skip.sid)
            continue
        if forces_key:  # a single point of a trajectory: one training frame, its own id
            kind = "adslab" if "adslab_id" in atoms.info else "slab"
            parent = atoms.info[f"{kind}_id"]
            step = f"f{atoms.info['fid']}" if "fid" in atoms.info else f"{shard.name}#{index}"
            atoms.info.update(frame_id=f"{parent}:{step}", parent_id=parent, parent_kind=kind)
        (frames.adslabs if "adslab_id" in atoms.info else frames.slabs).append(atoms)
    return frames


def frames_from_is2re(
    split_dir: str | Path,
    metadata: Mapping[int, Mapping[str, Any]],
    *,
    relaxed: bool = True,
) -> OC22Frames:
    """Canonical frames from one IS2RE-total split.

    Parameters
    ----------
    split_dir
        The split's folder of ``*.lmdb`` shards, e.g. ``.../is2re-total/val_id``.
    metadata
        sid -> metadata entry, as from :func:`read_metadata`.
    relaxed
        True: the DFT-relaxed geometry (``pos_relaxed``) with ``ref_energy = y_relaxed``;
        records without them (test splits) are counted under ``no_target``. False: the
        initial geometry (``pos``) without an energy, as ``slabs_initial.extxyz`` in
        FORMAT.md; test-split records are included.

    Returns
    -------
    OC22Frames
        Clean slabs (``slab_id = "oc22-<sid>"``, ``formula``), adslabs (``adslab_id =
        "oc22-<sid>"``, ``slab_id = "oc22-<slab_sid>"``, ``adsorbate``) and the skipped
        records by reason.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`iter_split` (a corrupt shard or an undecodable record).
    """
    return _frames_from_split(
        split_dir,
        metadata,
        pos_key="pos_relaxed" if relaxed else "pos",
        energy_key="y_relaxed" if relaxed else None,
        forces_key=None,
        targets=("pos_relaxed", "y_relaxed") if relaxed else (),
    )


def frames_from_s2ef(
    split_dir: str | Path, metadata: Mapping[int, Mapping[str, Any]]
) -> OC22Frames:
    """Canonical frames from one S2EF-total split: single points with energies and forces.

    Parameters
    ----------
    split_dir
        The split's folder of ``*.lmdb`` shards, e.g. ``.../s2ef-total/train``.
    metadata
        sid -> metadata entry, as from :func:`read_metadata`.

    Returns
    -------
    OC22Frames
        Frames with ``ref_energy = y``, per-atom ``ref_forces`` (eV/Å) and ``info["fid"]`` (the
        frame's index in its trajectory) where the record has it. All frames of one relaxation
        share its ``slab_id`` / ``adslab_id`` (``parent_id``, with ``parent_kind``); each has
        its own ``frame_id``, ``"<parent_id>:f<fid>"`` (without ``fid``:
        ``"<parent_id>:<shard file>#<key>"``, stable for the same files). Records without
        ``y`` are counted under ``no_target``, without ``force`` under ``no_forces``, with a
        force array that is not [natoms, 3] under ``bad_force_shape``.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`iter_split`.
    """
    return _frames_from_split(
        split_dir,
        metadata,
        pos_key="pos",
        energy_key="y",
        forces_key="force",
        targets=("y",),
    )


# --------------------------------------------------------------------------- bulks


def bulks_from_materials_project(mp_ids: Sequence[str], api_key: str | None = None) -> list[Atoms]:
    """Bulk reference frames for OC22 materials from the Materials Project.

    OC22 publishes no bulk energies. This takes, for each material, the Materials Project
    GGA/GGA+U thermo entry and its *uncorrected* (raw DFT) total energy. The settings differ
    from OC22's (see :data:`MP_SETTINGS_MISMATCH`, stored in ``info["settings_mismatch"]``),
    so surface energies from these bulks carry that inconsistency.

    Parameters
    ----------
    mp_ids
        Materials Project ids, e.g. the metadata's ``bulk_id`` values.
    api_key
        Materials Project API key; None lets ``MPRester`` read ``MP_API_KEY``.

    Returns
    -------
    list of Atoms
        One canonical bulk frame per id, in order: ``bulk_id`` = ``material_id`` = the mp id,
        ``ref_energy`` (eV, total for the cell), ``run_type`` and ``settings_mismatch``.

    Raises
    ------
    ImportError
        ``mp-api`` is not installed.
    ValueError
        The Materials Project has no GGA/GGA+U entry for some ids.
    """
    try:
        from mp_api.client import MPRester
    except ImportError as exc:
        raise ImportError(
            "bulks_from_materials_project needs the Materials Project client: "
            "pip install mp-api (or surfflows[mp])"
        ) from exc
    with MPRester(api_key) as mpr:
        docs = mpr.materials.thermo.search(
            material_ids=list(mp_ids),
            thermo_types=["GGA_GGA+U"],
            fields=["material_id", "energy_type", "entries"],
        )
    by_id = {str(doc.material_id): doc for doc in docs}
    missing = [mp_id for mp_id in mp_ids if mp_id not in by_id]
    if missing:
        raise ValueError(f"no Materials Project GGA/GGA+U thermo entry for {missing}")
    bulks = []
    for mp_id in mp_ids:
        doc = by_id[mp_id]
        entries = {str(run_type): entry for run_type, entry in doc.entries.items()}
        entry = entries[str(doc.energy_type)]
        atoms = AseAtomsAdaptor.get_atoms(entry.structure)
        atoms.pbc = True
        atoms.info = {
            "bulk_id": mp_id,
            "material_id": mp_id,
            "ref_energy": float(entry.uncorrected_energy),
            "run_type": str(doc.energy_type),
            "settings_mismatch": MP_SETTINGS_MISMATCH,
        }
        bulks.append(atoms)
    return bulks


#: Provenance recorded on every OC22 reference document.
OC22_INFO = {
    "level_of_theory": "VASP PBE+U (Materials Project U values), OC22 settings",
    "source": "Open Catalyst 2022 (OC22), " + OC22_BASE_URL,
    "licence": "CC BY 4.0",
    "citation": 'R. Tran, J. Lan, M. Shuaibi et al., "The Open Catalyst 2022 (OC22) dataset '
    'and challenges for oxide electrocatalysts", ACS Catal. (2023); arXiv:2206.08917',
}


def oc22_reference_set(
    split_dir: str | Path,
    metadata_path: str | Path,
    bulk_frames: Sequence[Atoms] = (),
    *,
    set_name: str = "oc22",
):
    """Canonical reference set from an OC22 IS2RE-total split, its metadata and bulks.

    Parameters
    ----------
    split_dir
        Folder of the split's LMDB shards (e.g. ``.../is2re-total/val_id``).
    metadata_path
        ``oc22_metadata.pkl``.
    bulk_frames
        Canonical bulk frames (``bulk_id`` = Materials Project id): from the user's own
        extxyz at OC22 settings, or :func:`bulks_from_materials_project` (the settings
        mismatch is recorded on each). Without them slabs are kept but unlinked.
    set_name
        Name of the set in the references store.

    Returns
    -------
    surfflows.io.reference_set.ReferenceSet
        The same canonical documents as any extxyz set; OC22 skips (no metadata, no
        target, NaN energy, unknown element...) are merged into ``skipped``.
    """
    from surfflows.io.canonical import documents_from_frames
    from surfflows.io.reference_set import ReferenceSetInfo

    frames = frames_from_is2re(split_dir, read_metadata(metadata_path))
    refset = documents_from_frames(
        ReferenceSetInfo(name=set_name, **OC22_INFO),
        slab_frames=frames.slabs,
        bulk_frames=bulk_frames,
        adslab_frames=frames.adslabs,
        sources={"slabs": str(split_dir), "adslabs": str(split_dir), "bulks": "bulk frames"},
    )
    _merge_skips(refset, frames)
    return refset


def oc22_s2ef_set(split_dir: str | Path, metadata_path: str | Path, *, set_name: str = "oc22"):
    """Training frames from an OC22 S2EF-total split, as canonical reference documents.

    Parameters
    ----------
    split_dir
        Folder of the split's LMDB shards (e.g. ``.../s2ef-total/train``).
    metadata_path
        ``oc22_metadata.pkl``.
    set_name
        Name of the set in the references store. With the name of the IS2RE set of the same
        relaxations (default ``oc22``), each frame's ``parent_key`` is its relaxed slab's or
        adslab's document and both share one split by material.

    Returns
    -------
    surfflows.io.reference_set.ReferenceSet
        One :class:`~surfflows.schemas.references.ReferenceFrameDoc` per usable record
        (key ``"<set>:<frame_id>"``, so re-ingesting changes nothing); OC22 skips (no
        metadata, no target, no forces, bad force shape...) are merged into ``skipped`` as
        ``oc22_<reason>`` with the sids.
    """
    from surfflows.io.canonical import documents_from_frames
    from surfflows.io.reference_set import ReferenceSetInfo

    frames = frames_from_s2ef(split_dir, read_metadata(metadata_path))
    refset = documents_from_frames(
        ReferenceSetInfo(name=set_name, **OC22_INFO),
        trajectory_frames=[*frames.slabs, *frames.adslabs],
        sources={"frames": str(split_dir)},
    )
    _merge_skips(refset, frames)
    return refset


def _merge_skips(refset, frames: OC22Frames) -> None:
    """Add the OC22 reader's skips to a reference set's, as ``oc22_<reason>`` -> ids."""
    for reason, count in frames.skipped.items():
        sids = [f"oc22-{sid}" for sid in frames.skipped_sids.get(reason, [])]
        sids += ["oc22-(no sid)"] * (count - len(sids))
        refset.skipped.setdefault(f"oc22_{reason}", []).extend(sids)
