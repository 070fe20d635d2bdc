"""The loss of one batch (energy, gamma, forces, replay, L2-SP anchor) and one pass."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from chgnet.model import CHGNet
from torch import Tensor, nn

from surfflows.engine.finetune.batches import (
    Batch,
    force_subset,
    forward_batch,
    gamma_j_per_m2,
    predict_rows,
)
from surfflows.engine.finetune.heads import TrainingHeads
from surfflows.schemas.finetune import FineTuneSettings


@dataclass
class EpochErrors:
    """Loss and errors accumulated over the batches of an epoch."""

    loss: list[float] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    energy: list[Tensor] = field(default_factory=list)
    gamma: list[Tensor] = field(default_factory=list)
    sets: dict[str, tuple[list[Tensor], list[Tensor]]] = field(default_factory=dict)

    def add(self, batch: Batch, energy: Tensor, loss: Tensor) -> None:
        energy = energy.detach()
        self.loss.append(float(loss))
        self.weights.append(len(batch.samples))
        own = batch.energy_mask & ~batch.replay
        by_set = self.sets.setdefault(batch.set_name, ([], []))
        self.energy.append(energy[own] - batch.energy_per_atom[own])
        by_set[0].append(self.energy[-1])
        if len(batch.gamma_ref):
            self.gamma.append(gamma_j_per_m2(energy, batch) - batch.gamma_ref)
            by_set[1].append(self.gamma[-1])

    def summary(self) -> dict[str, Any]:
        """Loss, energy and gamma MAE, mean signed gamma error; with several sets also
        ``by_set``: set -> (energy MAE, gamma MAE or None)."""
        energy = torch.cat(self.energy)
        gamma = torch.cat(self.gamma) if self.gamma else None
        by_set = {
            name: (
                float(torch.cat(e).abs().mean()) if e and len(torch.cat(e)) else math.nan,
                float(torch.cat(g).abs().mean()) if g else None,
            )
            for name, (e, g) in sorted(self.sets.items())
        }
        return {
            "loss": float(np.average(self.loss, weights=self.weights)),
            "energy_mae": float(energy.abs().mean()) if len(energy) else math.nan,
            "gamma_mae": None if gamma is None else float(gamma.abs().mean()),
            "gamma_mean_signed_error": None if gamma is None else float(gamma.mean()),
            "by_set": by_set if len(by_set) > 1 else {},
        }


class Objective:
    """The loss of :mod:`surfflows.engine.finetune`'s objective for one batch.

    The batch's own structures enter ``energy_weight * L(E/N) + gamma_weight * L(gamma)``,
    its replay structures ``replay_weight * L(E/N)``; :meth:`force_terms` adds
    ``force_weight * L(F)`` of the force subset's own structures and
    ``replay_weight * (force_weight * L(F) + stress_weight * L(S))`` of its replay ones.
    ``anchors`` pairs each trainable parameter with its parent value; with
    ``settings.anchor_weight > 0``, :meth:`anchor_penalty` is the L2-SP term
    ``anchor_weight * sum((theta - theta_parent)^2)`` added to every training step.
    """

    def __init__(
        self,
        settings: FineTuneSettings,
        anchors: Sequence[tuple[Tensor, Tensor]] = (),
        heads: Mapping[str, nn.ModuleDict] | None = None,
    ):
        self.settings = settings
        self.anchors = list(anchors)
        self.heads = heads
        if settings.criterion == "mse":
            self.criterion = nn.MSELoss()
        elif settings.criterion == "l1":
            self.criterion = nn.L1Loss()
        else:
            self.criterion = nn.HuberLoss(delta=settings.huber_delta)

    def __call__(self, batch: Batch, energy: Tensor) -> Tensor:
        s = self.settings
        own = batch.energy_mask & ~batch.replay  # gamma-only slabs have no energy label
        replay = batch.replay
        loss = energy.new_zeros(())
        if own.any():
            loss = s.energy_weight * self.criterion(energy[own], batch.energy_per_atom[own])
        if len(batch.gamma_ref) and s.gamma_weight > 0:
            gamma = gamma_j_per_m2(energy, batch)
            loss = loss + s.gamma_weight * self.criterion(gamma, batch.gamma_ref)
        if replay.any() and s.replay_weight > 0:
            loss = loss + s.replay_weight * self.criterion(
                energy[replay], batch.energy_per_atom[replay]
            )
        return loss

    def force_terms(self, batch: Batch, model: CHGNet) -> Tensor | None:
        """Force (and replay stress) loss of a random ``force_fraction`` of the batch's
        force-labelled structures, by CHGNet's full forward pass; None if it has none."""
        s = self.settings
        rows = force_subset(batch, s.force_fraction)
        if not rows:
            return None
        replay = [bool(batch.replay[i]) for i in rows]
        with_stress = any(replay) and s.replay_weight > 0 and s.stress_weight > 0
        prediction = predict_rows(model, batch, rows, with_stress, self.heads)
        loss = torch.zeros(())
        for is_replay, weight in ((False, 1.0), (True, s.replay_weight)):
            picked = [j for j, r in enumerate(replay) if r == is_replay]
            if not picked or weight == 0:
                continue
            force_loss = self.criterion(
                torch.cat([prediction["f"][j] for j in picked]),
                torch.cat([batch.forces[rows[j]] for j in picked]),
            )
            loss = loss + weight * s.force_weight * force_loss
            if is_replay and with_stress:
                stress_loss = self.criterion(
                    torch.stack([prediction["s"][j] for j in picked]),
                    torch.stack([batch.stress[rows[j]] for j in picked]),
                )
                loss = loss + weight * s.stress_weight * stress_loss
        return loss

    def anchor_penalty(self) -> Tensor | None:
        """L2-SP penalty of the trainable parameters' distance from the parent, or None."""
        if self.settings.anchor_weight == 0 or not self.anchors:
            return None
        distance = sum(((p - p0) ** 2).sum() for p, p0 in self.anchors)
        return self.settings.anchor_weight * distance


