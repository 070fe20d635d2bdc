"""Campaign files: validation before any work, and the Cu campaign end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from jobflow import Flow, JobStore, run_locally
from maggma.stores import MemoryStore
from monty.json import MontyDecoder, jsanitize
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.core.slabs import SlabSettings
from surfflows.flows.campaign import CampaignConfig, run_campaign
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.reports.query import surface_energies
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store

CONFIGS = Path(__file__).parents[1] / "configs"
SMALL_SLABS = {"max_index": 1, "min_slab_size": 6.0, "min_vacuum_size": 10.0}


def write_campaign(tmp_path: Path, **overrides) -> Path:
    config = {
        "name": "cu-test",
        "model": "chgnet-0.3.0",
        "slabs": SMALL_SLABS,
        "relax": {"fmax": 0.1, "max_steps": 100},
        "materials": [{"id": "Cu", "structure": str(CONFIGS / "structures" / "Cu.cif")}],
    } | overrides
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_demo_config_is_valid():
    config = CampaignConfig.from_yaml(CONFIGS / "demo.yaml")
    assert {m.id for m in config.materials} == {"Cu", "Pt", "MgO", "TiO2-rutile"}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"unknown_key": 1}, "unknown_key"),
        ({"materials": [{"id": "X", "structure": "missing.cif"}]}, "not found"),
        ({"slabs": {"miller_indices": [[0, 0, 0]]}}, "does not define a plane"),
        ({"model": "chgnet-9"}, "neither a pretrained"),
        ({"relax": {"optimizer": "bfgs"}}, "optimizer"),
    ],
)
def test_bad_campaign_fails_before_work(tmp_path, override, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        CampaignConfig.from_yaml(write_campaign(tmp_path, **override))


def test_relax_optimizer_reaches_the_slab_relaxations(tmp_path):
    """The campaign's optimizer is the one its slab relaxation Maker will use."""
    default = CampaignConfig.from_yaml(write_campaign(tmp_path))
    assert default.relax.optimizer == "lbfgs"
    config = CampaignConfig.from_yaml(
        write_campaign(tmp_path, relax={"fmax": 0.1, "max_steps": 100, "optimizer": "fire"})
    )
    flow = config.flows(JobStore(MemoryStore(), additional_stores={"data": MemoryStore()}))[0]
    slabs = flow.jobs[1]  # after the bulk relaxation
    assert slabs.function_kwargs["slab_relax_maker"].optimizer == "fire"
    assert config.input_hashes(ModelSpec()) != default.input_hashes(ModelSpec())


def test_thermo_campaign_relax_optimizer_reaches_the_slab_relaxations(tmp_path):
    """``surfflows thermo`` and ``thermo-campaign`` build a material's surface flow as a plain
    campaign does: the campaign's optimizer (and settings) reach the slab relaxation Maker,
    command-line overrides on top, and a --model override keeps them."""
    from surfflows.cli.thermo import resolved_models, thermo_flows

    config = CampaignConfig.from_yaml(
        write_campaign(tmp_path, relax={"fmax": 0.1, "max_steps": 100, "optimizer": "fire"})
    )
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    plain = config.flows(store)[0].jobs[1].function_kwargs["slab_relax_maker"]
    models = resolved_models(["chgnet-0.3.0", "chgnet-0.2.0"], config, store)
    overrides = {"fmax": 0.08}
    material, plans = thermo_flows("Cu", None, config, models, store, relax_overrides=overrides)
    assert material == "Cu"
    assert [spec.model_id for spec, _, _ in plans] == ["chgnet-0.3.0", "chgnet-0.2.0"]
    for spec, flow, reused in plans:
        surface = flow.jobs[0]  # bulk relax -> slabs, then the references and the analysis
        slab_maker = surface.jobs[1].function_kwargs["slab_relax_maker"]
        assert slab_maker.optimizer == "fire" == plain.optimizer
        assert (slab_maker.fmax, slab_maker.max_steps) == (0.08, 100)
        assert slab_maker.model == spec
        assert surface.jobs[1].function_kwargs["slab_settings"] == config.slabs
        assert reused == []


def test_non_periodic_and_unsupported_structures(tmp_path):
    xyz = tmp_path / "molecule.xyz"
    xyz.write_text("2\n\nH 0 0 0\nH 0 0 0.74\n")
    with pytest.raises(ValueError, match=r"molecule\.xyz"):
        CampaignConfig.from_yaml(
            write_campaign(tmp_path, materials=[{"id": "H2", "structure": str(xyz)}])
        )
    cif = tmp_path / "Am.cif"
    cif.write_text((CONFIGS / "structures" / "Cu.cif").read_text().replace("Cu", "Am"))
    with pytest.raises(ValueError, match="Am"):
        CampaignConfig.from_yaml(
            write_campaign(tmp_path, materials=[{"id": "Am", "structure": str(cif)}])
        )


def test_flow_json_round_trip(cu_bulk):
    flow = SurfaceEnergyMaker(slab_settings=SlabSettings(**SMALL_SLABS)).make(cu_bulk, "Cu")
    text = json.dumps(jsanitize(flow, strict=True, enum_values=True))
    restored = json.loads(text, cls=MontyDecoder)
    assert isinstance(restored, Flow)
    assert [j.name for j in restored.jobs] == [j.name for j in flow.jobs]
    assert restored.jobs[1].function_kwargs["slab_settings"] == SlabSettings(**SMALL_SLABS)


@pytest.mark.slow
def test_cu_campaign_end_to_end(tmp_path):
    """Real CHGNet: Cu(111) is the lowest-energy facet; results are queryable and exportable."""
    config = CampaignConfig.from_yaml(write_campaign(tmp_path))
    store = get_job_store()
    run_campaign(config, store, progress=False)
    docs = surface_energies(store, material_id="Cu")
    assert sorted(tuple(d["miller_index"]) for d in docs) == [(1, 0, 0), (1, 1, 0), (1, 1, 1)]
    assert all(d["status"] == "ok" and d["model_id"] == "chgnet-0.3.0" for d in docs)
    gamma = {tuple(d["miller_index"]): d["gamma"] for d in docs}
    assert min(gamma, key=gamma.get) == (1, 1, 1)
    assert all(0 < g < 3 for g in gamma.values())

    runner = CliRunner()
    listed = runner.invoke(app, ["results", "--material", "Cu", "--miller", "111"])
    assert listed.exit_code == 0 and "chgnet-0.3.0" in listed.output
    exported = runner.invoke(app, ["results", "--format", "json"])
    assert {tuple(d["miller_index"]) for d in json.loads(exported.output)} == set(gamma)
    csv_out = tmp_path / "gamma.csv"
    assert (
        runner.invoke(app, ["results", "--format", "csv", "--output", str(csv_out)]).exit_code == 0
    )
    assert len(csv_out.read_text().strip().splitlines()) == 4


@pytest.mark.slow
def test_failed_relaxation_is_recorded_not_raised(cu_bulk):
    """A step limit of 1 leaves slabs unconverged: recorded as failed, flow completes."""
    maker = SurfaceEnergyMaker.for_model(
        ModelSpec(),
        max_steps=1,
        slab_settings=SlabSettings(miller_indices=[(1, 1, 0)], min_slab_size=6, min_vacuum_size=10),
    )
    store = get_job_store()
    responses = run_locally(maker.make(cu_bulk, "Cu"), store=store, log=False, ensure_success=True)
    assert responses
    (doc,) = surface_energies(store)
    assert doc["status"] == "failed" and doc["gamma"] is None
    assert "not converged" in doc["reason"]
