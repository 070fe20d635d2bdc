"""CHGNet crystal graphs built with numpy.

:class:`chgnet.graph.CrystalGraphConverter` builds its bond (line) graph in a Python loop
over edge objects (``Graph.line_graph_adjacency_list``); for a 50-atom slab that loop is
about 25 ms, a fifth of a relaxation step on 2 CPU cores. :func:`crystal_graph` builds the
same :class:`~chgnet.graph.CrystalGraph` from the same neighbour list with array
operations, with the converter's conventions:

* directed edge ``e`` = entry ``e`` of pymatgen's neighbour list within the atom-graph
  cutoff (centre, neighbour, image, distance);
* an undirected edge pairs ``i -> j`` (image ``n``) with its reverse ``j -> i`` (image
  ``-n``); undirected edges are numbered in order of their first directed edge, which is
  also what ``undirected2directed`` points to;
* the bond graph has one row ``[atom, bond_1, directed_1, bond_2, directed_2]`` per pair of
  distinct directed edges leaving the same atom, for bonds 1 shorter than or equal to the
  bond-graph cutoff and bonds 2 strictly shorter, in the converter's row order.

Tests check the result against the converter, array for array.
"""

from __future__ import annotations

import numpy as np
import torch
from chgnet.graph import CrystalGraph, CrystalGraphConverter
from chgnet.model.model import TORCH_DTYPE
from pymatgen.core import Structure


class GraphMismatchError(ValueError):
    """The neighbour list does not pair every directed edge with exactly one reverse."""


def _undirected_edges(
    center: np.ndarray, neighbor: np.ndarray, image: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Undirected edge of every directed edge, and the two directed edges of each.

    Returns
    -------
    directed2undirected : ndarray, shape (n_directed,)
    pairs : ndarray, shape (n_undirected, 2)
        First and second directed edge of each undirected edge, in directed-edge order.
    """
    first_nonzero = np.where(
        image[:, 0] != 0, image[:, 0], np.where(image[:, 1] != 0, image[:, 1], image[:, 2])
    )
    reverse = (center > neighbor) | ((center == neighbor) & (first_nonzero < 0))
    keys = np.column_stack(
        [
            np.where(reverse, neighbor, center),
            np.where(reverse, center, neighbor),
            np.where(reverse[:, None], -image, image),
        ]
    )
    _, first, group = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    counts = np.bincount(group, minlength=len(first))
    if np.any(counts != 2):
        raise GraphMismatchError("a directed edge has no single reverse edge")
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    directed2undirected = rank[group]
    order = np.lexsort((np.arange(len(group)), directed2undirected))
    return directed2undirected, order.reshape(-1, 2)


def _bond_graph(
    center: np.ndarray,
    neighbor: np.ndarray,
    distance: np.ndarray,
    directed2undirected: np.ndarray,
    pairs: np.ndarray,
    n_atoms: int,
    cutoff: float,
) -> np.ndarray:
    """Rows ``[atom, bond_1, directed_1, bond_2, directed_2]`` (see the module docstring)."""
    short = np.flatnonzero(distance < cutoff)
    # the converter visits an atom's edges grouped by neighbour, neighbours in order of
    # their first edge, edges in index order
    pair_key = center * n_atoms + neighbor
    _, first_of_pair, pair_group = np.unique(pair_key, return_index=True, return_inverse=True)
    first_edge = first_of_pair[pair_group.reshape(-1)]
    short = short[np.lexsort((short, first_edge[short], center[short]))]
    starts = np.searchsorted(center[short], np.arange(n_atoms), side="left")
    ends = np.searchsorted(center[short], np.arange(n_atoms), side="right")

    bonded = np.flatnonzero(distance[pairs[:, 0]] <= cutoff)
    anchor_bond = np.repeat(bonded, 2)
    anchor_edge = pairs[bonded].reshape(-1)
    anchor_atom = center[anchor_edge]
    counts = ends[anchor_atom] - starts[anchor_atom]
    rows_of = np.repeat(np.arange(len(anchor_edge)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    other = short[starts[anchor_atom][rows_of] + offsets]
    keep = other != anchor_edge[rows_of]
    rows_of, other = rows_of[keep], other[keep]
    return np.column_stack(
        [
            anchor_atom[rows_of],
            anchor_bond[rows_of],
            anchor_edge[rows_of],
            directed2undirected[other],
            other,
        ]
    )


def crystal_graph(converter: CrystalGraphConverter, structure: Structure) -> CrystalGraph:
    """The :class:`~chgnet.graph.CrystalGraph` that ``converter(structure)`` would return.

    Parameters
    ----------
    converter
        The model's graph converter (its cutoffs are used).
    structure
        Periodic structure.

    Returns
    -------
    CrystalGraph
        Fractional coordinates and lattice require gradients, as from the converter. A
        structure the arrays cannot handle alike (an atom without neighbours, whose handling
        is the converter's ``on_isolated_atoms`` setting, or an unpaired edge) is handed to
        ``converter(structure)``.
    """
    center, neighbor, image, distance = structure.get_neighbor_list(
        r=converter.atom_graph_cutoff, sites=structure.sites, numerical_tol=1e-8
    )
    center, neighbor = center.astype(np.int64), neighbor.astype(np.int64)
    image = np.asarray(image, dtype=np.int64).reshape(-1, 3)
    n_atoms = len(structure)
    if np.unique(center).size < n_atoms:
        return converter(structure)
    try:
        directed2undirected, pairs = _undirected_edges(center, neighbor, image)
    except GraphMismatchError:
        return converter(structure)
    bond_graph = _bond_graph(
        center,
        neighbor,
        distance,
        directed2undirected,
        pairs,
        n_atoms,
        converter.bond_graph_cutoff,
    )
    return CrystalGraph(
        atomic_number=torch.tensor(structure.atomic_numbers, dtype=torch.int32),
        atom_frac_coord=torch.tensor(structure.frac_coords, dtype=TORCH_DTYPE, requires_grad=True),
        atom_graph=torch.tensor(np.column_stack([center, neighbor]), dtype=torch.int32),
        neighbor_image=torch.tensor(image, dtype=TORCH_DTYPE),
        directed2undirected=torch.tensor(directed2undirected, dtype=torch.int32),
        undirected2directed=torch.tensor(pairs[:, 0], dtype=torch.int32),
        bond_graph=torch.tensor(bond_graph, dtype=torch.int32).reshape(-1, 5),
        lattice=torch.tensor(structure.lattice.matrix, dtype=TORCH_DTYPE, requires_grad=True),
        composition=structure.composition.formula,
        atom_graph_cutoff=converter.atom_graph_cutoff,
        bond_graph_cutoff=converter.bond_graph_cutoff,
    )
