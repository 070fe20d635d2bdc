"""Slab generation: facets, terminations, stoichiometry, fixed layers, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from surfflows.core.slabs import SlabSettings, fixed_mask, generate_slabs, layer_heights


def test_cu_low_index_facets(cu_bulk):
    slabs = generate_slabs(cu_bulk, SlabSettings(max_index=1, min_slab_size=7, min_vacuum_size=10))
    assert sorted(s.miller_index for s in slabs) == [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
    for slab in slabs:
        assert slab.is_symmetric and slab.is_stoichiometric and not slab.excess
        assert slab.area == pytest.approx(slab.structure.lattice.volume / slab.structure.lattice.c)


def test_rutile_terminations_are_labelled(rutile_bulk):
    slabs = generate_slabs(rutile_bulk, SlabSettings(miller_indices=[(1, 1, 0)], min_slab_size=8))
    assert len(slabs) >= 2
    stoich = [s for s in slabs if s.is_stoichiometric]
    non_stoich = [s for s in slabs if not s.is_stoichiometric]
    assert stoich and non_stoich
    for slab in non_stoich:
        assert slab.excess and all(v > 0 for v in slab.excess.values())
    assert len({(s.shift, s.termination) for s in slabs}) == len(slabs)


def test_fixed_bottom_layers_and_in_plane_size(cu_bulk):
    settings = SlabSettings(
        miller_indices=[(1, 0, 0)], min_slab_size=8, n_fixed_layers=2, min_in_plane_size=5.0
    )
    (slab,) = generate_slabs(cu_bulk, settings)
    layers = layer_heights(slab.structure, 0.3)
    mask = fixed_mask(slab.structure)
    assert slab.n_fixed == mask.sum() > 0
    assert set(layers[mask]) == {0, 1}
    assert slab.structure.lattice.a >= 5.0 and slab.structure.lattice.b >= 5.0


def test_bad_input():
    with pytest.raises(ValidationError, match="does not define a plane"):
        SlabSettings(miller_indices=[(0, 0, 0)])
    with pytest.raises(ValidationError, match="Extra inputs"):
        SlabSettings(max_indx=2)
    empty = Structure(Lattice.cubic(3), [], [])
    with pytest.raises(ValueError, match="non-empty"):
        generate_slabs(empty)


def test_layer_heights_groups_within_tolerance():
    s = Structure(
        Lattice.cubic(20), ["Cu"] * 4, np.array([[0, 0, 1], [5, 5, 1.1], [0, 5, 3], [5, 0, 5]]) / 20
    )
    assert list(layer_heights(s, 0.3)) == [0, 0, 1, 2]
