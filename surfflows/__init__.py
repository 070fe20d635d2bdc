"""surfflows: database-backed surface-energy campaigns with CHGNet.

Zero-shot benchmarks against DFT surface references, fine-tuning of the last
blocks of CHGNet, DIRECT data selection and surface thermodynamics, built on
jobflow (workflows), maggma (stores and builders) and pymatgen (slabs, Wulff).
"""

from __future__ import annotations

__version__ = "0.1.0"
