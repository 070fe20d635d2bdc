"""The JobStore and the named maggma stores of a campaign.

Every collection surfflows uses lives in one database. By default that database is
an embedded maggma :class:`~maggma.stores.MontyStore` on disk (no server needed,
location ``settings.db_dir``); when ``settings.mongodb_uri`` is set, each store is a
:class:`~maggma.stores.MongoURIStore` on that server.

Collections
-----------
outputs, outputs_data
    jobflow JobStore: job output documents, and large data (structures, checkpoints). A
    fine-tuned checkpoint is registered by being an output here (see
    :mod:`surfflows.io.registry`).
references
    canonical DFT reference documents (slabs, bulks, adslabs).
splits
    the train / validation / test assignment of each material of a reference set.
surface_errors, benchmarks
    builder targets.
builder_state
    what each builder built each group from (one small document per group): a rerun
    reads it instead of every error document (see :mod:`surfflows.builders.errors`).
features, selections
    CHGNet structure features of candidate training structures, and training-set
    selections (DIRECT or random) made with ``surfflows select``.

Only the CLI, builders, io and reports open these stores; jobs get their data as inputs.

Notes
-----
MontyDB is not safe for several processes writing at once, so commands that write to
the embedded database hold :func:`writer_lock` (one writer at a time; a second one is
refused with a message naming the first). MongoDB takes several writers.
"""

from __future__ import annotations

import configparser
import itertools
import os
import sys
from collections import defaultdict
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock, Timeout
from montydb.collection import MontyCollection
from montydb.cursor import MontyCursor

from surfflows.settings import SurfflowsSettings, get_settings, redact_uri

if TYPE_CHECKING:
    from jobflow import JobStore
    from maggma.core import Store

STORE_NAMES = (
    "outputs",
    "outputs_data",
    "references",
    "splits",
    "surface_errors",
    "benchmarks",
    "builder_state",
    "features",
    "selections",
)


#: The field(s) that identify a document of each store (what ``surfflows import`` upserts by).
STORE_KEYS: dict[str, tuple[str, ...]] = {
    "outputs": ("uuid", "index"),
    "outputs_data": ("blob_uuid",),
    "references": ("key",),
    "splits": ("split_id",),
    "surface_errors": ("error_id",),
    "benchmarks": ("benchmark_id",),
    "builder_state": ("state_id",),
    "features": ("feature_id",),
    "selections": ("selection_id",),
}


def _check_store_name(name: str) -> None:
    if name not in STORE_NAMES:
        raise ValueError(f"unknown store {name!r}; known stores: {', '.join(STORE_NAMES)}")


def get_store(name: str, settings: SurfflowsSettings | None = None) -> Store:
    """Return the (unconnected) maggma store for one named collection.

    Parameters
    ----------
    name
        Collection name, one of :data:`STORE_NAMES`.
    settings
        Settings to use; default: :func:`~surfflows.settings.get_settings`.

    Returns
    -------
    Store
        A MongoURIStore if a MongoDB URI is configured, else a MontyStore on disk.
    """
    _check_store_name(name)
    # maggma takes a second to import: not at the start of commands that open no store
    from maggma.stores import MongoURIStore, MontyStore

    settings = settings or get_settings()
    if settings.mongodb_uri:
        return MongoURIStore(
            uri=settings.mongodb_uri, collection_name=name, database=settings.database
        )
    # MontyDB needs the directory before the first write.
    settings.db_dir.mkdir(parents=True, exist_ok=True)
    storage = embedded_storage(settings.db_dir) or settings.db_storage
    return MontyStore(
        collection_name=name,
        database_path=str(settings.db_dir),
        database_name=settings.database,
        storage=storage,
        storage_kwargs=MONTY_STORAGE_OPTIONS | STORAGE_OPTIONS.get(storage, {}),
    )


#: montydb options of every embedded database: pymongo's BSON, MongoDB 4.0 semantics
#: (maggma's MontyStore defaults).
MONTY_STORAGE_OPTIONS = {"use_bson": True, "mongo_version": "4.0"}

#: Per storage engine: LMDB maps the file up to ``map_size`` bytes (montydb's default, 10 MiB,
#: holds about 5,000 error documents; the map is sparse, the file only as large as its data).
STORAGE_OPTIONS = {"lightning": {"map_size": 2**40}}

