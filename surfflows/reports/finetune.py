"""Summaries of fine-tuned models and their plots: sweep rows, learning-curve rows, PNGs,
and the relaxed-mode proxy of a recipe comparison.

They join the fine-tune and learning-curve documents of the JobStore's docs store with the
``benchmarks`` store (run the builders first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from maggma.core import Store

from surfflows.core.benchmark import correlation, relative_change


def sweep_summary(
    outputs: Store,
    benchmarks: Store,
    set_name: str,
    sweep: str | None = None,
    mode: str = "single_point",
    benchmark_set: str | None = None,
) -> list[dict[str, Any]]:
    """One row per model: the parent (zero-shot) and each checkpoint of a sweep.

    ``set_name`` is what the checkpoints trained on (several sets joined by '+'),
    ``benchmark_set`` the set whose benchmark rows are read (default ``set_name``).

    Joins the fine-tune documents and the newest :class:`ForgettingDoc` of each model (job
    outputs in ``outputs``, the JobStore's docs store) with the ``benchmarks`` store (val
    and test rows; run the builders first).

    Returns
    -------
    list of dict
        ``model_id``, ``depth`` (None for the parent), ``seed``, ``val_mae``, ``val_signed``,
        ``test_mae``, ``test_signed``, ``n_test`` (J/m², mean signed error as ``*_signed``),
        ``forgetting`` (bulk set -> relative change), ``bulk_mae`` (bulk set -> eV/atom),
        ``best_epoch``, ``epoch_s``, ``wall_s``, ``trainable_parameters``.
    """
    criteria: dict[str, Any] = {"output.@class": "FineTuneDoc", "output.set_name": set_name}
    if sweep is not None:
        criteria["output.sweep"] = sweep
    finetuned = {
        d["output"]["model_id"]: d["output"]
        for d in outputs.query(criteria, properties=[f"output.{k}" for k in _SUMMARY_FIELDS])
    }.values()
    parents = sorted({d["parent_model_id"] for d in finetuned})
    rows = [{"model_id": p, "depth": None, "seed": None} for p in parents]
    rows += [
        {
            "model_id": d["model_id"],
            "depth": d["depth"],
            "seed": d["hyperparameters"]["seed"],
            "best_epoch": d["best_epoch"],
            "epoch_s": d["mean_epoch_seconds"],
            "wall_s": d["wall_seconds"],
            "trainable_parameters": d["trainable_parameters"],
        }
        for d in sorted(finetuned, key=lambda d: (d["depth"], d["hyperparameters"]["seed"]))
    ]
    for row in rows:
        for part in ("val", "test"):
            bench = benchmarks.query_one(
                {
                    "model_id": row["model_id"],
                    "set_name": benchmark_set or set_name,
                    "mode": mode,
                    "split": part,
                }
            )
            row[f"{part}_mae"] = bench["mae"] if bench else None
            row[f"{part}_signed"] = bench["mean_signed_error"] if bench else None
            row[f"n_{part}"] = bench["n"] if bench else 0
        forgetting = outputs.query_one(
            {"output.@class": "ForgettingDoc", "output.model_id": row["model_id"]},
            sort={"completed_at": -1},
        )
        sets = forgetting["output"]["sets"] if forgetting else []
        row["forgetting"] = {s["name"]: s["relative_change"] for s in sets}
        row["bulk_mae"] = {s["name"]: s["mae_per_atom"] for s in sets}
    return rows


#: Fine-tune document fields the summaries read (not the checkpoint bytes).
_SUMMARY_FIELDS = (
    "model_id", "parent_model_id", "set_name", "sweep", "depth", "hyperparameters",
    "best_epoch", "mean_epoch_seconds", "wall_seconds", "trainable_parameters", "history",
)  # fmt: skip


def finetune_report_plots(
    out: str | Path, outputs: Store, benchmarks: Store, set_name: str | None = None
) -> list[Path]:
    """PNGs of every set with fine-tuned models: gamma MAE versus X per mode, loss curves.

    Reads the fine-tune outputs of the JobStore's docs store and the ``benchmarks`` store
    (run the builders first); writes ``finetune_depth_<set>_<mode>.png`` and
    ``finetune_curves_<set>.png`` into ``out``.
    """
    from surfflows.reports.plots import finetune_curves_plot, finetune_depth_plot

    criteria: dict[str, Any] = {"output.@class": "FineTuneDoc"}
    if set_name:
        criteria["output.set_name"] = set_name
    properties = [f"output.{k}" for k in _SUMMARY_FIELDS]
    docs = [d["output"] for d in outputs.query(criteria, properties=properties)]
    modes = benchmarks.distinct("mode")
    paths = []
    for name in sorted({d["set_name"] for d in docs}):
        for mode in sorted(modes):
            rows = sweep_summary(outputs, benchmarks, name, mode=mode)
            if any(r["test_mae"] is not None for r in rows if r["depth"] is not None):
                title = f"fine-tuned CHGNet on {name}, {mode}"
                paths.append(
                    finetune_depth_plot(
                        rows, Path(out) / f"finetune_depth_{name}_{mode}.png", title
                    )
                )
        curves = [d for d in docs if d["set_name"] == name]
        paths.append(finetune_curves_plot(curves, Path(out) / f"finetune_curves_{name}.png", name))
    return paths


def learning_curve_rows(
    outputs: Store, benchmarks: Store, sweep: str, mode: str = "single_point"
) -> list[dict[str, Any]]:
    """One row per point: method, budget, seed, model and its test-split errors."""
    rows = []
    for doc in outputs.query({"output.@class": "LearningCurvePointDoc", "output.sweep": sweep}):
        point = doc["output"]
        bench = benchmarks.query_one(
            {"model_id": point["model_id"], "mode": mode, "split": "test"},
            properties=["n", "mae", "mean_signed_error"],
        )
        rows.append(
            {k: point[k] for k in ("method", "budget", "seed", "model_id", "selection_id")}
            | {
                "test_n": bench["n"] if bench else None,
                "test_mae": bench["mae"] if bench else None,
                "test_mean_signed_error": bench["mean_signed_error"] if bench else None,
                "val_gamma_mae": point["best_val_gamma_mae"],
            }
        )
    return sorted(rows, key=lambda r: (r["method"], r["budget"], r["seed"]))


def summarize_curve(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of the test MAE over seeds per (method, budget)."""
    groups: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["test_mae"] is not None:
            groups.setdefault((row["method"], row["budget"]), []).append(row["test_mae"])
    return [
        {
            "method": method,
            "budget": budget,
            "n_seeds": len(values),
            "test_mae_mean": float(np.mean(values)),
            "test_mae_std": float(np.std(values)),
        }
        for (method, budget), values in sorted(groups.items())
    ]


