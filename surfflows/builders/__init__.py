"""maggma builders: thin document movers over :mod:`surfflows.core.benchmark`.

Run them with ``surfflows build`` or ``mrun configs/builders.yaml``. Both are
incremental: a rerun with nothing new processes nothing, and a new model's results are
processed alone.
"""

from surfflows.builders.benchmarks import BenchmarkBuilder
from surfflows.builders.errors import SurfaceEnergyErrorBuilder

__all__ = ["BenchmarkBuilder", "SurfaceEnergyErrorBuilder"]
