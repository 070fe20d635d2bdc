"""benchmarks/finetune_recipes.py: the recipe table, its pure helpers (subsets, mean ± std,
aggregation, correlation, paired gaps) and a tiny real end-to-end run that a rerun skips."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from test_finetune import tiny_set  # noqa: F401  (fixture)

from surfflows.core.benchmark import (
    aggregate,
    correlation,
    flatten,
    gamma_stats,
    paired_gap,
    relative_change,
    step_stats,
    unflatten,
)
from surfflows.core.folds import mean_std
from surfflows.flows.recipes import Model, Plan, evaluation_spec, validate_recipes
from surfflows.io.canonical import read_reference_set
from surfflows.io.inputs import reference_items, slab_keys
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.references import ReferenceInputs

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "finetune_recipes.py"


@pytest.fixture(scope="module")
def recipes():
    spec = importlib.util.spec_from_file_location("finetune_recipes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["finetune_recipes"] = module
    spec.loader.exec_module(module)
    return module


def test_recipe_table_is_valid_and_a_bad_row_names_itself(recipes):
    assert {"default", "forces", "replay", "forces+replay"} <= set(recipes.RECIPES)
    for name, recipe in recipes.RECIPES.items():
        settings = recipe.finetune_settings(seed=3, epochs=2)
        assert settings.seed == 3 and settings.epochs == 2, name
        assert settings.zero_force_labels  # every recipe records the val force norm
    assert recipes.RECIPES["default"].finetune_settings(0).depth == 4
    trainer = recipes.RECIPES["chgnet_trainer"].finetune_settings(0)
    assert trainer.recipe == "chgnet_trainer" and trainer.gamma_weight == 0
    assert trainer.epochs == 3  # its own epochs cap the overriding ones
    assert recipes.RECIPES["chgnet_trainer"].finetune_settings(0, epochs=6).epochs == 3
    assert recipes.RECIPES["chgnet_trainer"].finetune_settings(0, epochs=2).epochs == 2
    default = recipes.RECIPES["default"].finetune_settings(0)
    assert default.force_weight == 0 and default.replay_weight == 0
    assert default.epochs == FineTuneSettings().epochs
    both = recipes.RECIPES["forces+replay"].finetune_settings(0)
    assert both.force_weight > 0 and both.replay_weight > 0 and both.force_fraction < 1

    with pytest.raises(ValueError, match=r"(?s)recipe 'typo'.*unknown FineTuneSettings fields"):
        validate_recipes({"typo": {"settings": {"replay_wieght": 1}}})
    with pytest.raises(ValueError, match=r"(?s)recipe 'neg'.*replay_weight"):
        validate_recipes({"neg": {"settings": {"replay_weight": -1}}})
    with pytest.raises(ValueError, match="seed"):
        validate_recipes({"s": {"settings": {"seed": 1}}})
    two = validate_recipes(
        {
            "two": {
                "sets": ["mp_elemental_surfaces", "jarvis_surfaces"],
                "settings": {"heads": "single"},
            }
        }
    )["two"]
    assert two.sets == ("mp_elemental_surfaces", "jarvis_surfaces")
    assert two.finetune_settings(0).heads == "single"
    plan = {"seeds": [0], "epochs": None, "max_train_slabs": None, "max_relaxed_slabs": None}
    with pytest.raises(ValueError, match=r"forgetting sets \['bo2_bulk_eos'\] are trained on"):
        Plan(recipes=validate_recipes({"x": {"sets": ["bo2_bulk_eos"]}}), **plan)
    with pytest.raises(ValueError, match="are trained on"):
        replay = {"settings": {"replay_weight": 1, "replay_sets": ["bo2_bulk_eos"]}}
        Plan(recipes=validate_recipes({"r": replay}), **plan)
    table = validate_recipes({"lr": {"settings": {"learning_rate": 3e-3}}})
    assert table["lr"].sets == ("jarvis_surfaces",)


def test_slab_subsets_are_fixed_and_keep_their_bulks():
    """The slabs every model of the benchmark is evaluated on, and their bulks."""
    docs = read_reference_set("pbe_metal_surfaces").documents
    materials = sorted({d.material_id for d in docs})
    parts = {m: "val" if i % 3 == 0 else "test" for i, m in enumerate(materials)}
    inputs = ReferenceInputs(set_name="pbe_metal_surfaces", assignments=parts, docs=docs)
    every = slab_keys(inputs, ("test",))
    assert every == sorted(
        d.key for d in inputs.of_type("slab") if not d.flags and parts[d.material_id] == "test"
    )
    two = slab_keys(inputs, ("test",), 2)
    assert len(two) == 2 and set(two) <= set(every)
    assert slab_keys(inputs, ("test",), 2) == two  # same for every model
    assert len(slab_keys(inputs)) == sum(not d.flags for d in inputs.of_type("slab"))
    items = reference_items(inputs, ("test",), two)
    slabs = [d for d in inputs.of_type("slab") if d.key in two]
    assert [(key, kind) for key, kind, _, _ in items] == [(d.key, "slab") for d in slabs] + [
        (key, "bulk") for key in sorted({d.bulk_key for d in slabs})
    ]


def test_mean_std_aggregate_and_correlation():
    assert mean_std([1.0, 2.0, None, float("nan"), 3.0]) == {
        "mean": 2.0,
        "std": 1.0,
        "n": 3,
    }
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std([]) == {"mean": None, "std": None, "n": 0}

    rows = [
        {"model_id": "a", "test": {"x": {"relaxed": {"mae": 0.2, "n": 10}}}, "ok": True},
        {"model_id": "b", "test": {"x": {"relaxed": {"mae": 0.4, "n": 10}}}, "extra": 1.0},
    ]
    summary = aggregate(rows)
    mae = summary["test"]["x"]["relaxed"]["mae"]
    assert mae["mean"] == pytest.approx(0.3) and mae["std"] == pytest.approx(math.sqrt(0.02))
    assert summary["extra"] == {"mean": 1.0, "std": None, "n": 1}
    assert "model_id" not in summary and "ok" not in summary  # strings and bools left out
    assert unflatten(flatten({"a": {"b": 1, "c": {"d": 2.0}}})) == {"a": {"b": 1, "c": {"d": 2.0}}}

    x = [0.1, 0.2, 0.3, 0.4, None]
    c = correlation(x, [1.0, 3.0, 2.0, 5.0, 9.0])
    assert c["n"] == 4 and c["spearman"] == pytest.approx(0.8)
    assert c["pearson"] == pytest.approx(np.corrcoef(x[:4], [1, 3, 2, 5])[0, 1])
    assert correlation([0.1, 0.2], [1.0, 2.0])["pearson"] is None  # N < 3
    assert correlation([0.1, 0.1, 0.1], [1.0, 2.0, 3.0])["spearman"] is None


def test_gamma_statistics_gaps_and_steps():
    def error(key, value, status="ok"):
        return {"reference_key": key, "gamma_error": value, "gamma_ref": 1.0, "status": status}

    sp = [error("a", 0.1), error("b", -0.2), error("c", 0.3, "excluded")]
    rx = [error("a", 0.3), error("b", None, "excluded"), error("c", 0.3)]
    stats = gamma_stats(sp, ["a", "b", "c"])
    assert stats["n"] == 2 and stats["mae"] == pytest.approx(0.15)
    assert stats["mean_signed_error"] == pytest.approx(-0.05)
    assert stats["relative_mae"] == pytest.approx(0.15) and stats["n_planned"] == 3
    gap = paired_gap(sp, rx, ["a", "b", "c"])
    assert gap == {"n": 1, "gap": pytest.approx(0.2)}  # only "a" is ok in both modes
    assert step_stats([10, None, 20, 60]) == {"n": 3, "median": 20.0, "mean": 30.0}
    assert relative_change(12.0, 10.0) == pytest.approx(0.2)
    assert relative_change(None, 10.0) is None and relative_change(1.0, 0.0) is None


@pytest.mark.slow
def test_tiny_end_to_end_run_is_resumable(recipes, tiny_set, tmp_path):  # noqa: F811
    from surfflows.stores import get_job_store

    tiny = {"depth": 1, "epochs": 1, "batch_size": 8}
    plan = Plan(
        recipes=validate_recipes(
            {
                "default": {"sets": [tiny_set], "settings": tiny},
                "replay": {
                    "sets": [tiny_set],
                    "settings": {**tiny, "replay_weight": 10, "replay_pool_size": 4},
                },
            }
        ),
        seeds=[0],
        epochs=None,
        max_train_slabs=None,
        max_relaxed_slabs=1,
        test_sets={tiny_set: ("test",)},
        wbm_set=None,
        forgetting_sets=("tiny_eos",),
        sweep="tiny_recipes",
    )
    out = tmp_path / "recipes.json"
    code = recipes.run(plan, tmp_path / "runs", out, threads=1, collect_only=False)
    result = json.loads(out.read_text())
    assert code in (0, 1)  # 1 only if a relaxation did not converge (reported)
    assert (code == 1) == bool(result["unconverged_or_failed"])
    assert out.with_suffix(".png").is_file() and (tmp_path / "recipes_proxy.png").is_file()

    rows = {r["recipe"]: r for r in result["rows"]}
    assert set(rows) == {"parent", "default", "replay"}
    for name, row in rows.items():
        test = row["test"][tiny_set]
        assert test["single_point"]["n"] == 1 and test["single_point"]["mae"] > 0, name
        assert test["relaxed"]["n_planned"] == 1
        assert row["val"][tiny_set]["single_point"]["n"] == 1
        assert row["steps"]["test"][tiny_set]["n"] == 1
    for name in ("default", "replay"):
        training, forgetting = rows[name]["training"], rows[name]["forgetting"]
        assert training["best_epoch"] in (0, 1) and training["epoch_s"] > 0
        assert training["val_force_mae"] > 0  # recorded by every recipe
        assert forgetting["tiny_eos"]["parent_mae"] > 0
        assert forgetting["tiny_eos"]["force_relative_change"] is not None
        assert f"{tiny_set}:test" in forgetting
        assert result["summary"][name]["n_seeds"] == 1
    assert rows["parent"]["val_force_norm"] > 0
    assert result["proxy"]["val_gap"]["n"] == 3 and len(result["proxy"]["points"]) == 3

    store = get_job_store()
    with store:
        before = store.docs_store.count({})
    again = recipes.run(plan, tmp_path / "runs", out, threads=1, collect_only=False)
    with store:
        assert store.docs_store.count({}) == before  # nothing trained or evaluated again
    assert again == code
    assert json.loads(out.read_text())["rows"] == result["rows"]


@pytest.mark.slow
def test_zero_force_labels_without_force_weight_change_no_gradient(tiny_set, tmp_path):  # noqa: F811
    """What lets every recipe record the val force norm: the labels alone train the same."""
    from surfflows.engine.finetune import finetune, reference_data
    from surfflows.engine.models import load_model
    from surfflows.io.inputs import reference_inputs
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_store

    with get_store("references") as references, get_store("splits") as splits:
        inputs = reference_inputs(tiny_set, references, splits)
    parent = load_model(ModelSpec())
    histories = []
    for labels in (False, True):
        settings = FineTuneSettings(depth=2, epochs=2, batch_size=8, zero_force_labels=labels)
        data = [
            reference_data(
                inputs.docs, inputs.assignments, (part,), parent.graph_converter,
                zero_force_labels=labels,
            )
            for part in ("train", "val")
        ]  # fmt: skip
        result = finetune(parent, *data, settings, tmp_path / f"labels_{labels}")
        histories.append(result.history)
    plain, labelled = histories
    assert all(r.val_force_mae is None for r in plain)
    assert all(r.val_force_mae > 0 for r in labelled)
    for a, b in zip(plain, labelled, strict=True):
        assert b.train_loss == pytest.approx(a.train_loss, rel=1e-6)
        assert b.val_gamma_mae == pytest.approx(a.val_gamma_mae, rel=1e-6)


def test_each_set_is_evaluated_with_the_head_of_its_level_of_theory(recipes):
    from surfflows.core.heads import head_for
    from surfflows.schemas.models import ModelSpec

    assert head_for("VASP OptB88vdW", ["pbe", "optb88vdw"], "pbe") == "optb88vdw"
    assert head_for("VASP PBE", ["pbe", "optb88vdw"], "pbe") == "pbe"
    assert head_for("VASP r2SCAN", ["pbe", "optb88vdw"], "pbe") == "pbe"  # no such head

    sha = "ab" * 32
    two = Model("heads seed 0", ModelSpec(kind="checkpoint", sha256=sha, head="pbe"))
    two = two._replace(heads=("pbe", "optb88vdw"))
    jarvis = evaluation_spec(two, "VASP OptB88vdW")
    assert jarvis.model_id == f"chgnet-ft-{sha[:12]}@optb88vdw"
    assert evaluation_spec(two, "VASP PBE").model_id == f"chgnet-ft-{sha[:12]}@pbe"
    single = Model("pbe seed 0", ModelSpec(kind="checkpoint", sha256=sha))
    assert evaluation_spec(single, "VASP OptB88vdW") is single.spec
    assert recipes.RECIPES["heads"].finetune_settings(0).heads == "per_level_of_theory"
    assert len(recipes.RECIPES["heads"].sets) == 2


def test_selection_agreement_over_epochs(recipes):
    from surfflows.engine.finetune.selection import selection_agreement

    def epoch(k, sp, rx, rx_sp):
        return {
            "epoch": k, "train_loss": 0.0, "train_energy_mae": 0.0, "train_gamma_mae": None,
            "val_energy_mae": 0.0, "val_gamma_mae": sp, "val_gamma_mean_signed_error": None,
            "learning_rate": 0.0, "seconds": 1.0, "val_relaxed_gamma_mae": rx,
            "val_relaxed_single_point_gamma_mae": rx_sp,
        }  # fmt: skip

    history = [
        epoch(0, 0.50, 0.60, 0.55),
        epoch(1, 0.20, 0.30, 0.25),
        epoch(2, 0.10, 0.22, 0.15),  # kept on single point
        epoch(3, 0.12, 0.20, 0.16),  # kept on relaxed
        epoch(4, 0.15, 0.25, 0.18),
    ]
    a = selection_agreement(history)
    assert (a["single_point_epoch"], a["relaxed_epoch"], a["same_epoch"]) == (2, 3, 0)
    assert a["regret"] == pytest.approx(0.02) and a["n_epochs"] == 4  # epoch 0 left out
    assert a["spearman_all_val_slabs"] == pytest.approx(0.8)
    assert a["spearman_same_slabs"] == pytest.approx(0.8)
    plain = [{**h, "val_relaxed_gamma_mae": None} for h in history]
    assert selection_agreement(plain) is None
    assert recipes.RECIPES["pbe+relaxed_selection"].finetune_settings(0).selection == "relaxed"
