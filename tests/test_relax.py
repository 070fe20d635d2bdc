"""Batched relaxation engine against ASE's FIRE and L-BFGS, with real (tiny) CHGNet runs.

Three small rattled slabs, Cu(111), Cu(100) and MgO(100), each with its bottom layer fixed
through ``selective_dynamics`` and an extra site property. Whole file: ~35 s on one core.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator

from surfflows.engine.relax import (
    DEFAULT_OPTIMIZER,
    RelaxResult,
    RelaxTimings,
    fixed_mask,
    relax_one,
    relax_structures,
)
from surfflows.schemas.models import ModelSpec

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
    return [relax_one(slab, MODEL, fmax=FMAX, optimizer="fire") for slab in slabs]


@pytest.fixture(scope="module")
def batched(slabs: list[Structure]) -> list[RelaxResult]:
    """The batched FIRE with fewer slots than slabs (a waiting slab takes a freed slot)."""
    return relax_structures(slabs, MODEL, fmax=FMAX, batch_size=2, optimizer="fire", progress=False)


@pytest.fixture(scope="module")
def reference_lbfgs(slabs: list[Structure]) -> list[RelaxResult]:
    """ASE L-BFGS through the CHGNet calculator, one slab at a time."""
    return [relax_one(slab, MODEL, fmax=FMAX, optimizer="lbfgs") for slab in slabs]


@pytest.fixture(scope="module")
def batched_lbfgs(slabs: list[Structure]) -> list[RelaxResult]:
    """The batched L-BFGS, two slots for three slabs."""
    return relax_structures(
        slabs, MODEL, fmax=FMAX, batch_size=2, optimizer="lbfgs", progress=False
    )


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


def _max_displacement(a: Structure, b: Structure) -> float:
    """Largest distance between the same atom in two structures of one cell, Å."""
    return float(np.linalg.norm(a.cart_coords - b.cart_coords, axis=1).max())


def test_batched_lbfgs_matches_ase_lbfgs(
    slabs: list[Structure],
    reference_lbfgs: list[RelaxResult],
    batched_lbfgs: list[RelaxResult],
) -> None:
    """Same algorithm, same criterion: same steps, same final energies and geometries."""
    for slab, ref, res in zip(slabs, reference_lbfgs, batched_lbfgs, strict=True):
        assert ref.ok and res.ok, (ref.error, res.error)
        assert res.n_steps > 3
        assert abs(res.n_steps - ref.n_steps) <= 1
        assert abs(res.energy - ref.energy) / len(slab) < 1e-4  # eV/atom
        assert _max_displacement(res.structure, ref.structure) < 1e-3
        assert len(res.energies) == res.n_steps + 1 and res.max_force < FMAX
        assert res.structure.site_properties == slab.site_properties
        fixed = fixed_mask(slab)
        assert np.abs(res.structure.cart_coords - slab.cart_coords)[fixed].max() < 1e-10


def test_lbfgs_reaches_fires_minimum_in_fewer_steps(
    slabs: list[Structure], batched: list[RelaxResult], batched_lbfgs: list[RelaxResult]
) -> None:
    """The default optimizer ends where FIRE does, or lower, in fewer steps overall.

    On the flat lateral mode of the 4-atom Cu(100) slab the two stop up to ~0.1 Å apart at
    the same force criterion (L-BFGS ~1 meV/atom lower with ASE's alpha).
    """
    assert DEFAULT_OPTIMIZER == "lbfgs"
    for slab, fire, lbfgs in zip(slabs, batched, batched_lbfgs, strict=True):
        assert lbfgs.energy - fire.energy < 1e-3 * len(slab)  # within 1 meV/atom, or lower
        assert _max_displacement(lbfgs.structure, fire.structure) < 0.15
    assert sum(r.n_steps for r in batched_lbfgs) < sum(r.n_steps for r in batched)


def test_unknown_optimizer_is_refused(slabs: list[Structure]) -> None:
    with pytest.raises(ValueError, match="optimizer must be one of lbfgs, fire; got 'bfgs'"):
        relax_structures(slabs, MODEL, optimizer="bfgs", progress=False)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        relax_one(slabs[0], MODEL, optimizer="BFGS")


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


def test_step_limit_is_per_structure(
    slabs: list[Structure], batched_lbfgs: list[RelaxResult]
) -> None:
    """With a step limit, the far-from-minimum slab stops unconverged, the other converges."""
    cu111 = slabs[0]
    shaken = Structure(  # more than 10 L-BFGS steps to converge
        cu111.lattice,
        cu111.species,
        cu111.cart_coords + np.random.default_rng(3).normal(0.0, 0.3, (len(cu111), 3)),
        coords_are_cartesian=True,
    )
    relaxed = batched_lbfgs[1].structure
    positions = relaxed.cart_coords
    positions[np.argmax(positions[:, 2]), 0] += 0.05  # nudge the top atom: a few steps
    nudged = Structure(
        relaxed.lattice,
        relaxed.species,
        positions,
        coords_are_cartesian=True,
        site_properties=relaxed.site_properties,
    )
    timings = RelaxTimings()
    stopped, converged = relax_structures(
        [shaken, nudged], MODEL, fmax=FMAX, max_steps=10, progress=False, timings=timings
    )
    assert not stopped.converged and stopped.error is None
    assert stopped.n_steps == 10 and len(stopped.energies) == 11
    assert math.isfinite(stopped.energy) and stopped.max_force >= FMAX
    assert converged.ok and 0 < converged.n_steps < 10
    assert timings.n_evaluations == stopped.n_steps + 1 + converged.n_steps + 1
    assert timings.n_forward == stopped.n_steps + 1
    assert timings.forward > 0.0


def test_broken_structures_fail_alone(
    slabs: list[Structure], reference_lbfgs: list[RelaxResult]
) -> None:
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
    assert abs(good_res.energy - reference_lbfgs[1].energy) / len(good) < 1e-4
    # the one-at-a-time path records the same inputs as failures too
    for structure, message in ((on_top, "Å apart"), (nan_position, "non-finite")):
        single = relax_one(structure, MODEL, fmax=FMAX)
        assert not single.ok and message in single.error


def test_a_loaded_model_relaxes_like_its_spec(
    slabs: list[Structure], batched_lbfgs: list[RelaxResult]
) -> None:
    """A CHGNet already in memory (a copy of the spec's model) gives the spec's relaxations;
    a copy with every AtomRef energy raised by 0.1 eV/atom (same forces) is the one used:
    same steps and geometries, total energies 0.1 eV/atom higher (the two Cu slabs)."""
    import copy

    from surfflows.engine.models import load_model

    slabs = slabs[:2]
    model = copy.deepcopy(load_model(MODEL))
    same = relax_structures(slabs, model, fmax=FMAX, batch_size=2, progress=False)
    with torch.no_grad():
        model.composition_model.fc.weight += 0.1
    shifted = relax_structures(slabs, model, fmax=FMAX, batch_size=2, progress=False)
    for slab, spec, loaded, raised in zip(slabs, batched_lbfgs[:2], same, shifted, strict=True):
        assert loaded.ok and raised.ok
        assert loaded.n_steps == spec.n_steps == raised.n_steps
        assert loaded.energy == pytest.approx(spec.energy, abs=1e-6)
        assert _max_displacement(loaded.structure, spec.structure) < 1e-6
        assert _max_displacement(raised.structure, spec.structure) < 1e-6
        assert raised.energy - spec.energy == pytest.approx(0.1 * len(slab), abs=1e-4)
