"""Chemical-system campaigns: validation before any work, a tiny CHGNet campaign end to end,
resume, and a run interrupted by SIGINT that resumes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jobflow import JobStore
from maggma.stores import MemoryStore
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.flows.campaign import CampaignConfig
from surfflows.flows.chemsys import ChemicalSystemConfig, run_chemical_system
from surfflows.schemas.models import ModelSpec

ROOT = Path(__file__).parents[1]
TINY = ROOT / "surfflows" / "data" / "phases" / "Sr-Ti-O-tiny"
SHIPPED = ROOT / "surfflows" / "data" / "phases" / "Sr-Ti-O"
#: SrTiO3(001) only, thin slabs, loose relaxations: the whole campaign in a few minutes.
TINY_SLABS = {"miller_indices": [[1, 0, 0]], "min_slab_size": 6.0, "min_vacuum_size": 10.0}
TINY_RELAX = {"fmax": 0.1, "max_steps": 60}


def write_campaign(tmp_path: Path, **overrides) -> Path:
    config = {
        "name": "tiny",
        "chemical_system": ["Sr", "Ti", "O"],
        "phases": str(TINY),
        "targets": ["SrTiO3"],
        "model": "chgnet-0.3.0",
        "slabs": TINY_SLABS,
        "relax": TINY_RELAX,
        "plot_dir": str(tmp_path / "plots"),
    } | overrides
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def write_plain_campaign(tmp_path: Path) -> Path:
    """A plain campaign of the tiny SrTiO3 file with the chemical-system test's settings."""
    path = tmp_path / "plain.yaml"
    materials = [{"id": "SrTiO3", "structure": str(TINY / "SrTiO3.cif")}]
    config = {"name": "plain", "model": "chgnet-0.3.0", "slabs": TINY_SLABS}
    path.write_text(yaml.safe_dump(config | {"relax": TINY_RELAX, "materials": materials}))
    return path


def memory_store() -> JobStore:
    return JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})


def test_shipped_config_is_a_chemical_system_campaign():
    config = CampaignConfig.from_yaml(ROOT / "configs" / "sr-ti-o.yaml")
    assert isinstance(config, ChemicalSystemConfig)
    assert config.model_list == ["chgnet-0.3.0", "chgnet-surf"]
    assert set(config.phase_files()) >= {"SrTiO3", "SrO", "TiO2-rutile", "Sr2TiO4", "Ti", "Sr"}


def _copy_phases(tmp_path: Path, names: list[str], folder: Path = TINY) -> Path:
    out = tmp_path / "phases"
    out.mkdir()
    for name in names:
        shutil.copy(folder / f"{name}.cif", out / f"{name}.cif")
    return out


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"chemical_system": ["Sr", "Ti", "O", "La", "Al"]}, "chemical_system", "at most 4"),
        ({"chemical_system": ["Sr", "Ti", "O", "La"]}, "chemical_system", "La is in no phase"),
        ({"chemical_system": ["Ti", "O"]}, "phases", "outside chemical_system"),
        ({"targets": ["SrTiO3", "BaTiO3"]}, "targets", "BaTiO3 not among the phases"),
        ({"model": "chgnet-9"}, "models", "neither a pretrained"),
        ({"phases": "no-such-folder"}, "phases", "does not exist"),
    ],
)
def test_bad_chemical_system_fails_before_work(tmp_path, change, field, message):
    path = write_campaign(tmp_path, **change)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as info:
        CampaignConfig.from_yaml(path)
    text = str(info.value)
    assert text.startswith(str(path)) and f"{field}:" in text and "\n" not in text


def test_duplicate_phases_are_refused(tmp_path):
    phases = _copy_phases(tmp_path, ["SrTiO3", "SrO", "TiO2-rutile", "Sr", "Ti"])
    # the same perovskite, translated by half a cell: a second file of one phase
    from pymatgen.core import Structure

    shifted = Structure.from_file(phases / "SrTiO3.cif")
    shifted.translate_sites(range(len(shifted)), [0.5, 0.5, 0.5])
    shifted.to(filename=str(phases / "SrTiO3-again.cif"))
    path = write_campaign(tmp_path, phases=str(phases))
    with pytest.raises(ValueError, match="are the same structure") as info:
        CampaignConfig.from_yaml(path)
    assert "SrTiO3-again.cif" in str(info.value) and "phases:" in str(info.value)


def test_bad_input_through_the_cli_is_one_line_and_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(tmp_path / "db"))
    path = write_campaign(tmp_path, targets=["SrTi2O5"])
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "targets: SrTi2O5 not among the phases" in " ".join(result.output.split())
    assert not (tmp_path / "plots").exists()


def test_a_list_of_phase_files_and_the_plain_campaign_hash(tmp_path):
    files = [str(TINY / f"{n}.cif") for n in ("SrTiO3", "SrO", "TiO2-rutile", "Sr", "Ti")]
    config = CampaignConfig.from_yaml(write_campaign(tmp_path, phases=files))
    assert list(config.phase_files()) == ["SrTiO3", "SrO", "TiO2-rutile", "Sr", "Ti"]
    # a target's slabs carry the input hash of a plain campaign of the same file and settings
    plain = write_plain_campaign(tmp_path)
    structures = config.load_phases()
    ours = config.phase_campaign("chgnet-0.3.0").input_hashes(ModelSpec(), structures)
    theirs = CampaignConfig.from_yaml(plain).input_hashes(ModelSpec())
    assert ours["SrTiO3"] == theirs["SrTiO3"]


