"""Which model a result came from: :class:`ModelSpec`, a pure description (no torch).

A :class:`ModelSpec` names one of

* a pretrained CHGNet that ships inside the chgnet wheel (``0.3.0``, ``0.2.0``, ``r2scan``);
* a CHGNet checkpoint file identified by its sha256 (a fine-tuned model);
* any ASE calculator, by import path and keyword arguments (atomate2's ``force_field_name``
  / ``calculator_kwargs`` convention), with short names for the families supported out of
  the box (:data:`CALCULATORS`, e.g. ``sevennet-0``).

Its :attr:`ModelSpec.model_id` is the key that every stored result carries, so builders can
compare models and process a new one incrementally. Loading the model a spec names is the
engine's work (:mod:`surfflows.engine.models`); this module imports neither torch nor any
model package.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from surfflows.core.text import short_repr, validation_summary

PRETRAINED_VERSIONS = ("0.3.0", "0.2.0", "r2scan")

#: Short names of ASE-calculator families supported out of the box: the import path of the
#: calculator and its keyword arguments (packages: ``pip install -e ".[peers]"``).
#: Every entry's checkpoint ships in the ``sevenn`` wheel, so nothing is downloaded at run
#: time: ``sevennet-0`` is SevenNet-0 (11 July 2024; MPtrj, the training set of CHGNet),
#: ``sevennet-l3i5`` the larger SevenNet-l3i5 (l_max 3, 5 interaction layers; MPtrj) and
#: ``sevennet-mf-0`` the multi-fidelity SevenNet-MF-0 (MPtrj PBE/PBE+U and MP r2SCAN) with
#: its ``PBE`` modal, the level of theory of the PBE reference sets.
CALCULATORS: dict[str, dict[str, Any]] = {
    "sevennet-0": {
        "force_field_name": "sevenn.calculator.SevenNetCalculator",
        "calculator_kwargs": {"model": "7net-0_11July2024"},
    },
    "sevennet-l3i5": {
        "force_field_name": "sevenn.calculator.SevenNetCalculator",
        "calculator_kwargs": {"model": "7net-l3i5"},
    },
    "sevennet-mf-0": {
        "force_field_name": "sevenn.calculator.SevenNetCalculator",
        "calculator_kwargs": {"model": "7net-mf-0", "modal": "PBE"},
    },
}


class ModelSpec(BaseModel):
    """A model: a pretrained CHGNet, a CHGNet checkpoint, or an ASE calculator.

    Examples
    --------
    >>> ModelSpec().model_id
    'chgnet-0.3.0'
    >>> ModelSpec.parse("chgnet-r2scan").version
    'r2scan'
    >>> ModelSpec.parse("sevennet-0").force_field_name
    'sevenn.calculator.SevenNetCalculator'
    >>> ModelSpec(kind="calculator", force_field_name="ase.calculators.emt.EMT").model_id
    'emt-d0491a85'
    """

    kind: Literal["pretrained", "checkpoint", "calculator"] = Field(
        default="pretrained",
        description="Pretrained CHGNet from the wheel, a CHGNet checkpoint, or an ASE calculator.",
    )
    version: str | None = Field(
        default="0.3.0", description=f"Pretrained CHGNet version, one of {PRETRAINED_VERSIONS}."
    )
    sha256: str | None = Field(
        default=None, description="sha256 of the checkpoint file (identity of a fine-tuned model)."
    )
    checkpoint: str | None = Field(
        default=None,
        description="Path of the checkpoint file on the machine that made the spec; a worker "
        "without it fetches the bytes from the model registry by sha256.",
    )
    head: str | None = Field(
        default=None,
        description="Readout head of a multi-head checkpoint (one per level of theory, e.g. "
        "'pbe', 'optb88vdw'); kind 'checkpoint' only. None: the checkpoint's own model.",
    )
    force_field_name: str | None = Field(
        default=None,
        description="Import path 'package.module.Callable' of an ASE calculator class (or of a "
        "function returning one), as atomate2's force_field_name; kind 'calculator' only.",
    )
    calculator_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Keyword arguments of the calculator (JSON-serialisable), as atomate2's.",
    )
    name: str | None = Field(
        default=None,
        description="Short name of a calculator (its model_id), e.g. 'sevennet-0'; default "
        "'<callable>-<hash of import path and kwargs>'. For a checkpoint, the name of a "
        "packaged model (e.g. 'chgnet-surf'), shown beside the model_id, which stays "
        "'chgnet-ft-<sha12>'.",
    )
    package: str | None = Field(
        default=None, description="Python package of the model (chgnet, sevenn, ...)."
    )
    package_version: str | None = Field(
        default=None,
        description="Version of that package where the result was computed (set by the job).",
    )

    @field_validator("force_field_name", mode="before")
    @classmethod
    def _import_path(cls, value: Any) -> Any:
        """atomate2's ``{"@module": ..., "@callable": ...}`` form -> ``module.callable``."""
        if isinstance(value, dict):
            if set(value) != {"@module", "@callable"}:
                raise ValueError(
                    f"force_field_name {value!r}: give 'module.Callable' or "
                    "{'@module': ..., '@callable': ...}"
                )
            return f"{value['@module']}.{value['@callable']}"
        return value

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.kind == "pretrained":
            if self.version not in PRETRAINED_VERSIONS:
                raise ValueError(
                    f"unknown pretrained CHGNet version {self.version!r}; "
                    f"choose one of {PRETRAINED_VERSIONS}"
                )
        elif self.kind == "checkpoint":
            if not self.sha256 or len(self.sha256) != 64:
                raise ValueError("a checkpoint ModelSpec needs the 64-hex-digit sha256 of its file")
            self.version = None
        else:
            path = self.force_field_name or ""
            module, _, attr = path.rpartition(".")
            if not (module and attr.isidentifier()):
                raise ValueError(
                    f"calculator import path {path!r} is not of the form 'package.module.Callable'"
                )
            if not_a_calculator_package(path):
                raise ValueError(
                    f"calculator {path!r} is in Python's standard library: a calculator comes "
                    "from a model package (e.g. sevenn.calculator.SevenNetCalculator)"
                )
            try:
                json.dumps(self.calculator_kwargs)
            except TypeError as exc:
                raise ValueError(f"calculator_kwargs of {path} are not JSON: {exc}") from None
            self.version = None
            for name, known in CALCULATORS.items():
                if self.name is None and known == {
                    "force_field_name": path,
                    "calculator_kwargs": self.calculator_kwargs,
                }:
                    self.name = name
        if self.head is not None and self.kind != "checkpoint":
            raise ValueError(
                f"head {self.head!r}: only a fine-tuned checkpoint has heads, not a "
                f"{self.kind} model"
            )
        if self.package is None:
            self.package = (
                "chgnet" if self.kind != "calculator" else self.force_field_name.split(".")[0]
            )
        return self

    @property
    def is_chgnet(self) -> bool:
        """A CHGNet (pretrained or checkpoint): runs in the batched engine."""
        return self.kind != "calculator"

    @property
    def model_id(self) -> str:
        """Stable identity stored on every result.

        ``chgnet-<version>``, ``chgnet-ft-<sha12>`` (``chgnet-ft-<sha12>@<head>`` with a
        head), a calculator's short name, or
        ``<callable>-<first 8 hex digits of the sha256 of import path and kwargs>``.
        """
        if self.kind == "pretrained":
            return f"chgnet-{self.version}"
        if self.kind == "checkpoint":
            head = f"@{self.head}" if self.head else ""
            return f"chgnet-ft-{self.sha256[:12]}{head}"
        if self.name:
            return self.name
        text = json.dumps([self.force_field_name, self.calculator_kwargs], sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:8]
        return f"{self.force_field_name.rpartition('.')[2].lower()}-{digest}"

    @property
    def label(self) -> str:
        """What people read: the model_id, with a packaged checkpoint's name beside it."""
        if self.kind == "checkpoint" and self.name:
            return f"{self.name} ({self.model_id})"
        return self.model_id

    def __eq__(self, other: object) -> bool:
        """Same model: every field equal but ``package_version`` (a record, not an identity)."""
        if not isinstance(other, ModelSpec):
            return NotImplemented
        skip = {"package_version"}
        return self.model_dump(exclude=skip) == other.model_dump(exclude=skip)

    def installed(self) -> ModelSpec:
        """This spec with the version of its package in this process (what a job records)."""
        try:
            version = importlib.metadata.version(self.package)
        except importlib.metadata.PackageNotFoundError:
            version = None
        return self.model_copy(update={"package_version": version})

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> ModelSpec:
        """Spec of a checkpoint file on disk, its identity being the file's sha256."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {path} does not exist")
        return cls(kind="checkpoint", sha256=file_sha256(path), checkpoint=str(path.resolve()))

    @classmethod
    def calculator(
        cls, force_field_name: str | dict, calculator_kwargs: dict | None = None, **fields
    ) -> ModelSpec:
        """Spec of an ASE calculator by import path and keyword arguments."""
        return cls(
            kind="calculator",
            force_field_name=force_field_name,
            calculator_kwargs=calculator_kwargs or {},
            **fields,
        )

    @classmethod
    def parse(cls, text: str | dict) -> ModelSpec:
        """Parse a model name from the command line or a campaign file, without a database query.

        Accepts ``chgnet-0.3.0`` / ``0.3.0`` (likewise 0.2.0, r2scan), a checkpoint path,
        ``sha256:<64 hex digits>`` (either with ``@<head>``: a head of a multi-head
        checkpoint), a short calculator name (:data:`CALCULATORS`), an import path
        ``package.module.Class``, or a mapping / JSON object
        ``{"force_field_name": ..., "calculator_kwargs": {...}}`` (optionally ``name``). A
        shorter registered name (``chgnet-ft-<sha prefix>``) needs the registry:
        :func:`surfflows.io.registry.resolve_model`.
        """
        try:
            return cls._parse(text)
        except ValidationError as exc:
            raise ValueError(f"model {short_repr(text)}: {validation_summary(exc)}") from None

    @classmethod
    def _parse(cls, text: str | dict) -> ModelSpec:
        if isinstance(text, str) and text.lstrip().startswith("{"):
            try:
                text = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"model {short_repr(text)} is not valid JSON: {exc}") from None
        if isinstance(text, dict):
            unknown = set(text) - {"force_field_name", "calculator_kwargs", "name"}
            if unknown or "force_field_name" not in text:
                raise ValueError(
                    f"model {short_repr(text)}: a calculator mapping has force_field_name and "
                    "optional calculator_kwargs and name; unknown keys: "
                    f"{sorted(unknown) or 'none'}"
                )
            return cls.calculator(**text)
        name = text.removeprefix("chgnet-") if text.startswith("chgnet-") else text
        if name in PRETRAINED_VERSIONS:
            return cls(version=name)
        if text.lower() in CALCULATORS:
            return cls.calculator(**CALCULATORS[text.lower()], name=text.lower())
        if names_a_file(text):
            return cls.from_checkpoint(text)
        base, at, head = text.rpartition("@")
        if at and head and base:
            spec = cls._parse(base)
            if spec.kind != "checkpoint":
                raise ValueError(
                    f"model {short_repr(text)}: only a fine-tuned checkpoint has heads"
                )
            return spec.model_copy(update={"head": head})
        sha = text.removeprefix("sha256:")
        if text.startswith("sha256:") and len(sha) == 64:
            return cls(kind="checkpoint", sha256=sha)
        if "." in text and all(part.isidentifier() for part in text.split(".")):
            return cls.calculator(text)
        raise ValueError(
            f"model {short_repr(text)} is neither a pretrained CHGNet "
            f"({', '.join(PRETRAINED_VERSIONS)}), "
            f"a supported calculator ({', '.join(CALCULATORS)}), an import path "
            "'package.module.Calculator', an existing checkpoint file, nor sha256:<64 hex "
            "digits>; a registered model (chgnet-ft-<sha prefix>) or a model packaged with "
            "surfflows (chgnet-surf) is found by surfflows.io.registry.resolve_model"
        )


def names_a_file(text: str | Path) -> bool:
    """``text`` names an existing file (False for text no file name can be)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long, or a NUL byte
        return False


