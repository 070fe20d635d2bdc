"""Learning curves: fine-tune on DIRECT versus random selections of growing size.

For every (method, budget, seed): select training slabs of the train split (a job output;
DIRECT on the parent's features of the pool, computed once), fine-tune the parent on them
(:class:`FineTuneMaker` with those slab keys and their bulks; validation split for epoch
selection as always), and evaluate the checkpoint on the test split. The builders then give
test MAE rows per checkpoint, and :class:`LearningCurvePointDoc` ties each checkpoint to its
selection.

DIRECT is deterministic for a given feature model, so its seeds vary only the training
(batch order); random picks vary the selection and the training with the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from jobflow import Flow, Job, Maker, OutputReference, job
from maggma.core import Store
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from surfflows.core.text import job_name
from surfflows.engine.models import load_model
from surfflows.engine.sampling import (
    Method,
    SelectionDoc,
    crystal_features,
    direct_select,
    select_from_pool,
    training_pool,
)
from surfflows.io.inputs import reference_items
from surfflows.io.registry import decode_checkpoint
from surfflows.jobs.evaluate import EvaluateMaker
from surfflows.jobs.finetune import FineTuneMaker
from surfflows.schemas.finetune import FineTuneDoc, FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.references import ReferenceInputs


class LearningCurvePointDoc(OutputDoc):
    """One point of a learning curve: which selection trained which checkpoint."""

    set_name: str = Field(description="Reference set.")
    sweep: str = Field(description="Learning-curve name.")
    method: Method = Field(description="direct or random.")
    budget: int = Field(description="Training slabs selected (with their bulks).")
    seed: int = Field(description="Seed of the selection (random) and of the training.")
    selection_id: str = Field(description="Stored selection.")
    model_id: str = Field(description="Fine-tuned checkpoint.")
    best_val_gamma_mae: float | None = Field(description="Validation gamma MAE, J/m².")
    wall_seconds: float = Field(description="Fine-tune wall time, s.")


@job
def pool_features(
    structures: list[Structure], model: ModelSpec, checkpoint: str | None = None
) -> list[list[float]]:
    """CHGNet crystal features of a training pool (the input of DIRECT), one row each."""
    load_model(model, decode_checkpoint(checkpoint))
    return crystal_features(structures, model).tolist()


@job(output_schema=SelectionDoc)
def select_training_slabs(
    pool_keys: list[str],
    features: list[list[float]] | None,
    method: Method,
    budget: int,
    seed: int,
    set_name: str,
    split_id: str,
    feature_model_id: str | None,
) -> SelectionDoc:
    """Select training slabs of a pool (:func:`surfflows.engine.sampling.select_from_pool`)."""
    return select_from_pool(
        pool_keys,
        None if features is None else np.asarray(features),
        method,
        budget,
        seed=seed,
        set_name=set_name,
        split_id=split_id,
        feature_model_id=feature_model_id,
    )


@job(output_schema=LearningCurvePointDoc)
def learning_curve_point(
    selection: SelectionDoc, finetune: FineTuneDoc, sweep: str
) -> LearningCurvePointDoc:
    """Tie a checkpoint to the selection it was trained on."""
    return LearningCurvePointDoc(
        set_name=selection.set_name,
        sweep=sweep,
        method=selection.method,
        budget=len(selection.reference_keys),
        seed=finetune.hyperparameters.seed,
        selection_id=selection.selection_id,
        model_id=finetune.model_id,
        best_val_gamma_mae=finetune.best_val_gamma_mae,
        wall_seconds=finetune.wall_seconds,
    )


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


def learning_curve_rows(
    outputs: Store, benchmarks: Store, sweep: str, mode: str = "single_point"
) -> list[dict[str, Any]]:
    """One row per point: method, budget, seed, model and its test-split errors."""
    rows = []
    for doc in outputs.query({"output.@class": "LearningCurvePointDoc", "output.sweep": sweep}):
        point = doc["output"]
        bench = benchmarks.query_one(
            {"model_id": point["model_id"], "mode": mode, "split": "test"},
            properties=["n", "mae", "mean_signed_error"],
        )
        rows.append(
            {k: point[k] for k in ("method", "budget", "seed", "model_id", "selection_id")}
            | {
                "test_n": bench["n"] if bench else None,
                "test_mae": bench["mae"] if bench else None,
                "test_mean_signed_error": bench["mean_signed_error"] if bench else None,
                "val_gamma_mae": point["best_val_gamma_mae"],
            }
        )
    return sorted(rows, key=lambda r: (r["method"], r["budget"], r["seed"]))


def summarize_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of the test MAE over seeds per (method, budget)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["test_mae"] is not None:
            groups.setdefault((row["method"], row["budget"]), []).append(row["test_mae"])
    return [
        {
            "method": method,
            "budget": budget,
            "n_seeds": len(values),
            "test_mae_mean": float(np.mean(values)),
            "test_mae_std": float(np.std(values)),
        }
        for (method, budget), values in sorted(groups.items())
    ]


def coverage(
    pool_keys: list[str], features: np.ndarray, selections: list[dict[str, Any]]
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Weighted PC coordinates of a training pool and the pool rows of some selections.

    Parameters
    ----------
    pool_keys
        Reference keys of the pool, in the order of the rows of ``features``.
    features
        The pool's features, as DIRECT used them.
    selections
        Selection documents to mark (labelled by their method and budget).
    """
    _, info = direct_select(features, budget=1)
    row = {key: i for i, key in enumerate(pool_keys)}
    marked = {
        f"{doc['method']} ({len(doc['reference_keys'])})": [row[k] for k in doc["reference_keys"]]
        for doc in selections
    }
    return info["pca_features"], marked
