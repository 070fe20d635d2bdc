"""Fine-tuning settings, per-epoch records, fine-tune and forgetting documents."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from surfflows.core.timestamps import now_iso
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc

#: The largest X: every CHGNet release (0.2.0, 0.3.0, r2scan) has 4 interaction blocks, so
#: composition model, readout, last atom_conv, 3 blocks, embeddings (``engine.finetune``).
MAX_DEPTH = 6


class FineTuneSettings(BaseModel):
    """Hyperparameters of one CHGNet fine-tune (see :mod:`surfflows.engine.finetune`).

    Every bound is checked here, so a command refuses a bad value before it stores anything.
    """

    model_config = ConfigDict(allow_inf_nan=False)

    depth: int = Field(
        default=1,
        ge=0,
        le=MAX_DEPTH,
        description="X: trainable units counted from the readout backwards (0: only the "
        "per-element reference energies, 1: readout, 2: + last atom_conv, then whole "
        "[atom_conv, bond_conv, angle] blocks, the largest X adds the embeddings).",
    )
    epochs: int = Field(default=20, ge=1, le=10_000, description="Training epochs (maximum).")
    learning_rate: float = Field(
        default=1e-3, gt=0, le=1, description="Initial Adam learning rate."
    )
    lr_decay_fraction: float = Field(
        default=0.1, gt=0, le=1, description="Cosine decay to this fraction of the learning rate."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    anchor_weight: float = Field(
        default=0.0,
        ge=0,
        description="L2-SP weight: penalty anchor_weight * sum((theta - theta_parent)^2) over "
        "the trainable parameters, against forgetting (0: off).",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Structures per batch (about: a slab always shares its batch with its bulk).",
    )
    energy_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the energy-per-atom loss (eV/atom), slabs and bulks.",
    )
    gamma_weight: float = Field(
        default=1.0, ge=0, description="Weight of the surface-energy loss (J/m²) of each slab."
    )
    force_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the force loss (eV/Å); needs force labels (the set's ref_forces "
        "or zero_force_labels) and a full forward pass with forces each step (slow).",
    )
    zero_force_labels: bool = Field(
        default=False,
        description="Use zero forces as labels for frames without ref_forces: valid only for "
        "DFT-relaxed geometries (relaxed slabs and bulks).",
    )
    force_fraction: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Fraction of each batch's force-labelled structures (drawn anew every "
        "step) whose forces enter the loss; energies and gamma still come from every "
        "structure through the cached frozen stages. Below 1 makes forces affordable.",
    )
    replay_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the replay term against forgetting: bulks of the training "
        "materials and rattled / strained copies of them, labelled by the frozen parent "
        "(energy per atom; forces and stress too when force_weight > 0), mixed into every "
        "batch (0: off).",
    )
    replay_pool_size: int = Field(
        default=64,
        ge=1,
        description="Structures in the replay pool: the training bulks first, then rattled "
        "and strained copies of them (never a validation or test material).",
    )
    replay_rattle: float = Field(
        default=0.05, ge=0, description="Standard deviation of the replay copies' rattle, Å."
    )
    replay_strain: float = Field(
        default=0.03,
        ge=0,
        lt=0.5,
        description="Largest component of the replay copies' random symmetric strain.",
    )
    stress_weight: float = Field(
        default=0.1,
        ge=0,
        description="Weight of the stress loss (GPa) of replay structures, the only "
        "structures with stress labels (used when force_weight > 0).",
    )
    criterion: Literal["mse", "huber", "l1"] = Field(
        default="mse", description="Loss of each term (huber with delta huber_delta)."
    )
    huber_delta: float = Field(default=0.1, gt=0, description="Delta of the Huber loss.")
    patience: int | None = Field(
        default=8,
        ge=1,
        description="Stop after this many epochs without a lower validation gamma MAE (of "
        "the kind `selection` names; None: never stop early).",
    )
    seed: int = Field(default=0, description="Seed of torch and of the batch order.")
    heads: Literal["per_level_of_theory", "single"] = Field(
        default="per_level_of_theory",
        description="Readout heads when training on several sets: one readout and one "
        "AtomRef per level of theory on a shared backbone, or one for all sets (one set: "
        "the same).",
    )
    replay_sets: list[str] = Field(
        default_factory=list,
        description="Bulk sets whose train parts join the replay pool (labelled by the "
        "frozen parent, never a val or test material of any set); needs replay_weight > 0.",
    )

    recipe: Literal["surfflows", "chgnet_trainer"] = Field(
        default="surfflows",
        description="surfflows: this module's objective (per-element fit, gamma term, "
        "cached frozen stages). chgnet_trainer: the peer baseline, chgnet's own Trainer "
        "with the layers of CHGNet's fine-tuning example frozen and energy + force MSE "
        "(:mod:`surfflows.engine.chgnet_trainer`); unset fields take CHGNET_TRAINER_DEFAULTS.",
    )
    train_composition_model: bool = Field(
        default=True,
        description="chgnet_trainer recipe only: chgnet's Trainer trains AtomRef by gradient "
        "(its advice for data of another functional). The surfflows recipe always fits AtomRef "
        "by least squares.",
    )
    selection: Literal["single_point", "relaxed"] = Field(
        default="single_point",
        description="What selects the epoch kept (and counts for patience): single_point, "
        "the validation gamma MAE at the DFT geometries; relaxed, the validation gamma MAE "
        "of selection_slabs val slabs whose ions the model relaxes in their DFT cells (and "
        "their bulks' ions), as the evaluation's relaxed mode does, after every epoch and "
        "for the parent (epoch 0).",
    )
    selection_slabs: int | None = Field(
        default=24,
        ge=1,
        description="selection relaxed: val slabs relaxed after every epoch, a fixed subset "
        "drawn once with the seed from the sorted val slab keys, spread evenly over the sets "
        "(None: every val slab with a gamma pair).",
    )

    @model_validator(mode="after")
    def _replay_sets_need_replay(self) -> FineTuneSettings:
        if self.replay_sets and self.replay_weight == 0:
            raise ValueError(
                f"replay_sets {self.replay_sets} need replay_weight > 0 (replay is off)"
            )
        return self

    @model_validator(mode="after")
    def _selection_slabs_need_relaxed(self) -> FineTuneSettings:
        default = type(self).model_fields["selection_slabs"].default
        if self.selection == "single_point" and self.selection_slabs != default:
            raise ValueError(
                f"selection_slabs={self.selection_slabs} only applies to selection='relaxed' "
                "(the epoch is selected on single-point validation gamma)"
            )
        return self

    @model_validator(mode="after")
    def _recipe_settings(self) -> FineTuneSettings:
        """Fill the chgnet_trainer recipe's defaults; reject what it cannot do."""
        if self.recipe != "chgnet_trainer":
            return self
        given = self.model_fields_set
        for name, value in CHGNET_TRAINER_DEFAULTS.items():
            if name not in given:
                setattr(self, name, value)
        unsupported = {
            "depth": (
                self.depth != 2,
                "it freezes the layers of CHGNet's fine-tuning example "
                "(trainable: last atom_conv, readout, bond weights), which is depth 2",
            ),
            "gamma_weight": (self.gamma_weight > 0, "chgnet's Trainer has no surface-energy term"),
            "replay_weight": (self.replay_weight > 0, "chgnet's Trainer has no replay"),
            "anchor_weight": (self.anchor_weight > 0, "chgnet's Trainer has no L2-SP anchor"),
            "force_fraction": (self.force_fraction < 1, "chgnet's Trainer uses every force"),
            "patience": (self.patience is not None, "chgnet's Trainer never stops early"),
            "force_weight": (self.force_weight == 0, "it trains energies and forces ('ef')"),
            "heads": (self.heads != "single", "chgnet's Trainer has one readout and one AtomRef"),
            "selection": (
                self.selection != "single_point",
                "chgnet's Trainer keeps its own bestE (lowest validation energy MAE)",
            ),
        }
        bad = [
            f"{name}={getattr(self, name)!r} ({why})"
            for name, (no, why) in unsupported.items()
            if no
        ]
        if bad:
            raise ValueError("recipe chgnet_trainer does not support " + "; ".join(bad))
        return self