#: The file montydb writes into a database folder, naming its storage engine.
STORAGE_CONFIG = "monty.storage.cfg"


#: File name ending of a collection, per montydb storage engine.
COLLECTION_FILE_SUFFIX = {"sqlite": ".collection", "lightning": ".mdb", "flatfile": ".json"}


def collection_file(name: str, settings: SurfflowsSettings | None = None) -> Path:
    """The file of one collection of the embedded database."""
    settings = settings or get_settings()
    storage = embedded_storage(settings.db_dir) or settings.db_storage
    return settings.db_dir / settings.database / (name + COLLECTION_FILE_SUFFIX[storage])


def embedded_storage(db_dir: Path) -> str | None:
    """The montydb storage engine of the database in ``db_dir``; None if there is none yet.

    montydb records it in ``monty.storage.cfg`` (one section named after the engine); an
    existing database is opened with its own engine whatever ``db_storage`` says.
    """
    config = Path(db_dir) / STORAGE_CONFIG
    if not config.is_file():
        return None
    parser = configparser.ConfigParser()
    parser.read(config)
    sections = parser.sections()
    return sections[0] if sections else None


def query_collection(
    name: str, criteria: dict[str, Any], settings: SurfflowsSettings | None = None
) -> list[dict]:
    """Documents of one named collection matching ``criteria``, for commands that only read.

    On the embedded database montydb's own client reads them, without importing maggma
    (whose ``maggma.stores`` imports boto3, paramiko and gridfs: a second, most of
    ``surfflows results`` at 100k slab results), and without writing its storage
    configuration as a MontyStore's ``connect`` does; on MongoDB a maggma store reads them.
    """
    settings = settings or get_settings()
    _check_store_name(name)
    if settings.mongodb_uri:
        with get_store(name, settings) as store:
            return list(store.query(criteria))
    if embedded_storage(settings.db_dir) is None:  # no database here yet
        return []
    from montydb import MontyClient

    client = MontyClient(str(settings.db_dir))  # with the storage its configuration names
    try:
        return list(client[settings.database][name].find(criteria))
    finally:
        client.close()


def get_job_store(settings: SurfflowsSettings | None = None) -> JobStore:
    """Return the jobflow JobStore: docs in ``outputs``, large data in ``outputs_data``.

    The ``data`` additional store is what atomate2-style jobs expect for structures and
    trajectories; surfflows puts relaxed structures and checkpoint bytes there.
    """
    from jobflow import JobStore  # 1 s to import: not at the start of every command

    return JobStore(
        docs_store=get_store("outputs", settings),
        additional_stores={"data": get_store("outputs_data", settings)},
    )


def ensure_indexes(store: Store, keys: tuple[str, ...], unique: bool = False) -> None:
    """Create indexes where the backend supports them (MontyDB does not; it is skipped).

    With ``unique`` the server refuses a second document with the same value (MongoDB);
    on MontyDB the writer lock keeps writers from racing instead.
    """
    for key in keys:
        try:
            store.ensure_index(key, unique=unique)
        except NotImplementedError:
            return


def is_embedded(store: Store) -> bool:
    """A MontyStore: no indexes, every query reads and decodes the whole collection."""
    return isinstance(getattr(store, "_collection", None), MontyCollection)


def source_marks(store: Store, stamp: str) -> list:
    """[number of documents stamped, largest ``stamp``] of a store: one sorted query and
    one count, both answered by an index on MongoDB (``ensure_indexes`` on ``stamp``)."""
    newest = store.query_one({stamp: {"$exists": True}}, properties=[stamp], sort={stamp: -1})
    newest = newest and _field(newest, stamp.split("."))
    return [store.count({stamp: {"$lte": newest}}) if newest is not None else 0, newest]


def unchanged_since(store: Store, stamp: str, marks: list) -> bool:
    """The store holds as many documents stamped up to the newest stamp of
    :func:`source_marks` as it counted, and none stamped later: two counts, answered by an
    index on MongoDB (on mongomock a third of the cost of the sorted query)."""
    count, newest = marks
    if newest is None:
        return store.count({stamp: {"$exists": True}}) == 0
    return (
        store.count({stamp: {"$lte": newest}}) == count
        and store.count({stamp: {"$gt": newest}}) == 0
    )


