"""Batched relaxation engine against ASE's FIRE, with real (tiny) CHGNet runs.

Three small rattled slabs, Cu(111), Cu(100) and MgO(100), each with its bottom layer fixed
through ``selective_dynamics`` and an extra site property. Whole file: ~20 s on one core.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator

from surfflows.engine.models import ModelSpec
from surfflows.engine.relax import (
    RelaxResult,
    RelaxTimings,
    fixed_mask,
    relax_one,
    relax_structures,
)

pytestmark = pytest.mark.slow

MODEL = ModelSpec()
FMAX = 0.05


def _slab(bulk: Structure, miller: tuple[int, int, int], rattle: float, seed: int) -> Structure:
    """Thin slab of ``bulk``, rattled, bottom layer fixed, each site tagged with its index."""
    slab = SlabGenerator(
        bulk, miller, min_slab_size=5, min_vacuum_size=8, center_slab=True, primitive=True
    ).get_slabs()[0]
    rng = np.random.default_rng(seed)
    positions = slab.cart_coords + rng.normal(0.0, rattle, (len(slab), 3))
    bottom = positions[:, 2] < positions[:, 2].min() + 0.5
    return Structure(
        slab.lattice,
        slab.species,
        positions,
        coords_are_cartesian=True,
        site_properties={
            "selective_dynamics": [[not b] * 3 for b in bottom],
            "tag": list(range(len(slab))),
        },
    )


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny slabs gain nothing from threads, and one thread cannot stall on a busy core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def slabs() -> list[Structure]:
    """Cu(111) (3 atoms), Cu(100) (4 atoms) and MgO(100) (8 atoms)."""
    cu = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])
    mgo = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.212), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )
    return [
        _slab(cu, (1, 1, 1), rattle=0.05, seed=1),
        _slab(cu, (1, 0, 0), rattle=0.05, seed=2),
        _slab(mgo, (1, 0, 0), rattle=0.05, seed=3),
    ]


@pytest.fixture(scope="module")
def reference(slabs: list[Structure]) -> list[RelaxResult]:
    """ASE FIRE through the CHGNet calculator, one slab at a time."""
    return [relax_one(slab, MODEL, fmax=FMAX) for slab in slabs]


@pytest.fixture(scope="module")
def batched(slabs: list[Structure]) -> list[RelaxResult]:
    """The batched engine with fewer slots than slabs (a waiting slab takes a freed slot)."""
    return relax_structures(slabs, MODEL, fmax=FMAX, batch_size=2, progress=False)


def test_slabs_are_distinct_and_partly_fixed(slabs: list[Structure]) -> None:
    assert len({len(s) for s in slabs}) == len(slabs)
    for slab in slabs:
        assert 0 < fixed_mask(slab).sum() < len(slab)


def test_batched_matches_ase_fire(
    slabs: list[Structure], reference: list[RelaxResult], batched: list[RelaxResult]
) -> None:
    for slab, ref, res in zip(slabs, reference, batched, strict=True):
        assert ref.ok and res.ok, (ref.error, res.error)
        assert res.n_steps > 5  # the rattle makes the relaxation nontrivial
        assert abs(res.energy - ref.energy) / len(slab) < 1e-3  # eV/atom
        assert abs(res.initial_energy - ref.initial_energy) / len(slab) < 1e-4
        assert abs(res.n_steps - ref.n_steps) <= max(2, ref.n_steps // 10)
        assert len(res.energies) == res.n_steps + 1
        assert res.energies[0] == res.initial_energy and res.energies[-1] == res.energy
        assert res.max_force < FMAX
        assert res.energy < res.initial_energy


def test_results_in_input_order_with_input_site_properties(
    slabs: list[Structure], batched: list[RelaxResult]
) -> None:
    for slab, res in zip(slabs, batched, strict=True):
        assert res.structure is not slab
        assert res.structure.species == slab.species
        assert res.structure.site_properties == slab.site_properties
        assert np.allclose(res.structure.lattice.matrix, slab.lattice.matrix)


def test_fixed_atoms_do_not_move(slabs: list[Structure], batched: list[RelaxResult]) -> None:
    for slab, res in zip(slabs, batched, strict=True):
        fixed = fixed_mask(slab)
        moved = np.linalg.norm(res.structure.cart_coords - slab.cart_coords, axis=1)
        assert moved[fixed].max() < 1e-10  # pymatgen's Cartesian/fractional round trip
        assert moved[~fixed].max() > 1e-3


def test_step_limit_is_per_structure(slabs: list[Structure], batched: list[RelaxResult]) -> None:
    """With a step limit, the far-from-minimum slab stops unconverged, the other converges."""
    cu111 = slabs[0]
    shaken = Structure(  # ~40 steps to converge
        cu111.lattice,
        cu111.species,
        cu111.cart_coords + np.random.default_rng(7).normal(0.0, 0.2, (len(cu111), 3)),
        coords_are_cartesian=True,
    )
    relaxed = batched[1].structure
    positions = relaxed.cart_coords
    positions[np.argmax(positions[:, 2]), 0] += 0.05  # nudge the top atom: ~7 steps
    nudged = Structure(
        relaxed.lattice,
        relaxed.species,
        positions,
        coords_are_cartesian=True,
        site_properties=relaxed.site_properties,
    )
    timings = RelaxTimings()
    stopped, converged = relax_structures(
        [shaken, nudged], MODEL, fmax=FMAX, max_steps=15, progress=False, timings=timings
    )
    assert not stopped.converged and stopped.error is None
    assert stopped.n_steps == 15 and len(stopped.energies) == 16
    assert math.isfinite(stopped.energy) and stopped.max_force >= FMAX
    assert converged.ok and 0 < converged.n_steps < 15
    assert timings.n_evaluations == stopped.n_steps + 1 + converged.n_steps + 1
    assert timings.n_forward == stopped.n_steps + 1
    assert timings.forward > 0.0


def test_broken_structures_fail_alone(slabs: list[Structure], reference: list[RelaxResult]) -> None:
    """Each kind of broken input gets an error record; the good slab in its batch relaxes."""
    good = slabs[1]
    lattice, species, positions = good.lattice, good.species, good.cart_coords
    cartesian = {"coords_are_cartesian": True}
    on_top = Structure(  # two atoms at one point
        lattice, [*species, species[0]], np.vstack([positions, positions[:1]]), **cartesian
    )
    nan_position = Structure(
        lattice, species, np.vstack([positions[:-1], [np.nan] * 3]), **cartesian
    )
    beyond_pu = Structure(lattice, ["Am", *species[1:]], positions, **cartesian)  # forward raises
    results = relax_structures(
        [on_top, good, nan_position, beyond_pu], MODEL, fmax=FMAX, batch_size=4, progress=False
    )
    on_top_res, good_res, nan_res, beyond_res = results
    assert "0.00 Å apart" in on_top_res.error
    assert "non-finite atomic coordinates" in nan_res.error
    assert beyond_res.error is not None
    for res, structure in ((on_top_res, on_top), (nan_res, nan_position), (beyond_res, beyond_pu)):
        assert not res.converged and not res.ok and math.isnan(res.energy)
        assert res.structure is structure
    assert good_res.ok
    assert abs(good_res.energy - reference[1].energy) / len(good) < 1e-3
    # the one-at-a-time path records the same inputs as failures too
    for structure, message in ((on_top, "Å apart"), (nan_position, "non-finite")):
        single = relax_one(structure, MODEL, fmax=FMAX)
        assert not single.ok and message in single.error
