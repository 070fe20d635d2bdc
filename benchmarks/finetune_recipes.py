"""Fine-tuning recipes compared: test gamma in both modes, forgetting, steps, epoch time.

This script holds the recipe table (:data:`RECIPES`) and the figures; the runner is
:class:`surfflows.flows.recipes.Runner`. Every recipe is trained for every seed through the
package's own :class:`~surfflows.jobs.finetune.FineTuneMaker`. Each checkpoint and the
parent (CHGNet 0.3.0) are then evaluated by :class:`~surfflows.flows.evaluate.EvaluateMaker`
and the builders, all in one scratch embedded database:

* gamma of the test part of ``jarvis_surfaces`` and ``mp_elemental_surfaces`` and of all of
  ``pbe_metal_surfaces`` (never trained on), single point and relaxed (ions relaxed by the
  model in the DFT cell); a multi-head checkpoint evaluates each set with the head of
  the set's level of theory (its default head where it has none), so the ``heads`` recipe's
  jarvis figures are its OptB88vdW head's and the others its PBE head's;
* forgetting on unseen bulks: ``wbm_bulks`` test part (single points of every part; the
  builders align the test part on the other parts, per model) and ``bo2_bulk_eos``
  (:func:`~surfflows.jobs.finetune.bulk_forgetting`: energies aligned on the set itself,
  forces), next to the parent's;
* relaxation steps per slab (median, mean) next to the parent's on the same slabs;
* from the fine-tune document: mean epoch time, best epoch, val gamma and val force MAE at
  the kept epoch;
* the relaxed-mode proxy: the val part of the training set, single point and relaxed. The
  fine-tune keeps the epoch with the lowest single-point val gamma MAE; the val force norm
  at DFT minima (``val_force_mae`` with ``zero_force_labels``, recorded by every recipe) is
  the candidate cheap proxy for relaxed-mode gamma. Over all checkpoints and the parent,
  its Pearson and Spearman correlation with (relaxed - single point) val and test gamma
  MAE is reported with N.

Everything is resumable: a rerun (same ``--db-dir``) skips fine-tunes whose document is
stored with the same settings, and evaluates only structures without a stored result;
an interrupted fine-tune resumes from its ``last.pth.tar``. Outputs:

* ``results/finetune_recipes.json`` (``finetune_recipes_quick.json`` with ``--quick``):
  per recipe and seed, mean ± std over seeds, the proxy correlations, the run's settings;
* ``results/finetune_recipes.png``: test MAE per set and mode per recipe (error bars: std
  over seeds), forgetting, relaxation steps;
* ``results/finetune_recipes_proxy.png``: val force norm against the relaxed - single point
  gamma gap, one point per checkpoint.

Examples
--------
::

    python benchmarks/finetune_recipes.py                     # 3 seeds, every recipe
    python benchmarks/finetune_recipes.py --quick             # 1 seed, 2 epochs, subsets
    python benchmarks/finetune_recipes.py --recipes default replay --seeds 0 1
    python benchmarks/finetune_recipes.py --collect-only      # tables and plots again
    python benchmarks/finetune_recipes.py --cv-folds 5 --recipes pbe pbe+bulk_replay --epochs 6
    python benchmarks/finetune_recipes.py --cv-folds 5 --learning-curve 3 4 --recipes pbe --epochs 6

With ``--cv-folds K`` the recipes (one training set each) are compared by element-wise
K-fold cross-validation instead (:class:`~surfflows.flows.cross_validation.CrossValidationMaker`,
the same as ``surfflows finetune --cv-folds K``): per fold the held-out gamma in both modes,
the mean ± std over folds, per element, and the epoch count chosen from the folds, in
``results/finetune_recipes_cv.json`` (entries of recipes not in this run are kept, so
recipes may run in separate databases) and ``finetune_recipes_cv.png``. With
``--learning-curve 3 4`` each recipe is cross-validated with those fold counts too (k folds
train on k - 2, so the number of training elements grows with k while every element is held
out once): ``finetune_recipes_learning_curve.json`` and ``_<recipe>.png``, held-out gamma
against the number of training elements with a power-law fit to the targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's surfflows

from surfflows.core.benchmark import aggregate  # noqa: E402
from surfflows.flows.recipes import (  # noqa: E402
    BASE_SETTINGS,
    FORGETTING_SETS,
    MODES,
    WBM_SET,
    Model,
    Plan,
    Recipe,
    Runner,
)
from surfflows.reports.finetune import proxy_points, proxy_summary, steps_vs_parent  # noqa: E402
from surfflows.schemas.finetune import FineTuneSettings  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARENT = "chgnet-0.3.0"
#: The stores the runner reads besides the JobStore.
RUNNER_STORES = ("references", "splits", "surface_errors", "benchmarks")
#: What ``--quick`` changes (stated in the JSON).
#: The targets on held-out elements: relaxed gamma MAE and |mean signed| in J/m²,
#: MAPE a fraction (the learning curve's fits say where they would be reached).
TARGETS = {"mae": 0.10, "mape": 0.12, "abs_mean_signed_error": 0.03}
QUICK = {"seeds": [0], "epochs": 2, "max_train_slabs": 60, "max_relaxed_slabs": 4}
ATTRIBUTION = (
    "Reference data: JARVIS-DFT surfaces (K. Choudhary et al., CC BY 4.0); MP elemental "
    "surfaces (R. Tran et al., Sci. Data 2016, CC BY 4.0, via SE-CGCNN, MIT); PBE metal "
    "surfaces (pymatgen test files, MIT); WBM (H.-C. Wang et al., CC BY 4.0, via matcalc); "
    "BO2 EOS (Mehta et al. 2014, via FAIR Chemistry, MIT)"
)


#: The recipes compared (name -> Recipe). A new one is one line.
RECIPES: dict[str, Recipe] = {
    "default": Recipe(note="current default: jarvis_surfaces, X=4, energy + gamma"),
    "forces": Recipe(
        settings={"force_weight": 1.0, "force_fraction": 0.1},
        note="+ zero forces at DFT minima on 10 % of each batch",
    ),
    "replay": Recipe(settings={"replay_weight": 10.0}, note="+ parent-labelled bulk replay"),
    "forces+replay": Recipe(
        settings={"force_weight": 1.0, "force_fraction": 0.1, "replay_weight": 10.0},
        note="+ forces and replay",
    ),
    "pbe": Recipe(
        sets=("mp_elemental_surfaces",),
        note="PBE data only: mp_elemental_surfaces (the chgnet-surf recipe), X=4, gamma",
    ),
    "heads": Recipe(
        sets=("mp_elemental_surfaces", "jarvis_surfaces"),
        note="PBE + OptB88vdW data, one head per level of theory (each set evaluated with "
        "its own head), against pbe's single PBE head",
    ),
    "pbe+forces+replay": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={
            "force_weight": 1.0,
            "force_fraction": 0.1,
            "replay_weight": 10.0,
            "replay_sets": ["wbm_bulks", "mp_elemental_refs"],
        },
        note="pbe + zero forces on 10 % of each batch + parent-labelled replay (energy, "
        "forces, stress) of its bulks and the train parts of wbm_bulks and mp_elemental_refs",
    ),
    "pbe+bulk_replay": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={"replay_weight": 10.0, "replay_sets": ["wbm_bulks", "mp_elemental_refs"]},
        note="pbe + parent-labelled replay (energies) of its bulks and the train parts of "
        "wbm_bulks and mp_elemental_refs, no forces",
    ),
    "pbe+relaxed_selection": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={"selection": "relaxed"},
        note="pbe, the epoch kept on relaxed-mode val gamma of 24 val slabs",
    ),
    "default+relaxed_selection": Recipe(
        settings={"selection": "relaxed", "selection_slabs": 12},
        note="default, the epoch kept on relaxed-mode val gamma of 12 val slabs",
    ),
    "chgnet_trainer": Recipe(
        settings={"recipe": "chgnet_trainer", "depth": 2, "epochs": 3},
        note="peer baseline: chgnet's Trainer, its fine-tuning example's frozen layers, E + F; "
        "at most 3 epochs (each costs about 4 surfflows epochs: every step is a full forward "
        "and backward pass with forces)",
    ),
}


def table(summary: dict[str, Any], sets: Sequence[str], training_set: str):
    """Rich table of the per-recipe means ± std (over seeds)."""
    from rich.table import Table

    def fmt(node: dict | None, digits: int = 3, percent: bool = False) -> str:
        if not node or node.get("mean") is None:
            return "-"
        mean, std = node["mean"], node.get("std")
        if percent:
            return f"{mean:+.1%}" + (f"±{std:.1%}" if std is not None else "")
        return f"{mean:.{digits}f}" + (f"±{std:.{digits}f}" if std is not None else "")

    out = Table(title="test γ MAE (J/m²; sp single point, rx relaxed), mean ± std over seeds")
    columns = ["recipe", "seeds"]
    columns += [f"{s.removesuffix('_surfaces')} {m}" for s in sets for m in ("sp", "rx")]
    columns += ["val gap", "test gap", "wbm Δ", "bo2 Δ", "bo2 F Δ", "steps med/mean"]
    columns += ["epoch s", "best ep", "val γ", "val F"]
    for column in columns:
        out.add_column(column, overflow="fold", no_wrap=column == "recipe")
    for name, row in summary.items():
        test, forget, gap = row.get("test", {}), row.get("forgetting", {}), row.get("gap", {})
        bo2 = forget.get(FORGETTING_SETS[0], {})
        steps = row.get("steps", {}).get("test_all", {})
        training = row.get("training", {})
        out.add_row(
            name,
            str(row["n_seeds"]),
            *(fmt(test.get(n, {}).get(m, {}).get("mae")) for n in sets for m in MODES),
            fmt(gap.get("val", {}).get(training_set, {}).get("gap")),
            fmt(gap.get("test", {}).get(training_set, {}).get("gap")),
            fmt(forget.get(f"{WBM_SET}:test", {}).get("relative_change"), percent=True),
            fmt(bo2.get("relative_change"), percent=True),
            fmt(bo2.get("force_relative_change"), percent=True),
            f"{fmt(steps.get('median'), 1)}/{fmt(steps.get('mean'), 1)}",
            fmt(training.get("epoch_s"), 1),
            fmt(training.get("best_epoch"), 1),
            fmt(training.get("val_gamma_mae")),
            fmt(row.get("val_force_norm")),
        )
    return out


# -- element-wise cross-validation (--cv-folds)


def cv_settings(recipe: Recipe, plan: Plan) -> FineTuneSettings:
    """A recipe's settings in a cross-validation: seed 0, without zero-force labels (the
    proxy they feed is not computed here; without a force weight they change no gradient)."""
    return recipe.finetune_settings(0, **plan.overrides(), zero_force_labels=False)


def cv_document(
    store: Any, set_name: str, settings: FineTuneSettings, k: int, parent_store: Any = None
) -> dict | None:
    """The cross-validation of these settings in the JobStore: its stored
    CrossValidationDoc, else a summary of the folds finished so far (``partial``), else None.

    Folds run one after the other, so the finished ones are folds 0..n-1; the parent's
    figures are included where its evaluation is stored (in ``parent_store`` if given).
    """
    from surfflows.io.inputs import reference_inputs
    from surfflows.jobs.cross_validation import cross_validation_summary
    from surfflows.stores import get_store

    wanted = settings.model_dump(mode="json")
    with store:
        for doc in store.query(
            {"output.@class": "CrossValidationDoc", "output.set_name": set_name} | {"output.k": k},
            properties=["output"],
            sort={"completed_at": -1},
        ):
            if doc["output"]["settings"] == wanted:
                return {**doc["output"], "partial": False}
        finetunes, evaluations = [], []
        for fold in range(k):
            found = next(
                (
                    d["output"]
                    for d in store.query(
                        {"output.@class": "FineTuneDoc"}
                        | {"output.split_id": f"{set_name}:cv{k}seed0:fold{fold}"},
                        properties=[f"output.{f}" for f in ("model_id", "best_epoch", "history",
                                    "n_train", "wall_seconds", "hyperparameters")],
                    )
                    if d["output"]["hyperparameters"] == wanted
                ),
                None,
            )  # fmt: skip
            if found is None:
                break
            evaluated = [
                d["output"]
                for d in store.query(
                    {"output.@class": "EvaluationDoc", "output.model_id": found["model_id"]},
                    properties=["output"],
                )
            ]
            if {e["mode"] for e in evaluated} != set(MODES):
                break
            finetunes.append(found)
            evaluations.append(evaluated)
    if not finetunes:
        return None
    with get_store("references") as references, get_store("splits") as splits:
        inputs = reference_inputs(set_name, references, splits)
    with parent_store or store as source:  # what the parent has so far (slabs not
        parent = [  # evaluated in a mode are left out of its figures in that mode)
            d["output"]
            for d in source.query(
                {"output.@class": "EvaluationDoc", "output.model_id": PARENT}
                | {"output.set_name": set_name},
                properties=["output"],
            )
        ]
    doc = cross_validation_summary.original(
        inputs, k, 0, PARENT, settings, list(settings.replay_sets), finetunes, evaluations, parent
    )
    return {**doc.model_dump(mode="json"), "partial": len(finetunes) < k}


def recipe_cross_validation(
    store: Any,
    name: str,
    recipe: Recipe,
    plan: Plan,
    k: int,
    runs_dir: Path,
    collect_only: bool,
    parent_store: Any = None,
) -> dict | None:
    """One recipe's k-fold cross-validation: run what is not stored (unless
    ``collect_only``), then its :func:`cv_document` (None: no finished fold)."""
    from surfflows.flows.cross_validation import CrossValidationMaker, run_cross_validation
    from surfflows.io.inputs import reference_inputs
    from surfflows.jobs.finetune import FineTuneMaker
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_store

    settings = cv_settings(recipe, plan)
    set_name = recipe.sets[0]
    done = cv_document(store, set_name, settings, k)
    if not collect_only and (done is None or done["partial"]):
        with get_store("references") as references, get_store("splits") as splits:
            inputs = reference_inputs(set_name, references, splits, ("slab", "bulk", "frame"))
            replay = [
                reference_inputs(n, references, splits, ("bulk",)) for n in settings.replay_sets
            ]
        maker = CrossValidationMaker(
            finetune_maker=FineTuneMaker(parent=ModelSpec.parse(PARENT), settings=settings),
            k=k,
            work_dir=str(runs_dir / "cv" / name),
        )
        run_cross_validation(maker, inputs, store, replay_sets=replay)
    return cv_document(store, set_name, settings, k, parent_store)


def cross_validate(
    plan: Plan,
    k: int,
    runs_dir: Path,
    output: Path,
    collect_only: bool,
    parent_db_dir: Path | None = None,
    curve_folds: Sequence[int] = (),
) -> int:
    """Run (unless ``collect_only``) and collect the k-fold cross-validation of every
    recipe of the plan; merge the figures into ``output`` (JSON) and plot them.

    ``parent_db_dir``: a database holding the parent's evaluations of the set (both modes,
    every slab), read for the parent's figures of unfinished cross-validations.
    ``curve_folds``: further fold counts; with them each recipe's learning curve over the
    number of training elements (:func:`~surfflows.reports.finetune.element_learning_curve`,
    k included) goes to ``finetune_recipes_learning_curve.json`` and a PNG per recipe.
    """
    from surfflows.reports.finetune import element_learning_curve
    from surfflows.reports.plots import cross_validation_plot, element_learning_curve_plot
    from surfflows.stores import get_job_store

    store = get_job_store()
    parent_store = None
    if parent_db_dir is not None:
        from surfflows.settings import SurfflowsSettings

        parent_store = get_job_store(SurfflowsSettings(db_dir=parent_db_dir, mongodb_uri=None))
    result = json.loads(output.read_text()) if output.is_file() else {"recipes": {}}
    curves_path = output.with_name("finetune_recipes_learning_curve.json")
    curves = json.loads(curves_path.read_text()) if curves_path.is_file() else {"recipes": {}}
    for name, recipe in plan.recipes.items():
        if len(recipe.sets) != 1:
            print(f"{name}: cross-validation needs one training set, skipped")
            continue
        doc = recipe_cross_validation(
            store, name, recipe, plan, k, runs_dir, collect_only, parent_store
        )
        if doc is None:
            print(f"{name}: no finished fold in this database")
            continue
        result["recipes"][name] = {"note": recipe.note, **doc}
        s = doc["summary"]
        print(
            f"{name}: {len(doc['folds'])} of {k} folds"
            + "".join(
                f"; {m} MAE {s[m]['mae']['mean']:.3f} ± {s[m]['mae']['std'] or 0:.3f}, signed "
                f"{s[m]['mean_signed_error']['mean']:+.3f}, MAPE {s[m]['mape']['mean']:.1%}"
                for m in s
            )
            + f"; epochs chosen {doc['chosen_epochs']}"
        )
        if curve_folds:
            docs = {k: doc}
            for other in sorted(set(curve_folds) - {k}):
                found = recipe_cross_validation(
                    store, name, recipe, plan, other, runs_dir, collect_only, parent_store
                )
                if found is not None:
                    docs[other] = found
            curve = element_learning_curve(docs, TARGETS)
            curves["recipes"][name] = curve | {"parent_summary": doc["parent_summary"]}
            png = element_learning_curve_plot(
                curve,
                curves_path.with_name(f"finetune_recipes_learning_curve_{name}.png"),
                doc["parent_summary"],
                f"{name} on {recipe.sets[0]}: held-out γ against training elements "
                f"(k = {', '.join(map(str, sorted(docs)))} folds)",
                ATTRIBUTION,
            )
            print(f"{name}: learning curve {curve['fits']} -> {png}")
    result |= {
        "k": k,
        "set": "folds by element (material-wise for compounds), fold seed 0",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "notes": [
            "fold i: held out fold i, epoch selected on fold i+1, trained on the other k-2",
            "std: sample standard deviation over folds (ddof 1)",
            "mape: mean of |gamma error| / gamma_ref",
        ],
        "attribution": ATTRIBUTION,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    png = cross_validation_plot(result["recipes"], output.with_suffix(".png"), ATTRIBUTION)
    print(f"wrote {output} and {png}")
    if curve_folds:
        curves |= {
            "targets": TARGETS,
            "notes": [
                "k folds train on k - 2 folds: the number of training elements grows with k; "
                "every element is held out once at each k",
                "fits: power law y = prefactor * n^slope over the fold means (log-log); "
                "n_at_target extrapolates it",
            ],
            "attribution": ATTRIBUTION,
        }
        curves_path.write_text(json.dumps(curves, indent=2))
        print(f"wrote {curves_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"Fast end-to-end run: {QUICK}.")
    parser.add_argument("--recipes", nargs="+", default=None, help=f"Of {list(RECIPES)}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Default 0 1 2.")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of every fine-tune.")
    parser.add_argument("--max-relaxed-slabs", type=int, default=None, help="Per set and part.")
    parser.add_argument("--max-train-slabs", type=int, default=None, help="Per fine-tune.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "finetune_recipes" / "db",
        help="Scratch database (a rerun there resumes); fine-tunes go next to it, in runs/.",
    )
    parser.add_argument("--collect-only", action="store_true", help="Only build and report.")
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=None,
        help="Compare the recipes by k-fold cross-validation by element instead (seed 0; "
        "results/finetune_recipes_cv.json, merged over runs).",
    )
    parser.add_argument(
        "--learning-curve",
        type=int,
        nargs="+",
        default=(),
        metavar="K",
        help="--cv-folds: also cross-validate with these fold counts (k folds train on k-2) "
        "and plot held-out gamma against the number of training elements.",
    )
    parser.add_argument(
        "--parent-db-dir",
        type=Path,
        default=None,
        help="--cv-folds: database with the parent's evaluations of the set, for the parent's "
        "figures of unfinished cross-validations.",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file.")
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}

    def given(option: str) -> Any:
        value = getattr(args, option)
        return quick.get(option) if value is None else value

    names = args.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    plan = Plan(
        recipes={n: RECIPES[n] for n in names},
        seeds=given("seeds") or [0, 1, 2],
        epochs=given("epochs"),
        max_train_slabs=given("max_train_slabs"),
        max_relaxed_slabs=given("max_relaxed_slabs"),
        sweep="finetune_recipes_quick" if args.quick else "finetune_recipes",
    )
    output = args.output or RESULTS_DIR / (
        "finetune_recipes_quick.json" if args.quick else "finetune_recipes.json"
    )
    args.db_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SURFFLOWS_DB_DIR"] = str(args.db_dir)
    os.environ["SURFFLOWS_TORCH_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("surfflows.jobs.finetune").setLevel(logging.INFO)
    if args.cv_folds is not None:
        output = args.output or RESULTS_DIR / "finetune_recipes_cv.json"
        return cross_validate(
            plan,
            args.cv_folds,
            args.db_dir.parent / "runs",
            output,
            args.collect_only,
            args.parent_db_dir,
            args.learning_curve,
        )
    return run(plan, args.db_dir.parent / "runs", output, args.threads, args.collect_only)


def run(plan: Plan, runs_dir: Path, output: Path, threads: int, collect_only: bool) -> int:
    """Train, evaluate, build, collect; write the JSON and PNGs. Returns the exit code."""
    import torch
    from rich.console import Console

    from surfflows.cli.benchmark import build
    from surfflows.engine.finetune.selection import selection_agreement
    from surfflows.reports.plots import recipes_plot, recipes_proxy_plot
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_job_store, get_store

    start = time.perf_counter()
    stores = {name: get_store(name) for name in RUNNER_STORES}
    runner = Runner(plan, runs_dir, ModelSpec.parse(PARENT), get_job_store(), **stores)
    parent_id = runner.parent.model_id
    finetunes = runner.stored_finetunes() if collect_only else runner.train()
    parent_model = Model("parent", runner.parent)
    models = [
        Model(
            f"{d['recipe']} seed {d['seed']}",
            ModelSpec.model_validate(d["model"]),
            tuple(d.get("heads") or ()),
        )
        for d in finetunes
    ]
    if not collect_only:
        runner.evaluate([parent_model, *models])
        recipe_of = {m.spec.model_id: d["recipe"] for m, d in zip(models, finetunes, strict=True)}
        runner.forgetting(models, recipe_of)
    build()
    wall = time.perf_counter() - start

    parent = {"recipe": "parent", "seed": None, **runner.model_row(parent_model, None)}
    # The proxy: the parent and the checkpoints trained on the first recipe's set alone (a
    # multi-set checkpoint's val force norm covers other sets' val parts too).
    training_set = next(iter(plan.recipes.values())).sets[0]
    alone = {n for n, r in plan.recipes.items() if r.sets == (training_set,)}
    first = next((d for d in finetunes if d["recipe"] in alone), None)
    if first is not None:  # the parent's val force norm: epoch 0 of such a fine-tune
        parent["val_force_norm"] = first["history"][0]["val_force_mae"]
    rows = []
    for model, doc in zip(models, finetunes, strict=True):
        row = {"recipe": doc["recipe"], "seed": doc["seed"], **runner.model_row(model, doc)}
        row["heads"] = list(model.heads)
        row["val_force_norm"] = row["training"]["val_force_mae"]
        agreement = selection_agreement(doc["history"])
        if agreement is not None:
            row["selection_agreement"] = agreement
        row["steps_vs_parent"] = steps_vs_parent(row, parent)
        rows.append(row)
    summary = {"parent": {"n_seeds": 1, **aggregate([parent])}}
    for name in plan.recipes:
        group = [r for r in rows if r["recipe"] == name]
        if group:
            summary[name] = {"n_seeds": len(group), **aggregate(group)}
    points = proxy_points([parent, *(r for r in rows if r["recipe"] in alone)], training_set)
    proxy = {"training_set": training_set, "points": points, **proxy_summary(points)}
    proxy["checkpoints_only"] = proxy_summary([p for p in points if p["recipe"] != "parent"])
    failures = {
        r["recipe"] + ("" if r["seed"] is None else f" seed {r['seed']}"): r["unconverged"]
        for r in [parent, *rows]
        if any(n for g in r.get("unconverged", {}).values() for n in g.values())
    }
    result = {
        "plan": plan.model_dump(mode="json"),
        "base_settings": BASE_SETTINGS,
        "quick": plan.sweep.endswith("quick"),
        "parent": parent_id,
        "units": "gamma J/m²; bulk energy eV/atom (aligned per element); forces eV/Å; time s",
        "notes": [
            "test: per set and mode over the planned slabs (relaxed: max_relaxed_slabs of "
            "the unflagged ones, drawn with a fixed seed; single point: every unflagged slab)",
            "gap: relaxed minus single-point MAE on the slabs ok in both modes",
            "std: sample standard deviation over seeds (ddof 1)",
            "relative_mae: mean of |gamma error| / gamma_ref",
            f"wbm test part aligned per model on its other parts; {', '.join(plan.forgetting_sets)}"
            " aligned on itself (bulk_forgetting)",
            "every recipe has zero_force_labels so val_force_mae (the force norm at DFT minima) "
            "is recorded; without force_weight it changes no gradient",
        ],
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "wall_seconds": wall,
        "collect_only": collect_only,
        "summary": summary,
        "rows": [parent, *rows],
        "proxy": proxy,
        "unconverged_or_failed": failures,
        "attribution": ATTRIBUTION,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    stem = output.with_suffix("")
    title = f"{parent_id} fine-tuning recipes, {len(plan.seeds)} seed(s)"
    if result["quick"]:
        title += " (quick subset)"
    png = recipes_plot(summary, list(plan.test_sets), stem.with_suffix(".png"), title, ATTRIBUTION)
    proxy_png = recipes_proxy_plot(points, proxy, f"{stem}_proxy.png", training_set)
    Console(width=200).print(table(summary, list(plan.test_sets), training_set))
    for scope, correlations in (("all", proxy), ("checkpoints", proxy["checkpoints_only"])):
        for target in ("val_gap", "test_gap", "val_relaxed_mae"):
            c = correlations[target]
            print(
                f"proxy ({scope}): val force norm vs {target}: N={c['n']}, Pearson "
                f"{c['pearson'] if c['pearson'] is None else round(c['pearson'], 3)}, Spearman "
                f"{c['spearman'] if c['spearman'] is None else round(c['spearman'], 3)}"
            )
    for row in rows:
        if "selection_agreement" in row:
            a = row["selection_agreement"]
            print(
                f"{row['recipe']} seed {row['seed']}: epoch kept on single point "
                f"{a['single_point_epoch']}, on relaxed {a['relaxed_epoch']}, regret "
                f"{a['regret']} J/m², Spearman over epochs {a['spearman_all_val_slabs']} "
                f"(same slabs {a['spearman_same_slabs']})"
            )
    print(f"total {wall:.0f} s; wrote {output}, {png}, {proxy_png}")
    if failures:
        print(f"relaxations failed or not converged: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
