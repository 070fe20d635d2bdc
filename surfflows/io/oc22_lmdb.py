"""Reading OC22's LMDB shards and metadata pickle without torch_geometric (restricted pickles)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lmdb
import torch

from surfflows.io.safe_pickle import PygStub, restricted_load, restricted_loads


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
