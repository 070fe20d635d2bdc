"""Learning curves: fine-tune on DIRECT versus random selections of growing size.

For every (method, budget, seed): select training slabs of the train split (stored in
``selections``), fine-tune the parent on them (:class:`FineTuneMaker` with those slab keys
and their bulks; validation split for epoch selection as always), and evaluate the
checkpoint on the test split. The builders then give test MAE rows per checkpoint, and
:class:`LearningCurvePointDoc` ties each checkpoint to its selection.

DIRECT is deterministic for a given feature model, so its seeds vary only the training
(batch order); random picks vary the selection and the training with the seed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from jobflow import Flow, Maker, job
from maggma.core import Store
from pydantic import BaseModel, ConfigDict, Field

from surfflows.engine.models import ModelSpec
from surfflows.engine.sampling import Method, SelectionDoc, select
from surfflows.jobs.finetune import FineTuneMaker, evaluate_parts
from surfflows.schemas.finetune import FineTuneDoc, FineTuneSettings
from surfflows.stores import get_store


class LearningCurvePointDoc(BaseModel):
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


@job(output_schema=SelectionDoc)
def select_training_slabs(
    set_name: str, method: Method, budget: int, seed: int, feature_model: ModelSpec
) -> SelectionDoc:
    """Select (or fetch the stored) training slabs of a set's train split."""
    names = ("references", "splits", "features", "selections")
    with contextlib.ExitStack() as stack:
        stores = {n: stack.enter_context(get_store(n)) for n in names}
        return select(set_name, method, budget, seed=seed, model=feature_model, **stores)


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
    parent
        Model to fine-tune; its features drive DIRECT.
    settings
        Fine-tuning settings (X = ``settings.depth``); ``seed`` is replaced per point.
    budgets
        Training slabs per point (a budget above the pool takes the whole pool).
    methods
        ``direct`` and/or ``random``.
    seeds
        Seeds per (method, budget).
    """

    name: str = "learning curve"
    parent: ModelSpec = field(default_factory=ModelSpec)
    settings: FineTuneSettings = field(default_factory=FineTuneSettings)
    budgets: tuple[int, ...] = (25, 50, 100, 200)
    methods: tuple[str, ...] = ("direct", "random")
    seeds: tuple[int, ...] = (0, 1, 2)

    def make(self, set_name: str) -> Flow:
        """Selection -> fine-tune -> test evaluation -> point, for every combination."""
        jobs = []
        for method in self.methods:
            for budget in self.budgets:
                for seed in self.seeds:
                    selection = select_training_slabs(
                        set_name, method, budget, seed if method == "random" else 0, self.parent
                    )
                    selection.name = f"select {method} {budget} seed={seed}"
                    finetune = FineTuneMaker(
                        parent=self.parent,
                        settings=self.settings.model_copy(update={"seed": seed}),
                        sweep=self.name,
                        slab_keys=selection.output.reference_keys,
                    ).make(set_name)
                    finetune.name += f" {method} {budget}"
                    evaluate = evaluate_parts(finetune.output.model, set_name, parts=("test",))
                    point = learning_curve_point(selection.output, finetune.output, self.name)
                    jobs += [selection, finetune, evaluate, point]
        return Flow(jobs, name=f"{self.name} {set_name}")


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

    def maker(self) -> LearningCurveMaker:
        """The Maker of this campaign."""
        return LearningCurveMaker(
            name=self.name,
            parent=ModelSpec.parse(self.parent),
            settings=self.hyperparameters,
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
    set_name: str, selection_ids: list[str], feature_model: ModelSpec, stores: dict[str, Store]
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Weighted PC coordinates of a set's training pool and the pool rows of some selections.

    Parameters
    ----------
    set_name
        Reference set.
    selection_ids
        Stored selections to mark (labelled by their method and budget).
    feature_model
        Model whose stored features define the PCs (as DIRECT used them).
    stores
        Open ``references``, ``splits``, ``features`` and ``selections`` stores.
    """
    from surfflows.core.splits import get_or_create_split
    from surfflows.engine.sampling import direct_select, stored_features, training_pool

    split = get_or_create_split(set_name, store=stores["splits"], references=stores["references"])
    pool = training_pool(set_name, stores["references"], split.assignments)
    features = stored_features(pool, feature_model, stores["features"])
    _, info = direct_select(features, budget=1)
    row = {key: i for i, (key, _) in enumerate(pool)}
    marked = {}
    for selection_id in selection_ids:
        doc = stores["selections"].query_one({"selection_id": selection_id})
        label = f"{doc['method']} ({len(doc['reference_keys'])})"
        marked[label] = [row[key] for key in doc["reference_keys"]]
    return info["pca_features"], marked