#: Defaults of the chgnet_trainer recipe where they differ from surfflows': CHGNet's
#: fine-tuning example (lr 1e-2) and chgnet's Trainer (cosine decay to 1 %, force ratio 1).
CHGNET_TRAINER_DEFAULTS: dict[str, object] = {
    "depth": 2,
    "learning_rate": 1e-2,
    "lr_decay_fraction": 1e-2,
    "force_weight": 1.0,
    "zero_force_labels": True,
    "gamma_weight": 0.0,
    "patience": None,
    "heads": "single",
}


#: Settings added after the first checkpoints; at their defaults they leave the work
#: folder's name as it was.
LATER_SETTINGS = {
    "heads": "per_level_of_theory",
    "replay_sets": [],
    "recipe": "surfflows",
    "train_composition_model": True,
    "selection": "single_point",
    "selection_slabs": 24,
}


class EpochRecord(BaseModel):
    """Losses and errors after one epoch (epoch 0: after the per-element fit, no step yet)."""

    epoch: int = Field(description="Epoch number; 0 is the model before any gradient step.")
    train_loss: float = Field(description="Mean training loss over the epoch's batches.")
    train_energy_mae: float = Field(description="Training energy MAE, eV/atom.")
    train_gamma_mae: float | None = Field(description="Training gamma MAE, J/m².")
    val_energy_mae: float = Field(description="Validation energy MAE, eV/atom.")
    val_gamma_mae: float | None = Field(
        description="Validation gamma MAE at the DFT geometries, J/m² (selects epochs unless "
        "the run selects on relaxed gamma)."
    )
    val_gamma_mean_signed_error: float | None = Field(
        description="Validation mean of gamma_model - gamma_ref, J/m²."
    )
    val_force_mae: float | None = Field(
        default=None,
        description="Validation force MAE, eV/Å, over the force-labelled validation "
        "structures (with zero_force_labels: the force norm at DFT minima); None without "
        "force labels.",
    )
    learning_rate: float = Field(description="Learning rate used in the epoch.")
    seconds: float = Field(description="Wall time of the epoch (training and validation), s.")
    val_gamma_mae_by_set: dict[str, float | None] = Field(
        default_factory=dict,
        description="Several sets: validation gamma MAE of each set, J/m² (None: no val "
        "gamma pair); the epoch kept has the lowest mean of them.",
    )
    val_energy_mae_by_set: dict[str, float] = Field(
        default_factory=dict, description="Several sets: validation energy MAE of each, eV/atom."
    )
    val_relaxed_gamma_mae: float | None = Field(
        default=None,
        description="selection relaxed: gamma MAE, J/m², of the selection's val slabs with "
        "slab and bulk ions relaxed by the model in their DFT cells (the evaluation's relaxed "
        "mode), over the slabs whose relaxations both converged; None when not computed or "
        "none converged. Selects the epoch when the run selects on it.",
    )
    val_relaxed_gamma_mean_signed_error: float | None = Field(
        default=None, description="Mean of gamma_model - gamma_ref over the same slabs, J/m²."
    )
    val_relaxed_gamma_mae_by_set: dict[str, float | None] = Field(
        default_factory=dict,
        description="Several sets: val_relaxed_gamma_mae of each set's selection slabs, J/m² "
        "(None: none converged); the epoch kept has the lowest mean of them.",
    )
    val_relaxed_single_point_gamma_mae: float | None = Field(
        default=None,
        description="Single-point gamma MAE, J/m², of the same slabs (the relaxations' first "
        "energies, at the DFT geometries): relaxed minus this is the relaxation's own effect.",
    )
    val_relaxed_slabs: int | None = Field(
        default=None,
        description="Selection slabs whose slab and bulk relaxations converged (enter the MAE).",
    )
    val_relaxed_failures: int | None = Field(
        default=None,
        description="Selection slabs left out because their slab or bulk relaxation failed or "
        "did not converge within the step limit.",
    )
    val_relaxed_steps_median: float | None = Field(
        default=None, description="Median optimizer steps of the selection slabs' relaxations."
    )
    val_relaxed_steps_mean: float | None = Field(
        default=None, description="Mean optimizer steps of the selection slabs' relaxations."
    )
    val_relaxed_seconds: float | None = Field(
        default=None, description="Wall time of the selection relaxations (part of seconds), s."
    )


