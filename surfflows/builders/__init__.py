"""maggma builders: thin document movers over :mod:`surfflows.core.benchmark`.

Stores are passed in. Run them with ``surfflows build`` or ``mrun configs/builders.py``:
both build them with :func:`~surfflows.builders.run.campaign_builders` and run them with
maggma's serial runner (:func:`~surfflows.builders.run.run_builders`). Both are
incremental: a rerun with nothing new processes nothing, and a new model's results are
processed alone.

The names below are imported when first used (they import maggma): ``surfflows build``
reads :mod:`surfflows.builders.last_build` first and, when nothing changed, stops there.
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it.
_EXPORTS = {
    "BenchmarkBuilder": "surfflows.builders.benchmarks",
    "SurfaceEnergyErrorBuilder": "surfflows.builders.errors",
    "campaign_builders": "surfflows.builders.run",
    "configured_builders": "surfflows.builders.run",
    "run_builders": "surfflows.builders.run",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
