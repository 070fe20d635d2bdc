"""Fixed batches of material groups, their cached frozen stages, and forward passes over them."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from chgnet.graph import CrystalGraph
from chgnet.model import CHGNet
from chgnet.model.model import BatchedGraph
from torch import Tensor, nn

from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2
from surfflows.engine.finetune.data import ReferenceData, Sample
from surfflows.engine.finetune.depth import run_stages
from surfflows.engine.finetune.heads import head_modules, use_head


@dataclass
class Batch:
    """A fixed batch: graphs, labels, slab/bulk pairs and the cached frozen-stage output."""

    samples: list[int]
    graphs: list[CrystalGraph]
    n_atoms: Tensor
    energy_per_atom: Tensor
    energy_mask: Tensor
    pair_slab: Tensor
    pair_bulk: Tensor
    pair_units: Tensor
    pair_area: Tensor
    gamma_ref: Tensor
    forces: list[Tensor | None]
    stress: list[Tensor | None]
    replay: Tensor
    set_name: str = ""
    head_masks: dict[str, Tensor] = field(default_factory=dict)
    composition_energy: Tensor | None = None
    graph: BatchedGraph | None = None
    frozen: dict[str, Tensor] | None = None


def material_groups(data: ReferenceData) -> list[list[int]]:
    """Sample indices grouped so that every slab is with its bulk (one group per bulk)."""
    groups: dict[int, list[int]] = {}
    for i, sample in enumerate(data.samples):
        if sample.doc_type == "bulk":
            groups[i] = [i]
    paired = set()
    for pair in data.pairs:
        groups[pair.bulk].append(pair.slab)
        paired.add(pair.slab)
    lone = [[i] for i, s in enumerate(data.samples) if s.doc_type != "bulk" and i not in paired]
    return [*groups.values(), *lone]


def make_batches(
    data: ReferenceData, batch_size: int, rng: np.random.Generator | None = None
) -> list[list[int]]:
    """Pack material groups (shuffled by ``rng``, else in order) into batches of ~batch_size,
    each of one set (batches are in the order they are closed)."""
    groups = material_groups(data)
    order = rng.permutation(len(groups)) if rng is not None else range(len(groups))
    batches: list[list[int]] = []
    open_batches: dict[str, list[int]] = {}
    for g in order:
        name = data.samples[groups[g][0]].set_name
        current = open_batches.setdefault(name, [])
        if current and len(current) + len(groups[g]) > batch_size:
            batches.append(current)
            current = open_batches[name] = []
        current.extend(groups[g])
    return [*batches, *(b for b in open_batches.values() if b)]


def build_batch(
    model: CHGNet,
    data: ReferenceData,
    indices: list[int],
    cut: int | None,
    head_of: Callable[[Sample], str] | None = None,
) -> Batch:
    """Tensors of one batch; with ``cut``, the batched graph and stages ``0..cut-1`` are cached.

    ``cut=None`` means nothing can be cached (trainable embeddings). ``head_of`` gives the
    head of each structure (several heads); None: one head.
    """
    position = {sample: i for i, sample in enumerate(indices)}
    pairs = [p for p in data.pairs if p.slab in position]
    samples = [data.samples[i] for i in indices]
    graphs = [s.graph for s in samples]

    def tensor(array: np.ndarray | None) -> Tensor | None:
        return None if array is None else torch.tensor(array, dtype=torch.float32)

    batch = Batch(
        samples=indices,
        graphs=graphs,
        n_atoms=torch.tensor([s.n_atoms for s in samples], dtype=torch.float32),
        energy_per_atom=torch.tensor(
            [math.nan if s.energy is None else s.energy / s.n_atoms for s in samples],
            dtype=torch.float32,
        ),
        energy_mask=torch.tensor([s.energy is not None for s in samples]),
        pair_slab=torch.tensor([position[p.slab] for p in pairs], dtype=torch.long),
        pair_bulk=torch.tensor([position[p.bulk] for p in pairs], dtype=torch.long),
        pair_units=torch.tensor([p.n_units for p in pairs], dtype=torch.float32),
        pair_area=torch.tensor([p.area for p in pairs], dtype=torch.float32),
        gamma_ref=torch.tensor([p.gamma_ref for p in pairs], dtype=torch.float32),
        forces=[tensor(s.forces) for s in samples],
        stress=[tensor(s.stress) for s in samples],
        replay=torch.tensor([s.doc_type == "replay" for s in samples], dtype=torch.bool),
        set_name=next((s.set_name for s in samples if s.doc_type != "replay"), ""),
    )
    if head_of is not None:
        heads = [head_of(s) for s in samples]
        batch.head_masks = {
            h: torch.tensor([x == h for x in heads], dtype=torch.bool) for h in dict.fromkeys(heads)
        }
    if cut is not None:
        with torch.no_grad():
            batch.graph = BatchedGraph.from_graphs(
                graphs, model.bond_basis_expansion, model.angle_basis_expansion
            )
            state = run_stages(model, batch.graph, {}, 0, cut)
        # The readout reads only atom features: keep the cache small.
        keep = ("atom",) if cut == model.n_conv + 1 else tuple(state)
        batch.frozen = {k: state[k] for k in keep}
    return batch


def forward_batch(
    model: CHGNet,
    batch: Batch,
    cut: int | None,
    heads: Mapping[str, nn.ModuleDict] | None = None,
) -> Tensor:
    """Energy per atom of the batch's structures (AtomRef included).

    With ``cut``, only stages ``cut..`` run on the cached features and AtomRef's energy is
    ``batch.composition_energy``; else ``CHGNet.forward`` runs in full. With several heads
    (``batch.head_masks``), the backbone runs once and each head's readout gives the
    energies of its structures.
    """
    if batch.head_masks:
        graph = batch.graph
        if graph is None:
            graph = BatchedGraph.from_graphs(
                batch.graphs, model.bond_basis_expansion, model.angle_basis_expansion
            )
        readout = model.n_conv + 1
        state = run_stages(model, graph, batch.frozen or {}, cut or 0, readout)
        original = head_modules(model)
        energy = torch.zeros(len(batch.graphs))
        for head, mask in batch.head_masks.items():
            use_head(model, heads[head])
            head_energy = run_stages(model, graph, state, readout, readout + 1)["energy"]
            energy = energy + torch.where(mask, head_energy, 0.0)
        use_head(model, original)
        return energy + batch.composition_energy
    if cut is not None:
        state = run_stages(model, batch.graph, batch.frozen, cut, model.n_conv + 2)
        return state["energy"] + batch.composition_energy
    return model(batch.graphs, task="e")["e"]


def force_subset(batch: Batch, fraction: float) -> list[int]:
    """Positions of a random ``fraction`` (at least one) of the batch's force-labelled
    structures, drawn with torch's generator."""
    labelled = [i for i, f in enumerate(batch.forces) if f is not None]
    if not labelled:
        return []
    n = max(1, math.ceil(fraction * len(labelled)))
    return sorted(labelled[i] for i in torch.randperm(len(labelled))[:n].tolist())


