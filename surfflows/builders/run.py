"""The one way the surfflows builders run: maggma's serial runner, on stores passed in.

``surfflows build``, ``mrun configs/builders.py`` and the tests all build the builders with
:func:`campaign_builders` and run each with maggma's :func:`maggma.cli.serial.serial` (the
runner ``mrun`` uses). :func:`run_builders` adds only the number of groups each builder
processed: the ``total`` its ``get_items`` sets (maggma's runners read it for their
progress bars).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from maggma.cli.serial import serial
from maggma.core import Builder, Store
from maggma.stores import MemoryStore

from surfflows.builders.benchmarks import BenchmarkBuilder
from surfflows.builders.errors import SurfaceEnergyErrorBuilder

#: Stores the builders read and write, by name (see :mod:`surfflows.stores`).
BUILDER_STORES = (
    "outputs",
    "references",
    "splits",
    "surface_errors",
    "benchmarks",
    "builder_state",
)


def campaign_builders(stores: Mapping[str, Store]) -> list[Builder]:
    """The builders of a campaign, in the order they must run.

    Parameters
    ----------
    stores
        Store name -> store, for every name of :data:`BUILDER_STORES` (``outputs`` is the
        JobStore's docs store). Without ``builder_state`` (stores of one process, e.g.
        in-process MemoryStores) the builders share a new MemoryStore: a build in another
        process then starts from nothing.

    Returns
    -------
    list of Builder
        SurfaceEnergyErrorBuilder, then BenchmarkBuilder (built from its errors).
    """
    missing = [name for name in BUILDER_STORES[:-1] if name not in stores]
    if missing:
        raise ValueError(f"the builders need the stores {', '.join(missing)}")
    state = stores.get("builder_state") or MemoryStore("builder_state")
    return [
        SurfaceEnergyErrorBuilder(
            outputs=stores["outputs"],
            references=stores["references"],
            surface_errors=stores["surface_errors"],
            splits=stores["splits"],
            state=state,
        ),
        BenchmarkBuilder(
            surface_errors=stores["surface_errors"],
            benchmarks=stores["benchmarks"],
            outputs=stores["outputs"],
            state=state,
        ),
    ]


def configured_builders() -> list[Builder]:
    """:func:`campaign_builders` on the stores of the configured database (for ``mrun``)."""
    from surfflows.stores import get_store

    return campaign_builders({name: get_store(name) for name in BUILDER_STORES})


def run_builders(
    builders: Sequence[Builder], progress: bool = False, seconds: dict[str, float] | None = None
) -> dict[str, int]:
    """Run each builder with maggma's serial runner, in order.

    Parameters
    ----------
    builders
        Builders, e.g. from :func:`campaign_builders`.
    progress
        Show maggma's progress bars.
    seconds
        Filled with the wall seconds of each builder, if given.

    Returns
    -------
    dict
        Builder class name -> groups it processed (its ``total``; 0 on a rerun with nothing
        new).
    """
    counts: dict[str, int] = {}
    seconds = {} if seconds is None else seconds
    for builder in builders:
        start = time.perf_counter()
        serial(builder, no_bars=not progress)
        counts[type(builder).__name__] = builder.total
        seconds[type(builder).__name__] = time.perf_counter() - start
    return counts