def steps_vs_parent(row: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """Relative change of the median and mean test relaxation steps against the parent's."""
    mine, theirs = row["steps"]["test_all"], parent["steps"]["test_all"]
    return {k: relative_change(mine[k], theirs[k]) for k in ("median", "mean")}


def proxy_points(rows: Sequence[dict[str, Any]], training_set: str) -> list[dict[str, Any]]:
    """One point per model: val force norm at DFT minima and the relaxed - single point gaps."""
    points = []
    for r in rows:
        force = r.get("val_force_norm")
        points.append(
            {
                "model_id": r["model_id"],
                "recipe": r["recipe"],
                "seed": r["seed"],
                "val_force_norm": force,
                "val_gap": r["gap"].get("val", {}).get(training_set, {}).get("gap"),
                "test_gap": r["gap"].get("test", {}).get(training_set, {}).get("gap"),
                "val_relaxed_mae": r.get("val", {})
                .get(training_set, {})
                .get("relaxed", {})
                .get("mae"),
            }
        )
    return points


def proxy_summary(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Correlation of the val force norm with each relaxed-mode quantity over the points."""
    force = [p["val_force_norm"] for p in points]
    return {
        target: correlation(force, [p[target] for p in points])
        for target in ("val_gap", "test_gap", "val_relaxed_mae")
    }


def element_learning_curve(
    cross_validations: Mapping[int, Mapping[str, Any]], targets: Mapping[str, float]
) -> dict[str, Any]:
    """Held-out gamma figures against the number of training elements.

    The points are cross-validations of one recipe with different fold counts: k folds
    train on k - 2 of them, so k = 3, 4, 5 train on a third, a half and three fifths of
    the groups, and every group (element) is held out once in each. Per mode and figure
    (``mae``, ``mape``, ``abs_mean_signed_error``), a power law ``y = a n^b`` is fitted to
    the fold means in log-log, and the number of training groups at which it reaches the
    target is given where the fitted slope is negative (an extrapolation: the fit rests on
    as many points as there are fold counts).

    Parameters
    ----------
    cross_validations
        fold count k -> the recipe's CrossValidationDoc (as JSON) with that many folds.
    targets
        figure -> target (``mae`` in J/m², ``mape`` a fraction, ``abs_mean_signed_error``
        in J/m²).

    Returns
    -------
    dict
        ``points`` (per k: folds finished, mean training groups, mode -> figure -> mean,
        std), ``fits`` (mode -> figure -> slope, prefactor, ``n_at_target``) and the
        ``targets``.
    """
    points = []
    for k, doc in sorted(cross_validations.items()):
        figures = {}
        for mode, summary in doc["summary"].items():
            signed = summary["mean_signed_error"]
            figures[mode] = {
                "mae": summary["mae"],
                "mape": summary["mape"],
                "abs_mean_signed_error": signed | {"mean": abs(signed["mean"])}
                if signed["mean"] is not None
                else signed,
            }
        points.append(
            {
                "k": k,
                "folds": len(doc["folds"]),
                "partial": doc.get("partial", False),
                "n_train_groups": float(np.mean([f["n_train_groups"] for f in doc["folds"]])),
                "figures": figures,
            }
        )
    fits: dict[str, dict[str, Any]] = {}
    for mode in sorted({m for p in points for m in p["figures"]}):
        for figure, target in targets.items():
            xy = [
                (p["n_train_groups"], p["figures"][mode][figure]["mean"])
                for p in points
                if mode in p["figures"] and (p["figures"][mode][figure]["mean"] or 0) > 0
            ]
            if len({x for x, _ in xy}) < 2:
                continue
            slope, intercept = np.polyfit(np.log([x for x, _ in xy]), np.log([y for _, y in xy]), 1)
            fits.setdefault(mode, {})[figure] = {
                "slope": float(slope),
                "prefactor": float(np.exp(intercept)),
                "n_at_target": float(np.exp((np.log(target) - intercept) / slope))
                if slope < 0
                else None,
            }
    return {"points": points, "fits": fits, "targets": dict(targets)}