#: The validation errors of a run without validation data (a final model, all data trained).
NO_VALIDATION: dict[str, Any] = {
    "loss": math.nan,
    "energy_mae": math.nan,
    "gamma_mae": None,
    "gamma_mean_signed_error": None,
    "by_set": {},
}


def run_epoch(
    model: CHGNet,
    batches: Sequence[Batch],
    cut: int | None,
    objective: Objective,
    optimizer: torch.optim.Optimizer | None = None,
    order: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """One pass over ``batches`` (in ``order``): a training epoch with ``optimizer``, else an
    evaluation. Returns the mean loss, energy MAE (eV/atom) of the batches' own
    structures, gamma MAE and mean signed gamma error (J/m²); forces enter the loss only
    when training with force_weight > 0 (:meth:`Objective.force_terms`).
    """
    with_forces = optimizer is not None and objective.settings.force_weight > 0
    errors = EpochErrors()
    for b in order if order is not None else range(len(batches)):
        batch = batches[b]
        with torch.set_grad_enabled(optimizer is not None):
            energy = forward_batch(model, batch, cut, objective.heads)
            loss = objective(batch, energy)
            force_loss = objective.force_terms(batch, model) if with_forces else None
            if force_loss is not None:
                loss = loss + force_loss
        if optimizer is not None:
            penalty = objective.anchor_penalty()
            if penalty is not None:
                loss = loss + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors.add(batch, energy, loss.detach())
    return errors.summary()


def cosine_lr(settings: FineTuneSettings, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (1-based): cosine from lr to lr * lr_decay_fraction."""
    low = settings.learning_rate * settings.lr_decay_fraction
    progress = (epoch - 1) / max(settings.epochs - 1, 1)
    return low + (settings.learning_rate - low) * (1 + math.cos(math.pi * progress)) / 2


def make_optimizer(
    parent: CHGNet, model: CHGNet, heads: TrainingHeads, settings: FineTuneSettings
) -> tuple[Objective, torch.optim.Optimizer | None]:
    """The objective, its L2-SP anchors at the parent's weights, and AdamW over the trainable
    parameters of the model and the extra heads (None at X = 0: nothing to optimize)."""
    parent_values = dict(parent.named_parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable += [
        (n, p)
        for name, head in heads.modules.items()
        if name != heads.default
        for n, p in head.named_parameters()
        if p.requires_grad
    ]
    objective = Objective(
        settings, [(p, parent_values[n].detach()) for n, p in trainable], heads.modules or None
    )
    parameters = [p for _, p in trainable]
    optimizer = (
        torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        if parameters
        else None
    )
    return objective, optimizer