def not_a_calculator_package(import_path: str) -> bool:
    """True if ``import_path`` (``package.module.name``) lies in Python's standard library
    (``os.system``, ``builtins.eval``, ``subprocess.run``...): no ASE calculator does, and
    calling such a function with the campaign's keyword arguments would run commands."""
    return import_path.split(".")[0] in sys.stdlib_module_names


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


class HeadCard(BaseModel):
    """One readout head of a packaged checkpoint."""

    name: str | None = Field(
        description="Head name, chosen as '<model>@<name>'; None for a single-head checkpoint."
    )
    level_of_theory: str = Field(description="Level of theory of the energies it was fitted to.")
    sets: list[str] = Field(description="Reference sets trained on through this head.")


class SplitFigures(BaseModel):
    """Surface-energy errors on one split part in one evaluation mode, J/m²."""

    n: int = Field(description="Slabs with an error.")
    mae: float | None = Field(description="Mean absolute error, J/m².")
    mean_signed_error: float | None = Field(description="Mean of model - reference, J/m².")
    parent_mae: float | None = Field(description="The parent's MAE on the same slabs, J/m².")
    parent_mean_signed_error: float | None = Field(description="The parent's, J/m².")


class ForgettingRow(BaseModel):
    """Bulk energies of materials never trained on: the model next to its parent."""

    set_name: str = Field(description="Bulk set.")
    split: str = Field(description="Split part reported (aligned on the set's other parts).")
    n: int = Field(description="Bulks with an aligned error.")
    parent: str = Field(description="model_id of the parent.")
    mae: float | None = Field(description="Aligned energy MAE, eV/atom.")
    parent_mae: float | None = Field(description="The parent's aligned MAE, eV/atom.")
    relative_change: float | None = Field(description="mae / parent_mae - 1.")
    raw_energy_mae: float | None = Field(description="Unaligned energy MAE, eV/atom.")
    parent_raw_energy_mae: float | None = Field(description="The parent's, eV/atom.")
    raw_relative_change: float | None = Field(description="Unaligned: model / parent - 1.")


