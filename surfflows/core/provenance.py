"""Versions of the software that made a result (read from package metadata, nothing imported)."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

#: Packages whose versions every output document records.
PACKAGES = ("surfflows", "chgnet", "torch", "pymatgen", "jobflow")


@functools.cache
def package_versions() -> dict[str, str | None]:
    """``{package: version}`` of :data:`PACKAGES` in this environment (None if absent)."""
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
