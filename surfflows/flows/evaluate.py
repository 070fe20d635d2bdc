"""The evaluation flow of a model on reference structures: chunks per mode, then a summary.

The jobs (reference mode: the DFT lattice kept for slab and bulk alike) are in
:mod:`surfflows.jobs.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Flow, Maker, OutputReference

from surfflows.core.text import job_name
from surfflows.engine.models import check_model
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer
from surfflows.jobs.evaluate import ReferenceItem, evaluate_chunk, evaluation_summary
from surfflows.schemas.evaluate import RELAXED_FMAX, RELAXED_MAX_STEPS
from surfflows.schemas.models import ModelSpec


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
