"""The fine-tune sweep flow over depth X and seeds, and its YAML file.

:class:`FineTuneSweepMaker` runs :class:`~surfflows.jobs.finetune.FineTuneMaker` for every
X and seed and, for each checkpoint (and the parent), evaluates the val and test parts
with :class:`~surfflows.flows.evaluate.EvaluateMaker` and checks bulk forgetting
(:func:`~surfflows.jobs.finetune.bulk_forgetting`). :class:`SweepConfig` reads
``configs/finetune_sweep.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, Maker, OutputReference
from pydantic import BaseModel, ConfigDict, Field

from surfflows.core.text import job_name
from surfflows.core.yaml_files import load_yaml
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.inputs import reference_items
from surfflows.jobs.finetune import (
    FineTuneMaker,
    bulk_forgetting,
    default_work_dir,
    training_sets_name,
)
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.references import ReferenceInputs


@dataclass
class FineTuneSweepMaker(Maker):
    """Fine-tune for every depth X and seed; evaluate and check every checkpoint.

    Parameters
    ----------
    name
        Sweep name, recorded on every :class:`FineTuneDoc`.
    finetune_maker
        Maker of each fine-tune (its parent is the sweep's parent; ``settings.depth`` and
        ``settings.seed`` are replaced per run, and ``sweep`` by ``name``).
    evaluate_maker
        Maker of the evaluation flows (its ``model`` is replaced per checkpoint).
    depths, seeds
        X values and seeds (each pair one checkpoint).
    parts
        Split parts evaluated.
    include_parent
        Evaluate the parent and check it too (the zero-shot row).
    work_dir
        Parent folder of the runs' work folders (default: the current directory).
    """

    name: str = "finetune sweep"
    finetune_maker: FineTuneMaker = field(default_factory=FineTuneMaker)
    evaluate_maker: EvaluateMaker = field(
        default_factory=lambda: EvaluateMaker(modes=("single_point",))
    )
    depths: tuple[int, ...] = (0, 1, 2, 3)
    seeds: tuple[int, ...] = (0,)
    parts: tuple[str, ...] = ("val", "test")
    include_parent: bool = True
    work_dir: str | None = None

    def make(
        self,
        references: ReferenceInputs | list[ReferenceInputs],
        bulk_sets: list[ReferenceInputs],
        parent_checkpoint: str | OutputReference | None = None,
        replay_sets: list[ReferenceInputs] | None = None,
    ) -> Flow:
        """Per checkpoint: fine-tune -> evaluation flows (one per training set) and
        forgetting check.

        Parameters
        ----------
        references
            The training set's documents and split, or several sets'.
        bulk_sets
            Bulk sets of the forgetting check (besides the set's own test bulks).
        parent_checkpoint
            The parent's checkpoint bytes (base64 or a reference) if it is fine-tuned.
        replay_sets
            Documents and splits of the settings' ``replay_sets``.

        Returns
        -------
        Flow
            Its output: ``finetunes`` (the :class:`FineTuneDoc` of each checkpoint, by
            depth and seed), ``forgetting`` (a :class:`ForgettingDoc` per model).
        """
        parent = self.finetune_maker.parent
        sets = [references] if isinstance(references, ReferenceInputs) else list(references)
        set_name = training_sets_name(references)
        jobs: list[Job | Flow] = []
        finetunes: dict[str, OutputReference] = {}
        models = [(parent, parent_checkpoint)] if self.include_parent else []
        for depth in self.depths:
            for seed in self.seeds:
                settings = self.finetune_maker.settings.model_copy(
                    update={"depth": depth, "seed": seed}
                )
                work_dir = self.finetune_maker.work_dir
                if self.work_dir:
                    folder = default_work_dir(set_name, parent, settings).name
                    work_dir = str(Path(self.work_dir) / folder)
                train = replace(
                    self.finetune_maker, settings=settings, work_dir=work_dir, sweep=self.name
                ).make(references, parent_checkpoint=parent_checkpoint, replay_sets=replay_sets)
                jobs.append(train)
                finetunes[f"X{depth}_seed{seed}"] = train.output
                models.append((train.output.model, train.output.checkpoint_b64))
        items = {inputs.set_name: reference_items(inputs, self.parts) for inputs in sets}
        forgetting = []
        for model, checkpoint in models:
            for name, set_items in items.items():
                evaluate = replace(self.evaluate_maker, model=model).make(
                    name, set_items, checkpoint
                )
                jobs.append(evaluate)
            check = bulk_forgetting(
                model, parent, references, bulk_sets, checkpoint, parent_checkpoint
            )
            check.name = "bulk forgetting"
            jobs.append(check)
            forgetting.append(check.output)
        output = {"finetunes": finetunes, "forgetting": forgetting}
        return Flow(jobs, output=output, name=job_name(self.name, "on", set_name))


class SweepConfig(BaseModel):
    """A fine-tune sweep from YAML (``configs/finetune_sweep.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sweep name (recorded on every fine-tune document).")
    reference: str = Field(description="Reference set in the store.")
    parent: str = Field(default="chgnet-0.3.0", description="Model to fine-tune.")
    depths: list[int] = Field(description="X values.")
    seeds: list[int] = Field(default=[0], description="Seeds per X.")
    modes: list[str] = Field(default=["single_point"], description="Evaluation modes.")
    parts: list[str] = Field(default=["val", "test"], description="Split parts evaluated.")
    bulk_sets: list[str] = Field(
        default=["bo2_bulk_eos"], description="Bulk sets of the forgetting check."
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="FineTuneSettings fields other than depth and seed."
    )
    default_depth: int | None = Field(
        default=None, description="X chosen on the validation split (documentation)."
    )
    work_dir: str | None = Field(default=None, description="Parent folder of the runs.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        """Read and validate a sweep file (:func:`surfflows.core.yaml_files.load_yaml`)."""
        return cls.model_validate(load_yaml(path, "sweep file"))

    def maker(self, parent: ModelSpec) -> FineTuneSweepMaker:
        """The sweep Maker of this configuration, ``parent`` being :attr:`parent` resolved
        (:func:`surfflows.io.registry.resolve_model`)."""
        bad = {"depth", "seed"} & self.hyperparameters.keys()
        if bad:
            raise ValueError(f"hyperparameters may not set {sorted(bad)}: use depths / seeds")
        return FineTuneSweepMaker(
            name=self.name,
            finetune_maker=FineTuneMaker(
                parent=parent, settings=FineTuneSettings(**self.hyperparameters)
            ),
            evaluate_maker=EvaluateMaker(modes=tuple(self.modes)),
            depths=tuple(self.depths),
            seeds=tuple(self.seeds),
            parts=tuple(self.parts),
            work_dir=self.work_dir,
        )