def insert_new_documents(store: Store, docs: list[dict], key: str, sanitize: bool = True) -> None:
    """Insert documents whose keys the store does not hold, in one bulk write.

    maggma's public write, :meth:`~maggma.core.Store.update`, upserts; on a MontyStore it
    replaces one document per collection scan and sqlite commit: writing the 734 documents
    of ``jarvis_surfaces`` took 104 s that way and 0.6 s as one ``insert_many`` (measured
    on 2 shared cores). maggma has no public bulk insert, so this is the one place
    surfflows reaches a store's underlying collection (``_collection``, the pymongo,
    mongomock or montydb collection of maggma's Mongo-like stores); other stores get
    ``update``.

    Parameters
    ----------
    store
        Connected store. The caller removes any stored document with one of these keys
        first (an insert does not replace).
    docs
        Documents to write (not modified).
    key
        Their unique field (what a store without a collection upserts by).
    sanitize
        Pass each document through monty's ``jsanitize``, as ``update`` does. False for
        documents that are already plain (``model_dump`` of a pydantic document): it walks
        every value, 12 s for the 78,000 error documents of a build.
    """
    if not docs:
        return
    collection = getattr(store, "_collection", None)
    if collection is None:
        store.update(docs, key=key)
        return
    # Sanitised as update does. Unordered: montydb passes ``ordered`` on to its storage as
    # ``check_keys``, and keys holding a "." (reasons such as "flagged: ... (2.5%)" counted
    # per reason) are refused by its checked insert though written by its replace_one
    # (maggma's update), as MongoDB 5+ writes them.
    from monty.json import jsanitize

    docs = [jsanitize(doc, allow_bson=True) if sanitize else dict(doc) for doc in docs]
    if isinstance(collection, MontyCollection) and _sqlite_collection(collection) is not None:
        _sqlite_insert(collection, docs)
        return
    collection.insert_many(docs, ordered=False)


def _sqlite_collection(collection: MontyCollection) -> Any:
    """montydb's sqlite storage object of a collection (how its storage delegates to one),
    or None on another engine."""
    target = collection._storage
    if type(target).__name__ != "SQLiteStorage":
        return None
    for part in collection._components:
        target = target.contractor_cls(target, part)
    return target


def _sqlite_insert(collection: MontyCollection, docs: list[dict]) -> None:
    """Insert into a montydb sqlite collection in one transaction, as montydb does, without
    its duplicate check: montydb 2.5 tests each new ``_id`` against a list of every stored
    key (quadratic: minutes for 100,000 documents, and it compares ids with table rows, so
    it never finds one); a repeated ``_id`` still fails on the table's primary key."""
    from montydb.types import bson  # the BSON module montydb was started with

    target = _sqlite_collection(collection)
    if not target._database.collection_exists(target._name):
        target._database.collection_create(target._name)
    rows = []
    for doc in docs:
        doc.setdefault("_id", bson.ObjectId())
        rows.append((bson.id_encode(doc["_id"]), target._encode_doc(doc, False)))
    target._conn.write_many(target._col_path, rows, target.wconcern)


def read_documents(
    store: Store, criteria: dict[str, Any], properties: list[str] | None = None
) -> Iterator[dict]:
    """``store.query(criteria, properties)``, read in one pass that montydb makes 3x faster.

    montydb matches criteria and projections with its field walker, about 100 µs per
    document (a projected read of 30,000 error documents took 3 s, a plain read of them
    1 s): on a MontyStore, criteria of equalities and ``$in`` on scalar (possibly dotted)
    fields are matched here on the decoded documents, and the projection made here. Other
    criteria and other stores go to ``store.query``.

    Parameters
    ----------
    store
        Connected store.
    criteria
        ``{field: value}`` or ``{field: {"$in": [values]}}`` on fields holding scalars.
    properties
        Fields to return (dotted: nested), or None for whole documents.
    """
    collection = getattr(store, "_collection", None)
    tests = _scalar_tests(criteria)
    if not isinstance(collection, MontyCollection) or tests is None:
        yield from store.query(criteria, properties=properties)
        return
    paths = None if properties is None else [prop.split(".") for prop in properties]
    for doc in collection._storage.query(MontyCursor(collection), 0):
        if all(test(_field(doc, path)) for path, test in tests):
            yield doc if paths is None else _projected(doc, paths)


