"""The record of the last successful build of the embedded database.

``surfflows build`` compares the files of the builders' stores with the record the last
successful build left; when none changed, it stops before any store is opened (or maggma
imported): a rerun with nothing new costs the start of the command, whatever the size of
the database. This module imports only the standard library for that reason.

Each file is fingerprinted by (inode, size, modification time in ns): a collection's file
and its sqlite ``-wal`` and ``-journal`` files (montydb's sqlite engine; ``.mdb`` files of
its lightning engine, ``.json`` of flatfile); not sqlite's ``-shm`` or LMDB's ``-lock``,
which readers write and which hold no documents. MongoDB has no such files: there the
builders find changes themselves (see :mod:`surfflows.builders.errors`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from surfflows.settings import SurfflowsSettings

#: Stores the builders read and never write: fingerprinted when a build starts.
SOURCE_STORES = ("outputs", "references")
#: Stores the builders write: fingerprinted when a build has written them.
TARGET_STORES = ("splits", "surface_errors", "benchmarks", "builder_state")

#: Files of a store that readers write and that hold no documents.
NOT_DOCUMENTS = ("-shm", "-lock")


def record_file(settings: SurfflowsSettings) -> Path:
    """Where the record of the last build of the embedded database lives (beside its lock)."""
    return settings.db_dir / f"last_build.{settings.database}.json"


def store_files(settings: SurfflowsSettings, names: Iterable[str]) -> dict[str, list[int]]:
    """File name -> (inode, size, mtime in ns) of every file holding one of the stores
    ``names`` in the embedded database."""
    folder = settings.db_dir / settings.database
    files = {}
    for name in names:
        for path in sorted(folder.glob(f"{name}.*")):
            if path.name.endswith(NOT_DOCUMENTS):
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:  # a -wal file checkpointed away meanwhile
                continue
            files[path.name] = [stat.st_ino, stat.st_size, stat.st_mtime_ns]
    return files


def unchanged_since_last_build(settings: SurfflowsSettings) -> str | None:
    """When the last successful build finished, if no file of the builders' stores has
    changed since (and surfflows is the same version); else None (always on MongoDB).
    """
    path = record_file(settings)
    if settings.mongodb_uri or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    now = store_files(settings, (*SOURCE_STORES, *TARGET_STORES))
    if record.get("version") != version("surfflows") or record.get("files") != now:
        return None
    return record.get("finished_at")


@contextmanager
def recording_build(settings: SurfflowsSettings) -> Iterator[None]:
    """Run a build of the embedded database and record its store files once it succeeded.

    The record of the previous build is removed first, so a build stopped part way (an
    error, Ctrl-C, SIGTERM) leaves none and the next build looks at every document.

    The record holds the sources' fingerprints taken *before* the build reads them and the
    targets' taken after it wrote them: this is safe because every writer of the embedded
    database holds its writer lock, which the build holds throughout, so the targets change
    only by this build and any write to a source after the build started changes that
    file's inode, size or mtime (a write later than the recorded one moves its mtime on).
    A no-op on MongoDB.
    """
    if settings.mongodb_uri:
        yield
        return
    path = record_file(settings)
    path.unlink(missing_ok=True)
    sources = store_files(settings, SOURCE_STORES)
    yield
    record = {
        "version": version("surfflows"),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": sources | store_files(settings, TARGET_STORES),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)  # atomic: a record is whole or absent