#: Field of a job output holding checkpoint bytes (base64); saved in the ``data`` store.
CHECKPOINT_FIELD = "checkpoint_b64"


class HeadDoc(BaseModel):
    """One readout head of a multi-head checkpoint."""

    level_of_theory: str = Field(description="Level of theory of the head's sets.")
    sets: list[str] = Field(description="Sets whose batches ran through the head.")
    atomref_shift: dict[str, float] = Field(
        default_factory=dict,
        description="Per-element shift fitted on the head's training data and added to the "
        "parent's AtomRef, eV/atom.",
    )


class CheckpointDoc(OutputDoc):
    """A checkpoint registered in the JobStore (a file trained outside a surfflows flow)."""

    model_id: str = Field(description="chgnet-ft-<sha12>.")
    model: ModelSpec = Field(description="Spec of the checkpoint (by sha256, no path).")
    sha256: str = Field(description="sha256 of the checkpoint file (its identity).")
    n_bytes: int = Field(description="Size of the file.")
    checkpoint_b64: str = Field(description="The file, base64 (kept in the data store).")
    metadata: dict = Field(default_factory=dict, description="Free-form description.")
    created_at: str = Field(default_factory=now_iso, description="ISO time of registration.")
    heads: dict[str, HeadDoc] = Field(
        default_factory=dict, description="Heads of a multi-head checkpoint (else empty)."
    )
    default_head: str | None = Field(
        default=None, description="Head a spec without '@<head>' gets (multi-head only)."
    )


