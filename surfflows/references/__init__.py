"""Readers that turn published DFT reference data into the canonical reference frames."""
