"""Element-wise k-fold cross-validation: the folds (pure) and a tiny real run (CHGNet)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.io import read, write
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.core.folds import (
    choose_epochs,
    fold_groups,
    fold_parts,
    gamma_statistics,
    kfold_assignments,
)
from surfflows.io.ingest import ingest_path
from surfflows.reports.finetune import element_learning_curve
from surfflows.reports.plots import element_learning_curve_plot
from surfflows.stores import get_job_store

PBE = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "pbe_metal_surfaces"
MP = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "mp_elemental_surfaces"


def test_folds_keep_every_element_on_one_side():
    """Polymorphs of one element share a fold; compounds are folded by material."""
    docs = [("mp-30", "Cu4"), ("jvasp-1", "Cu"), ("mp-2", "CuO"), ("mp-3", "Fe2O3")] + [
        (f"mp-{100 + i}", s) for i, s in enumerate("Ag Au Pt Pd Ni Rh Ir Zn Cd".split())
    ]
    groups = fold_groups(docs)
    assert groups["mp-30"] == groups["jvasp-1"] == "element:Cu"
    assert groups["mp-2"] == "mp-2"  # material-wise for compounds
    for seed in (0, 1):
        folds = kfold_assignments(docs, 5, seed)
        assert folds["mp-30"] == folds["jvasp-1"]
        sizes = [list(folds.values()).count(f) for f in range(5)]
        assert max(sizes) - min(sizes) <= 2  # 12 groups dealt to 5 folds (2 or 3 groups)
        for fold in range(5):
            parts = fold_parts(folds, fold, 5)
            assert {parts[m] for m, f in folds.items() if f == fold} == {"test"}
            assert {parts[m] for m, f in folds.items() if f == (fold + 1) % 5} == {"val"}
            for part in ("train", "val"):
                sides = {groups[m] for m, p in parts.items() if p == part}
                held = {groups[m] for m, p in parts.items() if p == "test"}
                assert not sides & held
    assert kfold_assignments(docs, 5, 0) != kfold_assignments(docs, 5, 1)
    with pytest.raises(ValueError, match="at least 3 folds"):
        kfold_assignments(docs, 2)
    with pytest.raises(ValueError, match="13 folds need at least 13"):
        kfold_assignments(docs, 13)


def test_mp_elemental_folds_hold_every_element_out_once():
    """The 30 elements of mp_elemental_surfaces: 5 folds of 6, every element in one."""
    atoms = read(MP / "slabs.extxyz", ":")
    docs = [(a.info["material_id"], a.info["formula"]) for a in atoms]
    folds = kfold_assignments(docs, 5)
    groups = fold_groups(docs)
    by_fold = [{groups[m] for m, f in folds.items() if f == i} for i in range(5)]
    assert sorted(len(g) for g in by_fold) == [6] * 5
    assert len(set().union(*by_fold)) == 30


def test_epoch_choice_and_statistics():
    assert choose_epochs([[0.3, 0.2, 0.1, 0.15], [0.3, 0.2, 0.12, 0.11]]) == 2
    assert choose_epochs([[0.3, 0.2], [0.3, 0.25, 0.1]]) == 2  # epoch 2: one fold only
    rows = [{"gamma_error": 0.1, "gamma_ref": 1.0}, {"gamma_error": -0.3, "gamma_ref": 1.5}]
    rows.append({"gamma_error": None, "gamma_ref": 2.0})
    stats = gamma_statistics(rows)
    assert stats["n"] == 2 and stats["mae"] == pytest.approx(0.2)
    assert stats["mean_signed_error"] == pytest.approx(-0.1)
    assert stats["mape"] == pytest.approx((0.1 + 0.2) / 2)


@pytest.fixture
def tiny_four_elements(tmp_path) -> Path:
    """The 4-atom PBE slabs: Ni (2), La (2), Rh, Pt, with their bulks."""
    folder = tmp_path / "tiny_cv"
    folder.mkdir()
    slabs = [a for a in read(PBE / "slabs.extxyz", ":") if len(a) == 4]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    write(folder / "slabs.extxyz", slabs)
    write(
        folder / "bulks.extxyz",
        [a for a in read(PBE / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids],
    )
    (folder / "README.md").write_text("# tiny cv\nlevel_of_theory: VASP PBE\n")
    return folder


@pytest.mark.slow
def test_element_learning_curve_fits_a_power_law_to_the_fold_means(tmp_path):
    """Cross-validations with 3, 4, 5 folds become points at their mean training-group
    count; the log-log fit recovers y = a n^b and extrapolates to the target."""

    def doc(train_groups, mae, mape, signed):
        stat = lambda v: {"mean": v, "std": 0.01, "n": len(train_groups)}  # noqa: E731
        figures = {"mae": stat(mae), "mape": stat(mape), "mean_signed_error": stat(signed)}
        return {
            "folds": [{"n_train_groups": n} for n in train_groups],
            "summary": {"single_point": figures, "relaxed": figures},
        }

    law = lambda n: 0.5 * n**-0.5  # noqa: E731
    docs = {  # MAE follows the law; MAPE does not fall with more elements
        3: doc([10, 10, 10], law(10), 0.20, -0.10),
        4: doc([15, 15, 15, 15], law(15), 0.21, -0.08),
        5: doc([18, 18, 18, 18, 18], law(18), 0.22, -0.06),
    }
    targets = {"mae": 0.10, "mape": 0.12, "abs_mean_signed_error": 0.03}
    curve = element_learning_curve(docs, targets)
    assert [p["n_train_groups"] for p in curve["points"]] == [10, 15, 18]
    assert curve["points"][0]["figures"]["relaxed"]["abs_mean_signed_error"]["mean"] == 0.10
    fit = curve["fits"]["relaxed"]["mae"]
    assert fit["slope"] == pytest.approx(-0.5)
    assert fit["prefactor"] == pytest.approx(0.5)
    assert fit["n_at_target"] == pytest.approx(25.0)  # 0.5 / sqrt(25) = 0.10
    assert curve["fits"]["relaxed"]["mape"]["n_at_target"] is None  # rising: never reached
    assert curve["fits"]["relaxed"]["abs_mean_signed_error"]["slope"] < 0
    parent = {m: {"mae": {"mean": 0.3}, "mape": {"mean": 0.33}} for m in ("relaxed",)}
    png = element_learning_curve_plot(curve, tmp_path / "curve.png", parent, "test")
    assert png.stat().st_size > 10_000


def test_finetune_cv_folds_real(tiny_four_elements, tmp_path):
    """``surfflows finetune --cv-folds 3``: 3 real fine-tunes, held-out gamma both modes."""
    ingest_path(tiny_four_elements)
    args = ["finetune", "--reference", "tiny_cv", "--cv-folds", "3", "--layers", "1"]
    args += ["--epochs", "2", "--work-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3-fold cross-validation on tiny_cv" in result.output
    store = get_job_store()
    with store:
        doc = store.query_one({"output.@class": "CrossValidationDoc"})["output"]
    assert doc["k"] == 3 and len(doc["folds"]) == 3
    held = [set(f["held_out"]) for f in doc["folds"]]
    assert set().union(*held) == {"Ni", "La", "Rh", "Pt"} and sum(map(len, held)) == 4
    for fold in doc["folds"]:
        assert not set(fold["held_out"]) & set(fold["val"])
        assert len(fold["val_gamma_mae_per_epoch"]) == 3  # epoch 0 and 2 epochs
        for mode in ("single_point", "relaxed"):
            figures = fold["figures"][mode]
            assert figures["n"] >= 1 and figures["mae"] > 0 and figures["mape"] > 0
            assert fold["parent_figures"][mode]["n"] == figures["n"]
            assert set(fold["by_group"][mode]) == set(fold["held_out"])
    assert doc["pooled"]["relaxed"]["n"] == 6
    assert doc["summary"]["single_point"]["mae"]["n"] == 3
    assert 1 <= doc["chosen_epochs"] <= 2
    # a second run reuses the parent's stored evaluations and the folds' work folders
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
