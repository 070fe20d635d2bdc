"""Selections of training slabs kept in stores: the ``surfflows select`` command and plots.

Features are computed once per structure and model and kept in the ``features`` store
(``feature_id = model_id|reference_key``); selections in the ``selections`` store.
"""

from __future__ import annotations

import numpy as np
from maggma.core import Store
from pymatgen.core import Structure

from surfflows.engine.sampling import (
    Method,
    SelectionDoc,
    crystal_features,
    select_from_pool,
    selection_id,
    training_pool,
)
from surfflows.io.inputs import reference_inputs
from surfflows.schemas.models import ModelSpec


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
    model = model or ModelSpec()
    inputs = reference_inputs(set_name, references, splits)
    feature_model = model.model_id if method == "direct" else None
    if method not in ("direct", "random"):
        raise ValueError(f"unknown selection method {method!r}; use direct or random")
    key = selection_id(set_name, inputs.split_id, method, budget, seed, feature_model)
    stored = selections.query_one({"selection_id": key})
    if stored:
        return SelectionDoc(**{k: v for k, v in stored.items() if k in SelectionDoc.model_fields})
    pool = training_pool(inputs)
    needs_features = method == "direct" and 0 < budget < len(pool)
    doc = select_from_pool(
        [k for k, _ in pool],
        stored_features(pool, model, features) if needs_features else None,
        method,
        budget,
        seed=seed,
        set_name=set_name,
        split_id=inputs.split_id,
        feature_model_id=feature_model,
    )
    selections.update([doc.model_dump()], key="selection_id")
    return doc
