"""Flows run by the real jobflow-remote Runner, on a worker without surfflows settings.

The queue and the JobStore are one in-process mongomock database shared by the runner and
the submitting code (see :mod:`jfremote_support`); the worker is a ``local`` shell worker,
so each job runs in its own ``jf execution run`` process, with no ``SURFFLOWS_*`` variable
in its environment. Everything a job needs reaches it as an input: structures and
reference documents in the flow, a fine-tuned checkpoint's bytes as a reference the runner
resolves from the JobStore.
"""

from __future__ import annotations

import os
import shutil
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from ase.io import read, write
from jfremote_support import project_jobstore, reset_client, write_project
from jobflow import Flow

from surfflows.builders import campaign_builders, run_builders
from surfflows.flows.campaign import CampaignConfig
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.flows.remote import submit_campaign, submit_flows
from surfflows.io.inputs import reference_items
from surfflows.io.registry import checkpoint_reference, resolve_model
from surfflows.jobs.finetune import FineTuneMaker
from surfflows.jobs.thermo import elemental_reference
from surfflows.reports.query import surface_energies
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.references import ReferenceInputs

jobflow_remote = pytest.importorskip("jobflow_remote")

pytestmark = pytest.mark.slow

PROJECT = "surfflows_test"
CONFIGS = Path(__file__).parents[1] / "configs"
PBE = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "pbe_metal_surfaces"
TINY_PHASES = Path(__file__).parents[1] / "surfflows" / "data" / "phases" / "Sr-Ti-O-tiny"
#: Material -> split part of the tiny fine-tuning set.
PARTS = {"Cu": "train", "Ni": "train", "Pt": "val", "Rh": "test"}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A fresh jobflow-remote project (local shell worker, in-memory queue and JobStore)."""
    from jobflow_remote import JobController

    reset_client()
    write_project(tmp_path / "projects", tmp_path / "work", PROJECT)
    monkeypatch.setattr(jobflow_remote.SETTINGS, "projects_folder", str(tmp_path / "projects"))
    monkeypatch.setattr(jobflow_remote.SETTINGS, "project", PROJECT)
    controller = JobController.from_project_name(PROJECT)
    controller.reset(max_limit=0)
    return controller


def run_on_worker(controller, monkeypatch, max_seconds: int) -> None:
    """Run every job with the real Runner, the worker environment free of SURFFLOWS_*."""
    from jobflow_remote.jobs.runner import Runner
    from jobflow_remote.jobs.state import JobState

    for key in [k for k in os.environ if k.startswith("SURFFLOWS_")]:
        monkeypatch.delenv(key)
    Runner(project_name=PROJECT).run_all_jobs(max_seconds=max_seconds)
    states = {info.name: info.state for info in controller.get_jobs_info()}
    failed = {name: state for name, state in states.items() if state != JobState.COMPLETED}
    if failed:
        errors = [
            (info.name, (controller.get_job_doc(db_id=info.db_id).error or "")[-2000:])
            for info in controller.get_jobs_info()
            if info.state != JobState.COMPLETED
        ]
        pytest.fail(f"jobs not completed: {failed}\n{errors}")


def test_surface_campaign_submitted_and_run_by_the_runner(project, tmp_path, monkeypatch):
    path = tmp_path / "campaign.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "cu-remote",
                "model": "chgnet-0.3.0",
                "slabs": {"miller_indices": [[1, 1, 1]], "min_slab_size": 6.0},
                "relax": {"fmax": 0.1, "max_steps": 100},
                "materials": [{"id": "Cu", "structure": str(CONFIGS / "structures" / "Cu.cif")}],
            }
        )
    )
    ids = submit_campaign(CampaignConfig.from_yaml(path), worker="local", project=PROJECT)
    assert len(ids) == 2  # bulk relaxation, slab cutting (which adds the slab jobs)
    run_on_worker(project, monkeypatch, max_seconds=600)

    # read back with the query of `surfflows results`
    docs = surface_energies(project_jobstore(), material_id="Cu")
    (doc,) = docs
    assert doc["miller_index"] == [1, 1, 1] and doc["status"] == "ok"
    assert 0.5 < doc["gamma"] < 1.2, doc  # CHGNet's Cu(111) is ~0.84 J/m² on thicker slabs
    # provenance recorded where the job ran
    assert doc["provenance"]["chgnet"] == version("chgnet")
    assert doc["provenance"]["torch"] == version("torch")


def test_chemical_system_campaign_submitted_and_run_by_the_runner(project, tmp_path, monkeypatch):
    """Sr-O: both phases and both references relaxed on the worker, then SrO(001)'s slabs,
    then the thermo document with the model's hull and SrO's interval in delta mu_O."""
    phases = tmp_path / "phases"
    phases.mkdir()
    for name in ("SrO", "Sr"):
        shutil.copy(TINY_PHASES / f"{name}.cif", phases / f"{name}.cif")
    path = tmp_path / "sr-o.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "sr-o-remote",
                "chemical_system": ["Sr", "O"],
                "phases": str(phases),
                "targets": ["SrO"],
                "model": "chgnet-0.3.0",
                "slabs": {"miller_indices": [[1, 0, 0]], "min_slab_size": 5.0},
                "relax": {"fmax": 0.1, "max_steps": 60},
            }
        )
    )
    ids = submit_campaign(CampaignConfig.from_yaml(path), worker="local", project=PROJECT)
    assert len(ids) == 6  # 2 bulks, 2 references, slab cutting, thermo
    run_on_worker(project, monkeypatch, max_seconds=900)

    with project_jobstore() as store:
        doc = store.query_one({"output.@class": "ChemicalSystemThermoDoc"}, load=True)
    thermo = ChemicalSystemThermoDoc.model_validate(doc["output"])
    assert thermo.material_id == "SrO" and thermo.region.independent == ["O"]
    assert thermo.region.stable and len(thermo.region.vertices) == 2
    assert {p.name for p in thermo.phases} >= {"SrO", "Sr"}
    assert thermo.maps and thermo.map_png.endswith("termination_map.png")
    # the slabs carry the input hash a local run of the same file would look for
    slab_job = store.query_one({"name": "slabs SrO"}, properties=["metadata"])
    assert slab_job["metadata"]["surfflows_input_hash"]


def _tiny_set(tmp_path) -> ReferenceInputs:
    """Cu, Ni (train), Pt (val), Rh (test): small PBE slabs and their bulks."""
    from surfflows.io.ingest import ingest_path
    from surfflows.stores import get_store

    small = {"Cu": 8, "Ni": 4, "Pt": 4, "Rh": 4}
    folder = tmp_path / "tiny_remote"
    folder.mkdir()
    slabs = [
        a
        for a in read(PBE / "slabs.extxyz", ":")
        if a.info["material_id"] in PARTS and len(a) <= small[a.info["material_id"]]
    ]
    bulks = [a for a in read(PBE / "bulks.extxyz", ":") if a.info["material_id"] in PARTS]
    write(folder / "slabs.extxyz", slabs)
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# tiny\nlevel_of_theory: VASP PBE\n")
    ingest_path(folder)
    with get_store("references") as references:
        docs = list(references.query({"set_name": "tiny_remote"}))
    for doc in docs:
        doc.pop("_id")
    return ReferenceInputs(
        set_name="tiny_remote", split_id="tiny_remote:fixed", assignments=PARTS, docs=docs
    )


def test_finetuned_checkpoint_evaluated_on_a_worker(project, tmp_path, monkeypatch):
    inputs = _tiny_set(tmp_path)
    references = _references_store(inputs)
    store = project_jobstore()
    settings = FineTuneSettings(depth=1, epochs=1, batch_size=8)
    train = FineTuneMaker(settings=settings).make(inputs)
    submit_flows([train], worker="local", project=PROJECT)
    run_on_worker(project, monkeypatch, max_seconds=600)

    # the checkpoint is registered by being in the JobStore; a new flow asks for it by name
    with store:
        doc = train.output.resolve(store)
    spec = resolve_model(doc.model_id, store)
    assert spec == ModelSpec(kind="checkpoint", sha256=doc.sha256)
    checkpoint = checkpoint_reference(spec, store)
    flow = EvaluateMaker(model=spec, modes=("single_point",)).make(
        inputs.set_name, reference_items(inputs, ("test",)), checkpoint
    )
    # the thermo flow's elemental reference job loads the same checkpoint on the worker
    oxygen = elemental_reference("O", spec, 0.1, 30, checkpoint)
    submit_flows([flow, Flow([oxygen])], worker="local", project=PROJECT)
    run_on_worker(project, monkeypatch, max_seconds=300)
    with store:
        reference = oxygen.output.resolve(store)
    assert reference.model_id == doc.model_id and reference.element == "O"
    assert reference.energy_per_atom is not None

    # the builders of `surfflows build`, run by mrun's serial runner, read the same JobStore
    from maggma.stores import MemoryStore

    errors, benchmarks = MemoryStore("surface_errors"), MemoryStore("benchmarks")
    stores = {
        "outputs": store.docs_store,
        "references": references,
        "splits": _split_store(inputs),
        "surface_errors": errors,
        "benchmarks": benchmarks,
    }
    with store:
        counts = run_builders(campaign_builders(stores))
    assert counts == {"SurfaceEnergyErrorBuilder": 1, "BenchmarkBuilder": 1}
    with benchmarks:
        row = benchmarks.query_one({"model_id": doc.model_id, "split": "test"})
    assert row["n"] == 1 and row["mae"] is not None


def _references_store(inputs: ReferenceInputs):
    from maggma.stores import MemoryStore

    references = MemoryStore("references")
    with references:
        references.update([d.model_dump(mode="json") for d in inputs.docs], key="key")
    return references


def _split_store(inputs: ReferenceInputs):
    from maggma.stores import MemoryStore

    from surfflows.core.splits import SplitDoc, split_id

    splits = MemoryStore("splits")
    doc = SplitDoc(
        split_id=split_id(inputs.set_name, 0),
        set_name=inputs.set_name,
        seed=0,
        fractions=(0.5, 0.25, 0.25),
        assignments=inputs.assignments,
    )
    with splits:
        splits.update([doc.model_dump(mode="json")], key="split_id")
    return splits
