"""Pure physics and helpers: units, surface energies, gamma(delta mu), slabs, splits, statistics.

Nothing here imports torch or opens a database.
"""
