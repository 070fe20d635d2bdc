"""Models side by side: surface-energy errors and cost per reference set and mode.

One row per (reference set, mode, model) on one split part: N, MAE, RMSE and mean signed
error of gamma (J/m², from the ``benchmarks`` store; slabs excluded, e.g. a failed or
unconverged relaxation, counted per reason) and the seconds per structure of the
model's evaluations of that set and mode (from the ``wall_seconds`` of its EvaluationDocs
in the JobStore; model loading excluded), with the model's package and version. A row
names its model as a person reads it (``model``: ``chgnet-surf`` for the packaged
fine-tune, :func:`model_labels`) next to its identity (``model_id``: ``chgnet-ft-<sha12>``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from jobflow import JobStore
from maggma.core import Store

LEADERBOARD_COLUMNS = (
    "set_name",
    "mode",
    "model",
    "model_id",
    "package",
    "n",
    "mae",
    "rmse",
    "mean_signed_error",
    "seconds_per_structure",
)


def evaluation_costs(store: JobStore) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(model_id, set_name, mode) -> seconds per structure, structures timed, package.

    Sums the wall time and the structures of every timed EvaluationDoc of that model, set
    and mode (documents written before the time was recorded are left out).
    """
    totals: dict[tuple[str, str, str], dict[str, Any]] = defaultdict(
        lambda: {"seconds": 0.0, "structures": 0, "package": None}
    )
    for doc in store.query(
        {"output.@class": "EvaluationDoc"},
        properties=["output.model_id", "output.set_name", "output.mode", "output.model",
                    "output.wall_seconds", "output.results"],
    ):  # fmt: skip
        out = doc["output"]
        total = totals[(out["model_id"], out["set_name"], out["mode"])]
        model = out.get("model") or {}
        if model.get("package"):
            version = model.get("package_version")
            total["package"] = f"{model['package']} {version}" if version else model["package"]
        if out.get("wall_seconds") is not None:
            total["seconds"] += out["wall_seconds"]
            total["structures"] += len(out["results"])
    return {
        key: {
            "seconds_per_structure": t["seconds"] / t["structures"] if t["structures"] else None,
            "n_structures_timed": t["structures"],
            "package": t["package"],
        }
        for key, t in totals.items()
    }


def model_labels(store: JobStore) -> dict[str, str]:
    """model_id -> the name of a packaged model (``chgnet-surf``), for every registered
    checkpoint of a packaged model in the JobStore (others keep their model id)."""
    return {
        doc["output"]["model_id"]: doc["output"]["metadata"]["packaged_model"]
        for doc in store.query(
            {"output.@class": "CheckpointDoc", "output.metadata.packaged_model": {"$exists": True}},
            properties=["output.model_id", "output.metadata"],
        )
    }


def model_label(model_id: str, labels: dict[str, str]) -> str:
    """``chgnet-surf (chgnet-ft-<sha12>)`` for a packaged model, else the model id."""
    return f"{labels[model_id]} ({model_id})" if model_id in labels else model_id


def leaderboard(
    benchmarks: Store,
    store: JobStore,
    split: str = "test",
    models: list[str] | None = None,
    sets: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Leaderboard rows on one split part, sorted by set, mode and MAE.

    Parameters
    ----------
    benchmarks
        The ``benchmarks`` store (connected).
    store
        The JobStore with the EvaluationDocs (connected).
    split
        Split part (``test`` by default: never used for training or model selection).
    models, sets
        Only these model ids / reference sets (default: all).
    """
    criteria: dict[str, Any] = {"split": split}
    if models:
        criteria["model_id"] = {"$in": list(models)}
    if sets:
        criteria["set_name"] = {"$in": list(sets)}
    costs = evaluation_costs(store)
    labels = model_labels(store)
    rows = []
    for doc in benchmarks.query(criteria):
        if doc.get("quantity", "gamma") != "gamma":  # bulk-energy rows are not ranked here
            continue
        cost = costs.get((doc["model_id"], doc["set_name"], doc["mode"]), {})
        rows.append(
            {
                **{k: doc[k] for k in ("set_name", "mode", "model_id", "n", "mae", "rmse")},
                "model": labels.get(doc["model_id"], doc["model_id"]),
                "mean_signed_error": doc["mean_signed_error"],
                "n_excluded": doc.get("n_excluded", {}),
                "split": split,
                "package": cost.get("package"),
                "seconds_per_structure": cost.get("seconds_per_structure"),
                "n_structures_timed": cost.get("n_structures_timed", 0),
            }
        )
    return sorted(
        rows,
        key=lambda r: (r["set_name"], r["mode"], float("inf") if r["mae"] is None else r["mae"]),
    )
