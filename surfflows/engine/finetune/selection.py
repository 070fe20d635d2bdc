"""Epoch selection: the epoch record, the selection key, relaxed-mode validation gamma, and
how well single-point selection agrees with relaxed-mode selection."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from chgnet.model import CHGNet
from torch import nn

from surfflows.core.benchmark import correlation, summarize
from surfflows.core.thermo import slab_area, surface_energy, to_j_per_m2
from surfflows.engine.finetune.data import ReferenceData, Sample
from surfflows.engine.finetune.heads import head_modules, use_head
from surfflows.engine.relax import DEFAULT_OPTIMIZER, RelaxResult, relax_structures
from surfflows.schemas.evaluate import RELAXED_FMAX, RELAXED_MAX_STEPS
from surfflows.schemas.finetune import EpochRecord


def selection_pairs(data: ReferenceData, n_slabs: int | None, seed: int) -> list[int]:
    """The slabs relaxed to select the epoch (``selection="relaxed"``): indices into
    ``data.pairs``, drawn once.

    Each set's pairs, in the order of their slab keys, are shuffled by one
    ``np.random.default_rng(seed)`` (sets in sorted order); the sets then give one slab
    each in turn, so the subset is spread evenly over the sets, until ``n_slabs`` are
    taken (None: every pair). Returned in the order of the slab keys.
    """

    def slab_key(i: int) -> str:
        return data.samples[data.pairs[i].slab].key

    by_set: dict[str, list[int]] = {}
    for i in sorted(range(len(data.pairs)), key=slab_key):
        by_set.setdefault(data.samples[data.pairs[i].slab].set_name, []).append(i)
    rng = np.random.default_rng(seed)
    queues = [
        deque(np.asarray(by_set[name])[rng.permutation(len(by_set[name]))].tolist())
        for name in sorted(by_set)
    ]
    limit = len(data.pairs) if n_slabs is None else min(n_slabs, len(data.pairs))
    picked: list[int] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.popleft())
    return sorted(picked, key=slab_key)


def relaxed_gamma(
    model: CHGNet,
    data: ReferenceData,
    pairs: Sequence[int],
    heads: Mapping[str, nn.ModuleDict] | None = None,
    head_of: Callable[[Sample], str] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Relaxed-mode gamma errors of some validation slabs, as the evaluation's relaxed mode.

    The ions of each slab and of its bulk are relaxed by ``model`` in their DFT cells
    (:func:`surfflows.engine.relax.relax_structures`, fixed atoms kept, the evaluation's
    ``fmax``, step limit and optimizer), and gamma comes from the relaxed energies by
    :func:`surfflows.core.thermo.surface_energy`. With several heads each slab and its bulk
    relax with their set's head (``head_of``); the model's own head is put back after. A
    slab whose slab or bulk relaxation fails or does not converge is left out and counted.

    Parameters
    ----------
    model
        The model (eval mode); not changed (its head is restored).
    data
        Validation data; ``pairs`` index ``data.pairs`` (:func:`selection_pairs`).
    heads, head_of
        Several heads: the heads by name and the head of each sample; None: one head.
    progress
        Show the relaxations' progress bar.

    Returns
    -------
    dict
        The :class:`~surfflows.schemas.finetune.EpochRecord` fields ``val_relaxed_*``:
        MAE and mean signed error (J/m², None if no slab converged), per set (several
        sets), the single-point MAE of the same slabs (the relaxations' first energies),
        converged slabs, failures, median and mean steps of the slab relaxations (all of
        them) and the wall time.
    """
    tick = time.perf_counter()
    by_head: dict[str | None, list[int]] = {}
    for i in pairs:
        slab = data.samples[data.pairs[i].slab]
        by_head.setdefault(None if head_of is None else head_of(slab), []).append(i)
    results: dict[int, RelaxResult] = {}  # by sample index
    original = head_modules(model)
    try:
        for head, members in by_head.items():
            if head is not None:
                use_head(model, heads[head])
            rows = list(
                dict.fromkeys(k for i in members for k in (data.pairs[i].slab, data.pairs[i].bulk))
            )
            relaxed = relax_structures(
                [data.samples[k].structure for k in rows],
                model,
                fmax=RELAXED_FMAX,
                max_steps=RELAXED_MAX_STEPS,
                optimizer=DEFAULT_OPTIMIZER,
                progress=progress,
            )
            results.update(zip(rows, relaxed, strict=True))
    finally:
        use_head(model, original)

    def gamma(slab: Sample, bulk: Sample, slab_energy: float, bulk_energy: float) -> float:
        return to_j_per_m2(
            surface_energy(
                slab_energy,
                slab.structure.composition,
                bulk_energy,
                bulk.structure.composition,
                slab_area(slab.structure.lattice),
            )
        )

    errors: dict[str, list[float]] = {}
    single_point: list[float] = []
    steps: list[int] = []
    failures = 0
    for i in pairs:
        pair = data.pairs[i]
        slab, bulk = data.samples[pair.slab], data.samples[pair.bulk]
        slab_result, bulk_result = results[pair.slab], results[pair.bulk]
        steps.append(slab_result.n_steps)
        errors.setdefault(slab.set_name, [])
        if not (slab_result.ok and bulk_result.ok):
            failures += 1
            continue
        errors[slab.set_name].append(
            gamma(slab, bulk, slab_result.energy, bulk_result.energy) - pair.gamma_ref
        )
        single_point.append(
            gamma(slab, bulk, slab_result.initial_energy, bulk_result.initial_energy)
            - pair.gamma_ref
        )
    every = summarize(e for values in errors.values() for e in values)
    return {
        "val_relaxed_gamma_mae": every["mae"],
        "val_relaxed_gamma_mean_signed_error": every["mean_signed_error"],
        "val_relaxed_gamma_mae_by_set": (
            {name: summarize(values)["mae"] for name, values in sorted(errors.items())}
            if len(errors) > 1
            else {}
        ),
        "val_relaxed_single_point_gamma_mae": summarize(single_point)["mae"],
        "val_relaxed_slabs": every["n"],
        "val_relaxed_failures": failures,
        "val_relaxed_steps_median": float(np.median(steps)) if steps else None,
        "val_relaxed_steps_mean": float(np.mean(steps)) if steps else None,
        "val_relaxed_seconds": time.perf_counter() - tick,
    }


