"""Fine-tune the last X units of CHGNet on surface reference data.

Depth X (the design notes' "Fine-tuning depth X")
----------------------------------------------------
CHGNet's energy path in forward order is ``embedding -> block 0 -> ... -> block n-2 ->
atom_conv n-1 -> readout``, a block being ``[atom_conv i, bond_conv i, angle i]``.
X counts units from the readout backwards (:func:`depth_units`):

====  =====================================================================================
X     modules fitted (CHGNet 0.3.0: n_conv = 4)
====  =====================================================================================
0     ``composition_model`` (AtomRef, per-element reference energies) only
1     + ``readout_norm``, ``mlp``
2     + ``atom_conv_layers.3``
3     + ``atom_conv_layers.2``, ``bond_conv_layers.2``, ``angle_layers.2``
4, 5  + block 1, + block 0
6     + embeddings (``atom_embedding``, bond and angle bases and embeddings, bond weights)
====  =====================================================================================

``site_wise`` (the magnetic-moment head) is never trained: no magmom labels. In unit 3
``angle_layers.2`` is fitted in name only, since CHGNet's energy does not read the angle
features after the last block.

Objective
---------
1. Per-element reference energies are fitted first (linear least squares, chgnet's
   :meth:`AtomRef.fit`) to the residual ``E_DFT - E_parent`` per atom of the training
   structures and added to the parent's AtomRef, so a data set's energy scale (JARVIS
   OptB88vdW versus CHGNet's MP2020-corrected PBE) is not learned by the network. AtomRef
   is then frozen.
2. The X units are trained with Adam(W) and a cosine learning-rate decay on
   ``energy_weight * L(E/N) + gamma_weight * L(gamma) [+ force_weight * L(F)]
   [+ anchor_weight * |theta - theta_parent|^2]`` where
   ``L`` is MSE, Huber or L1, ``E/N`` the energy per atom of slabs and bulks (eV/atom) and
   ``gamma = (E_slab - (N_slab / N_bulk) E_bulk) / 2A`` (J/m²) of each training slab with
   its bulk in the same batch. gamma is invariant to per-element offsets for stoichiometric
   slabs, so that term targets exactly what is evaluated. The last term (L2-SP, Li, Grandvalet
   and Davoine, ICML 2018) pulls the trainable weights towards the parent's, against
   forgetting what the parent knew about bulks.
3. After every epoch the validation gamma MAE (val slabs with their bulks) is measured; the
   epoch with the lowest one is kept (epoch 0 is the model before any gradient step), and
   training stops after ``patience`` epochs without improvement.

Relaxed-mode selection (``selection="relaxed"``)
-------------------------------------------------
Users relax slabs with the model, so the epoch can be selected on relaxed-mode validation
gamma instead: after every epoch, and at epoch 0 so the parent stays a candidate, a fixed
subset of ``selection_slabs`` val slabs (:func:`selection_pairs`, drawn once with the
seed, spread over the sets) and their bulks have their ions relaxed by the model being
trained in their DFT cells, as the evaluation's relaxed mode does (:func:`relaxed_gamma`;
each slab with its set's head). The epoch with the lowest relaxed gamma MAE
(:func:`selection_key`; several sets: the mean over sets) is kept and patience counts on
it. The single-point figures are still recorded. A failed or unconverged relaxation
leaves its slab out of that epoch's MAE and is counted (``val_relaxed_failures``). The
selection has its own random generator, so training itself (batches, order, weights) is
the same as with single-point selection.

Compute
-------
CrystalGraphs and batches are made once. Without forces, the frozen stages do not change,
so their output is computed once per batch and only the X trainable stages run each step
(:func:`run_stages` replays ``CHGNet._compute``'s energy path stage by stage; a test checks
it against ``CHGNet.forward``). X = all needs the full forward pass every step. Forces
(``force_weight > 0``) need it too: energies and gamma still come from the cached path for
every structure, and a random ``force_fraction`` of each batch's force-labelled structures
runs ``CHGNet.forward`` with forces (and stress for replay structures), which sets the cost.

Replay (``replay_weight > 0``)
------------------------------
The training bulks and rattled / strained copies of them (:func:`replay_structures`, a
pool of ``replay_pool_size``; never a validation or test material) are labelled by the
frozen parent (:func:`replay_data`: energy, forces, stress) and spread over every batch
(:func:`with_replay`). Their energy labels get the fitted per-element shift, so replay
pulls towards the parent's physics at the training set's energy scale. They enter the
loss as ``replay_weight * (L(E/N) + force_weight * L(F) + stress_weight * L(S))``, forces
and stress only through the force subset.

With ``replay_bulks`` (the train parts of ``settings.replay_sets``, e.g. ``wbm_bulks`` and
``mp_elemental_refs``), the pool's bulks are drawn at random from the training bulks and
those; the copies follow as before. Replay runs through the default head and gets that
head's per-element shift.

Several sets, one head per level of theory (``heads``)
------------------------------------------------------
``train`` and ``val`` may hold several sets (:func:`merge_data`; each set's train and val
parts). Every batch is one set's (:func:`make_batches`). With two heads or more (one per
level of theory, named by :func:`surfflows.core.heads.head_name`: ``pbe``, ``optb88vdw``,
``pbe+u``), the backbone (the trainable units below the readout) is shared and each head
has its own readout (``readout_norm``, ``mlp``) and AtomRef (``composition_model``),
fitted by the least-squares step above on the head's own training structures. A batch
runs through its set's head (:func:`forward_batch` runs the backbone once and each head's
readout on its structures). The epoch kept is the one with the lowest mean, over the sets
with validation gamma pairs, of each set's validation gamma MAE (one set: its validation
gamma MAE, as before). The default head is ``pbe`` if present, else the first set's
(:func:`surfflows.core.heads.default_head`). ``best.pth.tar`` then holds the model with
its default head under ``model`` (``CHGNet.from_file`` loads it) and, under ``heads``,
every head's readout and AtomRef state with its level of theory and sets, and
``default_head``; :func:`surfflows.engine.models.load_model` swaps in the head a model
spec names (``chgnet-ft-<sha12>@<head>``). With one set or one level of theory there is
one head and the checkpoint is the same as a single-set one.

Batches are fixed groups of materials (a bulk with its slabs), formed once with the seed;
their order is reshuffled every epoch. ``last.pth.tar`` in the work folder holds model,
optimizer, random state and history after every epoch, so a run resumes where
it stopped; ``best.pth.tar`` holds the selected model and loads with ``CHGNet.from_file``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from chgnet.graph import CrystalGraph, CrystalGraphConverter
from chgnet.model import CHGNet
from chgnet.model.composition_model import AtomRef
from chgnet.model.model import BatchedGraph
from pymatgen.core import Element, Lattice, Structure
from torch import Tensor, nn

from surfflows.core.benchmark import summarize
from surfflows.core.heads import default_head
from surfflows.core.thermo import (
    EV_PER_A2_TO_J_PER_M2,
    bulk_units_and_excess,
    slab_area,
    surface_energy,
    to_j_per_m2,
)
from surfflows.engine.relax import DEFAULT_OPTIMIZER, RelaxResult, relax_structures
from surfflows.schemas.evaluate import RELAXED_FMAX, RELAXED_MAX_STEPS
from surfflows.schemas.finetune import EpochRecord, FineTuneSettings

#: Modules of the embedding unit (the largest X).
EMBEDDING_MODULES = (
    "atom_embedding",
    "bond_basis_expansion",
    "bond_embedding",
    "bond_weights_ag",
    "bond_weights_bg",
    "angle_basis_expansion",
    "angle_embedding",
)
READOUT_MODULES = ("readout_norm", "mlp")
#: Checkpoint files in a fine-tune work folder.
LAST_CHECKPOINT = "last.pth.tar"
BEST_CHECKPOINT = "best.pth.tar"
#: Settings a run may change and still resume (same work folder, same checkpoint).
RESUME_IGNORED = frozenset({"epochs", "patience"})


# ------------------------------------------------------------------------------ depth


def network_stages(model: CHGNet) -> list[tuple[str, ...]]:
    """Module names of each stage of CHGNet's energy path, in forward order.

    Stage 0 is the embedding, stages 1..n_conv-1 the blocks, stage n_conv the last
    atom_conv, stage n_conv + 1 the readout; :func:`run_stages` runs them.
    """
    names = dict(model.named_modules())
    n_conv = model.n_conv
    blocks = [
        tuple(
            name
            for name in (f"atom_conv_layers.{i}", f"bond_conv_layers.{i}", f"angle_layers.{i}")
            if name in names
        )
        for i in range(n_conv - 1)
    ]
    embedding = tuple(name for name in EMBEDDING_MODULES if name in names)
    readout = tuple(name for name in READOUT_MODULES if names.get(name) is not None)
    return [embedding, *blocks, (f"atom_conv_layers.{n_conv - 1}",), readout]


def depth_units(model: CHGNet) -> list[tuple[str, ...]]:
    """Units in the order X adds them: ``composition_model``, readout, ..., embedding."""
    return [("composition_model",), *reversed(network_stages(model))]


def max_depth(model: CHGNet) -> int:
    """The X that fits every unit (6 for CHGNet 0.3.0)."""
    return len(depth_units(model)) - 1


def _parameter_modules(model: CHGNet) -> list[str]:
    """Names of the modules that hold parameters, ModuleLists expanded to their items."""
    out = []
    for name, child in model.named_children():
        items = (
            [(f"{name}.{i}", c) for i, c in enumerate(child)]
            if isinstance(child, nn.ModuleList)
            else [(name, child)]
        )
        out += [n for n, c in items if c is not None and any(True for _ in c.parameters())]
    return out


@dataclass(frozen=True)
class FreezeInfo:
    """Which modules of a CHGNet are fitted at depth X.

    Attributes
    ----------
    depth
        X.
    trainable_modules
        ``composition_model`` (fitted by least squares) and the modules of the X units.
    frozen_modules
        Every other module with parameters.
    trainable_parameters
        Parameters of ``trainable_modules``.
    optimized_parameters
        Parameters the optimizer updates (``trainable_parameters`` less AtomRef's).
    """

    depth: int
    trainable_modules: list[str]
    frozen_modules: list[str]
    trainable_parameters: int
    optimized_parameters: int


def freeze_to_depth(model: CHGNet, depth: int) -> FreezeInfo:
    """Set ``requires_grad`` so that only the network units 1..X are optimized.

    AtomRef (unit 0) is fitted by least squares (:func:`fit_atomref_shift`), never by the
    optimizer, so its parameters stay frozen here.

    Raises
    ------
    ValueError
        If ``depth`` is not in ``0..max_depth(model)``.
    """
    units = depth_units(model)
    if not 0 <= depth < len(units):
        raise ValueError(f"depth X={depth} out of range 0..{len(units) - 1} for this CHGNet")
    trainable = [name for unit in units[: depth + 1] for name in unit]
    modules = dict(model.named_modules())
    for parameter in model.parameters():
        parameter.requires_grad = False
    for name in trainable[1:]:
        for parameter in modules[name].parameters():
            parameter.requires_grad = True

    def count(names: Sequence[str]) -> int:
        return sum(p.numel() for name in names for p in modules[name].parameters())

    return FreezeInfo(
        depth=depth,
        trainable_modules=trainable,
        frozen_modules=[n for n in _parameter_modules(model) if n not in trainable],
        trainable_parameters=count(trainable),
        optimized_parameters=count(trainable[1:]),
    )


# ------------------------------------------------------------------------- forward pass


def run_stages(
    model: CHGNet, graph: BatchedGraph, state: dict[str, Tensor], start: int, stop: int
) -> dict[str, Tensor]:
    """Run stages ``start..stop-1`` of CHGNet's energy path (see :func:`network_stages`).

    The energy part of ``CHGNet._compute`` (chgnet 0.3-0.4), cut into stages so that the
    output of frozen stages can be cached.

    Parameters
    ----------
    model
        The CHGNet.
    graph
        Batched graph of the structures.
    state
        Features after stage ``start - 1`` (empty for ``start == 0``): ``atom``, ``bond``,
        ``angle``, ``weights_ag``, ``weights_bg``.
    start, stop
        Stage range.

    Returns
    -------
    dict
        Features after stage ``stop - 1``; after the readout also ``energy``: the network
        energy per atom (intensive model) of each structure, AtomRef not included.
    """
    state = dict(state)
    n_conv = model.n_conv
    has_angles = len(graph.angle_bases) != 0
    for stage in range(start, stop):
        if stage == 0:
            state["atom"] = model.atom_embedding(graph.atomic_numbers - 1)
            state["bond"] = model.bond_embedding(graph.bond_bases_ag)
            state["weights_ag"] = model.bond_weights_ag(graph.bond_bases_ag)
            state["weights_bg"] = model.bond_weights_bg(graph.bond_bases_bg)
            if has_angles:
                state["angle"] = model.angle_embedding(graph.angle_bases)
        elif stage <= n_conv:
            idx = stage - 1
            state["atom"] = model.atom_conv_layers[idx](
                atom_feas=state["atom"],
                bond_feas=state["bond"],
                bond_weights=state["weights_ag"],
                atom_graph=graph.batched_atom_graph,
                directed2undirected=graph.directed2undirected,
            )
            if idx == n_conv - 1 or not has_angles or model.bond_conv_layers[idx] is None:
                continue
            state["bond"] = model.bond_conv_layers[idx](
                atom_feas=state["atom"],
                bond_feas=state["bond"],
                bond_weights=state["weights_bg"],
                angle_feas=state["angle"],
                bond_graph=graph.batched_bond_graph,
            )
            if model.angle_layers[idx] is not None:
                state["angle"] = model.angle_layers[idx](
                    atom_feas=state["atom"],
                    bond_feas=state["bond"],
                    angle_feas=state["angle"],
                    bond_graph=graph.batched_bond_graph,
                )
        else:
            atoms = (
                state["atom"] if model.readout_norm is None else model.readout_norm(state["atom"])
            )
            n_atoms = torch.bincount(graph.atom_owners)
            if model.mlp_first:
                energy = model.pooling(model.mlp(atoms), graph.atom_owners).view(-1)
            else:
                energy = model.mlp(model.pooling(atoms, graph.atom_owners)).view(-1) * n_atoms
            state["energy"] = energy / n_atoms if model.is_intensive else energy
    return state


# ------------------------------------------------------------------------------- data


@dataclass
class Sample:
    """One training or validation structure with its labels.

    ``energy`` is None for a gamma-only slab (published gamma, no DFT total energy): it enters
    the gamma term only, never the energy term or the per-element fit.
    """

    key: str
    doc_type: str
    material_id: str
    graph: CrystalGraph
    n_atoms: int
    energy: float | None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    structure: Structure | None = None
    set_name: str = ""


@dataclass
class SurfacePair:
    """A slab and its bulk (indices into the samples) with the reference gamma."""

    slab: int
    bulk: int
    n_units: float
    area: float
    gamma_ref: float


@dataclass
class ReferenceData:
    """Samples, the slab/bulk pairs among them, and the records left out with the reason."""

    samples: list[Sample] = field(default_factory=list)
    pairs: list[SurfacePair] = field(default_factory=list)
    dropped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def keys(self) -> list[str]:
        """Reference keys of the samples."""
        return [s.key for s in self.samples]

    def counts(self, set_name: str | None = None) -> dict[str, int]:
        """Structures, slabs, bulks, gamma pairs, materials and force-labelled structures
        (of one set only if ``set_name``)."""
        keep = [set_name is None or s.set_name == set_name for s in self.samples]
        samples = [s for s, k in zip(self.samples, keep, strict=True) if k]
        return {
            "structures": len(samples),
            "slabs": sum(s.doc_type == "slab" for s in samples),
            "bulks": sum(s.doc_type == "bulk" for s in samples),
            "gamma_pairs": sum(keep[p.slab] for p in self.pairs),
            "materials": len({s.material_id for s in samples}),
            "force_labelled": sum(s.forces is not None for s in samples),
            "gamma_only": sum(s.energy is None for s in samples),
            "frames": sum(s.doc_type == "frame" for s in samples),
        }


def merge_data(parts: Sequence[ReferenceData]) -> ReferenceData:
    """The data of several sets as one: samples in order, pairs re-indexed, reasons joined.

    Material ids of different sets must not be the same material (see
    :func:`surfflows.core.splits.leaking_materials`); batches still keep one set each
    (:func:`make_batches`).
    """
    if len(parts) == 1:
        return parts[0]
    out = ReferenceData()
    for data in parts:
        offset = len(out.samples)
        out.samples += data.samples
        out.pairs += [
            dataclasses.replace(p, slab=p.slab + offset, bulk=p.bulk + offset) for p in data.pairs
        ]
        for reason, keys in data.dropped.items():
            out.dropped.setdefault(reason, []).extend(keys)
    return out


def reference_data(
    docs: Sequence[dict[str, Any]],
    assignments: dict[str, str],
    parts: Sequence[str],
    converter: CrystalGraphConverter,
    *,
    zero_force_labels: bool = False,
    slab_keys: Collection[str] | None = None,
    held_out: Mapping[str, str] | None = None,
) -> ReferenceData:
    """Slabs and bulks of some split parts of a reference set, screened, as CrystalGraphs.

    Parameters
    ----------
    docs
        Reference documents of one set (slabs, bulks and trajectory frames; others are
        ignored). Frames (OC22 S2EF) are energy and force samples without a gamma term.
    assignments
        material_id -> split part.
    parts
        Parts to take (``("train",)`` for training, ``("val",)`` for validation).
    converter
        The model's graph converter.
    zero_force_labels
        Zero forces as labels for frames without ``ref_forces`` (DFT-relaxed frames only).
    slab_keys
        Only these slabs (e.g. a DIRECT or random selection of the train part), with their
        bulks and the frames of their trajectories; None: every slab of the parts.
    held_out
        material_id -> ``"<set>:<part>"`` of materials held out (val or test) in another
        set (:func:`surfflows.core.splits.leaking_materials`): never taken.

    Returns
    -------
    ReferenceData
        Left out, by reason: ``flagged:<flag>`` (a record with ``flags``; each flag counts),
        ``held_out:<set>:<part>`` (a material of ``held_out``), ``no_bulk`` (a slab whose
        bulk is absent), ``bulk_without_slab`` (a bulk none of
        whose slabs is kept, so no surface term; a set without any slab document, e.g.
        ``wbm_bulks``, keeps its bulks as energy samples), ``graph_failed``. A slab that is not
        stoichiometric or has no reference gamma is kept for its energy without a gamma
        term; a gamma-only slab (no ``ref_energy``) is kept for its gamma term only, with
        the published gamma as target.
    """
    dropped: dict[str, list[str]] = defaultdict(list)
    by_key = {doc["key"]: doc for doc in docs}
    held_out = held_out or {}
    candidates = [
        doc
        for doc in docs
        if doc["doc_type"] in ("slab", "bulk", "frame")
        and assignments.get(doc["material_id"]) in parts
        if doc["doc_type"] == "bulk"
        or slab_keys is None
        or doc["key"] in slab_keys
        or doc.get("parent_key") in slab_keys
    ]
    selected = []
    for doc in candidates:
        if doc["material_id"] in held_out:
            dropped[f"held_out:{held_out[doc['material_id']]}"].append(doc["key"])
        else:
            selected.append(doc)
    slabs = []
    for doc in (d for d in selected if d["doc_type"] == "slab"):
        if doc.get("flags"):
            for flag in doc["flags"]:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc["key"])
        elif doc.get("bulk_key") not in by_key:
            dropped["no_bulk"].append(doc["key"])
        else:
            slabs.append(doc)
    needed = {doc["bulk_key"] for doc in slabs}
    bulk_only = not any(doc["doc_type"] == "slab" for doc in docs)
    bulks = []
    for doc in (d for d in selected if d["doc_type"] == "bulk"):
        if doc.get("flags"):
            for flag in doc["flags"]:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc["key"])
        elif doc["key"] not in needed and not bulk_only:
            dropped["bulk_without_slab"].append(doc["key"])
        else:
            bulks.append(doc)
    frames = []  # trajectory frames (OC22 S2EF): energy and force samples, no gamma term
    for doc in (d for d in selected if d["doc_type"] == "frame"):
        if doc.get("flags"):
            for flag in doc["flags"]:
                dropped[f"flagged:{flag.split('(')[0]}"].append(doc["key"])
        else:
            frames.append(doc)
    # Bulks first so that a slab's bulk is known when the slab's pair is made.
    data = ReferenceData()
    index: dict[str, int] = {}
    for doc in [*bulks, *slabs, *frames]:
        structure = Structure.from_dict(doc["structure"])
        try:
            graph = converter(structure, graph_id=doc["key"])
        except Exception:
            dropped["graph_failed"].append(doc["key"])
            continue
        forces = doc.get("ref_forces")
        if forces is None and zero_force_labels:
            forces = np.zeros((len(structure), 3))
        index[doc["key"]] = len(data.samples)
        data.samples.append(
            Sample(
                key=doc["key"],
                doc_type=doc["doc_type"],
                material_id=doc["material_id"],
                graph=graph,
                n_atoms=len(structure),
                energy=None if doc.get("ref_energy") is None else float(doc["ref_energy"]),
                forces=None if forces is None else np.asarray(forces, dtype=float),
                structure=structure,
                set_name=doc.get("set_name", ""),
            )
        )
        if doc["doc_type"] != "slab" or doc["bulk_key"] not in index:
            continue
        gamma_ref = doc.get("gamma_ref_recomputed")
        if doc.get("ref_energy") is None:  # gamma-only: the published gamma is the target
            gamma_ref = doc.get("gamma_ref")
        bulk = Structure.from_dict(by_key[doc["bulk_key"]]["structure"])
        n_units, excess = bulk_units_and_excess(structure.composition, bulk.composition)
        if gamma_ref is None or excess:
            continue
        data.pairs.append(
            SurfacePair(
                slab=index[doc["key"]],
                bulk=index[doc["bulk_key"]],
                n_units=n_units,
                area=slab_area(structure.lattice),
                gamma_ref=float(gamma_ref),
            )
        )
    data.dropped = dict(dropped)
    return data


# --------------------------------------------------------------------- per-element fit


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


# ------------------------------------------------------------------------------- replay


def replay_structures(
    bulks: Sequence[Structure],
    size: int,
    rattle: float,
    strain: float,
    rng: np.random.Generator,
) -> list[Structure]:
    """The replay pool: ``bulks`` first, then rattled and strained copies of them in turn.

    A copy's cell is the bulk's times ``1 + eps``, ``eps`` a random symmetric matrix with
    components uniform in ``[-strain, strain]``; its atoms move with the cell and then by
    a normal displacement of standard deviation ``rattle`` (Å) each.

    Parameters
    ----------
    bulks
        Training bulks (never a validation or test material).
    size
        Structures in the pool.
    rattle, strain
        Size of the random displacements (Å) and strains.
    rng
        Random generator of the copies.

    Raises
    ------
    ValueError
        If there are no bulks.
    """
    if not bulks:
        raise ValueError("replay needs training bulks, found none")
    pool = list(bulks[:size])
    for i in range(size - len(pool)):
        bulk = bulks[i % len(bulks)]
        eps = rng.uniform(-strain, strain, (3, 3))
        matrix = bulk.lattice.matrix @ (np.eye(3) + (eps + eps.T) / 2)
        cart = bulk.frac_coords @ matrix + rng.normal(0.0, rattle, (len(bulk), 3))
        pool.append(Structure(Lattice(matrix), bulk.species, cart, coords_are_cartesian=True))
    return pool


def replay_data(parent: CHGNet, structures: Sequence[Structure]) -> list[Sample]:
    """Replay samples: ``structures`` with the frozen parent's energy, forces and stress.

    The energies are the parent's own; :func:`finetune` adds the fitted per-element shift,
    so that replay keeps the parent's physics, not its energy scale.
    """
    graphs = [parent.graph_converter(s, graph_id=f"replay:{i}") for i, s in enumerate(structures)]
    predictions = parent.predict_graph(graphs, task="efs", batch_size=16)
    if isinstance(predictions, dict):
        predictions = [predictions]
    return [
        Sample(
            key=f"replay:{i}",
            doc_type="replay",
            material_id="replay",
            graph=graph,
            n_atoms=len(structure),
            energy=float(p["e"]) * len(structure),
            forces=np.asarray(p["f"], dtype=float),
            stress=np.asarray(p["s"], dtype=float),
            structure=structure,
        )
        for i, (graph, structure, p) in enumerate(zip(graphs, structures, predictions, strict=True))
    ]


def with_replay(
    batches: Sequence[list[int]], first: int, n_replay: int, rng: np.random.Generator
) -> list[list[int]]:
    """Spread replay samples ``first..first+n_replay-1`` over every batch.

    Each batch gets ``ceil(n_replay / len(batches))`` of them, the pool shuffled by ``rng``
    and cycled so that every batch has replay even when the pool is small.
    """
    per_batch = math.ceil(n_replay / len(batches))
    order = first + rng.permutation(n_replay)
    cycle = np.resize(order, per_batch * len(batches))
    return [
        [*b, *cycle[i * per_batch : (i + 1) * per_batch].tolist()] for i, b in enumerate(batches)
    ]


# -------------------------------------------------------------------------------- heads

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


# ------------------------------------------------------------------------------ batches


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


# -------------------------------------------------------------- relaxed-mode selection


def selection_pairs(data: ReferenceData, n_slabs: int | None, seed: int) -> list[int]:
    """The slabs relaxed to select the epoch (``selection="relaxed"``): indices into
    ``data.pairs``, drawn once.

    Each set's pairs, in the order of their slab keys, are shuffled by one
    ``np.random.default_rng(seed)`` (sets in sorted order); the sets then give one slab
    each in turn, so the subset is spread evenly over the sets, until ``n_slabs`` are
    taken (None: every pair). Returned in the order of the slab keys.
    """

    def slab_key(i: int) -> str:
        return data.samples[data.pairs[i].slab].key

    by_set: dict[str, list[int]] = {}
    for i in sorted(range(len(data.pairs)), key=slab_key):
        by_set.setdefault(data.samples[data.pairs[i].slab].set_name, []).append(i)
    rng = np.random.default_rng(seed)
    queues = [
        deque(np.asarray(by_set[name])[rng.permutation(len(by_set[name]))].tolist())
        for name in sorted(by_set)
    ]
    limit = len(data.pairs) if n_slabs is None else min(n_slabs, len(data.pairs))
    picked: list[int] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.popleft())
    return sorted(picked, key=slab_key)


def relaxed_gamma(
    model: CHGNet,
    data: ReferenceData,
    pairs: Sequence[int],
    heads: Mapping[str, nn.ModuleDict] | None = None,
    head_of: Callable[[Sample], str] | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Relaxed-mode gamma errors of some validation slabs, as the evaluation's relaxed mode.

    The ions of each slab and of its bulk are relaxed by ``model`` in their DFT cells
    (:func:`surfflows.engine.relax.relax_structures`, fixed atoms kept, the evaluation's
    ``fmax``, step limit and optimizer), and gamma comes from the relaxed energies by
    :func:`surfflows.core.thermo.surface_energy`. With several heads each slab and its bulk
    relax with their set's head (``head_of``); the model's own head is put back after. A
    slab whose slab or bulk relaxation fails or does not converge is left out and counted.

    Parameters
    ----------
    model
        The model (eval mode); not changed (its head is restored).
    data
        Validation data; ``pairs`` index ``data.pairs`` (:func:`selection_pairs`).
    heads, head_of
        Several heads: the heads by name and the head of each sample; None: one head.
    progress
        Show the relaxations' progress bar.

    Returns
    -------
    dict
        The :class:`~surfflows.schemas.finetune.EpochRecord` fields ``val_relaxed_*``:
        MAE and mean signed error (J/m², None if no slab converged), per set (several
        sets), the single-point MAE of the same slabs (the relaxations' first energies),
        converged slabs, failures, median and mean steps of the slab relaxations (all of
        them) and the wall time.
    """
    tick = time.perf_counter()
    by_head: dict[str | None, list[int]] = {}
    for i in pairs:
        slab = data.samples[data.pairs[i].slab]
        by_head.setdefault(None if head_of is None else head_of(slab), []).append(i)
    results: dict[int, RelaxResult] = {}  # by sample index
    original = head_modules(model)
    try:
        for head, members in by_head.items():
            if head is not None:
                use_head(model, heads[head])
            rows = list(
                dict.fromkeys(k for i in members for k in (data.pairs[i].slab, data.pairs[i].bulk))
            )
            relaxed = relax_structures(
                [data.samples[k].structure for k in rows],
                model,
                fmax=RELAXED_FMAX,
                max_steps=RELAXED_MAX_STEPS,
                optimizer=DEFAULT_OPTIMIZER,
                progress=progress,
            )
            results.update(zip(rows, relaxed, strict=True))
    finally:
        use_head(model, original)

    def gamma(slab: Sample, bulk: Sample, slab_energy: float, bulk_energy: float) -> float:
        return to_j_per_m2(
            surface_energy(
                slab_energy,
                slab.structure.composition,
                bulk_energy,
                bulk.structure.composition,
                slab_area(slab.structure.lattice),
            )
        )

    errors: dict[str, list[float]] = {}
    single_point: list[float] = []
    steps: list[int] = []
    failures = 0
    for i in pairs:
        pair = data.pairs[i]
        slab, bulk = data.samples[pair.slab], data.samples[pair.bulk]
        slab_result, bulk_result = results[pair.slab], results[pair.bulk]
        steps.append(slab_result.n_steps)
        errors.setdefault(slab.set_name, [])
        if not (slab_result.ok and bulk_result.ok):
            failures += 1
            continue
        errors[slab.set_name].append(
            gamma(slab, bulk, slab_result.energy, bulk_result.energy) - pair.gamma_ref
        )
        single_point.append(
            gamma(slab, bulk, slab_result.initial_energy, bulk_result.initial_energy)
            - pair.gamma_ref
        )
    every = summarize(e for values in errors.values() for e in values)
    return {
        "val_relaxed_gamma_mae": every["mae"],
        "val_relaxed_gamma_mean_signed_error": every["mean_signed_error"],
        "val_relaxed_gamma_mae_by_set": (
            {name: summarize(values)["mae"] for name, values in sorted(errors.items())}
            if len(errors) > 1
            else {}
        ),
        "val_relaxed_single_point_gamma_mae": summarize(single_point)["mae"],
        "val_relaxed_slabs": every["n"],
        "val_relaxed_failures": failures,
        "val_relaxed_steps_median": float(np.median(steps)) if steps else None,
        "val_relaxed_steps_mean": float(np.mean(steps)) if steps else None,
        "val_relaxed_seconds": time.perf_counter() - tick,
    }


# ----------------------------------------------------------------------------- training


@dataclass
class _Errors:
    """Loss and errors accumulated over the batches of an epoch."""

    loss: list[float] = field(default_factory=list)
    weights: list[int] = field(default_factory=list)
    energy: list[Tensor] = field(default_factory=list)
    gamma: list[Tensor] = field(default_factory=list)
    sets: dict[str, tuple[list[Tensor], list[Tensor]]] = field(default_factory=dict)

    def add(self, batch: Batch, energy: Tensor, loss: Tensor) -> None:
        energy = energy.detach()
        self.loss.append(float(loss))
        self.weights.append(len(batch.samples))
        own = batch.energy_mask & ~batch.replay
        by_set = self.sets.setdefault(batch.set_name, ([], []))
        self.energy.append(energy[own] - batch.energy_per_atom[own])
        by_set[0].append(self.energy[-1])
        if len(batch.gamma_ref):
            self.gamma.append(gamma_j_per_m2(energy, batch) - batch.gamma_ref)
            by_set[1].append(self.gamma[-1])

    def summary(self) -> dict[str, Any]:
        """Loss, energy and gamma MAE, mean signed gamma error; with several sets also
        ``by_set``: set -> (energy MAE, gamma MAE or None)."""
        energy = torch.cat(self.energy)
        gamma = torch.cat(self.gamma) if self.gamma else None
        by_set = {
            name: (
                float(torch.cat(e).abs().mean()) if e and len(torch.cat(e)) else math.nan,
                float(torch.cat(g).abs().mean()) if g else None,
            )
            for name, (e, g) in sorted(self.sets.items())
        }
        return {
            "loss": float(np.average(self.loss, weights=self.weights)),
            "energy_mae": float(energy.abs().mean()) if len(energy) else math.nan,
            "gamma_mae": None if gamma is None else float(gamma.abs().mean()),
            "gamma_mean_signed_error": None if gamma is None else float(gamma.mean()),
            "by_set": by_set if len(by_set) > 1 else {},
        }


class _Objective:
    """The loss of :mod:`surfflows.engine.finetune`'s objective for one batch.

    The batch's own structures enter ``energy_weight * L(E/N) + gamma_weight * L(gamma)``,
    its replay structures ``replay_weight * L(E/N)``; :meth:`force_terms` adds
    ``force_weight * L(F)`` of the force subset's own structures and
    ``replay_weight * (force_weight * L(F) + stress_weight * L(S))`` of its replay ones.
    ``anchors`` pairs each trainable parameter with its parent value; with
    ``settings.anchor_weight > 0``, :meth:`anchor_penalty` is the L2-SP term
    ``anchor_weight * sum((theta - theta_parent)^2)`` added to every training step.
    """

    def __init__(
        self,
        settings: FineTuneSettings,
        anchors: Sequence[tuple[Tensor, Tensor]] = (),
        heads: Mapping[str, nn.ModuleDict] | None = None,
    ):
        self.settings = settings
        self.anchors = list(anchors)
        self.heads = heads
        if settings.criterion == "mse":
            self.criterion = nn.MSELoss()
        elif settings.criterion == "l1":
            self.criterion = nn.L1Loss()
        else:
            self.criterion = nn.HuberLoss(delta=settings.huber_delta)

    def __call__(self, batch: Batch, energy: Tensor) -> Tensor:
        s = self.settings
        own = batch.energy_mask & ~batch.replay  # gamma-only slabs have no energy label
        replay = batch.replay
        loss = energy.new_zeros(())
        if own.any():
            loss = s.energy_weight * self.criterion(energy[own], batch.energy_per_atom[own])
        if len(batch.gamma_ref) and s.gamma_weight > 0:
            gamma = gamma_j_per_m2(energy, batch)
            loss = loss + s.gamma_weight * self.criterion(gamma, batch.gamma_ref)
        if replay.any() and s.replay_weight > 0:
            loss = loss + s.replay_weight * self.criterion(
                energy[replay], batch.energy_per_atom[replay]
            )
        return loss

    def force_terms(self, batch: Batch, model: CHGNet) -> Tensor | None:
        """Force (and replay stress) loss of a random ``force_fraction`` of the batch's
        force-labelled structures, by CHGNet's full forward pass; None if it has none."""
        s = self.settings
        rows = force_subset(batch, s.force_fraction)
        if not rows:
            return None
        replay = [bool(batch.replay[i]) for i in rows]
        with_stress = any(replay) and s.replay_weight > 0 and s.stress_weight > 0
        prediction = predict_rows(model, batch, rows, with_stress, self.heads)
        loss = torch.zeros(())
        for is_replay, weight in ((False, 1.0), (True, s.replay_weight)):
            picked = [j for j, r in enumerate(replay) if r == is_replay]
            if not picked or weight == 0:
                continue
            force_loss = self.criterion(
                torch.cat([prediction["f"][j] for j in picked]),
                torch.cat([batch.forces[rows[j]] for j in picked]),
            )
            loss = loss + weight * s.force_weight * force_loss
            if is_replay and with_stress:
                stress_loss = self.criterion(
                    torch.stack([prediction["s"][j] for j in picked]),
                    torch.stack([batch.stress[rows[j]] for j in picked]),
                )
                loss = loss + weight * s.stress_weight * stress_loss
        return loss

    def anchor_penalty(self) -> Tensor | None:
        """L2-SP penalty of the trainable parameters' distance from the parent, or None."""
        if self.settings.anchor_weight == 0 or not self.anchors:
            return None
        distance = sum(((p - p0) ** 2).sum() for p, p0 in self.anchors)
        return self.settings.anchor_weight * distance


def run_epoch(
    model: CHGNet,
    batches: Sequence[Batch],
    cut: int | None,
    objective: _Objective,
    optimizer: torch.optim.Optimizer | None = None,
    order: Sequence[int] | None = None,
) -> dict[str, float | None]:
    """One pass over ``batches`` (in ``order``): a training epoch with ``optimizer``, else an
    evaluation. Returns the mean loss, energy MAE (eV/atom) of the batches' own
    structures, gamma MAE and mean signed gamma error (J/m²); forces enter the loss only
    when training with force_weight > 0 (:meth:`_Objective.force_terms`).
    """
    with_forces = optimizer is not None and objective.settings.force_weight > 0
    errors = _Errors()
    for b in order if order is not None else range(len(batches)):
        batch = batches[b]
        with torch.set_grad_enabled(optimizer is not None):
            energy = forward_batch(model, batch, cut, objective.heads)
            loss = objective(batch, energy)
            force_loss = objective.force_terms(batch, model) if with_forces else None
            if force_loss is not None:
                loss = loss + force_loss
        if optimizer is not None:
            penalty = objective.anchor_penalty()
            if penalty is not None:
                loss = loss + penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        errors.add(batch, energy, loss.detach())
    return errors.summary()


@dataclass
class FineTuneResult:
    """What :func:`finetune` returns.

    Attributes
    ----------
    model
        The best-epoch model (also saved as ``best_checkpoint``), with its default head.
    freeze
        Trainable and frozen modules at depth X.
    history
        One record per epoch, epoch 0 before any gradient step.
    best_epoch
        Epoch with the lowest :func:`selection_key`: validation gamma MAE, single point or
        (``settings.selection="relaxed"``) relaxed (the mean over sets with several).
    atomref_shift
        Fitted per-element shift of the default head, eV/atom.
    best_checkpoint
        File of the best model (``CHGNet.from_file`` loads it, with the default head).
    stopped_early
        Whether patience ended the run before ``epochs``.
    resumed_from_epoch
        Last epoch of the checkpoint resumed from, else None.
    setup_seconds, wall_seconds
        Time of the set-up (graphs, batches, caches) and of the whole call.
    head_shifts
        Head -> its fitted per-element shift (several heads only).
    default_head
        The checkpoint's default head (several heads only).
    replay_pool
        Structures of the replay pool by origin: ``training_bulks``, ``replay_set_bulks``,
        ``copies`` (empty without replay).
    """

    model: CHGNet
    freeze: FreezeInfo
    history: list[EpochRecord]
    best_epoch: int
    atomref_shift: dict[str, float]
    best_checkpoint: Path
    stopped_early: bool
    resumed_from_epoch: int | None
    setup_seconds: float
    wall_seconds: float
    head_shifts: dict[str, dict[str, float]] = field(default_factory=dict)
    default_head: str | None = None
    replay_pool: dict[str, int] = field(default_factory=dict)


def cache_cut(model: CHGNet, settings: FineTuneSettings) -> int | None:
    """First trainable stage, whose input is cached; None when nothing can be cached."""
    n_stages = model.n_conv + 2
    if settings.depth >= n_stages:
        return None
    return n_stages - max(settings.depth, 1)


def cosine_lr(settings: FineTuneSettings, epoch: int) -> float:
    """Learning rate of epoch ``epoch`` (1-based): cosine from lr to lr * lr_decay_fraction."""
    low = settings.learning_rate * settings.lr_decay_fraction
    progress = (epoch - 1) / max(settings.epochs - 1, 1)
    return low + (settings.learning_rate - low) * (1 + math.cos(math.pi * progress)) / 2


def _record(
    epoch: int,
    train: dict,
    val: dict,
    lr: float,
    seconds: float,
    val_force: float | None,
    relaxed: Mapping[str, Any] | None = None,
) -> EpochRecord:
    return EpochRecord(
        epoch=epoch,
        train_loss=train["loss"],
        train_energy_mae=train["energy_mae"],
        train_gamma_mae=train["gamma_mae"],
        val_energy_mae=val["energy_mae"],
        val_gamma_mae=val["gamma_mae"],
        val_gamma_mean_signed_error=val["gamma_mean_signed_error"],
        learning_rate=lr,
        seconds=seconds,
        val_force_mae=val_force,
        val_energy_mae_by_set={k: e for k, (e, _) in val["by_set"].items()},
        val_gamma_mae_by_set={k: g for k, (_, g) in val["by_set"].items()},
        **(relaxed or {}),
    )


def selection_key(record: EpochRecord, selection: str = "single_point") -> float:
    """What selects the epoch (the lowest is kept; patience counts on it too).

    Parameters
    ----------
    record
        One epoch's record.
    selection
        ``single_point``: the validation gamma MAE; with several sets the mean over the
        sets with validation gamma pairs of each set's validation gamma MAE (energy MAE
        for data without gamma pairs). ``relaxed``: the relaxed-mode gamma MAE of the
        selection slabs (``val_relaxed_gamma_mae``); with several sets the mean over the
        sets with a value of each set's; infinite for an epoch without one (no selection
        slab converged), so that it is never kept over an epoch that has one.
    """
    if selection == "relaxed":
        per_set = [g for g in record.val_relaxed_gamma_mae_by_set.values() if g is not None]
        if per_set:
            return float(np.mean(per_set))
        value = record.val_relaxed_gamma_mae
        return math.inf if value is None else value
    per_set = [g for g in record.val_gamma_mae_by_set.values() if g is not None]
    if per_set:
        return float(np.mean(per_set))
    return record.val_gamma_mae if record.val_gamma_mae is not None else record.val_energy_mae


def _same_run(saved: dict[str, Any], settings: FineTuneSettings) -> bool:
    """Whether saved settings are these, apart from the run's length and patience."""
    kept = FineTuneSettings.model_validate(saved).model_dump(exclude=RESUME_IGNORED)
    return kept == settings.model_dump(exclude=RESUME_IGNORED)


def _shift_replay_labels(parent: CHGNet, model: CHGNet, batches: Sequence[Batch]) -> None:
    """Add the fitted per-element shift (``model``'s AtomRef, that of its default head, less
    ``parent``'s) to the parent's energies of the replay structures: replay keeps the
    parent's physics at the default head's energy scale."""
    with torch.no_grad():
        for batch in batches:
            if batch.replay.any():
                rows = batch.replay.nonzero().flatten().tolist()
                graphs = [batch.graphs[i] for i in rows]
                shift = model.composition_model(graphs) - parent.composition_model(graphs)
                batch.energy_per_atom[batch.replay] += shift


def _set_composition(
    model: CHGNet, batches: Sequence[Batch], heads: Mapping[str, nn.ModuleDict] | None = None
) -> None:
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


def _check_heads(
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


def finetune(
    parent: CHGNet,
    train: ReferenceData,
    val: ReferenceData,
    settings: FineTuneSettings,
    work_dir: str | Path,
    *,
    progress: Callable[[EpochRecord], None] | None = None,
    heads: Sequence[Head] = (),
    replay_bulks: Sequence[Structure] = (),
) -> FineTuneResult:
    """Fine-tune the last X units of a copy of ``parent`` (see the module docstring).

    Parameters
    ----------
    parent
        Pretrained CHGNet (not modified).
    train, val
        Training and validation data (disjoint materials; the test part never enters),
        of one set or several (:func:`merge_data`).
    settings
        Hyperparameters; ``settings.depth`` is X.
    work_dir
        Folder for ``last.pth.tar`` (resumable state, written every epoch) and
        ``best.pth.tar``. If it holds a ``last.pth.tar`` of a run with the same settings
        (``epochs`` and ``patience`` aside) and data, training resumes from it.
    progress
        Called with each epoch's record.
    heads
        Readout heads, each over some sets (at least two: one head per level of theory);
        empty or one: every set runs through the model's own readout.
    replay_bulks
        Bulks of replay sets' train parts that join the training bulks in the replay pool.

    Returns
    -------
    FineTuneResult
        The best-epoch model, history and files.

    Raises
    ------
    ValueError
        If the depth is out of range, there is no training or validation data, forces are
        weighted without force labels, a set has no head, ``selection`` is relaxed without
        validation gamma pairs, or ``work_dir`` holds a run with other settings or data.
    """
    start_time = time.perf_counter()
    if not train.samples or not val.samples:
        raise ValueError(
            f"need training and validation structures, got {len(train.samples)} and "
            f"{len(val.samples)}"
        )
    if settings.force_weight > 0 and not any(s.forces is not None for s in train.samples):
        raise ValueError("force_weight > 0 but no training structure has force labels")
    head_of_set = _check_heads(heads, train, val)
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    last = work_dir / LAST_CHECKPOINT
    saved = torch.load(last, map_location="cpu", weights_only=False) if last.is_file() else None
    if saved is not None and not _same_run(saved["settings"], settings):
        raise ValueError(f"{last} was written with other settings: use another work folder")
    if saved is not None and (saved["train_keys"], saved["val_keys"]) != (train.keys, val.keys):
        raise ValueError(f"{last} was trained on other data: use another work folder")

    model = copy.deepcopy(parent)
    freeze = freeze_to_depth(model, settings.depth)
    head_set: dict[str, nn.ModuleDict] = {}
    default = None
    head_of = None
    if head_of_set is not None:
        default = default_head([h.name for h in heads])
        head_set = {
            h.name: head_modules(model) if h.name == default else copy.deepcopy(head_modules(model))
            for h in heads
        }

        def head_of(sample: Sample) -> str:
            return default if sample.doc_type == "replay" else head_of_set[sample.set_name]

    if saved is not None:
        model.load_state_dict(saved["model"]["state_dict"])
        for name, state in saved.get("heads", {}).items():
            head_set[name].load_state_dict(state)
    cut = cache_cut(model, settings)
    groups = make_batches(train, settings.batch_size, rng)
    n_own = len(train.samples)
    replay_pool: dict[str, int] = {}
    if settings.replay_weight > 0:
        replay_rng = np.random.default_rng([settings.seed, 1])
        bulks = [s.structure for s in train.samples if s.doc_type == "bulk"]
        if replay_bulks:  # the pool's bulks drawn from training and replay-set bulks alike
            candidates = [*bulks, *replay_bulks]
            bulks = [candidates[i] for i in replay_rng.permutation(len(candidates))]
        pool = replay_structures(
            bulks,
            settings.replay_pool_size,
            settings.replay_rattle,
            settings.replay_strain,
            replay_rng,
        )
        extra = {id(b) for b in replay_bulks}
        n_bulks = min(len(bulks), len(pool))
        replay_pool = {
            "training_bulks": sum(id(b) not in extra for b in pool[:n_bulks]),
            "replay_set_bulks": sum(id(b) in extra for b in pool[:n_bulks]),
            "copies": len(pool) - n_bulks,
        }
        replay = replay_data(parent, pool)
        train = ReferenceData([*train.samples, *replay], train.pairs, train.dropped)
        groups = with_replay(groups, n_own, len(replay), replay_rng)
    train_batches = [build_batch(model, train, b, cut, head_of) for b in groups]
    val_batches = [
        build_batch(model, val, b, cut, head_of) for b in make_batches(val, settings.batch_size)
    ]
    _set_composition(model, train_batches, head_set)
    head_shifts: dict[str, dict[str, float]] = {}
    if saved is None:
        predicted = torch.empty(len(train.samples))
        with torch.no_grad():
            for batch in train_batches:
                predicted[batch.samples] = forward_batch(model, batch, cut, head_set)
        labelled = [i for i in range(n_own) if train.samples[i].energy is not None]
        original = head_modules(model)
        for name in head_set or [None]:
            if name is not None:
                use_head(model, head_set[name])
            rows = [i for i in labelled if name is None or head_of(train.samples[i]) == name]
            head_shifts[name] = fit_atomref_shift(
                model,
                [train.samples[i].graph for i in rows],
                [train.samples[i].energy / train.samples[i].n_atoms for i in rows],
                predicted=predicted[rows],
            )
        use_head(model, original)
        atomref_shift = head_shifts.pop(None) if None in head_shifts else head_shifts[default]
        _set_composition(model, train_batches, head_set)
    else:
        atomref_shift = saved["atomref_shift"]
        head_shifts = saved.get("head_shifts", {})
    _shift_replay_labels(parent, model, train_batches)
    _set_composition(model, val_batches, head_set)
    val_forces = any(s.forces is not None for s in val.samples)
    relaxed_pairs = (
        selection_pairs(val, settings.selection_slabs, settings.seed)
        if settings.selection == "relaxed"
        else []
    )
    if settings.selection == "relaxed" and not relaxed_pairs:
        raise ValueError("selection 'relaxed' needs validation slabs with a gamma pair, found none")

    def relaxed_errors() -> dict[str, Any] | None:
        if not relaxed_pairs:
            return None
        return relaxed_gamma(model, val, relaxed_pairs, head_set or None, head_of)

    setup_seconds = time.perf_counter() - start_time

    parent_values = dict(parent.named_parameters())
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    trainable += [
        (n, p)
        for name, head in head_set.items()
        if name != default
        for n, p in head.named_parameters()
        if p.requires_grad
    ]
    objective = _Objective(
        settings, [(p, parent_values[n].detach()) for n, p in trainable], head_set or None
    )
    parameters = [p for _, p in trainable]
    optimizer = (
        torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        if parameters
        else None
    )

    def snapshot() -> dict[str, Any]:
        return copy.deepcopy(
            {"model": model.state_dict(), "heads": {n: h.state_dict() for n, h in head_set.items()}}
        )

    def restore(state: dict[str, Any]) -> None:
        model.load_state_dict(state["model"])
        for name, head_state in state["heads"].items():
            head_set[name].load_state_dict(head_state)

    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["torch_rng"])
        rng.bit_generator.state = saved["numpy_rng"]
        history = [EpochRecord.model_validate(r) for r in saved["history"]]
        best_state = saved["best_state_dict"]
        best_state = best_state if "heads" in best_state else {"model": best_state, "heads": {}}
    else:
        tick = time.perf_counter()
        for module in (model, *head_set.values()):
            module.eval()
        errors = [run_epoch(model, b, cut, objective) for b in (train_batches, val_batches)]
        val_force = force_mae(model, val_batches, head_set) if val_forces else None
        relaxed = relaxed_errors()
        history = [_record(0, *errors, 0.0, time.perf_counter() - tick, val_force, relaxed)]
        best_state = snapshot()
        if progress:
            progress(history[0])
    resumed_from = history[-1].epoch if saved is not None else None

    def best() -> EpochRecord:
        return min(history, key=lambda record: selection_key(record, settings.selection))

    stopped_early = False
    while optimizer is not None and history[-1].epoch < settings.epochs:
        if settings.patience and history[-1].epoch - best().epoch >= settings.patience:
            stopped_early = True
            break
        epoch = history[-1].epoch + 1
        tick = time.perf_counter()
        lr = cosine_lr(settings, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for module in (model, *head_set.values()):
            module.train()
        order = rng.permutation(len(train_batches))
        train_errors = run_epoch(model, train_batches, cut, objective, optimizer, order)
        for module in (model, *head_set.values()):
            module.eval()
        val_errors = run_epoch(model, val_batches, cut, objective)
        val_force = force_mae(model, val_batches, head_set) if val_forces else None
        relaxed = relaxed_errors()
        seconds = time.perf_counter() - tick
        history.append(_record(epoch, train_errors, val_errors, lr, seconds, val_force, relaxed))
        if best() is history[-1]:
            best_state = snapshot()
        torch.save(
            {
                "model": model.as_dict(),
                "heads": {n: h.state_dict() for n, h in head_set.items()},
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "numpy_rng": rng.bit_generator.state,
                "history": [r.model_dump() for r in history],
                "best_state_dict": best_state,
                "atomref_shift": atomref_shift,
                "head_shifts": head_shifts,
                "settings": settings.model_dump(),
                "train_keys": train.keys[:n_own],
                "val_keys": val.keys,
            },
            last,
        )
        if progress:
            progress(history[-1])

    restore(best_state)
    for module in (model, *head_set.values()):
        module.eval()
    best_checkpoint = work_dir / BEST_CHECKPOINT
    checkpoint: dict[str, Any] = {"model": model.as_dict()}
    if head_set:
        checkpoint |= {
            "heads": {
                h.name: {
                    "state_dict": head_set[h.name].state_dict(),
                    "level_of_theory": h.level_of_theory,
                    "sets": list(h.sets),
                }
                for h in heads
            },
            "default_head": default,
        }
    torch.save(checkpoint, best_checkpoint)
    return FineTuneResult(
        model=model,
        freeze=freeze,
        history=history,
        best_epoch=best().epoch,
        atomref_shift=atomref_shift,
        best_checkpoint=best_checkpoint,
        stopped_early=stopped_early,
        resumed_from_epoch=resumed_from,
        setup_seconds=setup_seconds,
        wall_seconds=time.perf_counter() - start_time,
        head_shifts=head_shifts,
        default_head=default,
        replay_pool=replay_pool,
    )
