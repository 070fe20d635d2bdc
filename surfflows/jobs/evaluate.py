"""Evaluate a model on reference structures (reference mode).

Reference mode keeps the DFT lattice for slab and bulk alike: either a single point at
the DFT geometry, or the ions relaxed by the model within the DFT cell. Never mix a DFT
lattice with a model-relaxed bulk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from jobflow import Flow, Maker, OutputReference, job
from pymatgen.core import Structure

from surfflows.core.text import job_name
from surfflows.engine.calculators import SinglePoint, relax_fixed_cell, single_points
from surfflows.engine.models import check_model, preload
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer
from surfflows.io.registry import decode_checkpoint
from surfflows.schemas.evaluate import (
    RELAXED_FMAX,
    RELAXED_MAX_STEPS,
    EvaluationDoc,
    EvaluationSummaryDoc,
    ModelEnergyDoc,
)
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


def chunk_outputs(flow: Flow) -> list[OutputReference]:
    """The outputs (:class:`EvaluationDoc`) of the chunks of a flow made by
    :meth:`EvaluateMaker.make`: every job but the closing :func:`evaluation_summary`."""
    return [j.output for j in flow.jobs[:-1]]


@dataclass
class EvaluateMaker(Maker):
    """Evaluate a model on the slabs and bulks of a reference set.

    Parameters
    ----------
    name
        Flow name.
    model
        The model to evaluate: a CHGNet (pretrained or a registered checkpoint) or any
        ASE calculator.
    modes
        ``single_point`` and/or ``relaxed`` (ions only, DFT cell kept).
    fmax, max_steps, optimizer
        Relaxation settings of the relaxed mode (optimizer ``"lbfgs"`` or ``"fire"``).
    chunk_size
        Structures per job.
    """

    name: str = "evaluate"
    model: ModelSpec = field(default_factory=ModelSpec)
    modes: tuple[str, ...] = ("single_point", "relaxed")
    fmax: float = RELAXED_FMAX
    max_steps: int = RELAXED_MAX_STEPS
    optimizer: Optimizer = DEFAULT_OPTIMIZER
    chunk_size: int = 128

    def make(
        self,
        set_name: str,
        items: list[ReferenceItem],
        checkpoint: OutputReference | str | None = None,
    ) -> Flow:
        """One job per chunk of ``items`` and per mode, then :func:`evaluation_summary`
        (the flow's output), which joins the chunks into one connected flow.

        Parameters
        ----------
        set_name
            Reference set of the items.
        items
            (key, doc type, structure) of slabs and bulks
            (:func:`surfflows.io.inputs.reference_items`).
        checkpoint
            The checkpoint bytes of a fine-tuned model (base64, or a reference to them:
            :func:`surfflows.io.registry.checkpoint_reference`); None for a pretrained one.
        """
        if not items:
            raise ValueError(f"nothing to evaluate in reference set {set_name!r}")
        unknown = set(self.modes) - {"single_point", "relaxed"}
        if unknown:
            raise ValueError(f"unknown evaluation modes {sorted(unknown)}")
        if isinstance(self.model, ModelSpec):  # not a checkpoint still to be trained
            check_model(self.model)
        jobs = []
        for mode in self.modes:
            for start in range(0, len(items), self.chunk_size):
                chunk_job = evaluate_chunk(
                    items[start : start + self.chunk_size],
                    set_name,
                    self.model,
                    mode,
                    self.fmax,
                    self.max_steps,
                    checkpoint,
                    self.optimizer,
                )
                chunk_job.name = job_name("evaluate", set_name, mode, start // self.chunk_size)
                jobs.append(chunk_job)
        summary = evaluation_summary([chunk_job.output for chunk_job in jobs])
        summary.name = job_name("evaluate", set_name, "summary")
        model_id = getattr(self.model, "model_id", "new checkpoint")
        return Flow(
            [*jobs, summary],
            output=summary.output,
            name=job_name(self.name, model_id, "on", set_name),
        )
