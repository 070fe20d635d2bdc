"""Surface-energy arithmetic against pymatgen and hand-worked cases."""

from __future__ import annotations

import pytest
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.core import Composition, Structure
from pymatgen.core.surface import SlabGenerator
from pymatgen.entries.computed_entries import ComputedStructureEntry

from surfflows.core.thermo import (
    EV_PER_A2_TO_J_PER_M2,
    bulk_units_and_excess,
    slab_area,
    surface_energy,
)


def test_matches_pymatgen_slab_entry(cu_bulk):
    conv = cu_bulk.to_conventional()
    slab = SlabGenerator(conv, (1, 1, 1), 8, 10, center_slab=True).get_slabs()[0]
    e_bulk_per_atom = -4.1
    e_slab = len(slab) * e_bulk_per_atom + 1.7  # any energy above the bulk
    bulk_entry = ComputedStructureEntry(conv, e_bulk_per_atom * len(conv))
    entry = SlabEntry(slab, e_slab, (1, 1, 1))
    expected = entry.surface_energy(bulk_entry)  # eV/Å²
    ours = surface_energy(
        e_slab, slab.composition, bulk_entry.energy, conv.composition, slab_area(slab.lattice)
    )
    assert ours == pytest.approx(float(expected), rel=1e-10)
    assert ours == pytest.approx(1.7 / (2 * slab.surface_area))


def test_unit_conversion():
    assert EV_PER_A2_TO_J_PER_M2 == pytest.approx(16.0218, abs=1e-4)


def test_non_stoichiometric_needs_mu():
    with pytest.raises(ValueError, match="not stoichiometric"):
        surface_energy(-100.0, Composition("Ti4O10"), -26.0, Composition("TiO2"), 20.0)


def test_gamma_of_oxygen_chemical_potential():
    # Ti4O10 = 4 TiO2 + 2 O: gamma = (E - 4 E_TiO2 - 2 mu_O) / 2A
    e_slab, e_bulk, mu_o, area = -120.0, -26.9, -4.93, 20.0
    gamma = surface_energy(
        e_slab, Composition("Ti4O10"), e_bulk, Composition("TiO2"), area, mu={"O": mu_o}
    )
    assert gamma == pytest.approx((e_slab - 4 * e_bulk - 2 * mu_o) / (2 * area))
    # an O-poor slab balances against the same reservoir with a deficit
    n_units, excess = bulk_units_and_excess(Composition("Ti4O6"), Composition("TiO2"), ["O"])
    assert n_units == 4 and excess == {"O": -2.0}


def test_reservoir_that_cannot_balance():
    with pytest.raises(ValueError, match="cannot be balanced"):
        bulk_units_and_excess(Composition("Sr3Ti2O7"), Composition("SrTiO3"), ["O"])


def test_slab_area_matches_pymatgen(rutile_bulk):
    slab = SlabGenerator(rutile_bulk, (1, 1, 0), 8, 10).get_slabs()[0]
    assert slab_area(slab.lattice) == pytest.approx(slab.surface_area)
    assert isinstance(Structure.from_sites(slab), Structure)
