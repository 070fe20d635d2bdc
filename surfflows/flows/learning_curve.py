"""The learning-curve flow and its campaign file: DIRECT versus random selections.

For every (method, budget, seed): select training slabs, fine-tune the parent on them,
evaluate the checkpoint on the test split, and tie both in a point document (the jobs
are in :mod:`surfflows.jobs.learning_curve`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jobflow import Flow, Job, Maker, OutputReference
from pydantic import BaseModel, ConfigDict, Field

from surfflows.core.text import job_name
from surfflows.engine.sampling import Method, training_pool
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.inputs import reference_items
from surfflows.jobs.finetune import FineTuneMaker
from surfflows.jobs.learning_curve import learning_curve_point, pool_features, select_training_slabs
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.references import ReferenceInputs


@dataclass
class LearningCurveMaker(Maker):
    """Fine-tune on DIRECT and random selections of several budgets and seeds.

    Parameters
    ----------
    name
        Flow name (also the sweep name recorded on every point).
    finetune_maker
        Maker of each fine-tune (X = ``settings.depth``; ``seed`` is replaced per point,
        ``sweep`` by ``name``). Its parent's features drive DIRECT.
    evaluate_maker
        Maker of the test-split evaluation of each checkpoint (``model`` replaced).
    budgets
        Training slabs per point (a budget above the pool takes the whole pool).
    methods
        ``direct`` and/or ``random``.
    seeds
        Seeds per (method, budget).
    """

    name: str = "learning curve"
    finetune_maker: FineTuneMaker = field(default_factory=FineTuneMaker)
    evaluate_maker: EvaluateMaker = field(
        default_factory=lambda: EvaluateMaker(modes=("single_point",))
    )
    budgets: tuple[int, ...] = (25, 50, 100, 200)
    methods: tuple[str, ...] = ("direct", "random")
    seeds: tuple[int, ...] = (0, 1, 2)

    def make(
        self, references: ReferenceInputs, parent_checkpoint: str | OutputReference | None = None
    ) -> Flow:
        """Features -> selection -> fine-tune -> test evaluation -> point, per combination.

        Returns
        -------
        Flow
            Its output: ``points``, one :class:`LearningCurvePointDoc` per combination.
        """
        parent = self.finetune_maker.parent
        pool = training_pool(references)
        keys = [key for key, _ in pool]
        jobs: list[Job | Flow] = []
        features = None
        if "direct" in self.methods:
            features_job = pool_features([s for _, s in pool], parent, parent_checkpoint)
            features_job.name = job_name("features of", len(pool), "train slabs")
            jobs.append(features_job)
            features = features_job.output
        items = reference_items(references, ("test",))
        points = []
        for method in self.methods:
            for budget in self.budgets:
                for seed in self.seeds:
                    selection = select_training_slabs(
                        keys,
                        features if method == "direct" else None,
                        method,
                        budget,
                        seed if method == "random" else 0,
                        references.set_name,
                        references.split_id,
                        parent.model_id if method == "direct" else None,
                    )
                    selection.name = job_name("select", method, budget, f"seed={seed}")
                    finetune = replace(
                        self.finetune_maker,
                        settings=self.finetune_maker.settings.model_copy(update={"seed": seed}),
                        sweep=self.name,
                    ).make(references, selection.output.reference_keys, parent_checkpoint)
                    finetune.name = job_name(finetune.name, method, budget)
                    evaluate = replace(self.evaluate_maker, model=finetune.output.model).make(
                        references.set_name, items, finetune.output.checkpoint_b64
                    )
                    point = learning_curve_point(selection.output, finetune.output, self.name)
                    jobs += [selection, finetune, evaluate, point]
                    points.append(point.output)
        return Flow(jobs, output={"points": points}, name=job_name(self.name, references.set_name))


class LearningCurveConfig(BaseModel):
    """A learning-curve campaign file (``configs/learning_curve.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sweep name recorded on every point.")
    reference: str = Field(description="Reference set (ingested) to select from and test on.")
    parent: str = Field(default="chgnet-0.3.0", description="Model to fine-tune.")
    budgets: list[int] = Field(min_length=1, description="Training slabs per point.")
    methods: list[Method] = Field(default=["direct", "random"], description="Selections.")
    seeds: list[int] = Field(default=[0, 1, 2], min_length=1, description="Seeds per point.")
    hyperparameters: FineTuneSettings = Field(description="Fine-tuning settings (depth = X).")

    def maker(self, parent: ModelSpec) -> LearningCurveMaker:
        """The Maker of this campaign, ``parent`` being :attr:`parent` resolved."""
        return LearningCurveMaker(
            name=self.name,
            finetune_maker=FineTuneMaker(parent=parent, settings=self.hyperparameters),
            budgets=tuple(self.budgets),
            methods=tuple(self.methods),
            seeds=tuple(self.seeds),
        )