def _scalar_tests(criteria: dict[str, Any]) -> list | None:
    """(path, test) per criterion, or None where one is not an equality or ``$in``."""
    tests = []
    for path, condition in criteria.items():
        if path.startswith("$"):
            return None
        if isinstance(condition, dict):
            if set(condition) != {"$in"}:
                return None
            values = set(condition["$in"])
            tests.append((path.split("."), values.__contains__))
        elif isinstance(condition, list):
            return None
        else:
            tests.append((path.split("."), lambda value, wanted=condition: value == wanted))
    return tests


_MISSING = object()


def _field(doc: dict, path: list[str]) -> Any:
    for part in path:
        if not isinstance(doc, dict) or part not in doc:
            return _MISSING
        doc = doc[part]
    return doc


def _projected(doc: dict, paths: list[list[str]]) -> dict:
    out: dict[str, Any] = {"_id": doc.get("_id")}
    for path in paths:
        if len(path) == 1:
            if path[0] in doc:
                out[path[0]] = doc[path[0]]
            continue
        value = _field(doc, path)
        if value is _MISSING:
            continue
        target = out
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value
    return out


def replace_documents(store: Store, docs: list[dict], key: str) -> None:
    """Replace (or insert) documents by their unique ``key``: one removal, one bulk insert.

    Not ``store.update``: on a MontyStore it reads the collection once per document. A
    crash between removal and insert leaves the documents missing, never doubled.
    """
    remove_by_key(store, key, [doc[key] for doc in docs])
    insert_new_documents(store, docs, key=key)


def import_documents(store: Store, docs: list[dict], keys: tuple[str, ...]) -> int:
    """Write documents, replacing stored ones with the same ``keys``: an idempotent import.

    One read of the stored keys, one removal of the documents replaced, one bulk insert (each
    document keeps its ``_id``). Returns the number of stored documents replaced.
    """
    wanted = {tuple(doc[k] for k in keys) for doc in docs}
    incoming_ids = {doc["_id"] for doc in docs if "_id" in doc}
    replaced, remove = 0, set()
    for doc in read_documents(store, {}, list(keys)):
        if tuple(_field(doc, k.split(".")) for k in keys) in wanted:
            replaced += 1
            remove.add(doc["_id"])
        elif doc["_id"] in incoming_ids:  # another document under the same _id
            remove.add(doc["_id"])
    remove_by_key(store, "_id", remove)
    insert_new_documents(store, docs, key="_id")
    return replaced


def remove_by_key(store: Store, key: str, values: Iterable[str]) -> None:
    """Remove the documents whose ``key`` is one of ``values``, in one pass.

    Parameters
    ----------
    store
        Connected store.
    key
        A field holding one string per document (the store's key).
    values
        Values of ``key`` to remove.
    """
    wanted = sorted(set(values))
    if wanted:
        remove_prepared(store, prepare_removal(store, {key: [{key: {"$in": wanted}}]}).values())


