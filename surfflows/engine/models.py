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
    from pymatgen.core import Structure

PRETRAINED_VERSIONS = ("0.3.0", "0.2.0", "r2scan")
#: CHGNet's atom embedding covers atomic numbers 1..94 (H..Pu).
MAX_ATOMIC_NUMBER = 94


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
        """Parse a command-line model name.

        Accepts ``chgnet-0.3.0`` / ``0.3.0`` (likewise 0.2.0, r2scan), a checkpoint path,
        ``sha256:<hex>`` or ``chgnet-ft-<sha prefix>`` (looked up in the model registry).
        """
        name = text.removeprefix("chgnet-") if text.startswith("chgnet-") else text
        if name in PRETRAINED_VERSIONS:
            return cls(version=name)
        if Path(text).is_file():
            return cls.from_checkpoint(text)
        if text.startswith(("sha256:", "chgnet-ft-")):
            from surfflows.io.registry import find_model

            return find_model(text.removeprefix("sha256:").removeprefix("chgnet-ft-"))
        raise ValueError(
            f"model {text!r} is neither a pretrained CHGNet ({', '.join(PRETRAINED_VERSIONS)}), "
            "an existing checkpoint file, nor a registered model (sha256:<hex> or chgnet-ft-<hex>)"
        )


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_elements(structure: Structure, where: str = "structure") -> None:
    """Raise ValueError if CHGNet cannot embed an element of ``structure``."""
    bad = sorted({el.symbol for el in structure.composition if el.Z > MAX_ATOMIC_NUMBER})
    if bad:
        raise ValueError(
            f"{where} ({structure.composition.reduced_formula}) contains {', '.join(bad)}: "
            f"CHGNet handles atomic numbers 1-{MAX_ATOMIC_NUMBER} only"
        )


def _configure_torch() -> None:
    from surfflows.settings import get_settings

    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


@functools.lru_cache(maxsize=4)
def _load_cached(kind: str, version: str | None, sha256: str | None) -> CHGNet:
    from chgnet.model import CHGNet

    _configure_torch()
    if kind == "pretrained":
        return CHGNet.load(model_name=version, verbose=False)
    from surfflows.io.registry import checkpoint_path

    return CHGNet.from_file(str(checkpoint_path(sha256)))


def load_model(spec: ModelSpec) -> CHGNet:
    """Load the CHGNet of ``spec`` once per process (later calls return the same object).

    A checkpoint is found by sha256: the spec's own path if its hash matches, else the
    local model cache, else the registry in the database (fetched and cached).
    """
    if spec.kind == "checkpoint" and spec.checkpoint and Path(spec.checkpoint).is_file():
        from surfflows.io.registry import cache_checkpoint

        cache_checkpoint(spec.checkpoint, spec.sha256)
    model = _load_cached(spec.kind, spec.version, spec.sha256)
    model.eval()
    return model


def get_calculator(spec: ModelSpec) -> CHGNetCalculator:
    """An ASE calculator around the cached model of ``spec`` (one per model and process).

    ASE calculators recompute whenever the atoms they are asked about change, so one
    calculator serves consecutive relaxations.
    """
    load_model(spec)  # caches a checkpoint given by path before the keyed lookup
    return _calculator_cached(spec.kind, spec.version, spec.sha256)


@functools.lru_cache(maxsize=4)
def _calculator_cached(kind: str, version: str | None, sha256: str | None) -> CHGNetCalculator:
    from chgnet.model.dynamics import CHGNetCalculator

    spec = ModelSpec(kind=kind, version=version, sha256=sha256)
    return CHGNetCalculator(model=load_model(spec), on_isolated_atoms="ignore")
