"""Which CHGNet a result came from, and loading it once per process.

A :class:`ModelSpec` names either a pretrained CHGNet that ships inside the chgnet
wheel (``0.3.0``, ``0.2.0``, ``r2scan``) or a checkpoint file identified by its
sha256. Its :attr:`ModelSpec.model_id` is the key that every stored result carries,
so builders can compare models and process a new one incrementally.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, model_validator

if TYPE_CHECKING:
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator

PRETRAINED_VERSIONS = ("0.3.0", "0.2.0", "r2scan")


class ModelSpec(BaseModel):
    """A CHGNet model: a pretrained version, or a checkpoint identified by sha256.

    Examples
    --------
    >>> ModelSpec().model_id
    'chgnet-0.3.0'
    >>> ModelSpec.parse("chgnet-r2scan").version
    'r2scan'
    """

    kind: Literal["pretrained", "checkpoint"] = Field(
        default="pretrained", description="Pretrained CHGNet from the wheel, or a checkpoint."
    )
    version: str | None = Field(
        default="0.3.0", description=f"Pretrained version, one of {PRETRAINED_VERSIONS}."
    )
    sha256: str | None = Field(
        default=None, description="sha256 of the checkpoint file (identity of a fine-tuned model)."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Path of the checkpoint file on the machine that made the spec; a worker "
        "without it fetches the bytes from the model registry by sha256.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.kind == "pretrained":
            if self.version not in PRETRAINED_VERSIONS:
                raise ValueError(
                    f"unknown pretrained CHGNet version {self.version!r}; "
                    f"choose one of {PRETRAINED_VERSIONS}"
                )
        else:
            if not self.sha256 or len(self.sha256) != 64:
                raise ValueError("a checkpoint ModelSpec needs the 64-hex-digit sha256 of its file")
            self.version = None
        return self

    @property
    def model_id(self) -> str:
        """Stable identity stored on every result: ``chgnet-<version>`` or ``chgnet-ft-<sha12>``."""
        if self.kind == "pretrained":
            return f"chgnet-{self.version}"
        return f"chgnet-ft-{self.sha256[:12]}"

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ModelSpec:
        """Spec of a checkpoint file on disk, its identity being the file's sha256."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        return cls(kind="checkpoint", sha256=file_sha256(path), checkpoint=str(path.resolve()))

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Parse a command-line model name, without a database query.

        Accepts ``chgnet-0.3.0`` / ``0.3.0`` (likewise 0.2.0, r2scan), a checkpoint path or
        ``sha256:<64 hex digits>``. A shorter registered name (``chgnet-ft-<sha prefix>``)
        needs the registry: :func:`surfflows.io.registry.resolve_model`.
        """
        name = text.removeprefix("chgnet-") if text.startswith("chgnet-") else text
        if name in PRETRAINED_VERSIONS:
            return cls(version=name)
        if Path(text).is_file():
            return cls.from_checkpoint(text)
        sha = text.removeprefix("sha256:")
        if text.startswith("sha256:") and len(sha) == 64:
            return cls(kind="checkpoint", sha256=sha)
        raise ValueError(
            f"model {text!r} is neither a pretrained CHGNet ({', '.join(PRETRAINED_VERSIONS)}), "
            "an existing checkpoint file, nor sha256:<64 hex digits>; a registered model "
            "(chgnet-ft-<sha prefix>) is found in the JobStore by surfflows.io.registry"
        )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@functools.lru_cache(maxsize=4)
def _load_pretrained(version: str) -> CHGNet:
    from chgnet.model import CHGNet

    return CHGNet.load(model_name=version, verbose=False)


#: Checkpoint models loaded in this process, by sha256 (a few at most).
_CHECKPOINTS: dict[str, CHGNet] = {}


def _load_checkpoint(sha256: str, data: bytes) -> CHGNet:
    import io

    import torch
    from chgnet.model import CHGNet

    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ValueError(f"checkpoint bytes have sha256 {actual}, expected {sha256}")
    # Weights only: bytes from a database must not run code (CHGNet checkpoints need no more).
    state = torch.load(io.BytesIO(data), map_location=torch.device("cpu"), weights_only=True)
    if len(_CHECKPOINTS) >= 4:
        _CHECKPOINTS.pop(next(iter(_CHECKPOINTS)))
    _CHECKPOINTS[sha256] = CHGNet.from_dict(state["model"])
    return _CHECKPOINTS[sha256]


def load_model(spec: ModelSpec, checkpoint: bytes | None = None) -> CHGNet:
    """Load the CHGNet of ``spec`` once per process (later calls return the same object).

    Parameters
    ----------
    spec
        The model.
    checkpoint
        The checkpoint file's bytes (a job gets them as an input resolved from the
        JobStore, see :mod:`surfflows.io.registry`); else the spec's own file if it is on
        this machine with the right sha256, else a model this process loaded before.
    """
    if spec.kind == "pretrained":
        model = _load_pretrained(spec.version)
    elif spec.sha256 in _CHECKPOINTS:
        model = _CHECKPOINTS[spec.sha256]
    elif checkpoint is not None:
        model = _load_checkpoint(spec.sha256, checkpoint)
    elif spec.checkpoint and Path(spec.checkpoint).is_file():
        model = _load_checkpoint(spec.sha256, Path(spec.checkpoint).read_bytes())
    else:
        raise FileNotFoundError(
            f"checkpoint {spec.model_id} is not loaded: pass its bytes (registered in the "
            "JobStore, surfflows.io.registry.checkpoint_reference) or its file"
        )
    model.eval()
    return model


def get_calculator(spec: ModelSpec, checkpoint: bytes | None = None) -> CHGNetCalculator:
    """An ASE calculator around the cached model of ``spec`` (one per model and process).

    ASE calculators recompute whenever the atoms they are asked about change, so one
    calculator serves consecutive relaxations. ``checkpoint`` as for :func:`load_model`.
    """
    from chgnet.model.dynamics import CHGNetCalculator

    model = load_model(spec, checkpoint)
    key = spec.model_id
    if key not in _CALCULATORS or _CALCULATORS[key].model is not model:
        _CALCULATORS[key] = CHGNetCalculator(model=model, on_isolated_atoms="ignore")
    return _CALCULATORS[key]


_CALCULATORS: dict[str, CHGNetCalculator] = {}
