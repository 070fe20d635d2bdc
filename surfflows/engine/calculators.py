"""Energies and relaxations for every kind of model: CHGNet batched, other calculators one by one.

CHGNet models (pretrained or checkpoints) go through the batched engine
(:func:`surfflows.engine.relax.relax_structures`, batched ``predict_structure``). Any other
ASE calculator (:class:`~surfflows.schemas.models.ModelSpec` of kind ``calculator``, e.g.
``sevennet-0``) relaxes one structure at a time with :func:`surfflows.engine.relax.relax_one`:
the same optimizer (ASE's L-BFGS by default, or FIRE), the same convergence criterion
(largest force on a free atom below ``fmax``), the same fixed atoms and the same failure
records. A calculator that raises on a structure gives a failed result for that structure;
the others go on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor
from tqdm.auto import tqdm

from surfflows.engine.models import get_calculator, load_model
from surfflows.engine.relax import (
    DEFAULT_OPTIMIZER,
    Optimizer,
    RelaxResult,
    relax_one,
    relax_structures,
)
from surfflows.schemas.models import ModelSpec

#: (total energy in eV or NaN, forces in eV/Å or None, error message or None) of one single point.
SinglePoint = tuple[float, list[list[float]] | None, str | None]


def relax_each(
    structures: Sequence[Structure],
    model: ModelSpec,
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    progress: bool = True,
    optimizer: Optimizer = DEFAULT_OPTIMIZER,
) -> list[RelaxResult]:
    """Relax fixed-cell structures one after the other with the model's ASE calculator.

    Parameters
    ----------
    structures
        Input structures (``selective_dynamics`` marks fixed atoms); cells stay fixed.
    model
        Any model; its calculator is made once per process (:func:`get_calculator`).
    fmax
        Force criterion, eV/Å.
    max_steps
        Step limit per structure; a structure that hits it is recorded as not converged.
    progress
        Show a progress bar.

    Returns
    -------
    list[RelaxResult]
        One result per input, in input order; failures are recorded, never raised.
    """
    get_calculator(model)  # a calculator that cannot be made fails here, before any structure
    return [
        relax_one(structure, model, fmax=fmax, max_steps=max_steps, optimizer=optimizer)
        for structure in tqdm(
            structures, desc="relax", unit="structure", disable=not progress, leave=False
        )
    ]


def relax_fixed_cell(
    structures: Sequence[Structure],
    model: ModelSpec,
    *,
    fmax: float = 0.05,
    max_steps: int = 500,
    progress: bool = True,
    optimizer: Optimizer = DEFAULT_OPTIMIZER,
) -> list[RelaxResult]:
    """Relax fixed-cell structures (slabs, reference-mode bulks) with any model.

    CHGNet runs batched (:func:`relax_structures`), other calculators one at a time
    (:func:`relax_each`); both follow the ASE optimizer ``optimizer`` with the same criterion.
    """
    if model.is_chgnet:
        relax = relax_structures
    else:
        relax = relax_each
    return relax(
        structures, model, fmax=fmax, max_steps=max_steps, progress=progress, optimizer=optimizer
    )


def _chgnet_single_points(
    structures: list[Structure], model: ModelSpec, task: Literal["e", "ef"]
) -> list[SinglePoint]:
    chgnet = load_model(model)

    def outcome(prediction: dict, structure: Structure) -> SinglePoint:
        forces = prediction["f"].tolist() if task == "ef" else None
        return float(prediction["e"]) * len(structure), forces, None

    try:
        predictions = chgnet.predict_structure(structures, task=task, batch_size=16)
        if len(structures) == 1:
            predictions = [predictions]
        return [outcome(p, s) for p, s in zip(predictions, structures, strict=True)]
    except Exception:
        outcomes: list[SinglePoint] = []
        for structure in structures:
            try:
                outcomes.append(outcome(chgnet.predict_structure(structure, task=task), structure))
            except Exception as exc:
                outcomes.append((math.nan, None, f"{type(exc).__name__}: {exc}"))
        return outcomes


def _calculator_single_point(
    structure: Structure, model: ModelSpec, task: Literal["e", "ef"]
) -> SinglePoint:
    try:
        atoms = AseAtomsAdaptor.get_atoms(structure.copy(site_properties={}))
        atoms.calc = get_calculator(model)
        energy = float(atoms.get_potential_energy())
        forces = atoms.get_forces().tolist() if task == "ef" else None
    except Exception as exc:  # a structure the calculator fails on is a record, not a crash
        return math.nan, None, f"{type(exc).__name__}: {exc}"
    return energy, forces, None if math.isfinite(energy) else "non-finite energy"


def single_points(
    structures: list[Structure],
    model: ModelSpec,
    task: Literal["e", "ef"] = "e",
    progress: bool = False,
) -> list[SinglePoint]:
    """Energy (and with ``task="ef"`` forces) per structure at fixed geometry.

    CHGNet is batched; if a batch fails, its structures are evaluated one by one so that
    only the culprit is recorded as failed. Other calculators go one structure at a time.
    """
    if not structures:
        return []
    if model.is_chgnet:
        return _chgnet_single_points(structures, model, task)
    get_calculator(model)  # a calculator that cannot be made fails here, before any structure
    return [
        _calculator_single_point(structure, model, task)
        for structure in tqdm(
            structures, desc="single points", unit="structure", disable=not progress, leave=False
        )
    ]
