"""Learning-curve wiring: a selection decides what a checkpoint is trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from ase.io import read, write
from jobflow import run_locally
from pydantic import ValidationError

from surfflows.flows.learning_curve import LearningCurveConfig, LearningCurveMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs
from surfflows.jobs.finetune import FineTuneMaker
from surfflows.reports.finetune import summarize_curve
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.stores import get_job_store, get_store

JARVIS = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "jarvis_surfaces"


@pytest.fixture
def small_jarvis(tmp_path) -> Path:
    """Unflagged JARVIS slabs of 30 materials (up to 30 atoms) with their bulks."""
    slabs = [
        a
        for a in read(JARVIS / "slabs.extxyz", ":")
        if not a.info.get("flags") and "bulk_id" in a.info and len(a) <= 30
    ]
    materials = sorted({a.info["material_id"] for a in slabs})[:30]
    slabs = [a for a in slabs if a.info["material_id"] in materials]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    bulks, seen = [], set()
    for bulk in read(JARVIS / "bulks.extxyz", ":"):
        if bulk.info["bulk_id"] in bulk_ids and bulk.info["bulk_id"] not in seen:
            seen.add(bulk.info["bulk_id"])
            bulks.append(bulk)
    folder = tmp_path / "small_jarvis"
    folder.mkdir()
    write(folder / "slabs.extxyz", slabs)
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("JARVIS subset\nlevel_of_theory: VASP OptB88vdW\n")
    return folder


def test_summary_over_seeds():
    rows = [
        {"method": "direct", "budget": 5, "test_mae": 0.2},
        {"method": "direct", "budget": 5, "test_mae": 0.4},
        {"method": "random", "budget": 5, "test_mae": None},
    ]
    (summary,) = summarize_curve(rows)
    assert summary["n_seeds"] == 2 and summary["test_mae_mean"] == pytest.approx(0.3)
    assert summary["test_mae_std"] == pytest.approx(0.1)


def test_config_rejects_unknown_keys():
    with pytest.raises(ValidationError, match="budget"):
        LearningCurveConfig.model_validate(
            {"name": "x", "reference": "s", "budget": [5], "hyperparameters": {"depth": 1}}
        )


@pytest.mark.slow
def test_checkpoints_train_only_on_their_selection(small_jarvis):
    ingest_path(small_jarvis)
    maker = LearningCurveMaker(
        name="lc-test",
        finetune_maker=FineTuneMaker(settings=FineTuneSettings(depth=1, epochs=1)),
        budgets=(4,),
        seeds=(0,),
    )
    store = get_job_store()
    references = get_store("references")
    with references, get_store("splits") as splits:
        inputs = reference_inputs("small_jarvis", references, splits)
    flow = maker.make(inputs)
    run_locally(flow, store=store, log=False, ensure_success=True)
    with store:
        # the flow's structured output, not a search by job name
        points = [p.resolve(store).model_dump() for p in flow.output["points"]]
        assert store.count({"output.@class": "LearningCurvePointDoc"}) == len(points) == 2
        assert sorted(p["method"] for p in points) == ["direct", "random"]
        for point in points:
            selection = store.query_one(
                {"output.@class": "SelectionDoc", "output.selection_id": point["selection_id"]}
            )["output"]
            finetune = store.query_one(
                {"output.@class": "FineTuneDoc", "output.model_id": point["model_id"]}
            )["output"]
            with references:
                trained_slabs = {
                    d["key"]
                    for d in references.query(
                        {"key": {"$in": finetune["train_keys"]}, "doc_type": "slab"}
                    )
                }
            assert trained_slabs == set(selection["reference_keys"])
            assert point["budget"] == 4