def test_remote_flow_of_the_campaign_is_serialisable(tmp_path):
    from jobflow import Flow

    config = CampaignConfig.from_yaml(write_campaign(tmp_path))
    (flow,) = config.flows(memory_store())
    names = [job.name for job in flow.jobs]
    assert "bulk relax SrTiO3" in names and "slabs SrTiO3" in names
    assert "O reference chgnet-0.3.0" in names
    assert any(n.startswith("chemical-system thermo SrTiO3") for n in names)
    assert Flow.from_dict(flow.as_dict()).jobs[0].name == flow.jobs[0].name


@pytest.mark.slow
def test_tiny_campaign_end_to_end_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(tmp_path / "db"))
    path = write_campaign(tmp_path)
    result = CliRunner().invoke(app, ["run", str(path)])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "stability region" in output and "centroid" in output
    assert "termination_map.png" in output
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert any("termination_map" in p for p in pngs) and any("wulff" in p for p in pngs)

    # the stored document: one per (target, model), region, maps and the two (001) terminations
    from surfflows.reports.query import surface_energies
    from surfflows.stores import get_job_store

    store = get_job_store()
    config = CampaignConfig.from_yaml(path)
    for png in (tmp_path / "plots").glob("*.png"):
        png.unlink()  # a rerun draws the PNGs of a stored document again where they are missing
    again = run_chemical_system(config, store, progress=False)
    (run,) = again.runs
    assert run.computed == {}, run.computed  # a second run computes nothing new
    assert set(run.reused) == {"bulk", "reference", "slabs", "thermo"}
    doc = run.thermo["SrTiO3"]
    assert Path(doc.map_png).is_file() and Path(doc.wulff_png).is_file()
    assert doc.region.independent == ["Sr", "O"] and len(doc.region.vertices) >= 3
    (facet,) = doc.maps
    assert {p.termination.split("_")[0] for p in doc.planes} == {"SrO", "TiO2"}
    assert abs(sum(facet.area_fractions.values()) - 1) < 1e-6
    # both terminations of SrTiO3(001) are stable in parts of the region (as in DFT)
    assert min(facet.area_fractions.values()) > 0.01, facet.area_fractions

    # relaxations stored by an interrupted run are not relaxed again
    from surfflows.flows.chemsys import stored_bulk, stored_slab_relaxations
    from surfflows.jobs.surface import slab_relaxations

    relaxed = stored_slab_relaxations(store, run.slab_hashes["SrTiO3"])
    assert len(relaxed) == 2
    bulk_hash = config.bulk_hashes(ModelSpec(), config.load_phases())["SrTiO3"]
    bulk = stored_bulk(store, bulk_hash, None)
    maker = config.maker(ModelSpec(), None).surface_maker
    args = (bulk, maker.slab_settings, maker.slab_relax_maker, maker.chunk_size)
    response = slab_relaxations.original(*args, None, relaxed[:1])
    names = [job.name for job in response.replace.jobs]
    assert sum(n.startswith("slab relax") for n in names) == 1  # one slab left to relax
    assert sum(n.startswith("surface energy") for n in names) == 2

    # an elemental target: its slabs and gamma are stored, it has no region (not a failure)
    with_element = write_campaign(tmp_path, targets=["SrTiO3", "Sr"])
    result = CliRunner().invoke(app, ["run", str(with_element)])
    output = " ".join(result.output.split())
    assert result.exit_code == 0, result.output
    assert "slabs Sr: computed" in output and "thermo SrTiO3: stored" in output
    assert "Sr (chgnet-0.3.0): slabs and gamma stored, no stability region (an element" in output
    sr_slabs = surface_energies(store, material_id="Sr")
    assert sr_slabs and all(d["gamma"] > 0 for d in sr_slabs)

    # a plain campaign of the same bulk file, settings and model reuses the stored slabs
    plain = write_plain_campaign(tmp_path)
    result = CliRunner().invoke(app, ["run", str(plain)])
    assert "SrTiO3: skipped" in result.output, result.output


@pytest.mark.slow
def test_interrupted_campaign_keeps_what_was_stored_and_resumes(tmp_path):
    """SIGINT during the bulks of Sr-O: what was stored stays, the rerun does only the rest."""
    env = os.environ | {
        "SURFFLOWS_DB_DIR": str(tmp_path / "db"),
        "SURFFLOWS_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    phases = _copy_phases(tmp_path, ["SrO", "Sr"])
    path = write_campaign(
        tmp_path, chemical_system=["Sr", "O"], phases=str(phases), targets=["SrO"]
    )
    log = tmp_path / "run.log"
    command = [sys.executable, "-m", "surfflows.cli", "run", str(path)]
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while "bulk Sr: computed" not in log.read_text() and time.time() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 130, log.read_text()
    first = log.read_text()
    assert "interrupted" in first
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "bulk Sr: stored" in rerun.stdout
    assert "slabs SrO: computed" in rerun.stdout and "thermo SrO: computed" in rerun.stdout
