"""The peer baseline: fine-tuning with chgnet's own ``Trainer``, as a user would instead.

The recipe (``FineTuneSettings.recipe == "chgnet_trainer"``) follows CHGNet's fine-tuning
example (``examples/fine_tuning.ipynb`` of CederGroupHub/chgnet) on the same train and val
parts that :func:`surfflows.engine.finetune.finetune` uses:

- **Frozen layers as in the example**: ``atom_embedding``, ``bond_embedding``,
  ``angle_embedding``, the bond and angle basis expansions, every ``atom_conv`` but the
  last, every ``bond_conv`` and ``angle`` layer. Trained: the last ``atom_conv``, the
  readout (``readout_norm``, ``mlp``) and the bond weights (``bond_weights_ag``,
  ``bond_weights_bg``, which the example leaves unfrozen), and with
  ``train_composition_model`` the AtomRef, by gradient, as chgnet's Trainer advises for
  data of another functional. ``site_wise`` (magnetic moments) is frozen: with targets
  ``"ef"`` no gradient reaches it either way.
- **Data**: chgnet's :class:`~chgnet.data.dataset.StructureData` of every structure with
  an energy label, energies per atom; forces are the record's DFT forces where it has them,
  else zero (DFT-relaxed slabs and bulks, ``zero_force_labels``). Gamma-only slabs have no
  energy and are dropped (:func:`energy_labelled`, reason ``gamma_only``).
- **Training**: ``Trainer(targets="ef", optimizer="Adam", scheduler="CosLR",
  criterion="MSE")`` with ``energy_weight`` and ``force_weight`` as loss ratios, on CPU,
  seeded (torch, the loader's shuffling). The Trainer writes its own files into the work
  folder (``epoch*``, ``bestE_*``, ``bestF_*``); its ``bestE`` file (lowest validation energy
  MAE, the model chgnet's Trainer keeps) is the result and loads with ``CHGNet.from_file``.
  There is no resume: a rerun in the same folder trains again and replaces the files.

Each epoch's :class:`~surfflows.schemas.finetune.EpochRecord` holds what chgnet reports
(mean training loss, energy and force MAE of train and val) and surfflows' validation gamma
MAE on the val pairs (energies only, one forward pass over the val structures). Epoch 0
is the parent, evaluated by the Trainer's own validation on both parts.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import logging
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import torch
from chgnet.data.dataset import StructureData, collate_graphs
from chgnet.model import CHGNet
from chgnet.trainer import Trainer
from pymatgen.core import Element
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2
from surfflows.engine.finetune import (
    FineTuneResult,
    FreezeInfo,
    ReferenceData,
    parameter_modules,
    predict_energies,
)
from surfflows.schemas.finetune import EpochRecord, FineTuneSettings

logger = logging.getLogger(__name__)

#: chgnet's Trainer names of our criteria.
_CRITERIA = {"mse": "MSE", "huber": "Huber", "l1": "MAE"}
_BEST_FILE = re.compile(r"bestE_epoch(\d+)_.*\.pth\.tar$")


def freeze_as_chgnet_example(model: CHGNet, train_composition_model: bool) -> FreezeInfo:
    """Freeze the layers that CHGNet's fine-tuning example freezes (and ``site_wise``).

    Parameters
    ----------
    model
        The CHGNet to fine-tune; ``requires_grad`` is set in place.
    train_composition_model
        Whether AtomRef is trained (chgnet's ``Trainer.train`` sets its ``requires_grad``).

    Returns
    -------
    FreezeInfo
        ``depth`` 2 (the last ``atom_conv`` and the readout, plus the bond weights);
        ``optimized_parameters`` counts every parameter that gets a gradient.
    """
    frozen_layers = [
        model.atom_embedding,
        model.bond_embedding,
        model.angle_embedding,
        model.bond_basis_expansion,
        model.angle_basis_expansion,
        model.atom_conv_layers[:-1],
        model.bond_conv_layers,
        model.angle_layers,
        model.site_wise,
    ]
    for parameter in model.parameters():
        parameter.requires_grad = True
    for layer in frozen_layers:
        for parameter in layer.parameters():
            parameter.requires_grad = False
    for parameter in model.composition_model.parameters():
        parameter.requires_grad = train_composition_model
    modules = dict(model.named_modules())
    trainable = [
        name
        for name in parameter_modules(model)
        if any(p.requires_grad for p in modules[name].parameters())
    ]
    count = sum(p.numel() for name in trainable for p in modules[name].parameters())
    return FreezeInfo(
        depth=2,
        trainable_modules=trainable,
        frozen_modules=[n for n in parameter_modules(model) if n not in trainable],
        trainable_parameters=count,
        optimized_parameters=count,
    )


def energy_labelled(data: ReferenceData) -> ReferenceData:
    """``data`` without its gamma-only slabs (no energy label), under ``dropped["gamma_only"]``.

    chgnet's Trainer fits energies (and forces) only; the pairs of the kept slabs stay, for
    the validation gamma MAE.
    """
    keep = [i for i, s in enumerate(data.samples) if s.energy is not None]
    index = {old: new for new, old in enumerate(keep)}
    dropped = dict(data.dropped)
    gamma_only = [s.key for s in data.samples if s.energy is None]
    if gamma_only:
        dropped["gamma_only"] = dropped.get("gamma_only", []) + gamma_only
    pairs = [
        dataclasses.replace(p, slab=index[p.slab], bulk=index[p.bulk])
        for p in data.pairs
        if p.slab in index and p.bulk in index
    ]
    return ReferenceData([data.samples[i] for i in keep], pairs, dropped)


def structure_data(data: ReferenceData, model: CHGNet) -> StructureData:
    """chgnet's dataset of ``data``: energies per atom (eV/atom), forces (eV/Å), in order.

    Raises
    ------
    ValueError
        If a structure has no energy or no force label (name the first few).
    """
    unlabelled = [s.key for s in data.samples if s.energy is None or s.forces is None]
    if unlabelled:
        raise ValueError(
            f"chgnet's Trainer needs an energy and forces for every structure; {len(unlabelled)} "
            f"lack one (e.g. {', '.join(unlabelled[:3])}): drop gamma-only slabs "
            "(energy_labelled) and use zero_force_labels"
        )
    return StructureData(
        structures=[s.structure for s in data.samples],
        energies=[s.energy / s.n_atoms for s in data.samples],
        forces=[s.forces for s in data.samples],
        structure_ids=data.keys,
        graph_converter=model.graph_converter,
        shuffle=False,
    )


def gamma_errors(model: CHGNet, data: ReferenceData) -> np.ndarray:
    """gamma_model - gamma_ref (J/m²) of the pairs of ``data``, single point, energies only."""
    if not data.pairs:
        return np.empty(0)
    energy = predict_energies(model, [s.graph for s in data.samples]).numpy()
    total = energy * np.array([s.n_atoms for s in data.samples])
    return np.array(
        [
            (total[p.slab] - p.n_units * total[p.bulk]) / (2 * p.area) * EV_PER_A2_TO_J_PER_M2
            - p.gamma_ref
            for p in data.pairs
        ]
    )


class _LoggedLoss(nn.Module):
    """chgnet's CombinedLoss, keeping each training batch's loss and ticking a progress bar.

    A loss is kept when the model is in training mode, or always while ``keep_all`` is set
    (the parent's training loss, from the Trainer's validation pass in eval mode).
    """

    def __init__(self, criterion: nn.Module, model: CHGNet) -> None:
        super().__init__()
        self.criterion = criterion
        self.model = model
        self.losses: list[tuple[float, int]] = []
        self.keep_all = False
        self.bar: tqdm | None = None

    def forward(self, targets: dict, prediction: dict) -> dict:
        out = self.criterion(targets, prediction)
        if self.model.training or self.keep_all:
            self.losses.append((float(out["loss"].detach()), len(prediction["e"])))
        if self.bar is not None:
            self.bar.update()
        return out

    def mean_loss(self) -> float:
        """Mean training loss since the last call (weighted by structures), then reset."""
        values, weights = zip(*self.losses, strict=True) if self.losses else ((np.nan,), (1,))
        self.losses = []
        return float(np.average(values, weights=weights))


class _Trainer(Trainer):
    """chgnet's Trainer calling ``on_epoch(epoch, val_mae)`` after it saves each epoch."""

    on_epoch: Callable[[int, dict], None] | None = None

    def save_checkpoint(self, epoch: int, mae_error: dict, save_dir: str) -> None:
        super().save_checkpoint(epoch, mae_error, save_dir)
        if self.on_epoch is not None:
            self.on_epoch(epoch, mae_error)


class _LogWriter(io.TextIOBase):
    """A text stream that sends each printed line to ``logger.debug``."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                logger.debug("chgnet: %s", line.rstrip())
        return len(text)


@contextlib.contextmanager
def _prints_to_log() -> Iterator[TextIO]:
    """Route chgnet's prints (Trainer, StructureData) to this module's debug log; yield
    the stream printing went to before, for what should still be seen."""
    before = sys.stdout
    with contextlib.redirect_stdout(_LogWriter()):
        yield before


def _atomref_shift(model: CHGNet, parent: CHGNet, data: ReferenceData) -> dict[str, float]:
    """AtomRef weight change (eV/atom) of the elements of ``data``."""
    change = model.composition_model.fc.weight - parent.composition_model.fc.weight
    present = sorted({int(z) for s in data.samples for z in s.graph.atomic_number})
    return {Element.from_Z(z).symbol: float(change[0, z - 1]) for z in present}


def chgnet_trainer_finetune(
    parent: CHGNet,
    train: ReferenceData,
    val: ReferenceData,
    settings: FineTuneSettings,
    work_dir: str | Path,
    *,
    progress: Callable[[EpochRecord], None] | None = None,
) -> FineTuneResult:
    """Fine-tune a copy of ``parent`` with chgnet's Trainer (see the module docstring).

    Parameters
    ----------
    parent
        Pretrained CHGNet (not modified).
    train, val
        Training and validation data with energy and force labels on every structure
        (:func:`energy_labelled` of :func:`~surfflows.engine.finetune.reference_data` with
        ``zero_force_labels``); disjoint materials, the test part never enters.
    settings
        A ``recipe="chgnet_trainer"`` settings object: ``epochs``, ``learning_rate``,
        ``lr_decay_fraction``, ``weight_decay``, ``batch_size``, ``energy_weight``,
        ``force_weight``, ``criterion``, ``huber_delta``, ``train_composition_model`` and
        ``seed`` are used.
    work_dir
        Folder for the Trainer's files.
    progress
        Called with each epoch's record.

    Returns
    -------
    FineTuneResult
        The ``bestE`` model (lowest validation energy MAE) and its file, the history
        (epoch 0: the parent), the AtomRef change.

    Raises
    ------
    ValueError
        If the settings are not of this recipe, or a part is empty or lacks labels.
    """
    start_time = time.perf_counter()
    if settings.recipe != "chgnet_trainer":
        raise ValueError(f"settings are of recipe {settings.recipe!r}, not 'chgnet_trainer'")
    if not train.samples or not val.samples:
        raise ValueError(
            "need training and validation structures with energy labels, got "
            f"{len(train.samples)} and {len(val.samples)}"
        )
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(parent)
    freeze = freeze_as_chgnet_example(model, settings.train_composition_model)
    with _prints_to_log() as stdout:
        datasets = {"train": structure_data(train, model), "val": structure_data(val, model)}
        generator = torch.Generator().manual_seed(settings.seed)
        loaders = {
            part: DataLoader(
                dataset,
                batch_size=settings.batch_size,
                shuffle=part == "train",
                collate_fn=collate_graphs,
                generator=generator if part == "train" else None,
            )
            for part, dataset in datasets.items()
        }
        trainer = _Trainer(
            model=model,
            targets="ef",
            energy_loss_ratio=settings.energy_weight,
            force_loss_ratio=settings.force_weight,
            optimizer="Adam",
            weight_decay=settings.weight_decay,
            scheduler="CosLR",
            scheduler_params={"decay_fraction": settings.lr_decay_fraction},
            criterion=_CRITERIA[settings.criterion],
            delta=settings.huber_delta,
            epochs=settings.epochs,
            learning_rate=settings.learning_rate,
            print_freq=max(1, len(loaders["train"]) // 4),
            torch_seed=settings.seed,
            data_seed=settings.seed,
            use_device="cpu",
        )
        loss = _LoggedLoss(trainer.criterion, model)
        trainer.criterion = loss
        setup_seconds = time.perf_counter() - start_time

        def validate(part: str) -> dict:
            with tqdm(total=len(loaders[part]), desc=f"chgnet Trainer: parent on {part}") as bar:
                loss.bar, loss.keep_all = bar, part == "train"
                mae = trainer._validate(loaders[part])
            loss.keep_all = False
            return mae

        def record(epoch: int, train_mae: dict, val_mae: dict, lr: float, tick: float) -> None:
            model.eval()
            errors = gamma_errors(model, val)
            history.append(
                EpochRecord(
                    epoch=epoch,
                    train_loss=loss.mean_loss(),
                    train_energy_mae=train_mae["e"],
                    train_gamma_mae=None,
                    val_energy_mae=val_mae["e"],
                    val_gamma_mae=float(np.abs(errors).mean()) if len(errors) else None,
                    val_gamma_mean_signed_error=float(errors.mean()) if len(errors) else None,
                    val_force_mae=val_mae["f"],
                    learning_rate=lr,
                    seconds=time.perf_counter() - tick,
                )
            )
            if progress:
                with contextlib.redirect_stdout(stdout):  # e.g. a rich handler on stdout
                    progress(history[-1])

        history: list[EpochRecord] = []
        tick = time.perf_counter()
        train_mae = validate("train")  # the parent by the Trainer's own validation pass
        record(0, train_mae, validate("val"), 0.0, tick)
        state = {"tick": time.perf_counter(), "lr": settings.learning_rate, "bar": None}

        def new_bar(epoch: int) -> None:
            total = len(loaders["train"]) + len(loaders["val"])
            state["bar"] = tqdm(total=total, desc=f"chgnet Trainer: epoch {epoch}")
            loss.bar = state["bar"]

        def on_epoch(epoch: int, val_mae: dict) -> None:
            state["bar"].close()
            train_mae = {k: v["train"][-1] for k, v in trainer.training_history.items()}
            record(epoch + 1, train_mae, val_mae, state["lr"], state["tick"])
            state["tick"], state["lr"] = (
                time.perf_counter(),
                trainer.optimizer.param_groups[0]["lr"],
            )
            if epoch + 1 < settings.epochs:
                new_bar(epoch + 2)

        trainer.on_epoch = on_epoch
        new_bar(1)
        try:
            trainer.train(
                loaders["train"],
                loaders["val"],
                save_dir=str(work_dir),
                train_composition_model=settings.train_composition_model,
            )
        finally:
            state["bar"].close()
    best_files = [
        (int(m.group(1)), f) for f in work_dir.iterdir() if (m := _BEST_FILE.match(f.name))
    ]
    if len(history) < 2 or len(best_files) != 1:
        raise RuntimeError(
            f"chgnet's Trainer stopped after {len(history) - 1} epochs (NaN loss?) and left "
            f"{len(best_files)} bestE files in {work_dir}"
        )
    best_epoch, best_checkpoint = best_files[0]
    with _prints_to_log():
        best = CHGNet.from_file(str(best_checkpoint))
    best.eval()
    return FineTuneResult(
        model=best,
        freeze=freeze,
        history=history,
        best_epoch=best_epoch + 1,
        atomref_shift=_atomref_shift(best, parent, train),
        best_checkpoint=best_checkpoint,
        stopped_early=len(history) - 1 < settings.epochs,  # the Trainer's exit on a NaN loss
        resumed_from_epoch=None,
        setup_seconds=setup_seconds,
        wall_seconds=time.perf_counter() - start_time,
    )
