"""The k-fold cross-validation flow of a fine-tuning recipe, split by element.

Per fold: fine-tune (:class:`~surfflows.jobs.finetune.FineTuneMaker`), then the held-out
evaluation (:class:`~surfflows.flows.evaluate.EvaluateMaker`); the parent once; and the
summary job :func:`surfflows.jobs.cross_validation.cross_validation_summary`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, JobStore, Maker, OutputReference, run_locally

from surfflows.core.folds import kfold_assignments
from surfflows.core.text import job_name
from surfflows.flows.evaluate import EvaluateMaker, chunk_outputs
from surfflows.io.inputs import reference_items, stored_evaluations
from surfflows.jobs.cross_validation import (
    MODES,
    aligned_replay,
    cross_validation_summary,
    fold_inputs,
)
from surfflows.jobs.finetune import FineTuneMaker, default_work_dir
from surfflows.schemas.references import ReferenceInputs


@dataclass
class CrossValidationMaker(Maker):
    """k-fold cross-validation of a fine-tuning recipe, split by element.

    Parameters
    ----------
    name
        Flow name.
    finetune_maker
        Maker of each fold's fine-tune (its ``work_dir`` is replaced per fold).
    evaluate_maker
        Maker of the held-out evaluations (its ``model`` is replaced per fold).
    k
        Number of folds (at least 3).
    fold_seed
        Seed of the fold assignment (the recipe's own seed is ``settings.seed``).
    work_dir
        Parent folder of the folds' work folders (default: the current directory).
    """

    name: str = "cross-validation"
    finetune_maker: FineTuneMaker = field(default_factory=FineTuneMaker)
    evaluate_maker: EvaluateMaker = field(default_factory=lambda: EvaluateMaker(modes=MODES))
    k: int = 5
    fold_seed: int = 0
    work_dir: str | None = None

    def make(
        self,
        references: ReferenceInputs,
        parent_checkpoint: str | OutputReference | None = None,
        replay_sets: list[ReferenceInputs] | None = None,
        parent_evaluations: list[dict[str, Any]] | None = None,
    ) -> Flow:
        """Fine-tune and evaluate every fold, evaluate the parent, summarise.

        Parameters
        ----------
        references
            The set's documents (:func:`surfflows.io.inputs.reference_inputs`).
        parent_checkpoint
            The parent's checkpoint bytes (base64 or a reference) if it is fine-tuned.
        replay_sets
            Documents and splits of the settings' ``replay_sets``.
        parent_evaluations
            The parent's stored evaluation documents of this set (both modes, every slab):
            given, the parent is not evaluated again.

        Returns
        -------
        Flow
            Its output is the :class:`~surfflows.schemas.cross_validation.CrossValidationDoc`;
            its jobs are one flow per fold (fine-tune, then held-out evaluation), the
            parent's evaluation and the summary, in that order, so they can be run one
            after the other and an interrupted run keeps its finished folds.
        """
        # refuse too few groups now, before any job
        kfold_assignments(references.materials(), self.k, self.fold_seed)
        parent = self.finetune_maker.parent
        settings = self.finetune_maker.settings
        base = Path(self.work_dir) if self.work_dir else Path.cwd() / "finetune"
        jobs: list[Job | Flow] = []
        finetunes, evaluations = [], []
        for fold in range(self.k):
            inputs = fold_inputs(references, self.k, fold, self.fold_seed)
            digest = hashlib.sha256(inputs.model_dump_json(include={"assignments"}).encode())
            folder = default_work_dir(references.set_name, parent, settings).name
            work_dir = base / f"{folder}_cv{self.k}fold{fold}_{digest.hexdigest()[:8]}"
            train = replace(self.finetune_maker, work_dir=str(work_dir)).make(
                inputs,
                parent_checkpoint=parent_checkpoint,
                replay_sets=aligned_replay(replay_sets, inputs),
            )
            train.name = job_name(train.name, "fold", fold, "of", self.k)
            evaluate = replace(self.evaluate_maker, model=train.output.model).make(
                references.set_name, reference_items(inputs, ("test",)), train.output.checkpoint_b64
            )
            jobs.append(Flow([train, evaluate], name=job_name("fold", fold, "of", self.k)))
            finetunes.append(
                {
                    name: getattr(train.output, name)
                    for name in ("model_id", "best_epoch", "history", "n_train", "wall_seconds")
                }
            )
            evaluations.append(chunk_outputs(evaluate))
        if parent_evaluations is None:
            evaluate = replace(self.evaluate_maker, model=parent).make(
                references.set_name, reference_items(references), parent_checkpoint
            )
            jobs.append(evaluate)
            parent_evaluations = chunk_outputs(evaluate)
        summary = cross_validation_summary(
            references,
            self.k,
            self.fold_seed,
            parent.model_id,
            settings,
            list(settings.replay_sets),
            finetunes,
            evaluations,
            parent_evaluations,
        )
        summary.name = job_name("cross-validation summary", references.set_name)
        jobs.append(Flow([summary], name="summary"))
        return Flow(jobs, output=summary.output, name=job_name(self.name, references.set_name))


def run_cross_validation(
    maker: CrossValidationMaker,
    inputs: ReferenceInputs,
    store: JobStore,
    parent_checkpoint: str | OutputReference | None = None,
    replay_sets: list[ReferenceInputs] | None = None,
) -> Flow:
    """Run :meth:`CrossValidationMaker.make` locally into ``store``, fold after fold.

    The parent's evaluations of the set already in ``store`` (both modes, every slab:
    :func:`surfflows.io.inputs.stored_evaluations`) are reused; each fold runs to its
    held-out evaluation before the next starts, so an interrupted run keeps its finished
    folds.

    Returns
    -------
    Flow
        The flow run; its output (in ``store``) is the
        :class:`~surfflows.schemas.cross_validation.CrossValidationDoc`.
    """
    keys = {d.key for d in inputs.docs}
    parent = maker.finetune_maker.parent.model_id
    stored = stored_evaluations(store, parent, inputs.set_name, keys)
    flow = maker.make(inputs, parent_checkpoint, replay_sets, stored)
    for part in flow.jobs:
        run_locally(
            part, store=store, log=False, ensure_success=True, allow_external_references=True
        )
    return flow
