"""maggma builders: thin document movers over :mod:`surfflows.core.benchmark`.

Stores are passed in. Run them with ``surfflows build`` or ``mrun configs/builders.py``:
both build them with :func:`~surfflows.builders.run.campaign_builders` and run them with
maggma's serial runner (:func:`~surfflows.builders.run.run_builders`). Both are
incremental: a rerun with nothing new processes nothing, and a new model's results are
processed alone.
"""

from surfflows.builders.benchmarks import BenchmarkBuilder
from surfflows.builders.errors import SurfaceEnergyErrorBuilder
from surfflows.builders.run import campaign_builders, configured_builders, run_builders

__all__ = [
    "BenchmarkBuilder",
    "SurfaceEnergyErrorBuilder",
    "campaign_builders",
    "configured_builders",
    "run_builders",
]
