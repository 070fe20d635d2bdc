"""Choosing fine-tuning data: DIRECT sampling versus random picks at the same budget.

DIRECT (Qi, Ko, Wood, Pham, Ong, arXiv:2307.13710): structure features -> standard
scaling -> PCA keeping components with eigenvalue > 1 (Kaiser), weighted by explained
variance -> Birch clustering into ``budget / k`` clusters -> ``k`` structures per cluster
nearest the centroid. maml's ``DIRECTSampler`` does the pipeline; the features are
CHGNet's own crystal features (``crystal_fea``), computed once per structure and model
and stored with the model id.

The unit of selection is a training **slab** of the train split (its bulk always comes
along, since a surface energy needs both); the pool excludes flagged records and slabs
without a bulk. A selection (keys, method, budget, seed) is reproducible; the CLI keeps
it in the ``selections`` store (:mod:`surfflows.io.selections`), a flow as a job output.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field
from pymatgen.core import Structure
from tqdm.auto import tqdm

from surfflows.core.timestamps import now_iso
from surfflows.engine.models import load_model
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.references import ReferenceInputs

Method = Literal["direct", "random"]


class SelectionDoc(OutputDoc):
    """A stored choice of training slabs."""

    selection_id: str = Field(description="set|split|method|budget|seed|feature model (key).")
    set_name: str = Field(description="Reference set.")
    split_id: str = Field(description="Split whose train part is the pool.")
    method: Method = Field(description="direct or random.")
    budget: int = Field(description="Number of slabs selected.")
    seed: int = Field(description="Random seed (random picks; Birch is deterministic).")
    feature_model_id: str | None = Field(description="Model whose features DIRECT used.")
    n_pool: int = Field(description="Slabs in the pool.")
    reference_keys: list[str] = Field(description="Selected slab keys, in selection order.")
    n_components: int | None = Field(default=None, description="PCs kept (eigenvalue > 1).")
    explained_variance: float | None = Field(default=None, description="Variance they explain.")
    created_at: str = Field(default_factory=now_iso, description="ISO time of the selection.")


def crystal_features(
    structures: list[Structure], model: ModelSpec, batch_size: int = 16
) -> np.ndarray:
    """CHGNet crystal features (one 64-vector per structure, mean-pooled atom features).

    Returns
    -------
    numpy.ndarray
        Shape (n_structures, n_features).
    """
    chgnet = load_model(model)
    rows = []
    for start in tqdm(range(0, len(structures), batch_size), desc="features", leave=False):
        chunk = structures[start : start + batch_size]
        predictions = chgnet.predict_structure(
            chunk, task="e", return_crystal_feas=True, batch_size=batch_size
        )
        if len(chunk) == 1:
            predictions = [predictions]
        rows.extend(np.asarray(p["crystal_fea"], dtype=float) for p in predictions)
    return np.vstack(rows)


def direct_select(features: np.ndarray, budget: int, k: int = 1) -> tuple[list[int], dict]:
    """DIRECT selection of ``budget`` rows of ``features`` (maml's DIRECTSampler).

    Parameters
    ----------
    features
        (n, d) feature matrix of the pool.
    budget
        Structures to select (``budget / k`` Birch clusters).
    k
        Structures per cluster, nearest the centroid first.

    Returns
    -------
    indexes
        Selected row indexes.
    info
        ``n_components``, ``explained_variance`` of the PCs kept, ``pca_features`` (the
        weighted PC coordinates of the whole pool, for coverage plots).
    """
    from maml.sampling.direct import BirchClustering, DIRECTSampler, SelectKFromClusters

    if not 0 < budget <= len(features):
        raise ValueError(f"budget {budget} must be between 1 and the pool size {len(features)}")
    n_clusters = max(1, budget // k)
    sampler = DIRECTSampler(
        structure_encoder=False,
        clustering=BirchClustering(n=n_clusters, threshold_init=0.05),
        select_k_from_clusters=SelectKFromClusters(k=k),
    )
    result = sampler.fit_transform(features)
    pca = sampler.pca.pca
    n_components = int((pca.explained_variance_ > 1).sum())
    return [int(i) for i in result["selected_indexes"]][:budget], {
        "n_components": n_components,
        "explained_variance": float(pca.explained_variance_ratio_[:n_components].sum()),
        "pca_features": np.asarray(result["PCAfeatures"]),
    }


def random_select(n_pool: int, budget: int, seed: int) -> list[int]:
    """``budget`` distinct indexes of ``range(n_pool)`` drawn with numpy's Generator."""
    if not 0 < budget <= n_pool:
        raise ValueError(f"budget {budget} must be between 1 and the pool size {n_pool}")
    return [int(i) for i in np.random.default_rng(seed).choice(n_pool, budget, replace=False)]


def training_pool(references: ReferenceInputs) -> list[tuple[str, Structure]]:
    """(key, structure) of the unflagged train-split slabs of a set that have a bulk."""
    pool = [
        (d.key, d.structure.copy())
        for d in references.of_type("slab")
        if references.assignments.get(d.material_id) == "train" and not d.flags and d.bulk_key
    ]
    return sorted(pool, key=lambda item: item[0])


def selection_id(
    set_name: str, split_id: str, method: str, budget: int, seed: int, feature_model_id: str | None
) -> str:
    """Key of a selection: ``set|split|method|budget|seed|feature model``."""
    return f"{set_name}|{split_id}|{method}|{budget}|{seed}|{feature_model_id}"


def select_from_pool(
    pool_keys: list[str],
    features: np.ndarray | None,
    method: Method,
    budget: int,
    *,
    seed: int,
    set_name: str,
    split_id: str,
    feature_model_id: str | None,
) -> SelectionDoc:
    """Select ``budget`` slabs of a pool by DIRECT (on ``features``) or at random.

    A budget of at least the pool size selects the whole pool (both methods agree).

    Raises
    ------
    ValueError
        For an unknown method, an empty pool, or DIRECT without features.
    """
    if method not in ("direct", "random"):
        raise ValueError(f"unknown selection method {method!r}; use direct or random")
    if not pool_keys:
        raise ValueError(f"no unflagged train-split slabs with a bulk in {set_name!r}")
    info: dict = {}
    if budget >= len(pool_keys):
        indexes = list(range(len(pool_keys)))
    elif method == "direct":
        if features is None:
            raise ValueError("DIRECT needs the pool's features")
        indexes, info = direct_select(np.asarray(features, dtype=float), budget)
    else:
        indexes = random_select(len(pool_keys), budget, seed)
    return SelectionDoc(
        selection_id=selection_id(set_name, split_id, method, budget, seed, feature_model_id),
        set_name=set_name,
        split_id=split_id,
        method=method,
        budget=budget,
        seed=seed,
        feature_model_id=feature_model_id,
        n_pool=len(pool_keys),
        reference_keys=[pool_keys[i] for i in indexes],
        n_components=info.get("n_components"),
        explained_variance=info.get("explained_variance"),
    )


def coverage(
    pool_keys: list[str], features: np.ndarray, selections: list[dict[str, Any]]
) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Weighted PC coordinates of a training pool and the pool rows of some selections.

    Parameters
    ----------
    pool_keys
        Reference keys of the pool, in the order of the rows of ``features``.
    features
        The pool's features, as DIRECT used them.
    selections
        Selection documents to mark (labelled by their method and budget).
    """
    _, info = direct_select(features, budget=1)
    row = {key: i for i, key in enumerate(pool_keys)}
    marked = {
        f"{doc['method']} ({len(doc['reference_keys'])})": [row[k] for k in doc["reference_keys"]]
        for doc in selections
    }
    return info["pca_features"], marked
