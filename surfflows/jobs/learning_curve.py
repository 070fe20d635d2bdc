"""Jobs of learning curves: pool features, a selection of training slabs, one point.

A point ties a checkpoint fine-tuned on a DIRECT or random selection to that selection
(:class:`LearningCurvePointDoc`). The flow is
:class:`surfflows.flows.learning_curve.LearningCurveMaker`; its rows and summaries are in
:mod:`surfflows.reports.finetune`.

DIRECT is deterministic for a given feature model, so its seeds vary only the training
(batch order); random picks vary the selection and the training with the seed.
"""

from __future__ import annotations

import numpy as np
from jobflow import job
from pydantic import Field
from pymatgen.core import Structure

from surfflows.engine.models import load_model
from surfflows.engine.sampling import Method, SelectionDoc, crystal_features, select_from_pool
from surfflows.io.registry import decode_checkpoint
from surfflows.schemas.finetune import FineTuneDoc
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc


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
