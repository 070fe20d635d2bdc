"""The fine-tuning run: set-up, epoch 0, training epochs, resumable state, best checkpoint."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from chgnet.model import CHGNet
from pymatgen.core import Structure

from surfflows.engine.finetune.batches import (
    Batch,
    build_batch,
    force_mae,
    make_batches,
    predict_batches,
    set_composition_energies,
)
from surfflows.engine.finetune.checkpoints import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    saved_run,
    write_best_checkpoint,
)
from surfflows.engine.finetune.data import ReferenceData
from surfflows.engine.finetune.depth import FreezeInfo, cache_cut, freeze_to_depth
from surfflows.engine.finetune.heads import (
    Head,
    TrainingHeads,
    fit_head_shifts,
    head_of_sets,
    training_heads,
)
from surfflows.engine.finetune.objective import (
    NO_VALIDATION,
    Objective,
    cosine_lr,
    make_optimizer,
    run_epoch,
)
from surfflows.engine.finetune.replay import add_replay, shift_replay_labels
from surfflows.engine.finetune.selection import (
    epoch_record,
    relaxed_gamma,
    selection_key,
    selection_pairs,
)
from surfflows.schemas.finetune import EpochRecord, FineTuneSettings


@dataclass
class FineTuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model
        The best-epoch model (also saved as ``best_checkpoint``), with its default head.
    freeze
        Trainable and frozen modules at depth X.
    history
        One record per epoch, epoch 0 before any gradient step.
    best_epoch
        Epoch with the lowest :func:`selection_key`: validation gamma MAE, single point or
        (``settings.selection="relaxed"``) relaxed (the mean over sets with several).
    atomref_shift
        Fitted per-element shift of the default head, eV/atom.
    best_checkpoint
        File of the best model (``CHGNet.from_file`` loads it, with the default head).
    stopped_early
        Whether patience ended the run before ``epochs``.
    resumed_from_epoch
        Last epoch of the checkpoint resumed from, else None.
    setup_seconds, wall_seconds
        Time of the set-up (graphs, batches, caches) and of the whole call.
    head_shifts
        Head -> its fitted per-element shift (several heads only).
    default_head
        The checkpoint's default head (several heads only).
    replay_pool
        Structures of the replay pool by origin: ``training_bulks``, ``replay_set_bulks``,
        ``copies`` (empty without replay).
    """

    model: CHGNet
    freeze: FreezeInfo
    history: list[EpochRecord]
    best_epoch: int
    atomref_shift: dict[str, float]
    best_checkpoint: Path
    stopped_early: bool
    resumed_from_epoch: int | None
    setup_seconds: float
    wall_seconds: float
    head_shifts: dict[str, dict[str, float]] = field(default_factory=dict)
    default_head: str | None = None
    replay_pool: dict[str, int] = field(default_factory=dict)


def _check_inputs(train: ReferenceData, val: ReferenceData, settings: FineTuneSettings) -> None:
    """Refuse empty training data, relaxed selection without validation data and a force
    weight without force labels (no validation data: a final model, the last epoch kept)."""
    if not train.samples:
        raise ValueError("need training structures, got none")
    if not val.samples and settings.selection == "relaxed":
        raise ValueError("selection 'relaxed' needs validation structures, got none")
    if settings.force_weight > 0 and not any(s.forces is not None for s in train.samples):
        raise ValueError("force_weight > 0 but no training structure has force labels")


