"""Jobs that evaluate a model on reference structures (reference mode), and their summary.

Reference mode keeps the DFT lattice for slab and bulk alike: either a single point at
the DFT geometry, or the ions relaxed by the model within the DFT cell. Never mix a DFT
lattice with a model-relaxed bulk. The flow is :class:`surfflows.flows.evaluate.EvaluateMaker`.
"""

from __future__ import annotations

import time
from typing import Literal

from jobflow import job
from pymatgen.core import Structure

from surfflows.engine.calculators import SinglePoint, relax_fixed_cell, single_points
from surfflows.engine.models import preload
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer
from surfflows.io.registry import decode_checkpoint
from surfflows.schemas.evaluate import EvaluationDoc, EvaluationSummaryDoc, ModelEnergyDoc
from surfflows.schemas.models import ModelSpec

#: (reference key, doc type, structure, has DFT forces) of one reference record.
ReferenceItem = tuple[str, str, Structure, bool]


@job(output_schema=EvaluationDoc)
def evaluate_chunk(
    items: list[ReferenceItem],
    set_name: str,
    model: ModelSpec,
    mode: Literal["single_point", "relaxed"],
    fmax: float,
    max_steps: int,
    checkpoint: str | None = None,
    optimizer: Optimizer = DEFAULT_OPTIMIZER,
) -> EvaluationDoc:
    """Model energies of reference structures, one :class:`ModelEnergyDoc` each.

    ``checkpoint``: the model's checkpoint file as base64, for a fine-tuned model (an
    input resolved from the JobStore, see :func:`surfflows.io.registry.checkpoint_reference`).
    Single points of structures with DFT forces also record the model's forces. The wall
    time of the chunk (model loading excluded) is recorded on the document, so reports can
    give seconds per structure for each model.
    """
    preload(model, decode_checkpoint(checkpoint))  # loading is not timed
    structures = [structure for _, _, structure, _ in items]
    start = time.perf_counter()
    docs = []
    if mode == "single_point":
        with_forces = [i for i, item in enumerate(items) if item[3]]
        without = [i for i, item in enumerate(items) if not item[3]]
        outcomes: dict[int, SinglePoint] = {}
        for indices, task in ((without, "e"), (with_forces, "ef")):
            points = single_points([structures[i] for i in indices], model, task, progress=True)
            outcomes.update(zip(indices, points, strict=True))
        for i, (key, doc_type, structure, _) in enumerate(items):
            energy, forces, error = outcomes[i]
            ok = error is None and energy == energy
            docs.append(
                ModelEnergyDoc(
                    reference_key=key,
                    doc_type=doc_type,
                    n_atoms=len(structure),
                    energy=energy if ok else None,
                    energy_per_atom=energy / len(structure) if ok else None,
                    converged=ok,
                    forces=forces if ok else None,
                    error=error,
                )
            )
    else:
        results = relax_fixed_cell(
            structures, model, fmax=fmax, max_steps=max_steps, optimizer=optimizer
        )
        for (key, doc_type, structure, _), result in zip(items, results, strict=True):
            ok = result.error is None and result.energy == result.energy
            docs.append(
                ModelEnergyDoc(
                    reference_key=key,
                    doc_type=doc_type,
                    n_atoms=len(structure),
                    energy=result.energy if ok else None,
                    energy_per_atom=result.energy / len(structure) if ok else None,
                    converged=result.ok,
                    n_steps=result.n_steps,
                    max_force=result.max_force if ok else None,
                    error=result.error,
                )
            )
    return EvaluationDoc(
        model_id=model.model_id,
        model=model.installed(),
        set_name=set_name,
        mode=mode,
        fmax=fmax if mode == "relaxed" else None,
        results=docs,
        wall_seconds=time.perf_counter() - start,
    )


@job(output_schema=EvaluationSummaryDoc)
def evaluation_summary(chunks: list[EvaluationDoc]) -> EvaluationSummaryDoc:
    """Structures per mode and every failed or unconverged one, over the chunks of a flow."""
    n_structures: dict[str, int] = {}
    for chunk in chunks:
        n_structures[chunk.mode] = n_structures.get(chunk.mode, 0) + len(chunk.results)
    return EvaluationSummaryDoc(
        model_id=chunks[0].model_id,
        set_name=chunks[0].set_name,
        n_structures=n_structures,
        failures=[
            f"{chunk.mode} {r.reference_key}: {(r.error or 'not converged').splitlines()[0]}"
            for chunk in chunks
            for r in chunk.results
            if not r.converged
        ],
    )
