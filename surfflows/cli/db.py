"""Commands of the database itself: export, import, ``db check`` and ``db migrate``.

Exports are JSON lines of MongoDB extended JSON (``bson.json_util``), one file per store,
``<store>.jsonl``: what ``mongoimport --collection <store> --file <store>.jsonl`` reads, and
what ``surfflows import`` reads back into either backend.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from surfflows.cli.common import app, console, fail

if TYPE_CHECKING:
    from surfflows.settings import SurfflowsSettings

db_app = typer.Typer(help="Check the database, or move the embedded one to another engine.")
app.add_typer(db_app, name="db")

STORES_HELP = "Stores to export or import (default: all of them)."


def _stores(names: list[str] | None) -> list[str]:
    from surfflows.stores import STORE_NAMES

    unknown = sorted(set(names or ()) - set(STORE_NAMES))
    if unknown:
        fail(f"unknown store {', '.join(unknown)}; known stores: {', '.join(STORE_NAMES)}")
    return list(names or STORE_NAMES)


@app.command("export")
def export_stores(
    folder: Annotated[Path, typer.Argument(help="Folder for the <store>.jsonl files.")],
    store: Annotated[list[str] | None, typer.Option(help=STORES_HELP)] = None,
) -> None:
    """Write stores as JSON lines (MongoDB extended JSON, what mongoimport reads).

    Every document that can be read is written: a store that fails part way is named,
    what was read of it is kept, and the command exits 1.
    """
    from bson import json_util

    from surfflows.stores import get_store, read_documents

    folder.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in _stores(store):
        path = folder / f"{name}.jsonl"
        problems: list[BaseException] = []
        n = 0
        with get_store(name) as source, path.open("w") as out:
            for doc in _readable(read_documents(source, {}), problems):
                out.write(json_util.dumps(doc, json_options=json_util.RELAXED_JSON_OPTIONS) + "\n")
                n += 1
        console.print(f"{name}: {n} documents -> {path}")
        if problems:
            failed.append(name)
            console.print(f"[bold red]{name}[/]: reading stopped there: {problems[0]}")
    if failed:
        console.print(f"[bold red]{len(failed)} stores could not be read whole:[/] {failed}")
        raise typer.Exit(code=1)


def _readable(docs: Iterator[dict], problems: list[BaseException]) -> Iterator[dict]:
    """The documents of ``docs`` up to the first that cannot be read (its error appended to
    ``problems``); errors of the consumer (e.g. a full disk) are not caught here."""
    try:
        yield from docs
    except Exception as exc:  # sqlite3, lmdb, bson errors of a damaged store
        problems.append(exc)


@app.command("import")
def import_stores(
    folder: Annotated[Path, typer.Argument(help="Folder of <store>.jsonl files (an export).")],
    store: Annotated[list[str] | None, typer.Option(help=STORES_HELP)] = None,
) -> None:
    """Read exported stores back, idempotently: a document replaces the stored one with
    the same key (``key`` of references, ``error_id`` of errors, ``uuid`` and ``index`` of
    job outputs...)."""
    from bson import json_util

    from surfflows.stores import STORE_KEYS, get_store, import_documents

    names = [n for n in _stores(store) if (folder / f"{n}.jsonl").is_file()]
    if not names:
        fail(f"{folder} holds no <store>.jsonl file of the stores {', '.join(_stores(store))}")
    for name in names:
        path = folder / f"{name}.jsonl"
        docs = []
        with path.open() as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    docs.append(json_util.loads(line))
                except ValueError as exc:
                    fail(f"{path} line {number}: not extended JSON ({exc}); nothing imported")
        keys = STORE_KEYS[name]
        bad = next((i for i, d in enumerate(docs, 1) if any(k not in d for k in keys)), None)
        if bad is not None:
            fail(f"{path} document {bad} has no {' / '.join(keys)}; nothing of {name} imported")
        with get_store(name) as target:
            replaced = import_documents(target, docs, keys)
        console.print(f"{name}: {len(docs)} documents from {path} ({replaced} replaced)")


@db_app.command("check")
def check() -> None:
    """Read every document of every store; name the first collection (and its file) that
    cannot be read. A failed check keeps every command from writing into the embedded
    database until a check passes."""
    from surfflows.settings import get_settings
    from surfflows.stores import (
        CHECK_FAILED_FILE,
        STORE_NAMES,
        DatabaseCorruptError,
        check_store,
    )

    settings = get_settings()
    marker = None if settings.mongodb_uri else settings.db_dir / CHECK_FAILED_FILE
    total = 0
    for name in STORE_NAMES:
        try:
            n = check_store(name, settings)
        except DatabaseCorruptError as exc:
            if marker is not None:
                marker.write_text(f"collection {name!r} could not be read\n")
            fail(str(exc))
        total += n
        console.print(f"{name}: {n} documents read")
    if marker is not None:
        marker.unlink(missing_ok=True)
    console.print(f"database ok: {total} documents read")


@db_app.command("migrate")
def migrate(
    storage: Annotated[str, typer.Option(help="Engine to move to: sqlite, lightning or flatfile.")],
) -> None:
    """Copy the embedded database into another montydb engine; the old folder is kept
    beside it as ``<db_dir>.<old engine>-backup``."""
    from surfflows.settings import get_settings
    from surfflows.stores import COLLECTION_FILE_SUFFIX, embedded_storage, writer_lock

    settings = get_settings()
    if settings.mongodb_uri:
        fail(
            "db migrate moves the embedded database; MongoDB is configured (SURFFLOWS_MONGODB_URI)"
        )
    if storage not in COLLECTION_FILE_SUFFIX:
        fail(f"unknown engine {storage!r}; use {', '.join(COLLECTION_FILE_SUFFIX)}")
    old = embedded_storage(settings.db_dir)
    if old is None:
        fail(f"no embedded database in {settings.db_dir}")
    if old == storage:
        console.print(f"{settings.db_dir} already uses {storage}: nothing to do")
        return
    new_dir = settings.db_dir.with_name(settings.db_dir.name + f".{storage}-migrating")
    backup = settings.db_dir.with_name(settings.db_dir.name + f".{old}-backup")
    if backup.exists():
        fail(f"{backup} exists (an earlier migration's backup): move it away first")
    with writer_lock(settings):
        _copy_database(settings, new_dir, storage, old, backup)


def _copy_database(
    settings: SurfflowsSettings, new_dir: Path, storage: str, old: str, backup: Path
) -> None:
    """Copy every store into ``new_dir`` (engine ``storage``), check the counts, swap."""
    from surfflows.stores import STORE_NAMES, get_store, insert_new_documents, read_documents

    shutil.rmtree(new_dir, ignore_errors=True)
    target_settings = settings.model_copy(update={"db_dir": new_dir, "db_storage": storage})
    for name in STORE_NAMES:
        with get_store(name, settings) as source:
            docs = list(read_documents(source, {}))
        with get_store(name, target_settings) as target:
            insert_new_documents(target, docs, key="_id")
            copied = sum(1 for _ in read_documents(target, {}))
        if copied != len(docs):
            shutil.rmtree(new_dir, ignore_errors=True)
            fail(f"{name}: {copied} of {len(docs)} documents copied; {settings.db_dir} unchanged")
        console.print(f"{name}: {len(docs)} documents")
    # the writer lock's files stay with the folder being written: move the data only
    settings.db_dir.rename(backup)
    new_dir.rename(settings.db_dir)
    for name in ("writer.lock", "writer.pid"):
        if (backup / name).exists():
            shutil.move(backup / name, settings.db_dir / name)
    console.print(f"{settings.db_dir} now uses {storage}; the {old} copy is {backup}")
