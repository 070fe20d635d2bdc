"""Loading the model a :class:`~surfflows.schemas.models.ModelSpec` names, once per process.

CHGNet models (pretrained from the wheel, or a checkpoint by sha256) run in the batched
engine (:mod:`surfflows.engine.relax`); other calculators relax one structure at a time
through ASE (:mod:`surfflows.engine.calculators`). Importing this module loads no torch: the
functions that need it import it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surfflows.schemas.models import CALCULATORS, ModelSpec, not_a_calculator_package

if TYPE_CHECKING:
    from ase.calculators.calculator import BaseCalculator
    from chgnet.model import CHGNet
    from chgnet.model.dynamics import CHGNetCalculator


@functools.lru_cache(maxsize=4)
def _load_pretrained(version: str) -> CHGNet:
    from chgnet.model import CHGNet

    return CHGNet.load(model_name=version, verbose=False)


#: Checkpoint models loaded in this process, by (sha256, head) (a few at most).
_CHECKPOINTS: dict[tuple[str, str | None], CHGNet] = {}


def _load_checkpoint(spec: ModelSpec, data: bytes) -> CHGNet:
    """The CHGNet of checkpoint bytes with the head ``spec.head`` swapped in.

    A multi-head checkpoint (:mod:`surfflows.engine.finetune`) holds the model with its
    default head under ``model`` and every head's readout and AtomRef under ``heads``.
    """
    import io

    import torch
    from chgnet.model import CHGNet

    actual = hashlib.sha256(data).hexdigest()
    if actual != spec.sha256:
        raise ValueError(f"checkpoint bytes have sha256 {actual}, expected {spec.sha256}")
    # Weights only: bytes from a database must not run code (CHGNet checkpoints need no more).
    state = torch.load(io.BytesIO(data), map_location=torch.device("cpu"), weights_only=True)
    model = CHGNet.from_dict(state["model"])
    heads = state.get("heads") or {}
    if spec.head is not None:
        if spec.head not in heads:
            have = f"heads {sorted(heads)}" if heads else "a single head and no named heads"
            raise ValueError(
                f"model {spec.model_id}: the checkpoint has no head {spec.head!r}; it has {have}"
            )
        head_state = heads[spec.head]["state_dict"]
        if model.load_state_dict(head_state, strict=False).unexpected_keys:
            raise ValueError(f"head {spec.head!r} of {spec.model_id} has unknown weights")
    if len(_CHECKPOINTS) >= 4:
        _CHECKPOINTS.pop(next(iter(_CHECKPOINTS)))
    _CHECKPOINTS[spec.sha256, spec.head] = model
    return model


def load_model(spec: ModelSpec, checkpoint: bytes | None = None) -> CHGNet:
    """Load the CHGNet of ``spec`` once per process (later calls return the same object).

    Parameters
    ----------
    spec
        The model; a checkpoint's ``head`` is swapped in (a multi-head checkpoint).
    checkpoint
        The checkpoint file's bytes (a job gets them as an input resolved from the
        JobStore, see :mod:`surfflows.io.registry`); else the spec's own file if it is on
        this machine with the right sha256, else a model this process loaded before.

    Raises
    ------
    ValueError
        For a calculator spec: what asks for the CHGNet network (fine-tuning, DIRECT
        features, the batched engine) needs a CHGNet; for a head the checkpoint lacks
        (the message names the heads it has).
    """
    if not spec.is_chgnet:
        raise ValueError(
            f"{spec.model_id} is an ASE calculator ({spec.force_field_name}), not a CHGNet: "
            "this step needs a CHGNet model (pretrained or checkpoint)"
        )
    if spec.kind == "pretrained":
        model = _load_pretrained(spec.version)
    elif (spec.sha256, spec.head) in _CHECKPOINTS:
        model = _CHECKPOINTS[spec.sha256, spec.head]
    elif checkpoint is not None:
        model = _load_checkpoint(spec, checkpoint)
    elif spec.checkpoint and Path(spec.checkpoint).is_file():
        model = _load_checkpoint(spec, Path(spec.checkpoint).read_bytes())
    else:
        raise FileNotFoundError(
            f"checkpoint {spec.model_id} is not loaded: pass its bytes (registered in the "
            "JobStore, surfflows.io.registry.checkpoint_reference) or its file"
        )
    model.eval()
    return model


def calculator_factory(spec: ModelSpec) -> Any:
    """The class (or function) a calculator spec names, imported and checked, not called.

    Raises
    ------
    ValueError
        If the module cannot be imported, has no such attribute, or the attribute is a
        class that is not an ASE calculator (or neither a class nor a function).
    """
    from ase.calculators.calculator import BaseCalculator

    module_name, _, attr = spec.force_field_name.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ' (pip install -e ".[peers]")' if spec.name in CALCULATORS else ""
        raise ValueError(
            f"model {spec.model_id}: cannot import {module_name!r} for calculator "
            f"{spec.force_field_name!r}: {exc}{hint}"
        ) from None
    factory = getattr(module, attr, None)
    if factory is None:
        raise ValueError(f"model {spec.model_id}: module {module_name!r} has no {attr!r}")
    origin = f"{getattr(factory, '__module__', None) or 'builtins'}.{attr}"
    if not_a_calculator_package(origin):  # a standard-library function imported elsewhere
        raise ValueError(
            f"model {spec.model_id}: {spec.force_field_name} is {origin}, from Python's "
            "standard library, not a calculator"
        )
    if isinstance(factory, type):
        if not issubclass(factory, BaseCalculator):
            raise ValueError(
                f"model {spec.model_id}: {spec.force_field_name} is not an ASE calculator "
                "(not a subclass of ase.calculators.calculator.BaseCalculator)"
            )
    elif not callable(factory):
        raise ValueError(f"model {spec.model_id}: {spec.force_field_name} is not callable")
    return factory


def check_model(spec: ModelSpec) -> None:
    """Raise ValueError before any work if ``spec`` names a calculator that cannot be used.

    Imports the calculator's module and checks its class; CHGNet specs need no check here.
    """
    if not spec.is_chgnet:
        calculator_factory(spec)


def preload(spec: ModelSpec, checkpoint: bytes | None = None) -> None:
    """Load the model of ``spec`` in this process (CHGNet network or ASE calculator).

    Later calls reuse it, so a timed section after this excludes loading; a calculator
    that cannot be made raises ValueError here. ``checkpoint`` as for :func:`load_model`.
    """
    if spec.is_chgnet:
        load_model(spec, checkpoint)
    else:
        get_calculator(spec)


def get_calculator(spec: ModelSpec, checkpoint: bytes | None = None) -> BaseCalculator:
    """An ASE calculator for ``spec`` (one per model and process).

    CHGNet specs get chgnet's ``CHGNetCalculator`` around the cached model (``checkpoint``
    as for :func:`load_model`); calculator specs get ``force_field_name(**calculator_kwargs)``.
    ASE calculators recompute whenever the atoms they are asked about change, so one
    calculator serves consecutive relaxations.

    Raises
    ------
    ValueError
        If the calculator cannot be imported, is not an ASE calculator, or its constructor
        raises (e.g. missing arguments).
    """
    if not spec.is_chgnet:
        return _ase_calculator_cached(
            spec.force_field_name, json.dumps(spec.calculator_kwargs, sort_keys=True)
        )
    from chgnet.model.dynamics import CHGNetCalculator

    model = load_model(spec, checkpoint)
    key = spec.model_id
    if key not in _CALCULATORS or _CALCULATORS[key].model is not model:
        _CALCULATORS[key] = CHGNetCalculator(model=model, on_isolated_atoms="ignore")
    return _CALCULATORS[key]


_CALCULATORS: dict[str, CHGNetCalculator] = {}


@functools.lru_cache(maxsize=4)
def _ase_calculator_cached(force_field_name: str, kwargs_json: str) -> BaseCalculator:
    from ase.calculators.calculator import BaseCalculator

    spec = ModelSpec.calculator(force_field_name, json.loads(kwargs_json))
    factory = calculator_factory(spec)
    try:
        calculator = factory(**spec.calculator_kwargs)
    except Exception as exc:
        raise ValueError(
            f"calculator {force_field_name}(**{spec.calculator_kwargs}) raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(calculator, BaseCalculator):
        raise ValueError(
            f"{force_field_name}(**{spec.calculator_kwargs}) returned a "
            f"{type(calculator).__name__}, not an ASE calculator"
        )
    return calculator