def epoch_record(
    epoch: int,
    train: dict,
    val: dict,
    lr: float,
    seconds: float,
    val_force: float | None,
    relaxed: Mapping[str, Any] | None = None,
) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=train["loss"],
        train_energy_mae=train["energy_mae"],
        train_gamma_mae=train["gamma_mae"],
        val_energy_mae=val["energy_mae"],
        val_gamma_mae=val["gamma_mae"],
        val_gamma_mean_signed_error=val["gamma_mean_signed_error"],
        learning_rate=lr,
        seconds=seconds,
        val_force_mae=val_force,
        val_energy_mae_by_set={k: e for k, (e, _) in val["by_set"].items()},
        val_gamma_mae_by_set={k: g for k, (_, g) in val["by_set"].items()},
        **(relaxed or {}),
    )


def selection_key(record: EpochRecord, selection: str = "single_point") -> float:
    """What selects the epoch (the lowest is kept; patience counts on it too).

    Parameters
    ----------
    record
        One epoch's record.
    selection
        ``single_point``: the validation gamma MAE; with several sets the mean over the
        sets with validation gamma pairs of each set's validation gamma MAE (energy MAE
        for data without gamma pairs). ``relaxed``: the relaxed-mode gamma MAE of the
        selection slabs (``val_relaxed_gamma_mae``); with several sets the mean over the
        sets with a value of each set's; infinite for an epoch without one (no selection
        slab converged), so that it is never kept over an epoch that has one.
    """
    if selection == "relaxed":
        per_set = [g for g in record.val_relaxed_gamma_mae_by_set.values() if g is not None]
        if per_set:
            return float(np.mean(per_set))
        value = record.val_relaxed_gamma_mae
        return math.inf if value is None else value
    per_set = [g for g in record.val_gamma_mae_by_set.values() if g is not None]
    if per_set:
        return float(np.mean(per_set))
    return record.val_gamma_mae if record.val_gamma_mae is not None else record.val_energy_mae


def selection_agreement(history: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """Single-point val gamma as a proxy of relaxed-mode val gamma, over one fine-tune's epochs.

    For a fine-tune that relaxed its selection slabs every epoch (``selection`` relaxed):
    the epoch each criterion keeps (:func:`~surfflows.engine.finetune.selection_key`),
    whether they agree, the relaxed val gamma lost by keeping the single-point epoch
    (``regret``, J/m²), and the Spearman correlation over the trained epochs (epoch 0, the
    parent, left out: it is far worse on both) of the relaxed value with the single-point
    value of every val slab and of the same slabs. None without relaxed values.
    """
    records = [EpochRecord.model_validate(r) for r in history]
    if not any(r.val_relaxed_gamma_mae is not None for r in records):
        return None
    by_sp = min(records, key=lambda r: selection_key(r, "single_point"))
    by_rx = min(records, key=lambda r: selection_key(r, "relaxed"))
    trained = [r for r in records if r.epoch > 0 and r.val_relaxed_gamma_mae is not None]

    def rho(values: list[float | None]) -> float | None:
        return correlation(values, [r.val_relaxed_gamma_mae for r in trained])["spearman"]

    regret = selection_key(by_sp, "relaxed") - selection_key(by_rx, "relaxed")
    return {
        "n_epochs": len(trained),
        "single_point_epoch": by_sp.epoch,
        "relaxed_epoch": by_rx.epoch,
        "same_epoch": int(by_sp.epoch == by_rx.epoch),
        "regret": regret if math.isfinite(regret) else None,
        "spearman_all_val_slabs": rho([r.val_gamma_mae for r in trained]),
        "spearman_same_slabs": rho([r.val_relaxed_single_point_gamma_mae for r in trained]),
    }
