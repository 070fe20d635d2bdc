"""DIRECT and random selection of training slabs, stored and reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from surfflows.engine.sampling import direct_select, random_select
from surfflows.io.ingest import ingest_path
from surfflows.io.selections import select
from surfflows.io.splits import get_or_create_split
from surfflows.stores import get_store


@pytest.fixture
def stores():
    ingest_path("pbe_metal_surfaces")
    handles = {n: get_store(n) for n in ("references", "splits", "features", "selections")}
    for store in handles.values():
        store.connect()
    return handles


def test_direct_covers_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10, size=(5, 8))
    features = np.vstack([c + rng.normal(scale=0.1, size=(20, 8)) for c in centres])
    picked, info = direct_select(features, budget=5)
    # one pick per well-separated cluster: DIRECT covers every cluster
    assert sorted(i // 20 for i in picked) == [0, 1, 2, 3, 4]
    assert info["n_components"] >= 1 and 0 < info["explained_variance"] <= 1
    with pytest.raises(ValueError, match="budget"):
        direct_select(features, budget=101)


def test_random_is_seeded():
    assert random_select(50, 10, seed=1) == random_select(50, 10, seed=1)
    assert random_select(50, 10, seed=1) != random_select(50, 10, seed=2)
    assert len(set(random_select(50, 50, seed=3))) == 50


@pytest.mark.slow
def test_selection_from_train_split_is_stored(stores):
    direct = select("pbe_metal_surfaces", "direct", 5, **stores)
    split = get_or_create_split(
        "pbe_metal_surfaces", store=stores["splits"], references=stores["references"]
    )
    refs = {
        d["key"]: d for d in stores["references"].query({"key": {"$in": direct.reference_keys}})
    }
    assert len(set(direct.reference_keys)) == 5
    assert all(split.assignments[refs[k]["material_id"]] == "train" for k in direct.reference_keys)
    assert stores["features"].count() == direct.n_pool  # features computed once per slab
    again = select("pbe_metal_surfaces", "direct", 5, **stores)
    assert (
        again.reference_keys == direct.reference_keys
        and stores["features"].count() == direct.n_pool
    )
    random = select("pbe_metal_surfaces", "random", 5, seed=1, **stores)
    assert random.method == "random" and random.feature_model_id is None
    assert stores["selections"].count() == 2