@dataclass
class _Run:
    """One fine-tune in progress: what it trains and evaluates, its history and best state."""

    model: CHGNet
    heads: TrainingHeads
    cut: int | None
    settings: FineTuneSettings
    train: ReferenceData
    n_own: int
    val: ReferenceData
    train_batches: list[Batch]
    val_batches: list[Batch]
    objective: Objective
    optimizer: torch.optim.Optimizer | None
    relaxed_pairs: list[int]
    rng: np.random.Generator
    atomref_shift: dict[str, float]
    head_shifts: dict[str, dict[str, float]]
    history: list[EpochRecord] = field(default_factory=list)
    best_state: dict[str, Any] = field(default_factory=dict)

    def set_mode(self, training: bool) -> None:
        """Train or eval mode for the model and every head."""
        for module in (self.model, *self.heads.modules.values()):
            module.train(training)

    def snapshot(self) -> dict[str, Any]:
        """A copy of the model's and the heads' weights."""
        return copy.deepcopy(
            {
                "model": self.model.state_dict(),
                "heads": {n: h.state_dict() for n, h in self.heads.modules.items()},
            }
        )

    def restore(self, state: dict[str, Any]) -> None:
        """Load weights saved by :meth:`snapshot`."""
        self.model.load_state_dict(state["model"])
        for name, head_state in state["heads"].items():
            self.heads.modules[name].load_state_dict(head_state)

    def best(self) -> EpochRecord:
        """The epoch kept so far (lowest :func:`selection_key`; the last one without
        validation data)."""
        if not self.val_batches:
            return self.history[-1]
        return min(self.history, key=lambda record: selection_key(record, self.settings.selection))

    def evaluate(
        self, epoch: int, train_errors: dict[str, Any], lr: float, tick: float
    ) -> EpochRecord:
        """The record of an epoch: validation errors, forces, relaxed-mode selection slabs."""
        self.set_mode(False)
        val_errors = (
            run_epoch(self.model, self.val_batches, self.cut, self.objective)
            if self.val_batches
            else NO_VALIDATION
        )
        val_force = (
            force_mae(self.model, self.val_batches, self.heads.modules)
            if any(s.forces is not None for s in self.val.samples)
            else None
        )
        relaxed = (
            relaxed_gamma(
                self.model,
                self.val,
                self.relaxed_pairs,
                self.heads.modules or None,
                self.heads.head_of,
            )
            if self.relaxed_pairs
            else None
        )
        seconds = time.perf_counter() - tick
        return epoch_record(epoch, train_errors, val_errors, lr, seconds, val_force, relaxed)

    def epoch_zero(self) -> EpochRecord:
        """Epoch 0: the parent with the fitted AtomRef, before any gradient step."""
        tick = time.perf_counter()
        self.set_mode(False)
        train_errors = run_epoch(self.model, self.train_batches, self.cut, self.objective)
        self.history = [self.evaluate(0, train_errors, 0.0, tick)]
        self.best_state = self.snapshot()
        return self.history[0]

    def resume(self, saved: dict[str, Any]) -> None:
        """Optimizer, random state, history and best weights of a saved run."""
        self.optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        self.rng.bit_generator.state = saved["numpy_rng"]
        self.history = [EpochRecord.model_validate(r) for r in saved["history"]]
        best = saved["best_state_dict"]
        self.best_state = best if "heads" in best else {"model": best, "heads": {}}

    def train_epoch(self) -> EpochRecord:
        """One optimizer pass over the training batches in a new random order, evaluated."""
        epoch = self.history[-1].epoch + 1
        tick = time.perf_counter()
        lr = cosine_lr(self.settings, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.set_mode(True)
        order = self.rng.permutation(len(self.train_batches))
        train_errors = run_epoch(
            self.model, self.train_batches, self.cut, self.objective, self.optimizer, order
        )
        self.history.append(self.evaluate(epoch, train_errors, lr, tick))
        if self.best() is self.history[-1]:
            self.best_state = self.snapshot()
        return self.history[-1]

    def save_state(self, path: Path) -> None:
        """``last.pth.tar``: everything a rerun needs to resume after this epoch."""
        torch.save(
            {
                "model": self.model.as_dict(),
                "heads": {n: h.state_dict() for n, h in self.heads.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": self.rng.bit_generator.state,
                "history": [r.model_dump() for r in self.history],
                "best_state_dict": self.best_state,
                "atomref_shift": self.atomref_shift,
                "head_shifts": self.head_shifts,
                "settings": self.settings.model_dump(),
                "train_keys": self.train.keys[: self.n_own],
                "val_keys": self.val.keys,
            },
            path,
        )

    def save_best(self, path: Path, heads: Sequence[Head]) -> None:
        """Restore the best weights; ``best.pth.tar``: the model with its default head and,
        with several heads, every head with its level of theory and sets."""
        self.restore(self.best_state)
        self.set_mode(False)
        write_best_checkpoint(path, self.model, heads, self.heads)


def _set_up(
    parent: CHGNet,
    train: ReferenceData,
    val: ReferenceData,
    settings: FineTuneSettings,
    heads: Sequence[Head],
    head_of_set: dict[str, str] | None,
    replay_bulks: Sequence[Structure],
    saved: dict[str, Any] | None,
    rng: np.random.Generator,
) -> tuple[_Run, FreezeInfo, dict[str, int]]:
    """The model at depth X with its heads, the fixed batches (with replay), the AtomRef
    shifts (fitted, or those of the saved run), the objective and the optimizer."""
    model = copy.deepcopy(parent)
    freeze = freeze_to_depth(model, settings.depth)
    trained_heads = training_heads(model, heads, head_of_set)
    if saved is not None:
        model.load_state_dict(saved["model"]["state_dict"])
        for name, state in saved.get("heads", {}).items():
            trained_heads.modules[name].load_state_dict(state)
    cut = cache_cut(model, settings)
    n_own = len(train.samples)
    groups = make_batches(train, settings.batch_size, rng)
    train, groups, replay_pool = add_replay(parent, train, groups, settings, replay_bulks)
    head_of = trained_heads.head_of
    train_batches = [build_batch(model, train, b, cut, head_of) for b in groups]
    val_batches = [
        build_batch(model, val, b, cut, head_of) for b in make_batches(val, settings.batch_size)
    ]
    set_composition_energies(model, train_batches, trained_heads.modules)
    if saved is None:
        predicted = predict_batches(model, train, train_batches, cut, trained_heads.modules)
        atomref_shift, head_shifts = fit_head_shifts(model, train, n_own, predicted, trained_heads)
        set_composition_energies(model, train_batches, trained_heads.modules)
    else:
        atomref_shift, head_shifts = saved["atomref_shift"], saved.get("head_shifts", {})
    shift_replay_labels(parent, model, train_batches)
    set_composition_energies(model, val_batches, trained_heads.modules)
    relaxed_pairs = (
        selection_pairs(val, settings.selection_slabs, settings.seed)
        if settings.selection == "relaxed"
        else []
    )
    if settings.selection == "relaxed" and not relaxed_pairs:
        raise ValueError("selection 'relaxed' needs validation slabs with a gamma pair, found none")
    objective, optimizer = make_optimizer(parent, model, trained_heads, settings)
    run = _Run(
        model=model,
        heads=trained_heads,
        cut=cut,
        settings=settings,
        train=train,
        n_own=n_own,
        val=val,
        train_batches=train_batches,
        val_batches=val_batches,
        objective=objective,
        optimizer=optimizer,
        relaxed_pairs=relaxed_pairs,
        rng=rng,
        atomref_shift=atomref_shift,
        head_shifts=head_shifts,
    )
    return run, freeze, replay_pool


def finetune(
    parent: CHGNet,
    train: ReferenceData,
    val: ReferenceData,
    settings: FineTuneSettings,
    work_dir: str | Path,
    *,
    progress: Callable[[EpochRecord], None] | None = None,
    heads: Sequence[Head] = (),
    replay_bulks: Sequence[Structure] = (),
) -> FineTuneResult:
    """Fine-tune the last X units of a copy of ``parent`` (see the module docstring).

    Parameters
    ----------
    parent
        Pretrained CHGNet (not modified).
    train, val
        Training and validation data (disjoint materials; the test part never enters),
        of one set or several (:func:`merge_data`).
    settings
        Hyperparameters; ``settings.depth`` is X.
    work_dir
        Folder for ``last.pth.tar`` (resumable state, written every epoch) and
        ``best.pth.tar``. If it holds a ``last.pth.tar`` of a run with the same settings
        (``epochs`` and ``patience`` aside) and data, training resumes from it.
    progress
        Called with each epoch's record.
    heads
        Readout heads, each over some sets (at least two: one head per level of theory);
        empty or one: every set runs through the model's own readout.
    replay_bulks
        Bulks of replay sets' train parts that join the training bulks in the replay pool.

    Returns
    -------
    FineTuneResult
        The best-epoch model, history and files.

    Raises
    ------
    ValueError
        If the depth is out of range, there is no training or validation data, forces are
        weighted without force labels, a set has no head, ``selection`` is relaxed without
        validation gamma pairs, or ``work_dir`` holds a run with other settings or data.
    """
    start_time = time.perf_counter()
    _check_inputs(train, val, settings)
    head_of_set = head_of_sets(heads, train, val)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    last = work_dir / LAST_CHECKPOINT
    saved = saved_run(last, settings, train, val)
    run, freeze, replay_pool = _set_up(
        parent, train, val, settings, heads, head_of_set, replay_bulks, saved, rng
    )
    setup_seconds = time.perf_counter() - start_time
    resumed_from = None
    if saved is None:
        record = run.epoch_zero()
        if progress:
            progress(record)
    else:
        run.resume(saved)
        resumed_from = run.history[-1].epoch
    stopped_early = False
    while run.optimizer is not None and run.history[-1].epoch < settings.epochs:
        if settings.patience and run.history[-1].epoch - run.best().epoch >= settings.patience:
            stopped_early = True
            break
        record = run.train_epoch()
        run.save_state(last)
        if progress:
            progress(record)
    best_checkpoint = work_dir / BEST_CHECKPOINT
    run.save_best(best_checkpoint, heads)
    return FineTuneResult(
        model=run.model,
        freeze=freeze,
        history=run.history,
        best_epoch=run.best().epoch,
        atomref_shift=run.atomref_shift,
        best_checkpoint=best_checkpoint,
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        setup_seconds=setup_seconds,
        wall_seconds=time.perf_counter() - start_time,
        head_shifts=run.head_shifts,
        default_head=run.heads.default,
        replay_pool=replay_pool,
    )