class FineTuneDoc(OutputDoc):
    """A fine-tuned CHGNet checkpoint: how it was made and how it trained.

    Output of the fine-tune job. It carries the checkpoint's bytes (``checkpoint_b64``, in
    the JobStore's ``data`` store), which registers the checkpoint (see
    :mod:`surfflows.io.registry`).
    """

    model_id: str = Field(description="chgnet-ft-<sha12> of the best-epoch checkpoint.")
    model: ModelSpec = Field(description="Spec of the checkpoint (registered by sha256).")
    sha256: str = Field(description="sha256 of the checkpoint file.")
    parent_model_id: str = Field(description="Model fine-tuned.")
    parent: ModelSpec = Field(description="Spec of the parent model.")
    set_name: str = Field(description="Reference set trained on; several joined by '+'.")
    set_names: list[str] = Field(default_factory=list, description="Reference sets trained on.")
    level_of_theory: str = Field(
        description="Level of theory of the set's energies (several: joined by ' + ')."
    )
    split_id: str = Field(
        description="Split used: train part for training, val for selection (several: "
        "joined by '+')."
    )
    heads: dict[str, HeadDoc] = Field(
        default_factory=dict,
        description="Readout heads by name (multi-head checkpoints; one head: empty).",
    )
    default_head: str | None = Field(
        default=None,
        description="Head the checkpoint file's model has and a spec without '@<head>' "
        "gets: 'pbe' if present, else the first set's (multi-head only).",
    )
    sweep: str | None = Field(default=None, description="Name of the sweep the run belongs to.")
    depth: int = Field(description="X, trainable units from the readout backwards.")
    trainable_modules: list[str] = Field(
        description="Modules fitted: composition_model (least squares) and the X units."
    )
    frozen_modules: list[str] = Field(description="Modules kept at the parent's weights.")
    trainable_parameters: int = Field(
        description="Parameters of the trainable modules (AtomRef's 94 included)."
    )
    atomref_shift: dict[str, float] = Field(
        description="Per-element reference energies fitted to the training data and added to "
        "the parent's AtomRef, eV/atom, by element (several heads: the default head's)."
    )
    hyperparameters: FineTuneSettings = Field(description="Settings of the run.")
    n_train: dict[str, int] = Field(
        description="Training data: structures, slabs, bulks, gamma_pairs, materials, "
        "force_labelled."
    )
    n_val: dict[str, int] = Field(description="Validation data, same counts.")
    n_train_by_set: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Several sets: n_train of each set."
    )
    n_val_by_set: dict[str, dict[str, int]] = Field(
        default_factory=dict, description="Several sets: n_val of each set."
    )
    replay_pool: dict[str, int] = Field(
        default_factory=dict,
        description="Replay pool by origin: training_bulks, replay_set_bulks, copies (empty "
        "without replay).",
    )
    train_keys: list[str] = Field(description="Reference keys of every training structure.")
    val_keys: list[str] = Field(description="Reference keys of every validation structure.")
    dropped: dict[str, list[str]] = Field(
        description="Reason -> keys of train/val records not used (flags are screened: a "
        "record with two flags appears under both; 'held_out:<set>:<part>': a material held "
        "out in another set, by material_id or, for elemental materials, by element)."
    )
    n_dropped: int = Field(description="Records of the train and val parts not used.")
    history: list[EpochRecord] = Field(description="Loss curves, one record per epoch.")
    best_epoch: int = Field(
        description="Epoch with the lowest validation gamma MAE (kept; selection relaxed: "
        "the lowest relaxed-mode MAE of the selection slabs); several sets: the lowest mean "
        "over sets of each set's; recipe chgnet_trainer: chgnet's bestE, the lowest "
        "validation energy MAE."
    )
    best_val_gamma_mae: float | None = Field(description="Validation gamma MAE there, J/m².")
    best_val_relaxed_gamma_mae: float | None = Field(
        default=None,
        description="selection relaxed: relaxed-mode gamma MAE of the selection slabs there, J/m².",
    )
    best_val_energy_mae: float = Field(description="Validation energy MAE there, eV/atom.")
    stopped_early: bool = Field(description="Training stopped by patience before `epochs`.")
    resumed_from_epoch: int | None = Field(
        default=None, description="Last epoch of the checkpoint the run resumed from."
    )
    setup_seconds: float = Field(description="Graphs, batches and frozen-feature cache, s.")
    mean_epoch_seconds: float | None = Field(description="Mean wall time of an epoch, s.")
    wall_seconds: float = Field(description="Wall time of the whole fine-tune, s.")
    checkpoint_b64: str = Field(description="The best checkpoint file, base64 (data store).")
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


