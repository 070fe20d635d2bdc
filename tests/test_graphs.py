"""surfflows.engine.graphs.crystal_graph against chgnet's CrystalGraphConverter, array for array."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator

from surfflows.engine.graphs import GraphMismatchError, _undirected_edges, crystal_graph
from surfflows.engine.models import load_model
from surfflows.schemas.models import ModelSpec

FIELDS = (
    "atomic_number",
    "atom_frac_coord",
    "atom_graph",
    "neighbor_image",
    "directed2undirected",
    "undirected2directed",
    "bond_graph",
    "lattice",
)


@pytest.fixture(scope="module")
def chgnet():
    return load_model(ModelSpec())


def _structures() -> dict[str, Structure]:
    rutile = Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3048, 0.3048, 0]]
    )
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])
    slab = SlabGenerator(rutile, (1, 1, 0), 6, 8, center_slab=True).get_slabs()[0]
    rattled = slab.copy()
    rattled.perturb(0.1, min_distance=0.05)
    return {
        "rutile bulk": rutile,
        # one atom: every edge joins the atom to a periodic image of itself
        "Cu primitive": cu.get_primitive_structure(),
        "TiO2(110) slab, rattled": rattled,
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_structures()))
def test_same_graph_as_chgnet(chgnet, name):
    structure = _structures()[name]
    expected = chgnet.graph_converter(structure)
    graph = crystal_graph(chgnet.graph_converter, structure)
    for field in FIELDS:
        assert torch.equal(getattr(graph, field), getattr(expected, field)), field
    assert graph.atom_frac_coord.requires_grad and graph.lattice.requires_grad
    assert len(graph.bond_graph) > 0
    with torch.no_grad():
        energies = chgnet([expected, graph], task="e")["e"]
    assert energies[0] == energies[1]


def test_unpaired_edge_is_reported():
    center, neighbor = np.array([0, 1, 0]), np.array([1, 0, 1])
    image = np.array([[0, 0, 0], [0, 0, 0], [1, 0, 0]])
    with pytest.raises(GraphMismatchError, match="reverse"):
        _undirected_edges(center, neighbor, image)


@pytest.mark.slow
def test_isolated_atom_is_left_to_the_converter(chgnet):
    converter = type(chgnet.graph_converter)(algorithm="fast", on_isolated_atoms="error")
    lone = Structure(Lattice.cubic(20.0), ["Cu", "Cu"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueError, match="isolated atom"):
        crystal_graph(converter, lone)
