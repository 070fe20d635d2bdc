"""Relaxations with a CHGNet model.

Two paths share one result type, :class:`RelaxResult`:

* :func:`relax_one` relaxes one structure with ASE's FIRE through the CHGNet ASE
  calculator; with ``relax_cell=True`` the cell relaxes too (FrechetCellFilter). Bulk
  relaxations use it.
* :func:`relax_structures` relaxes many fixed-cell structures (slabs); a failure of one
  structure is recorded on its result and the others go on.

Fixed atoms come from the ``selective_dynamics`` site property (pymatgen / VASP
convention: ``[False, False, False]`` = fixed): an atom with all three flags False is
held by ``FixAtoms``. Site properties of the input are carried to the output structure.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from ase.constraints import FixAtoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from surfflows.models import ModelSpec, get_calculator


@dataclass
class RelaxResult:
    """Outcome of one relaxation.

    Attributes
    ----------
    structure
        Final structure (the input's site properties kept); the input if the run failed early.
    energy
        Final total energy, eV (NaN if the run failed).
    initial_energy
        Total energy of the input geometry, eV (NaN if not reached).
    max_force
        Largest force norm on a free atom at the end, eV/Å.
    n_steps
        Optimizer steps taken.
    converged
        Whether ``max_force <= fmax`` (and the stress criterion for cell relaxations) was met
        within ``max_steps``.
    error
        Traceback summary if the relaxation raised; None otherwise.
    """

    structure: Structure
    energy: float = math.nan
    initial_energy: float = math.nan
    max_force: float = math.nan
    n_steps: int = 0
    converged: bool = False
    error: str | None = None
    energies: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Converged and without error: fit to enter a surface energy."""
        return self.converged and self.error is None and math.isfinite(self.energy)


def fixed_mask(structure: Structure) -> np.ndarray:
    """Boolean mask of atoms fixed by ``selective_dynamics`` (all three flags False)."""
    flags = structure.site_properties.get("selective_dynamics")
    if flags is None:
        return np.zeros(len(structure), dtype=bool)
    return ~np.asarray(flags, dtype=bool).any(axis=1)


def _to_atoms(structure: Structure):
    atoms = AseAtomsAdaptor.get_atoms(structure.copy(site_properties={}))
    mask = fixed_mask(structure)
    atoms.set_constraint(FixAtoms(mask=mask) if mask.any() else None)
    return atoms


def _final_structure(atoms, template: Structure) -> Structure:
    final = AseAtomsAdaptor.get_structure(atoms)
    return Structure(
        final.lattice,
        final.species,
        final.cart_coords,
        coords_are_cartesian=True,
        site_properties=template.site_properties,
    )


def relax_one(
    structure: Structure,
    model: ModelSpec,
    *,
    relax_cell: bool = False,
    fmax: float = 0.05,
    max_steps: int = 500,
) -> RelaxResult:
    """Relax one structure with FIRE; never raises for a failed relaxation.

    Parameters
    ----------
    structure
        Input structure (``selective_dynamics`` marks fixed atoms).
    model
        CHGNet model, loaded once per process.
    relax_cell
        Relax the cell too (bulk). Slabs keep their cell.
    fmax
        Force criterion, eV/Å (for cell relaxations also applied to the filter's stress term).
    max_steps
        Step limit; a run that hits it is recorded as not converged.
    """
    result = RelaxResult(structure=structure)
    try:
        atoms = _to_atoms(structure)
        atoms.calc = get_calculator(model)
        result.initial_energy = float(atoms.get_potential_energy())
        target = FrechetCellFilter(atoms) if relax_cell else atoms
        optimizer = FIRE(target, logfile=None)
        optimizer.attach(lambda: result.energies.append(float(atoms.get_potential_energy())))
        result.converged = bool(optimizer.run(fmax=fmax, steps=max_steps))
        result.n_steps = optimizer.nsteps
        result.energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces()  # constrained forces: zero on fixed atoms
        result.max_force = float(np.linalg.norm(forces, axis=1).max())
        result.structure = _final_structure(atoms, structure)
        if not math.isfinite(result.energy):
            result.converged = False
            result.error = "non-finite energy"
    except Exception as exc:  # a failed relaxation is a record, not a crash
        result.converged = False
        result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
    return result


def relax_structures(
    structures: Sequence[Structure],
    model: ModelSpec,
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    progress: bool = True,
) -> list[RelaxResult]:
    """Relax fixed-cell structures (slabs), one result per input, in input order."""
    return [
        relax_one(s, model, relax_cell=False, fmax=fmax, max_steps=max_steps)
        for s in tqdm(structures, desc="relax", disable=not progress, leave=False)
    ]
