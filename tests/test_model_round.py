"""Forgetting rows that name the parent, readable model names, the wheel peers (real runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.io import read, write
from jobflow import run_locally
from rich.console import Console
from typer.testing import CliRunner

from surfflows.builders import configured_builders, run_builders
from surfflows.cli import app
from surfflows.cli.benchmark import _bulk_table
from surfflows.core.benchmark import against_parent
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.io.packaged import model_card, registered_parent
from surfflows.io.registry import checkpoint_reference, resolve_model
from surfflows.reports.leaderboard import leaderboard, model_labels
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

DATA = Path(__file__).parents[1] / "surfflows" / "data" / "references"


def test_against_parent_gives_raw_and_aligned_changes():
    bulk = against_parent(
        {"mae": 0.11, "raw_energy_mae": 0.16}, {"mae": 0.1, "raw_energy_mae": 0.2}
    )
    assert bulk["parent_mae"] == 0.1 and bulk["relative_change"] == pytest.approx(0.1)
    assert bulk["parent_raw_energy_mae"] == 0.2 and bulk["raw_relative_change"] == pytest.approx(
        -0.2
    )
    gamma = against_parent({"mae": 0.2}, {"mae": None})
    assert gamma == {"parent_mae": None, "relative_change": None}


def test_registered_parent_from_card_for_older_registrations():
    card = model_card("chgnet-surf")
    old = {"@class": "CheckpointDoc", "sha256": card.sha256}
    old["metadata"] = {"packaged_model": "chgnet-surf"}
    assert registered_parent(old) == card.parent
    assert registered_parent({**old, "sha256": "0" * 64}) is None  # not the card's file
    assert registered_parent({"metadata": {"parent_model_id": "chgnet-r2scan"}}) == "chgnet-r2scan"


def test_packaged_model_rows_name_the_parent_raw_and_aligned(tmp_path):
    """14 small WBM bulks: chgnet-surf and CHGNet 0.3.0 through the builders and report."""
    elements = set("Al Cu Fe Ga In Mg Ni Pd Pt Rh Ru Si Sn Zn".split())
    frames = [
        a
        for a in read(DATA / "wbm_bulks" / "bulks.extxyz", ":")
        if len(a) <= 8 and set(a.get_chemical_symbols()) <= elements
    ]
    folder = tmp_path / "tiny_wbm"
    folder.mkdir()
    write(folder / "bulks.extxyz", frames)
    (folder / "README.md").write_text("# tiny wbm\nlevel_of_theory: VASP PBE\n")
    ingest_path(folder)
    store = get_job_store()
    surf = resolve_model("chgnet-surf", store)
    with get_store("references") as refs, get_store("splits") as splits:
        items = reference_items(reference_inputs("tiny_wbm", refs, splits))
    for spec in (surf, ModelSpec()):
        flow = EvaluateMaker(model=spec, modes=("single_point",)).make(
            "tiny_wbm", items, checkpoint_reference(spec, store)
        )
        run_locally(
            flow, store=store, log=False, ensure_success=True, allow_external_references=True
        )
    run_builders(configured_builders())
    with get_store("benchmarks") as benchmarks:
        rows = {
            r["model_id"]: r
            for r in benchmarks.query(
                {"set_name": "tiny_wbm", "quantity": "bulk_energy", "split": "all"}
            )
        }
    child, parent = rows[surf.model_id], rows["chgnet-0.3.0"]
    assert child["parent_model_id"] == "chgnet-0.3.0"
    assert child["parent_mae"] == pytest.approx(parent["mae"])
    assert child["relative_change"] == pytest.approx(child["mae"] / parent["mae"] - 1)
    assert child["parent_raw_energy_mae"] == pytest.approx(parent["raw_energy_mae"])
    assert child["raw_relative_change"] == pytest.approx(
        child["raw_energy_mae"] / parent["raw_energy_mae"] - 1
    )
    with store:
        assert model_labels(store) == {surf.model_id: "chgnet-surf"}
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "report")])
    assert result.exit_code == 0, result.output
    console = Console(width=400, record=True)
    console.print(_bulk_table([child, parent], {surf.model_id: "chgnet-surf"}))
    text = console.export_text()
    assert f"chgnet-surf ({surf.model_id})" in text and "chgnet-0.3.0" in text


@pytest.fixture
def one_slab_set(tmp_path) -> Path:
    """One 4-atom Ni(100) slab and its bulk from the PBE set."""
    folder = tmp_path / "one_slab"
    folder.mkdir()
    slabs = [a for a in read(DATA / "pbe_metal_surfaces" / "slabs.extxyz", ":") if len(a) == 4]
    slabs = [a for a in slabs if a.info["formula"] == "Ni"][:1]
    write(folder / "slabs.extxyz", slabs)
    bulks = read(DATA / "pbe_metal_surfaces" / "bulks.extxyz", ":")
    write(
        folder / "bulks.extxyz", [b for b in bulks if b.info["bulk_id"] == slabs[0].info["bulk_id"]]
    )
    (folder / "README.md").write_text("# one slab\nlevel_of_theory: VASP PBE\n")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sevennet-l3i5", "sevennet-mf-0", "chgnet-r2scan"])
def test_wheel_peer_evaluates_both_modes(name, one_slab_set):
    """A real evaluation of each peer whose weights ship in a wheel, through the leaderboard."""
    spec = ModelSpec.parse(name)
    if spec.kind == "calculator":
        pytest.importorskip("sevenn")
        assert spec.model_id == name  # the short name, not a hash
    ingest_path(one_slab_set)
    with get_store("references") as refs, get_store("splits") as splits:
        items = reference_items(reference_inputs("one_slab", refs, splits))
    store = get_job_store()
    run_locally(
        EvaluateMaker(model=spec, max_steps=40).make("one_slab", items),
        store=store,
        log=False,
        ensure_success=True,
    )
    run_builders(configured_builders())
    with get_store("benchmarks") as benchmarks, store:
        rows = leaderboard(benchmarks, store, split="all")
    assert {r["mode"] for r in rows} == {"single_point", "relaxed"}
    for row in rows:
        assert row["model_id"] == spec.model_id and row["n"] == 1
        assert 0 <= row["mae"] < 1.0 and row["seconds_per_structure"] > 0
