"""OC22: download the published files and read them into canonical reference frames.

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

import hashlib
import logging
import math
import shutil
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lmdb
import numpy as np
import torch
from ase import Atoms
from pymatgen.core import Composition
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from surfflows.io.safe_pickle import PygStub, restricted_load, restricted_loads

logger = logging.getLogger(__name__)

OC22_BASE_URL = "https://dl.fbaipublicfiles.com/opencatalystproject/data/oc22/"

#: Highest atomic number accepted in a record (Pu).
MAX_Z = 94

#: How Materials Project bulk energies differ in settings from OC22's slab calculations.
MP_SETTINGS_MISMATCH = (
    "Materials Project GGA/GGA+U relaxation (MPRelaxSet: ENCUT 520 eV, 64 k-points per "
    "reciprocal atom) differs from OC22 (ENCUT 500 eV, Gamma-centred k-mesh ceil(30/a) x "
    "ceil(30/b) x 1 on slabs)"
)

_CHUNK_BYTES = 1 << 20
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class OC22File:
    """One published OC22 file.

    Attributes
    ----------
    url
        Download address.
    md5
        Published md5 checksum (hex digest).
    """

    url: str
    md5: str


OC22_FILES: Mapping[str, OC22File] = MappingProxyType(
    {
        name: OC22File(OC22_BASE_URL + name, md5)
        for name, md5 in (
            ("is2res_total_train_val_test_lmdbs.tar.gz", "b35dc24e99ef3aeaee6c5c949903de94"),
            ("s2ef_total_train_val_test_lmdbs.tar.gz", "ebea523c6f8d61248a37b4dd660b11e6"),
            ("oc22_trajectories.tar.gz", "977b6be1cbac6864e63c4c7fbf8a3fce"),
            ("oc22_metadata.pkl", "13dc06c6510346d8a7f614d5b26c8ffa"),
            ("oc20_ref.pkl", "043e1e0b0cce64c62f01a8563dbc3178"),
        )
    }
)


# --------------------------------------------------------------------------- download


def download(
    names: str | Iterable[str],
    dest: str | Path,
    *,
    base_url: str = OC22_BASE_URL,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
    extract: bool = False,
) -> list[Path]:
    """Download OC22 files, resuming partial downloads and checking their md5.

    Each file streams into ``<dest>/<name>.part``; an existing ``.part`` file is resumed with an
    HTTP ``Range`` request (a server that ignores the range sends the whole file, which then
    replaces the part). The finished file is checked against its md5 and renamed to
    ``<dest>/<name>``. A file already at ``<dest>/<name>`` with the right md5 is not fetched
    again; one with a wrong md5 is fetched anew.

    Parameters
    ----------
    names
        File names (or one name), keys of :data:`OC22_FILES` or of ``checksums``.
    dest
        Target folder (created if missing).
    base_url
        Where the files are served; ``<base_url>/<name>`` is fetched.
    checksums
        Name -> md5 hex digest, overriding or extending the published table.
    progress
        Show a tqdm progress bar per file.
    extract
        Also unpack the ``.tar.gz`` files into ``dest`` (tarfile's ``"data"`` filter, which
        refuses absolute paths, links out of ``dest`` and device files). Unpacking runs on
        every call.

    Returns
    -------
    list of Path
        The downloaded files, in the order of ``names``.

    Raises
    ------
    ValueError
        No md5 is known for a name, or a finished download does not match its md5. The bad
        download is deleted (no ``.part`` is kept), so running again fetches it from scratch.
    urllib.error.URLError
        The server could not be reached or answered with an error; the ``.part`` file is kept
        and the next call resumes it.
    """
    if isinstance(names, str):
        names = [names]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    md5s = {name: entry.md5 for name, entry in OC22_FILES.items()} | dict(checksums or {})
    paths = []
    for name in names:
        if name not in md5s:
            raise ValueError(f"no md5 known for {name!r}: pass it in `checksums`")
        path = dest / name
        if not _matches_md5(path, md5s[name]):
            _download_one(f"{base_url.rstrip('/')}/{name}", path, md5s[name], progress=progress)
        if extract and name.endswith(".tar.gz"):
            with tarfile.open(path) as tar:
                tar.extractall(dest, filter="data")
        paths.append(path)
    return paths


def _md5(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "md5").hexdigest()


def _matches_md5(path: Path, expected: str) -> bool:
    """Whether ``path`` exists with md5 ``expected`` (a mismatch is logged)."""
    if not path.exists():
        return False
    actual = _md5(path)
    if actual != expected:
        logger.warning("%s has md5 %s, expected %s: downloading it again", path, actual, expected)
    return actual == expected


def _download_one(url: str, path: Path, expected_md5: str, *, progress: bool) -> None:
    part = path.with_name(path.name + ".part")
    _fetch(url, part, progress=progress)
    actual = _md5(part)
    if actual != expected_md5:
        part.unlink()
        raise ValueError(
            f"md5 mismatch for {path.name}: expected {expected_md5}, got {actual}; the download "
            "was deleted, run again to fetch it anew"
        )
    part.replace(path)


def _fetch(url: str, part: Path, *, progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming after the bytes ``part`` already holds."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S
        )
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            # Nothing after `offset`: the part already holds the whole file (md5 decides).
            exc.close()
            return
        raise
    with response:
        if response.status == 206:
            start = response.headers.get("Content-Range", "").removeprefix("bytes ")
            if start.partition("-")[0] != str(offset):
                raise ValueError(f"{url}: asked to resume at byte {offset}, server sent {start!r}")
            mode = "ab"
        else:
            offset, mode = 0, "wb"
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        with (
            part.open(mode) as fh,
            tqdm.wrapattr(
                fh, "write", total=total, initial=offset, desc=part.name, disable=not progress
            ) as out,
        ):
            shutil.copyfileobj(response, out, _CHUNK_BYTES)


# --------------------------------------------------------------------------- LMDB


def _record_fields(obj: object) -> dict[str, Any]:
    """Fields of an unpickled PyG ``Data`` object, tensors as numpy arrays."""
    if not isinstance(obj, PygStub):
        raise TypeError(f"expected a torch_geometric Data object, got {type(obj).__name__}")
    state = vars(obj)
    store = state.get("_store")
    if isinstance(store, PygStub):  # PyG >= 2: fields live in the storage's mapping
        fields = vars(store)["_mapping"]
    else:  # PyG 1: fields sit in the object's __dict__
        fields = {key: value for key, value in state.items() if not key.startswith("_")}
    return {
        key: value.numpy(force=True) if isinstance(value, torch.Tensor) else value
        for key, value in fields.items()
    }


def iter_lmdb(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Iterate over the records of one OC22 LMDB shard.

    Parameters
    ----------
    path
        A ``*.lmdb`` shard (a single file, ``subdir=False``).

    Yields
    ------
    tuple of (int, dict)
        The record's key as an integer and its fields (tensors as numpy arrays, other values
        as stored), in numerical key order. Keys that are not all digits (``b"length"``) are
        skipped.

    Raises
    ------
    FileNotFoundError
        ``path`` is not a file.
    ValueError
        The shard is not a readable LMDB file, or a record cannot be decoded; the message
        names the file and, for a record, its key.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no LMDB shard at {path}")
    try:
        env = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=True, meminit=False
        )
    except lmdb.Error as exc:
        raise ValueError(f"{path}: not a readable LMDB file ({exc})") from exc
    with env, env.begin() as txn:
        try:
            keys = sorted((k for k in txn.cursor().iternext(values=False) if k.isdigit()), key=int)
        except lmdb.Error as exc:
            raise ValueError(f"{path}: corrupt LMDB shard ({exc})") from exc
        for key in keys:
            try:
                record = _record_fields(restricted_loads(txn.get(key)))
            # Unpickling a damaged value can fail with almost any exception type.
            except Exception as exc:
                raise ValueError(
                    f"{path}: cannot decode record at key {key.decode()!r} "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
            yield int(key), record


def iter_split(directory: str | Path) -> Iterator[tuple[Path, int, dict[str, Any]]]:
    """Iterate over all records of a split: its ``*.lmdb`` shards in sorted order.

    Parameters
    ----------
    directory
        The split's folder, e.g. ``.../is2re-total/train``.

    Yields
    ------
    tuple of (Path, int, dict)
        The shard, the record's key in it and its fields (see :func:`iter_lmdb`).

    Raises
    ------
    FileNotFoundError
        The folder holds no ``*.lmdb`` file.
    ValueError
        As :func:`iter_lmdb`.
    """
    directory = Path(directory)
    shards = sorted(directory.glob("*.lmdb"))
    if not shards:
        raise FileNotFoundError(f"no *.lmdb shards in {directory}")
    for shard in shards:
        for index, record in iter_lmdb(shard):
            yield shard, index, record


# --------------------------------------------------------------------------- other files


def read_metadata(path: str | Path) -> dict[int, dict[str, Any]]:
    """Read ``oc22_metadata.pkl``.

    Parameters
    ----------
    path
        The metadata pickle: a dict ``sid -> {bulk_id, bulk_symbols, miller_index, nads,
        traj_id[, slab_sid, ads_symbols]}``.

    Returns
    -------
    dict
        Integer sid -> a copy of its entry (sids stored as strings are converted).

    Raises
    ------
    ValueError
        The pickle is not a mapping, or two keys give the same sid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no OC22 metadata file at {path}")
    try:
        with path.open("rb") as fh:
            raw = restricted_load(fh)
    # A damaged or foreign pickle can fail with almost any exception type.
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot read OC22 metadata ({type(exc).__name__}: {exc})"
        ) from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected a dict of sid -> entry, got {type(raw).__name__}")
    metadata: dict[int, dict[str, Any]] = {}
    for key, entry in raw.items():
        sid = int(key)
        if sid in metadata:
            raise ValueError(f"{path}: sid {sid} appears twice (key {key!r})")
        metadata[sid] = dict(entry)
    return metadata


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
    surfflows.io.canonical.ReferenceSet
        The same canonical documents as any extxyz set; OC22 skips (no metadata, no
        target, NaN energy, unknown element...) are merged into ``skipped``.
    """
    from surfflows.io.canonical import ReferenceSetInfo, documents_from_frames

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
    surfflows.io.canonical.ReferenceSet
        One :class:`~surfflows.io.canonical.ReferenceFrameDoc` per usable record
        (key ``"<set>:<frame_id>"``, so re-ingesting changes nothing); OC22 skips (no
        metadata, no target, no forces, bad force shape...) are merged into ``skipped`` as
        ``oc22_<reason>`` with the sids.
    """
    from surfflows.io.canonical import ReferenceSetInfo, documents_from_frames

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
