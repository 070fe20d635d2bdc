"""Shared fixtures: every test gets its own embedded database."""

from __future__ import annotations

import os

import pytest
from pymatgen.core import Lattice, Structure

MONGODB_URI = os.environ.get("SURFFLOWS_MONGODB_URI")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``mongodb`` run only when SURFFLOWS_MONGODB_URI names a server."""
    if MONGODB_URI:
        return
    skip = pytest.mark.skip(reason="set SURFFLOWS_MONGODB_URI to run against MongoDB")
    for item in items:
        if "mongodb" in item.keywords:
            item.add_marker(skip)


if os.environ.get("SURFFLOWS_TORCH_THREADS"):
    # what the CLI does with settings.torch_threads, for flows the tests run in-process
    import torch

    torch.set_num_threads(int(os.environ["SURFFLOWS_TORCH_THREADS"]))


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Point surfflows at a fresh MontyDB under tmp_path."""
    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(tmp_path / "db"))
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(tmp_path / "no_settings.yaml"))
    if not MONGODB_URI:
        monkeypatch.delenv("SURFFLOWS_MONGODB_URI", raising=False)
    return tmp_path


@pytest.fixture
def cu_bulk() -> Structure:
    """Primitive fcc Cu at the experimental lattice constant."""
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]]
    ).get_primitive_structure()


@pytest.fixture
def rutile_bulk() -> Structure:
    """Rutile TiO2 at experimental lattice parameters."""
    return Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3048, 0.3048, 0]]
    )
