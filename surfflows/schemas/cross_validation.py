"""Documents of an element-wise k-fold cross-validation of a fine-tuning recipe."""

from __future__ import annotations

from pydantic import BaseModel, Field

from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.provenance import OutputDoc


class GammaFigures(BaseModel):
    """Gamma errors (model - DFT) of a group of slabs."""

    n: int = Field(description="Slabs with a gamma error (both relaxations converged).")
    mae: float | None = Field(description="Mean absolute error, J/m².")
    mean_signed_error: float | None = Field(description="Mean of gamma_model - gamma_ref, J/m².")
    mape: float | None = Field(description="Mean of |error| / gamma_ref (a fraction).")


class MeanStd(BaseModel):
    """Mean and sample standard deviation over folds."""

    mean: float | None = Field(description="Mean over the folds with a value.")
    std: float | None = Field(description="Sample standard deviation (ddof 1; None for one).")
    n: int = Field(description="Folds with a value.")


class FoldSummary(BaseModel):
    """Mean ± std over folds of one mode's held-out figures."""

    mae: MeanStd = Field(description="Held-out gamma MAE, J/m².")
    mean_signed_error: MeanStd = Field(description="Held-out mean signed gamma error, J/m².")
    mape: MeanStd = Field(description="Held-out gamma MAPE (a fraction).")


class FoldDoc(BaseModel):
    """One fold: what it held out, what it trained on, its held-out figures."""

    fold: int = Field(description="Fold index (0-based).")
    held_out: list[str] = Field(description="Groups held out (elements, or compound ids).")
    val: list[str] = Field(description="Groups the epoch was selected on (the next fold).")
    n_train_groups: int = Field(description="Groups trained on.")
    model_id: str = Field(description="The fold's checkpoint.")
    n_train: dict[str, int] = Field(description="Training structures by type.")
    best_epoch: int = Field(description="Epoch kept on the validation fold.")
    val_gamma_mae_per_epoch: list[float | None] = Field(
        description="Validation-fold gamma MAE per epoch (0: the parent after the AtomRef "
        "fit), J/m²."
    )
    wall_seconds: float = Field(description="Fine-tune wall time, s.")
    figures: dict[str, GammaFigures] = Field(description="mode -> held-out figures.")
    parent_figures: dict[str, GammaFigures] = Field(
        default_factory=dict, description="mode -> the parent's figures on the same slabs."
    )
    by_group: dict[str, dict[str, GammaFigures]] = Field(
        description="mode -> held-out group (element) -> figures."
    )
    n_excluded: dict[str, int] = Field(
        default_factory=dict,
        description="mode -> held-out slabs without a gamma error (a relaxation failed or "
        "did not converge, a flag, ...).",
    )


class CrossValidationDoc(OutputDoc):
    """k-fold cross-validation of one recipe on one reference set, split by element."""

    set_name: str = Field(description="Reference set cross-validated.")
    k: int = Field(description="Number of folds.")
    fold_seed: int = Field(description="Seed of the fold assignment.")
    parent_model_id: str = Field(description="Model fine-tuned in every fold.")
    settings: FineTuneSettings = Field(description="The recipe (the folds' seeds are its seed).")
    replay_sets: list[str] = Field(default_factory=list, description="Replay sets of the recipe.")
    folds: list[FoldDoc] = Field(description="Every fold.")
    summary: dict[str, FoldSummary] = Field(description="mode -> mean ± std over the folds.")
    parent_summary: dict[str, FoldSummary] = Field(
        default_factory=dict, description="mode -> the parent's mean ± std over the same folds."
    )
    pooled: dict[str, GammaFigures] = Field(
        description="mode -> figures over every held-out slab of every fold."
    )
    by_group: dict[str, dict[str, GammaFigures]] = Field(
        description="mode -> group -> figures (each group is held out in exactly one fold)."
    )
    relaxed_minus_single_point: MeanStd | None = Field(
        default=None,
        description="Relaxed minus single-point held-out gamma MAE per fold, J/m² (mean ± std).",
    )
    mean_val_curve: list[float | None] = Field(
        description="Mean over folds of the validation gamma MAE per epoch, J/m²."
    )
    chosen_epochs: int = Field(
        description="Epoch count for a final model trained on every fold: the epoch of the "
        "lowest mean validation curve (never the held-out folds)."
    )
