"""Depth X: CHGNet's energy path as stages, the units X counts, freezing, and the staged forward."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from chgnet.model import CHGNet
from chgnet.model.model import BatchedGraph
from torch import Tensor, nn

from surfflows.schemas.finetune import FineTuneSettings

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


def parameter_modules(model: CHGNet) -> list[str]:
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
        frozen_modules=[n for n in parameter_modules(model) if n not in trainable],
        trainable_parameters=count(trainable),
        optimized_parameters=count(trainable[1:]),
    )


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


def cache_cut(model: CHGNet, settings: FineTuneSettings) -> int | None:
    """First trainable stage, whose input is cached; None when nothing can be cached."""
    n_stages = model.n_conv + 2
    if settings.depth >= n_stages:
        return None
    return n_stages - max(settings.depth, 1)