def prepare_removal(
    store: Store, criteria: dict[Hashable, list[dict[str, Any]]]
) -> dict[Hashable, Any]:
    """What :func:`remove_prepared` removes for each of the caller's keys, prepared at once.

    montydb reads the whole collection for any query and matches ``$in`` by comparing every
    listed value with every document (removing 300 of 30,000 documents took 72 s, measured
    on 2 shared cores): on a MontyStore the ``_id`` of the documents matching each key's
    criteria are found here in one read of the collection for all keys. Other stores get
    the criteria back (``$or``), for their server to match (with its indexes) at removal.

    Parameters
    ----------
    store
        Connected store.
    criteria
        Caller's key (e.g. a builder's group) -> alternatives, each of equalities and
        ``$in`` on scalar fields; a document matching one alternative is removed.
    """
    criteria = {key: alts for key, alts in criteria.items() if alts}
    collection = getattr(store, "_collection", None)
    if not isinstance(collection, MontyCollection):
        return {key: {"$or": alts} for key, alts in criteria.items()}
    # fields of an alternative -> their values -> the caller's key: one lookup per document
    # and set of fields, however many alternatives
    index: dict[tuple[str, ...], dict[tuple, Hashable]] = defaultdict(dict)
    for key, alts in criteria.items():
        for alt in alts:
            fields = tuple(sorted(alt))
            choices = []
            for field in fields:
                condition = alt[field]
                is_in = isinstance(condition, dict)
                if field.startswith("$") or (is_in and set(condition) != {"$in"}):
                    raise ValueError(f"prepare_removal matches equalities and $in only: {alt}")
                choices.append(condition["$in"] if is_in else [condition])
            for values in itertools.product(*choices):
                index[fields].setdefault(values, key)
    paths = {fields: [field.split(".") for field in fields] for fields in index}
    ids: dict[Hashable, list[Any]] = {key: [] for key in criteria}
    if index:
        for doc in collection._storage.query(MontyCursor(collection), 0):
            for fields, keys in index.items():
                try:
                    key = keys.get(tuple(_field(doc, path) for path in paths[fields]), _MISSING)
                except TypeError:  # a list or document where the criteria name a scalar
                    continue
                if key is not _MISSING:
                    ids[key].append(doc["_id"])
                    break
    return ids


def remove_prepared(store: Store, prepared: Iterable[Any]) -> int:
    """Remove what :func:`prepare_removal` prepared (some of its values); the number removed.

    On a MontyStore by ``_id`` through montydb's storage layer, the step its own
    ``delete_many`` ends with; on other stores by the criteria.
    """
    prepared = list(prepared)
    collection = getattr(store, "_collection", None)
    if isinstance(collection, MontyCollection):
        ids = [i for part in prepared for i in part]
        if ids:
            collection._storage.delete_many(collection, ids)
        return len(ids)
    if not prepared:
        return 0
    criteria = {"$or": [alt for part in prepared for alt in part["$or"]]}
    if collection is not None:  # pymongo or mongomock: the count comes with the removal
        return collection.delete_many(criteria).deleted_count
    n = store.count(criteria)
    store.remove_docs(criteria)
    return n


@contextmanager
def using_store(store: Store | None, name: str) -> Iterator[Store]:
    """Connect a store the caller passed (and leave it open), or open and close a named one.

    Parameters
    ----------
    store
        The caller's store, or None.
    name
        Name of the store of the current settings to use when ``store`` is None.
    """
    if store is not None:
        store.connect()  # a no-op for a connected store
        yield store
        return
    with get_store(name) as own:
        yield own


#: Seconds a MongoDB server may take to answer the ping made before any work.
PING_TIMEOUT_S = 5.0


class DatabaseBusyError(RuntimeError):
    """Another process holds the embedded database's writer lock."""


class DatabaseCorruptError(RuntimeError):
    """A file of the embedded database cannot be read."""


#: Written into the database folder by a failed ``surfflows db check``; while it is there,
#: no command writes into the database (removed by a check that passes).
CHECK_FAILED_FILE = "CHECK_FAILED"


def salvage_advice(db_dir: Path) -> str:
    """How to get the data out of a damaged embedded database (for error messages)."""
    return (
        f"salvage: `surfflows export DIR` writes every document that can still be read, then "
        f"restore {db_dir} from a backup (or move it away and `surfflows import DIR`), "
        "and run `surfflows db check`"
    )


def check_store(name: str, settings: SurfflowsSettings | None = None) -> int:
    """Read every document of one store; the number read.

    Raises
    ------
    DatabaseCorruptError
        A document or the store's file cannot be read; the message names the store, its
        file (embedded database), the documents read before and how to salvage.
    """
    settings = settings or get_settings()
    n = 0
    try:
        with get_store(name, settings) as store:
            for _ in read_documents(store, {}):
                n += 1
    except Exception as exc:  # sqlite3, lmdb, bson and json errors alike
        if settings.mongodb_uri:
            raise
        raise DatabaseCorruptError(
            f"the embedded database {settings.db_dir} cannot be read: collection {name!r} "
            f"(file {collection_file(name, settings)}) fails after {n} documents "
            f"({type(exc).__name__}: {exc}); {salvage_advice(settings.db_dir)}"
        ) from exc
    return n


