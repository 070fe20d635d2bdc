"""Replay: bulks and rattled, strained copies labelled by the frozen parent, in every batch."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from chgnet.model import CHGNet
from pymatgen.core import Lattice, Structure

from surfflows.engine.finetune.batches import Batch
from surfflows.engine.finetune.data import ReferenceData, Sample
from surfflows.schemas.finetune import FineTuneSettings


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


def shift_replay_labels(parent: CHGNet, model: CHGNet, batches: Sequence[Batch]) -> None:
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


def add_replay(
    parent: CHGNet,
    train: ReferenceData,
    groups: list[list[int]],
    settings: FineTuneSettings,
    replay_bulks: Sequence[Structure] = (),
) -> tuple[ReferenceData, list[list[int]], dict[str, int]]:
    """The training data with the replay pool appended and spread over every batch group.

    The pool's bulks are the training bulks, or with ``replay_bulks`` a random draw from
    those and the training bulks; copies follow (:func:`replay_structures`), all labelled by
    the frozen parent (:func:`replay_data`). The random generator is seeded by
    ``[settings.seed, 1]``, so replay does not change the training's own random stream.

    Returns
    -------
    tuple
        Training data, batch groups, and the pool's structures by origin
        (``training_bulks``, ``replay_set_bulks``, ``copies``); without replay
        (``replay_weight`` 0) the inputs unchanged and an empty dict.
    """
    if settings.replay_weight <= 0:
        return train, groups, {}
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
    origins = {
        "training_bulks": sum(id(b) not in extra for b in pool[:n_bulks]),
        "replay_set_bulks": sum(id(b) in extra for b in pool[:n_bulks]),
        "copies": len(pool) - n_bulks,
    }
    replay = replay_data(parent, pool)
    n_own = len(train.samples)
    train = ReferenceData([*train.samples, *replay], train.pairs, train.dropped)
    return train, with_replay(groups, n_own, len(replay), replay_rng), origins
