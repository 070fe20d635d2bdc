"""The one way the surfflows builders run: maggma's serial runner, on stores passed in.

``surfflows build``, ``mrun configs/builders.py`` and the tests all build the builders with
:func:`campaign_builders` and run each with maggma's :func:`maggma.cli.serial.serial` (the
runner ``mrun`` uses). :func:`run_builders` adds only a count of the items each builder
processed, read from the ``UPDATE`` events serial logs for maggma's reporting.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from maggma.cli.serial import serial
from maggma.core import Builder, Store

from surfflows.builders.benchmarks import BenchmarkBuilder
from surfflows.builders.errors import SurfaceEnergyErrorBuilder

#: Stores the builders read and write, by name (see :mod:`surfflows.stores`).
BUILDER_STORES = ("outputs", "references", "splits", "surface_errors", "benchmarks")


def campaign_builders(stores: Mapping[str, Store]) -> list[Builder]:
    """The builders of a campaign, in the order they must run.

    Parameters
    ----------
    stores
        Store name -> store, for every name of :data:`BUILDER_STORES` (``outputs`` is the
        JobStore's docs store).

    Returns
    -------
    list of Builder
        SurfaceEnergyErrorBuilder, then BenchmarkBuilder (built from its errors).
    """
    missing = [name for name in BUILDER_STORES if name not in stores]
    if missing:
        raise ValueError(f"the builders need the stores {', '.join(missing)}")
    return [
        SurfaceEnergyErrorBuilder(
            outputs=stores["outputs"],
            references=stores["references"],
            surface_errors=stores["surface_errors"],
            splits=stores["splits"],
        ),
        BenchmarkBuilder(
            surface_errors=stores["surface_errors"],
            benchmarks=stores["benchmarks"],
            outputs=stores["outputs"],
        ),
    ]


def configured_builders() -> list[Builder]:
    """:func:`campaign_builders` on the stores of the configured database (for ``mrun``)."""
    from surfflows.stores import get_store

    return campaign_builders({name: get_store(name) for name in BUILDER_STORES})


class _ItemCounter(logging.Handler):
    """Sums the items of the ``UPDATE`` events maggma's serial runner logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.items = 0

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "maggma", {})
        if event.get("event") == "UPDATE":
            self.items += event["items"]


def run_builders(builders: Sequence[Builder], progress: bool = False) -> dict[str, int]:
    """Run each builder with maggma's serial runner, in order.

    Parameters
    ----------
    builders
        Builders, e.g. from :func:`campaign_builders`.
    progress
        Show maggma's progress bars.

    Returns
    -------
    dict
        Builder class name -> items it processed (0 on a rerun with nothing new).
    """
    logger = logging.getLogger("SerialProcessor")
    counts: dict[str, int] = {}
    for builder in builders:
        counter = _ItemCounter()
        level = logger.level
        logger.addHandler(counter)
        logger.setLevel(min(level or logging.INFO, logging.INFO))
        try:
            serial(builder, no_bars=not progress)
        finally:
            logger.removeHandler(counter)
            logger.setLevel(level)
        counts[type(builder).__name__] = counter.items
    return counts
