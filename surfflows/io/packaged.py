"""Checkpoints that ship inside the package: ``surfflows/data/models/<name>/``.

Each folder holds one CHGNet checkpoint file and its machine-readable card
(``card.json``, :class:`~surfflows.schemas.models.ModelCard`: sha256, recipe, data,
splits, heads, figures) next to a README. ``chgnet-surf`` is the project's fine-tuned
CHGNet; ``benchmarks/train_chgnet_surf.py`` makes it again. A packaged model is used by
name (:func:`surfflows.io.registry.resolve_model` registers its file in the JobStore by
sha256 on first use); this module only finds and checks the files.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from surfflows.schemas.models import ModelCard, file_sha256

#: Folder of the packaged models (one sub-folder per model).
MODELS_DIR = Path(str(files("surfflows") / "data" / "models"))
CARD_FILE = "card.json"


def packaged_names() -> list[str]:
    """Names of the models shipped in the package (folders with a card)."""
    if not MODELS_DIR.is_dir():
        return []
    return sorted(p.parent.name for p in MODELS_DIR.glob(f"*/{CARD_FILE}"))


def model_card(name: str) -> ModelCard:
    """The card of packaged model ``name``.

    Raises
    ------
    ValueError
        No such packaged model, or its card.json is not a valid card (the message names
        the file).
    """
    path = MODELS_DIR / name / CARD_FILE
    if not path.is_file():
        raise ValueError(
            f"no packaged model {name!r} (packaged: {', '.join(packaged_names()) or 'none'})"
        )
    try:
        return ModelCard.model_validate_json(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not a valid model card: {exc}") from None


def packaged_checkpoint(name: str) -> tuple[Path, ModelCard]:
    """The checkpoint file of packaged model ``name`` and its card, checked by sha256.

    Raises
    ------
    ValueError
        The model is unknown, its file is missing, or the file's sha256 differs from the
        card's (a corrupted or replaced file; nothing is registered then).
    """
    card = model_card(name)
    path = MODELS_DIR / name / card.file
    if not path.is_file():
        raise ValueError(f"packaged model {name}: checkpoint file {path} is missing")
    actual = file_sha256(path)
    if actual != card.sha256:
        raise ValueError(
            f"packaged model {name}: {path} has sha256 {actual}, but its card "
            f"({path.parent / CARD_FILE}) says {card.sha256}; the file is corrupted or was "
            "replaced without its card (rerun benchmarks/train_chgnet_surf.py, or reinstall)"
        )
    return path, card


def registered_parent(output: dict) -> str | None:
    """The model a registered checkpoint was fine-tuned from, or None if unknown.

    ``output`` is the checkpoint's registration in the JobStore: a ``FineTuneDoc`` names
    its parent; a ``CheckpointDoc`` names it in ``metadata["parent_model_id"]`` (given when
    the file was registered), and a packaged model's registration without it (registered
    by an older surfflows) takes its card's parent if the sha256 is the card's.

    Examples
    --------
    >>> registered_parent({"@class": "FineTuneDoc", "parent_model_id": "chgnet-0.3.0"})
    'chgnet-0.3.0'
    """
    if output.get("parent_model_id"):
        return output["parent_model_id"]
    metadata = output.get("metadata") or {}
    if metadata.get("parent_model_id"):
        return metadata["parent_model_id"]
    name = metadata.get("packaged_model")
    if name in packaged_names():
        card = model_card(name)
        if card.sha256 == output.get("sha256"):
            return card.parent
    return None
