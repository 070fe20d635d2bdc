"""Files of a fine-tune's work folder: the resumable state and the best checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from chgnet.model import CHGNet

from surfflows.engine.finetune.data import ReferenceData
from surfflows.engine.finetune.heads import Head, TrainingHeads
from surfflows.schemas.finetune import FineTuneSettings

#: Checkpoint files in a fine-tune work folder.
LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "best.pth.tar"
#: Settings a run may change and still resume (same work folder, same checkpoint).
RESUME_IGNORED = frozenset({"epochs", "patience"})


def same_run(saved: dict[str, Any], settings: FineTuneSettings) -> bool:
    """Whether saved settings are these, apart from the run's length and patience."""
    kept = FineTuneSettings.model_validate(saved).model_dump(exclude=RESUME_IGNORED)
    return kept == settings.model_dump(exclude=RESUME_IGNORED)


def saved_run(
    last: Path, settings: FineTuneSettings, train: ReferenceData, val: ReferenceData
) -> dict[str, Any] | None:
    """The resumable state in ``last`` if there is one; it must be of these settings and data."""
    saved = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if saved is not None and not same_run(saved["settings"], settings):
        raise ValueError(f"{last} was written with other settings: use another work folder")
    if saved is not None and (saved["train_keys"], saved["val_keys"]) != (train.keys, val.keys):
        raise ValueError(f"{last} was trained on other data: use another work folder")
    return saved


def write_best_checkpoint(
    path: Path, model: CHGNet, heads: Sequence[Head], trained: TrainingHeads
) -> None:
    """``best.pth.tar``: the model with its default head (``CHGNet.from_file`` loads it) and,
    with several heads, every head's state with its level of theory and sets."""
    checkpoint: dict[str, Any] = {"model": model.as_dict()}
    if trained.modules:
        checkpoint |= {
            "heads": {
                h.name: {
                    "state_dict": trained.modules[h.name].state_dict(),
                    "level_of_theory": h.level_of_theory,
                    "sets": list(h.sets),
                }
                for h in heads
            },
            "default_head": trained.default,
        }
    torch.save(checkpoint, path)
