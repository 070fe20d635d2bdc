"""Choosing fine-tuning data: DIRECT sampling versus random picks at the same budget.

DIRECT (Qi, Ko, Wood, Pham, Ong, arXiv:2307.13710): structure features -> standard
scaling -> PCA keeping components with eigenvalue > 1 (Kaiser), weighted by explained
variance -> Birch clustering into ``budget / k`` clusters -> ``k`` structures per cluster
nearest the centroid. maml's ``DIRECTSampler`` does the pipeline; the features are
CHGNet's own crystal features (``crystal_fea``), computed once per structure and model
and stored with the model id.

The unit of selection is a training **slab** of the train split (its bulk always comes
along, since a surface energy needs both); the pool excludes flagged records and slabs
without a bulk. A selection is stored (keys, method, budget, seed) and reproducible.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import numpy as np
from maggma.core import Store
from pydantic import BaseModel, Field
from pymatgen.core import Structure
from tqdm.auto import tqdm

from surfflows.engine.models import ModelSpec, load_model

Method = Literal["direct", "random"]


class SelectionDoc(BaseModel):
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
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat())


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


def stored_features(
    keys_and_structures: list[tuple[str, Structure]], model: ModelSpec, store: Store
) -> np.ndarray:
    """Features of the given structures, computing and storing only the missing ones.

    Documents in ``store`` are keyed ``feature_id = model_id|reference_key``.
    """
    ids = [f"{model.model_id}|{key}" for key, _ in keys_and_structures]
    known = {
        d["feature_id"]: d["features"]
        for d in store.query({"feature_id": {"$in": ids}}, properties=["feature_id", "features"])
    }
    missing = [(i, s) for i, (_, s) in enumerate(keys_and_structures) if ids[i] not in known]
    if missing:
        features = crystal_features([s for _, s in missing], model)
        docs = [
            {
                "feature_id": ids[i],
                "model_id": model.model_id,
                "reference_key": keys_and_structures[i][0],
                "features": row.tolist(),
            }
            for (i, _), row in zip(missing, features, strict=True)
        ]
        store.update(docs, key="feature_id")
        known.update({d["feature_id"]: d["features"] for d in docs})
    return np.asarray([known[i] for i in ids], dtype=float)


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


def training_pool(
    set_name: str, references: Store, assignments: dict[str, str]
) -> list[tuple[str, Structure]]:
    """(key, structure) of the unflagged train-split slabs of a set that have a bulk."""
    docs = references.query(
        {"set_name": set_name, "doc_type": "slab"},
        properties=["key", "material_id", "flags", "bulk_key", "structure"],
    )
    pool = [
        (d["key"], Structure.from_dict(d["structure"]))
        for d in docs
        if assignments.get(d["material_id"]) == "train" and not d.get("flags") and d.get("bulk_key")
    ]
    return sorted(pool, key=lambda item: item[0])


def select(
    set_name: str,
    method: Method,
    budget: int,
    *,
    seed: int = 0,
    model: ModelSpec | None = None,
    references: Store,
    splits: Store,
    features: Store,
    selections: Store,
) -> SelectionDoc:
    """Select ``budget`` training slabs of a set by DIRECT or at random, and store the choice.

    A selection with the same id is returned from the store unchanged (reproducible). A
    budget of at least the pool size selects the whole pool.
    """
    from surfflows.core.splits import get_or_create_split

    model = model or ModelSpec()
    split = get_or_create_split(set_name, store=splits, references=references)
    feature_model = model.model_id if method == "direct" else None
    if method not in ("direct", "random"):
        raise ValueError(f"unknown selection method {method!r}; use direct or random")
    selection_id = f"{set_name}|{split.split_id}|{method}|{budget}|{seed}|{feature_model}"
    stored = selections.query_one({"selection_id": selection_id})
    if stored:
        return SelectionDoc(**{k: v for k, v in stored.items() if k in SelectionDoc.model_fields})
    pool = training_pool(set_name, references, split.assignments)
    if not pool:
        raise ValueError(f"no unflagged train-split slabs with a bulk in {set_name!r}")
    info: dict = {}
    if budget >= len(pool):  # the whole pool: both methods give the same set
        indexes = list(range(len(pool)))
    elif method == "direct":
        indexes, info = direct_select(stored_features(pool, model, features), budget)
    else:
        indexes = random_select(len(pool), budget, seed)
    doc = SelectionDoc(
        selection_id=selection_id,
        set_name=set_name,
        split_id=split.split_id,
        method=method,
        budget=budget,
        seed=seed,
        feature_model_id=feature_model,
        n_pool=len(pool),
        reference_keys=[pool[i][0] for i in indexes],
        n_components=info.get("n_components"),
        explained_variance=info.get("explained_variance"),
    )
    selections.update([doc.model_dump()], key="selection_id")
    return doc