def predict_forces(
    model: CHGNet, graphs: Sequence[CrystalGraph], with_stress: bool = False
) -> dict[str, list[Tensor]]:
    """CHGNet's full forward pass with forces (eV/Å) and optionally stress (GPa), in a
    graph that can be differentiated again (for a force loss)."""
    for graph in graphs:
        graph.atom_frac_coord.requires_grad_(True)
    with torch.enable_grad():
        return model(list(graphs), task="efs" if with_stress else "ef")


def predict_rows(
    model: CHGNet,
    batch: Batch,
    rows: Sequence[int],
    with_stress: bool = False,
    heads: Mapping[str, nn.ModuleDict] | None = None,
) -> dict[str, list[Tensor]]:
    """:func:`predict_forces` of some rows of a batch, each through its head."""
    if not batch.head_masks:
        return predict_forces(model, [batch.graphs[i] for i in rows], with_stress)
    out: dict[str, list] = {"f": [None] * len(rows), "s": [None] * len(rows)}
    original = head_modules(model)
    for head, mask in batch.head_masks.items():
        picked = [j for j, i in enumerate(rows) if mask[i]]
        if not picked:
            continue
        use_head(model, heads[head])
        prediction = predict_forces(model, [batch.graphs[rows[j]] for j in picked], with_stress)
        for k, j in enumerate(picked):
            out["f"][j] = prediction["f"][k]
            if with_stress:
                out["s"][j] = prediction["s"][k]
    use_head(model, original)
    return out


def force_mae(
    model: CHGNet, batches: Sequence[Batch], heads: Mapping[str, nn.ModuleDict] | None = None
) -> float | None:
    """Force MAE (eV/Å) over the force-labelled structures of ``batches``; None if none."""
    errors = []
    for batch in batches:
        rows = [i for i, f in enumerate(batch.forces) if f is not None]
        if rows:
            predicted = predict_rows(model, batch, rows, heads=heads)["f"]
            for i, f in zip(rows, predicted, strict=True):
                errors.append((f.detach() - batch.forces[i]).abs().flatten())
    return float(torch.cat(errors).mean()) if errors else None


def gamma_j_per_m2(energy_per_atom: Tensor, batch: Batch) -> Tensor:
    """gamma = (E_slab - n E_bulk) / 2A of the batch's pairs, J/m², from energies per atom."""
    total = energy_per_atom * batch.n_atoms
    slab, bulk = total[batch.pair_slab], total[batch.pair_bulk]
    return (slab - batch.pair_units * bulk) / (2 * batch.pair_area) * EV_PER_A2_TO_J_PER_M2


def set_composition_energies(
    model: CHGNet, batches: Sequence[Batch], heads: Mapping[str, nn.ModuleDict] | None = None
) -> None:
    """Set each batch's ``composition_energy``: AtomRef's energy per atom of its structures,
    each structure's through its head's AtomRef with several heads."""
    with torch.no_grad():
        for batch in batches:
            if not batch.head_masks:
                batch.composition_energy = model.composition_model(batch.graphs)
                continue
            energy = torch.zeros(len(batch.graphs))
            for head, mask in batch.head_masks.items():
                composition = heads[head]["composition_model"](batch.graphs)
                energy = energy + torch.where(mask, composition, 0.0)
            batch.composition_energy = energy


def predict_batches(
    model: CHGNet,
    data: ReferenceData,
    batches: Sequence[Batch],
    cut: int | None,
    heads: Mapping[str, nn.ModuleDict] | None = None,
) -> Tensor:
    """Energy per atom of every sample of ``data`` by :func:`forward_batch`, without gradients."""
    predicted = torch.empty(len(data.samples))
    with torch.no_grad():
        for batch in batches:
            predicted[batch.samples] = forward_batch(model, batch, cut, heads)
    return predicted
