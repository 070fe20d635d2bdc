"""Evaluation flow, incremental builders, report and mrun, on a tiny canonical set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ase.io import read, write
from jobflow import run_locally
from typer.testing import CliRunner

from surfflows.builders import configured_builders, run_builders
from surfflows.cli import app
from surfflows.core.benchmark import chemistry_class, facet_family, summarize
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

PBE = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "pbe_metal_surfaces"
CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.fixture
def tiny_set(tmp_path) -> Path:
    """Ni, Pt, Rh 4-atom slabs and bulks from the PBE set, plus one flagged Ni slab."""
    folder = tmp_path / "tiny_metals"
    folder.mkdir()
    slabs = [
        a for a in read(PBE / "slabs.extxyz", ":") if len(a) == 4 and a.info["formula"] != "La"
    ]
    flagged = slabs[0].copy()
    flagged.info.update(slab_id="flagged_copy", flags="gamma_outside_0-5")
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    bulks = [a for a in read(PBE / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids]
    write(folder / "slabs.extxyz", [*slabs, flagged])
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# tiny metals\nlevel_of_theory: VASP PBE\n")
    return folder


def evaluate(model: ModelSpec, modes=("single_point",)) -> None:
    with get_store("references") as references, get_store("splits") as splits:
        items = reference_items(reference_inputs("tiny_metals", references, splits))
    flow = EvaluateMaker(model=model, modes=modes, max_steps=50).make("tiny_metals", items)
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)


def test_pure_helpers():
    assert facet_family((1, -1, 0)) == "{110}" and facet_family((2, 1, 1)) == "high-index"
    assert chemistry_class("TiO2") == "oxide" and chemistry_class("Cu") == "metal"
    assert chemistry_class("GaAs") == "other"
    stats = summarize([0.1, -0.3, None])
    assert stats["n"] == 2 and stats["mae"] == pytest.approx(0.2)
    assert stats["mean_signed_error"] == pytest.approx(-0.1)
    assert stats["rmse"] == pytest.approx((0.05) ** 0.5)


@pytest.mark.slow
def test_evaluate_build_incrementally(tiny_set):
    report = ingest_path(tiny_set)
    assert report.inserted == 8  # Ni(100), Ni(111), Pt(111), Rh(100), the flagged copy, 3 bulks
    evaluate(ModelSpec(), modes=("single_point", "relaxed"))
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 2,
        "BenchmarkBuilder": 2,
    }
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 0,
        "BenchmarkBuilder": 0,
    }

    errors = get_store("surface_errors")
    benchmarks = get_store("benchmarks")
    with errors, benchmarks:
        docs = list(errors.query({"mode": "single_point", "kind": "slab"}))
        assert len(docs) == 5
        excluded = [d for d in docs if d["status"] == "excluded"]
        assert [d["reason"] for d in excluded] == ["flagged: gamma_outside_0-5"]
        for doc in docs:
            if doc["status"] == "ok":
                assert doc["gamma_error"] == pytest.approx(doc["gamma_model"] - doc["gamma_ref"])
        row = benchmarks.query_one({"mode": "single_point", "split": "all", "quantity": "gamma"})
        assert row["n"] == 4 and row["n_excluded"] == {"flagged": 1}
        assert row["by_chemistry_class"]["metal"]["n"] == 4
        # bulk rows: each element is in one material only, so no disjoint part can align it
        bulks = list(errors.query({"mode": "single_point", "kind": "bulk"}))
        assert len(bulks) == 3 and all(b["energy_error_per_atom"] is not None for b in bulks)
        assert {b["reason"].split(":")[0] for b in bulks} == {"elements outside the alignment fit"}

    # a new model's results are processed alone
    evaluate(ModelSpec(version="0.2.0"))
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 1,
        "BenchmarkBuilder": 1,
    }
    with benchmarks:
        assert {r["model_id"] for r in benchmarks.query({"split": "all", "quantity": "gamma"})} == {
            "chgnet-0.3.0",
            "chgnet-0.2.0",
        }

    # report: table and a parity PNG per model and mode
    runner = CliRunner()
    result = runner.invoke(app, ["report", "--out", str(tiny_set / "reports")])
    assert result.exit_code == 0, result.output
    assert len(list((tiny_set / "reports").glob("parity_*.png"))) == 3

    # maggma's runner with the shipped builder file sees nothing new and rewrites nothing
    with errors:
        stamps = {d["error_id"]: d["last_updated"] for d in errors.query({})}
    out = subprocess.run(
        [sys.executable, "-c", "from maggma.cli import run; run()", str(CONFIGS / "builders.py")],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    with errors:
        # 5 slabs + 3 bulks x (0.3.0 single point, 0.3.0 relaxed, 0.2.0 single point), none
        # rewritten
        assert {d["error_id"]: d["last_updated"] for d in errors.query({})} == stamps
        assert len(stamps) == 24