class BulkSetErrors(BaseModel):
    """Aligned bulk energy errors of a model and its parent on one set of unseen bulks."""

    name: str = Field(description="Bulk set: a reference set, or '<set>:test' bulk cells.")
    level_of_theory: str = Field(description="Level of theory of its energies.")
    alignment: str = Field(description="Bulks the per-element offsets were fitted on.")
    n_structures: int = Field(description="Bulk cells evaluated.")
    n_excluded: int = Field(
        default=0, description="Cells left out: an element without a fitted offset, or failed."
    )
    n_elements: int = Field(description="Elements with an offset (free parameters).")
    mae_per_atom: float | None = Field(
        description="MAE of the aligned residual, eV/atom (None: no cell evaluated)."
    )
    parent_mae_per_atom: float | None = Field(description="The parent's, eV/atom.")
    relative_change: float | None = Field(description="mae / parent_mae - 1 (0.1: 10 % worse).")
    force_mae: float | None = Field(default=None, description="Force MAE, eV/Å (if labelled).")
    parent_force_mae: float | None = Field(default=None, description="The parent's, eV/Å.")


class ForgettingDoc(OutputDoc):
    """Bulk forgetting of a model: aligned bulk energy errors beside its parent's."""

    model_id: str = Field(description="Model checked.")
    model: ModelSpec = Field(description="Its spec.")
    parent_model_id: str = Field(description="Model it is compared with.")
    sets: list[BulkSetErrors] = Field(description="One entry per bulk set.")
    max_relative_change: float | None = Field(
        description="Largest relative_change over the sets (None if none has one)."
    )
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")