class ModelCard(BaseModel):
    """Machine-readable card of a checkpoint that ships inside the package (``card.json``).

    It identifies the file (sha256), says how to make it again (``recipe``, ``command``) and
    what it is worth (figures on the test split in both modes, forgetting). Written by
    ``benchmarks/train_chgnet_surf.py``.
    """

    name: str = Field(description="Packaged name, e.g. 'chgnet-surf' (the folder's name).")
    file: str = Field(description="Checkpoint file name inside the card's folder.")
    sha256: str = Field(description="sha256 of the checkpoint file: its identity.")
    model_id: str = Field(
        description="chgnet-ft-<sha12>, the key stored on every result (a head's results: "
        "chgnet-ft-<sha12>@<head>)."
    )

    n_bytes: int = Field(description="Size of the checkpoint file.")
    interim: bool = Field(
        description="True for a stand-in made by a short run, not the recipe's final model."
    )
    note: str = Field(default="", description="How this file was made, in words.")
    recipe: list[str] = Field(description="Arguments of 'surfflows finetune' that made it.")
    command: str = Field(description="The one command that reproduces the file and this card.")
    parent: str = Field(description="model_id of the model fine-tuned.")
    chgnet_version: str | None = Field(description="chgnet package version of the run.")
    torch_version: str = Field(description="torch version of the run.")
    seed: int = Field(description="Seed of torch and of the batch order.")
    data: list[str] = Field(description="Reference sets ingested for the run.")
    split_id: str = Field(description="Split of the training set (train / val / test by material).")
    heads: list[HeadCard] = Field(description="Readout heads; one unnamed head if single-head.")
    default_head: str | None = Field(
        default=None, description="Head used without '@<head>' (None: single-head)."
    )
    depth: int = Field(description="X: trainable units from the readout backwards.")
    n_train: dict[str, int] = Field(description="Training data counts (FineTuneDoc.n_train).")
    n_val: dict[str, int] = Field(description="Validation data counts (FineTuneDoc.n_val).")
    n_test: dict[str, int] = Field(description="Test slabs with an error, per mode.")
    best_epoch: int = Field(description="Epoch kept (lowest validation gamma MAE).")
    val_gamma_mae_per_epoch: list[float | None] = Field(
        description="Validation gamma MAE after each epoch (0: parent after the AtomRef fit)."
    )
    figures: dict[str, dict[str, SplitFigures]] = Field(
        description="mode (single_point, relaxed) -> split part (val, test) -> errors."
    )
    forgetting: dict[str, float | None] = Field(
        description="Bulk set -> relative change of the aligned bulk energy MAE vs the parent."
    )
    figures_set: str | None = Field(
        default=None,
        description="Reference set of ``figures`` (None: the training set's own split).",
    )
    forgetting_rows: list[ForgettingRow] = Field(
        default_factory=list, description="Bulk sets never trained on: model and parent."
    )
    cross_validation: dict[str, Any] = Field(
        default_factory=dict,
        description="The recipe's element-wise k-fold cross-validation: held-out gamma per "
        "mode (mean ± std over folds of MAE, signed error, MAPE), the parent's, folds, "
        "epoch count chosen from the folds (benchmarks/results/finetune_recipes_cv.json).",
    )
    wall_seconds: float = Field(description="Wall time of the reproduce run, s.")
    machine: dict[str, Any] = Field(description="CPU count, torch threads, platform.")
    created_at: str = Field(description="ISO time the card was written.")

    @property
    def default_model_id(self) -> str:
        """model_id of the results of ``--model <name>``: with the default head if it has one."""
        return self.model_id + (f"@{self.default_head}" if self.default_head else "")