def damaged_collections(settings: SurfflowsSettings | None = None) -> list[Path]:
    """The embedded database's sqlite collection files whose pages fail sqlite's
    ``quick_check`` (what a ``database disk image is malformed`` error is about)."""
    import sqlite3

    settings = settings or get_settings()
    folder = settings.db_dir / settings.database
    damaged = []
    for path in sorted(folder.glob("*" + COLLECTION_FILE_SUFFIX["sqlite"])):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                ok = conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
        except sqlite3.DatabaseError:
            ok = False
        if not ok:
            damaged.append(path)
    return damaged


def explain_storage_error(exc: BaseException) -> str | None:
    """A message for an sqlite error of the embedded database: a full disk, or a damaged
    file (named, with how to salvage; writes are then refused until a check passes).
    None for any other exception."""
    import sqlite3

    settings = get_settings()
    if settings.mongodb_uri or not isinstance(exc, sqlite3.DatabaseError):
        return None
    if "full" in str(exc):  # SQLITE_FULL: the write was rolled back
        return (
            f"the disk holding the embedded database {settings.db_dir} is full ({exc}): the "
            "write in progress was rolled back and what was stored before stays; free some "
            "space and run the command again"
        )
    files = damaged_collections(settings)
    if not files:
        return None
    where = ", ".join(str(f) for f in files)
    # the writer lock refuses to write until `surfflows db check` passes
    (settings.db_dir / CHECK_FAILED_FILE).write_text(f"damaged: {where}\n")
    return (
        f"the embedded database {settings.db_dir} is damaged ({exc}): {where}; nothing more is "
        f"written into it until `surfflows db check` passes; {salvage_advice(settings.db_dir)}"
    )


class DatabaseUnreachableError(ConnectionError):
    """The configured MongoDB server did not answer in time."""


def ping_database(settings: SurfflowsSettings | None = None, timeout_s: float = PING_TIMEOUT_S):
    """Fail fast, naming the host, if the configured MongoDB server does not answer.

    Parameters
    ----------
    settings
        Settings to use; default: :func:`~surfflows.settings.get_settings`.
    timeout_s
        Server selection timeout of the ping, seconds.

    Raises
    ------
    DatabaseUnreachableError
        No answer within ``timeout_s``; the message names the host (password redacted).
    """
    settings = settings or get_settings()
    if not settings.mongodb_uri:
        return
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    where = redact_uri(settings.mongodb_uri)
    try:
        with MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=int(timeout_s * 1000)) as c:
            c.admin.command("ping")
    except PyMongoError as exc:
        reason = str(exc).split(",")[0].split(" (configured timeouts")[0]
        raise DatabaseUnreachableError(
            f"MongoDB at {where} did not answer within {timeout_s:g} s ({reason}); "
            "check the host and that the server runs, or unset SURFFLOWS_MONGODB_URI to use "
            "the embedded database"
        ) from None


@contextmanager
def writer_lock(settings: SurfflowsSettings | None = None) -> Iterator[None]:
    """Hold the embedded database's writer lock (a no-op on MongoDB).

    MontyDB (sqlite files) loses or duplicates documents when two processes write at
    once, so one process writes at a time: a second one is refused at once with a
    message naming the holder, and nothing is written.

    Raises
    ------
    DatabaseBusyError
        Another process holds the lock.
    """
    settings = settings or get_settings()
    if settings.mongodb_uri:
        yield
        return
    settings.db_dir.mkdir(parents=True, exist_ok=True)
    failed = settings.db_dir / CHECK_FAILED_FILE
    if failed.is_file():
        raise DatabaseCorruptError(
            f"the embedded database {settings.db_dir} failed `surfflows db check` "
            f"({failed.read_text().strip()}): nothing is written into it; "
            f"{salvage_advice(settings.db_dir)}"
        )
    lock = FileLock(settings.db_dir / "writer.lock")
    holder = settings.db_dir / "writer.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else "another process"
        raise DatabaseBusyError(
            f"the embedded database {settings.db_dir} is in use by {who}: it takes one "
            "writer at a time; wait for that one to finish, or use MongoDB "
            "(SURFFLOWS_MONGODB_URI) for several writers"
        ) from None
    try:
        holder.write_text(f"pid {os.getpid()} ({Path(sys.argv[0]).name} {' '.join(sys.argv[1:])})")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()
