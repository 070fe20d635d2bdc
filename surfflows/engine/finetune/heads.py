"""Readout heads (one per level of theory) and their per-element reference energies."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from chgnet.graph import CrystalGraph
from chgnet.model import CHGNet
from chgnet.model.composition_model import AtomRef
from pymatgen.core import Element
from torch import Tensor, nn

from surfflows.core.heads import default_head
from surfflows.engine.finetune.data import ReferenceData, Sample

#: Modules of a readout head: the readout (unit 1) and the per-element reference energies.
HEAD_MODULES = ("readout_norm", "mlp", "composition_model")


@dataclass(frozen=True)
class Head:
    """A readout head: its name (:func:`surfflows.core.heads.head_name`), the level of
    theory of its sets and the sets whose batches run through it."""

    name: str
    level_of_theory: str
    sets: tuple[str, ...]


def head_modules(model: CHGNet) -> nn.ModuleDict:
    """The modules of ``model``'s current head (the same objects, not copies)."""
    return nn.ModuleDict(
        {name: getattr(model, name) for name in HEAD_MODULES if getattr(model, name) is not None}
    )


def use_head(model: CHGNet, head: nn.ModuleDict) -> None:
    """Put a head's modules into ``model`` (the shared backbone stays)."""
    for name, module in head.items():
        setattr(model, name, module)


def predict_energies(model: CHGNet, graphs: Sequence[CrystalGraph], batch_size: int = 32) -> Tensor:
    """Energy per atom (eV/atom) of each graph with ``model``, batched, without gradients."""
    out = []
    with torch.no_grad():
        for start in range(0, len(graphs), batch_size):
            out.append(model(list(graphs[start : start + batch_size]), task="e")["e"])
    return torch.cat(out)


def fit_atomref_shift(
    model: CHGNet,
    graphs: Sequence[CrystalGraph],
    energy_per_atom: Sequence[float],
    *,
    predicted: Tensor | None = None,
) -> dict[str, float]:
    """Fit per-element reference energies to the residual of ``model`` and add them to its AtomRef.

    The residual ``e_DFT - e_model`` (eV/atom) is fitted with chgnet's
    :meth:`AtomRef.fit` (pseudo-inverse: elements absent from the data get zero); the result
    is added to ``model.composition_model``. A constant per-element shift of the labels is
    recovered exactly when the compositions determine it.

    Parameters
    ----------
    model
        CHGNet with an intensive AtomRef composition model; modified in place.
    graphs, energy_per_atom
        Training structures and their reference energies per atom.
    predicted
        The model's energies per atom of ``graphs`` if already known.

    Returns
    -------
    dict
        Element symbol -> fitted shift (eV/atom) for the elements of the data.
    """
    if not isinstance(model.composition_model, AtomRef) or not model.composition_model.is_intensive:
        raise ValueError("fit_atomref_shift needs a CHGNet with an intensive AtomRef")
    if predicted is None:
        predicted = predict_energies(model, graphs)
    residual = torch.as_tensor(energy_per_atom, dtype=predicted.dtype) - predicted
    shift = AtomRef(is_intensive=True, max_num_elements=model.composition_model.max_num_elements)
    shift.fit(list(graphs), residual.tolist())
    weight = shift.fc.weight.detach().to(model.composition_model.fc.weight.dtype)
    with torch.no_grad():
        model.composition_model.fc.weight += weight
    present = sorted({int(z) for g in graphs for z in g.atomic_number})
    return {Element.from_Z(z).symbol: float(weight[0, z - 1]) for z in present}


def head_of_sets(
    heads: Sequence[Head], train: ReferenceData, val: ReferenceData
) -> dict[str, str] | None:
    """Set -> head name of every set of the data; None for one head."""
    if len(heads) < 2:
        return None
    head_of_set = {name: head.name for head in heads for name in head.sets}
    missing = {s.set_name for s in [*train.samples, *val.samples]} - head_of_set.keys()
    if missing:
        raise ValueError(f"sets {sorted(missing)} have no head among {[h.name for h in heads]}")
    return head_of_set


@dataclass
class TrainingHeads:
    """The heads of one fine-tune: their modules by name (the default head's are the model's
    own), the default head and the head of each sample; empty with one head."""

    modules: dict[str, nn.ModuleDict] = field(default_factory=dict)
    default: str | None = None
    head_of: Callable[[Sample], str] | None = None


def training_heads(
    model: CHGNet, heads: Sequence[Head], head_of_set: dict[str, str] | None
) -> TrainingHeads:
    """One copy of ``model``'s readout and AtomRef per head (the default head keeps the
    model's own); replay runs through the default head. None: one head."""
    if head_of_set is None:
        return TrainingHeads()
    default = default_head([h.name for h in heads])
    modules = {
        h.name: head_modules(model) if h.name == default else copy.deepcopy(head_modules(model))
        for h in heads
    }

    def head_of(sample: Sample) -> str:
        return default if sample.doc_type == "replay" else head_of_set[sample.set_name]

    return TrainingHeads(modules, default, head_of)


def fit_head_shifts(
    model: CHGNet, train: ReferenceData, n_own: int, predicted: Tensor, heads: TrainingHeads
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Fit each head's per-element shift on its own energy-labelled training structures.

    Parameters
    ----------
    model
        The model being fine-tuned; each head's AtomRef gets its shift.
    train
        Training data; its first ``n_own`` samples are the set's own (replay follows).
    predicted
        The model's energy per atom of every training sample.
    heads
        The heads (empty: the model's own).

    Returns
    -------
    tuple
        The default head's shift and, with several heads, every head's by name.
    """
    labelled = [i for i in range(n_own) if train.samples[i].energy is not None]
    original = head_modules(model)
    head_shifts: dict[str | None, dict[str, float]] = {}
    for name in heads.modules or [None]:
        if name is not None:
            use_head(model, heads.modules[name])
        rows = [i for i in labelled if name is None or heads.head_of(train.samples[i]) == name]
        head_shifts[name] = fit_atomref_shift(
            model,
            [train.samples[i].graph for i in rows],
            [train.samples[i].energy / train.samples[i].n_atoms for i in rows],
            predicted=predicted[rows],
        )
    use_head(model, original)
    atomref_shift = head_shifts.pop(None) if None in head_shifts else head_shifts[heads.default]
    return atomref_shift, head_shifts
