"""Checking that a file is a CHGNet checkpoint before anything uses or caches it."""

from __future__ import annotations

from pathlib import Path


def check_checkpoint(path: str | Path) -> None:
    """Raise ValueError unless ``path`` is a CHGNet checkpoint.

    The file is read with ``torch.load(weights_only=True)``, which runs no code from the
    file (CHGNet's own ``from_file`` unpickles anything), and must hold
    ``{"model": {"model_args": ..., "state_dict": ...}}`` as ``CHGNet.as_dict`` writes it.

    Parameters
    ----------
    path
        The checkpoint file.

    Raises
    ------
    ValueError
        The file is not a torch file, holds objects beyond tensors and plain data, or
        lacks the CHGNet fields; the message names the file.
    """
    import torch

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign or crafted file
        raise ValueError(
            f"checkpoint {path} is not a CHGNet checkpoint (not readable as weights only: "
            f"{_reason(exc)})"
        ) from None
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or not {"model_args", "state_dict"} <= model.keys():
        raise ValueError(
            f"checkpoint {path} is not a CHGNet checkpoint: expected a dict with "
            "model.model_args and model.state_dict (as CHGNet.as_dict writes)"
        )


def checkpoint_heads(path: str | Path) -> tuple[str | None, dict[str, dict]]:
    """The default head and the heads (name -> level_of_theory, sets) of a checkpoint file.

    A checkpoint with one head (every single-set fine-tune) has none: ``(None, {})``.
    """
    import torch

    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    heads = {
        name: {"level_of_theory": head.get("level_of_theory", ""), "sets": head.get("sets", [])}
        for name, head in (state.get("heads") or {}).items()
    }
    return state.get("default_head"), heads


def _reason(exc: Exception) -> str:
    """The specific line of torch's weights-only error (not its advice to load unsafely)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    generic = ("Weights only load failed", "Please file an issue", "Check the documentation")
    specific = [line for line in lines if not line.startswith(generic)]
    if specific:
        return specific[0]
    return lines[0] if lines else type(exc).__name__
