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
features, selections
    CHGNet structure features of candidate training structures, and training-set
    selections (DIRECT or random) made with ``surfflows select``.

Only the CLI, builders, io and reports open these stores; jobs get their data as inputs.

Notes
-----
MontyDB is not safe for several processes writing at once: run one campaign process
per embedded database, or use MongoDB.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from jobflow import JobStore
from maggma.core import Store
from maggma.stores import MongoURIStore, MontyStore

from surfflows.settings import SurfflowsSettings, get_settings

STORE_NAMES = (
    "outputs",
    "outputs_data",
    "references",
    "splits",
    "surface_errors",
    "benchmarks",
    "features",
    "selections",
)


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
    if name not in STORE_NAMES:
        raise ValueError(f"unknown store {name!r}; known stores: {', '.join(STORE_NAMES)}")
    settings = settings or get_settings()
    if settings.mongodb_uri:
        return MongoURIStore(
            uri=settings.mongodb_uri, collection_name=name, database=settings.database
        )
    # MontyDB needs the directory before the first write.
    settings.db_dir.mkdir(parents=True, exist_ok=True)
    return MontyStore(
        collection_name=name, database_path=str(settings.db_dir), database_name=settings.database
    )


def get_job_store(settings: SurfflowsSettings | None = None) -> JobStore:
    """Return the jobflow JobStore: docs in ``outputs``, large data in ``outputs_data``.

    The ``data`` additional store is what atomate2-style jobs expect for structures and
    trajectories; surfflows puts relaxed structures and checkpoint bytes there.
    """
    return JobStore(
        docs_store=get_store("outputs", settings),
        additional_stores={"data": get_store("outputs_data", settings)},
    )


def ensure_indexes(store: Store, keys: tuple[str, ...]) -> None:
    """Create indexes where the backend supports them (MontyDB does not; it is skipped)."""
    for key in keys:
        try:
            store.ensure_index(key)
        except NotImplementedError:
            return


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
