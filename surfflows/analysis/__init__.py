"""Analysis of stored results: pure functions that return documents.

:mod:`~surfflows.analysis.thermo` turns a surface-energy campaign into a
:class:`~surfflows.schemas.thermo.SurfaceThermoDoc` (gamma(delta mu_O) per termination,
stable terminations, Wulff shapes); :mod:`~surfflows.analysis.wulff` builds and compares
Wulff documents.
"""
