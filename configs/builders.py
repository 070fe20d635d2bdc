"""The surfflows builders for maggma's runner, on the database surfflows is configured for
(SURFFLOWS_DB_DIR or SURFFLOWS_MONGODB_URI):   mrun configs/builders.py

The same builders, in the same order, as ``surfflows build``: errors first, then the
statistics built from them.
"""

from surfflows.builders.run import configured_builders

__builders__ = configured_builders()
