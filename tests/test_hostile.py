"""Hostile input, round 3: names that reach a cluster's shell, YAML bombs, large campaign
files, settings that did nothing, orphans of killed runs, and the probes of the issue's
"also check" list. Each test fails with the code before this round."""

from __future__ import annotations

import ast
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from jobflow import JobStore, run_locally
from jobflow_remote.remote.queue import set_name_out
from maggma.stores import MemoryStore
from pymatgen.core import Structure
from qtoolkit.io.slurm import SlurmIO
from test_reliability import CU_CIF, PACKAGED, TINY, assert_one_line_error, campaign, cli, n_docs

import surfflows
from surfflows.core.slabs import SlabSettings
from surfflows.core.text import job_name
from surfflows.core.yaml_files import load_yaml
from surfflows.flows.campaign import CampaignConfig
from surfflows.flows.finetune import SweepConfig
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.schemas.models import ModelSpec
from surfflows.settings import get_settings
from surfflows.stores import get_job_store

HOSTILE_IDS = ["a\n$(id)", "Cu; rm -rf ~", "-Cu", "Cu`id`", "x" * 65, "", "Cu\u202e", "a/b"]


def alias_bomb(levels: int = 8) -> str:
    """``name:`` an alias bomb: ``levels`` nested lists of nine aliases each."""
    text = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, levels + 1):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + f"name: *a{levels}\n"


# ---------------------------------------------------------------- ids and job names


@pytest.mark.parametrize("material_id", HOSTILE_IDS)
def test_hostile_material_ids_refused_naming_the_material(tmp_path, material_id):
    path = campaign(tmp_path, materials=[{"id": material_id, "structure": str(CU_CIF)}])
    result = cli("run", path)
    assert_one_line_error(result, "materials.0.id", "material id")
    assert n_docs("outputs") == 0


def test_safe_ids_accepted(tmp_path):
    ids = ["mp-2657", "TiO2_rutile.v2", "Cu+Ni:1", "JVASP-1002"]
    materials = [{"id": i, "structure": str(CU_CIF)} for i in ids]
    config = CampaignConfig.from_yaml(campaign(tmp_path, materials=materials))
    assert [m.id for m in config.materials] == ids


def _slurm_script(name: str) -> str:
    """The batch script jobflow-remote submits for a job of this name (its name handling,
    qtoolkit's SlurmIO)."""
    resources: dict = {}
    set_name_out(resources, name)
    return SlurmIO().get_submission_script(["jf -fe execution run /path"], resources)


def _assert_name_stays_in_comment(name: str) -> None:
    lines = _slurm_script(name).splitlines()
    outside = [line for line in lines if not line.startswith("#") and line.strip()]
    assert outside == ["jf -fe execution run /path"], lines
    (line,) = [line for line in lines if "--job-name" in line]
    assert line.startswith("#SBATCH --job-name=") and "$" not in line and "`" not in line


def test_job_name_sanitises():
    for hostile in HOSTILE_IDS:
        _assert_name_stays_in_comment(job_name("bulk relax", hostile))
    assert job_name("surface energy", "mp-30", "111", "Cu_P6/mmm_4") == (
        "surface energy mp-30 111 Cu_P6_mmm_4"
    )


def test_every_job_name_of_a_hostile_id_stays_in_the_sbatch_comment(cu_bulk):
    """Real CHGNet: the flow of an id never validated (the Python API) runs; every job it
    stored, those made at run time included, renders into a safe Slurm script."""
    store = JobStore(MemoryStore(), additional_stores={"data": MemoryStore()})
    maker = SurfaceEnergyMaker.for_model(
        ModelSpec(), fmax=0.2, max_steps=30, slab_settings=SlabSettings(**TINY)
    )
    flow = maker.make(cu_bulk, "a\n$(touch /tmp/pwned)")
    run_locally(flow, store=store, log=False, ensure_success=True)
    with store:
        names = {d["name"] for d in store.query({}, properties=["name"])}
    assert len(names) >= 4 and any(n.startswith("surface energy") for n in names)
    for name in names | {job.name for job in flow.jobs} | {flow.name}:
        _assert_name_stays_in_comment(name)


def test_job_names_are_made_by_job_name():
    """Every job or flow name a job module sets is a constant or made by :func:`job_name`."""
    bad = []
    for path in sorted((Path(surfflows.__file__).parent / "jobs").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            values = []
            if isinstance(node, ast.Assign | ast.AugAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Attribute) and t.attr == "name" for t in targets):
                    values.append(node.value)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Flow":
                values += [k.value for k in node.keywords if k.arg == "name"]
            for value in values:
                made = isinstance(value, ast.Call) and getattr(value.func, "id", "") == "job_name"
                if not (made or isinstance(value, ast.Constant)):
                    bad.append(f"{path.name}:{node.lineno}")
    assert not bad, bad


# ---------------------------------------------------------------- YAML


def test_alias_bomb_campaign_refused_at_once_with_a_short_message(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(alias_bomb() + f"materials: [{{id: Cu, structure: {CU_CIF}}}]\n")
    start = time.perf_counter()
    with pytest.raises(ValueError, match="alias"):
        CampaignConfig.from_yaml(path)
    assert time.perf_counter() - start < 1.0
    result = cli("run", path)
    assert_one_line_error(result, "bomb.yaml", "aliases expand")
    assert len(result.output) < 500


def test_every_yaml_reader_refuses_a_bomb(tmp_path, monkeypatch):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(alias_bomb())
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(bomb))
    with pytest.raises(ValueError, match=r"settings file .*aliases expand"):
        get_settings()
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(tmp_path / "none.yaml"))
    with pytest.raises(ValueError, match=r"sweep file .*aliases expand"):
        SweepConfig.from_yaml(bomb)
    result = cli("learning-curve", bomb, "--report-only")
    assert_one_line_error(result, "learning-curve file", "aliases expand")


def test_one_yaml_loader():
    """No module of the package parses YAML but :mod:`surfflows.core.yaml_files`."""
    calls = []
    for path in sorted(Path(surfflows.__file__).parent.rglob("*.py")):
        if path.name == "yaml_files.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and getattr(node.value, "id", None) == "yaml"
                and node.attr in {"safe_load", "load", "full_load", "unsafe_load", "compose"}
            ):
                calls.append(f"{path.name}:{node.lineno}")
    assert not calls, calls


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: &a [1, *a]\n", "refers to itself"),
        ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", "nest deeper than 64"),
        ("name: [\n", "not valid YAML"),
    ],
)
def test_recursive_deep_and_broken_yaml_are_one_line(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=fragment):
        load_yaml(path, "campaign file")


def test_huge_file_and_values_are_refused_quoting_a_prefix(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("name: x\n" + "# padding\n" * 900_000)
    assert_one_line_error(cli("run", big), "over the limit")
    long_name = campaign(tmp_path, name="long", materials=[{"id": "Cu", "structure": str(CU_CIF)}])
    raw = yaml.safe_load(long_name.read_text()) | {"name": ["y" * 5000] * 50}
    long_name.write_text(yaml.safe_dump(raw))
    result = cli("run", long_name)
    assert_one_line_error(result, "name: Input should be a valid string")
    assert len(result.output) < 600


# ---------------------------------------------------------------- large campaigns


def test_3000_materials_read_one_structure_file_once(tmp_path, monkeypatch):
    reads = []
    original = Structure.from_file
    monkeypatch.setattr(
        Structure, "from_file", staticmethod(lambda *a, **k: reads.append(a) or original(*a, **k))
    )
    materials = [{"id": f"Cu-{i}", "structure": str(CU_CIF)} for i in range(3000)]
    config = CampaignConfig.from_yaml(campaign(tmp_path, materials=materials))
    assert len(reads) == 1
    structures = config.load_structures()
    assert len(structures) == 3000 and len(reads) == 1
    assert structures["Cu-0"] is not structures["Cu-1"]  # one copy per material


# ---------------------------------------------------------------- torch threads


@pytest.mark.parametrize(
    ("env", "settings", "expected"), [("1", None, 1), ("3", None, 3), (None, 3, 3)]
)
def test_torch_threads_apply_to_every_command(tmp_path, env, settings, expected):
    """The CLI's process has the configured torch threads (SURFFLOWS_TORCH_THREADS or the
    settings file), whatever the command."""
    environ = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    environ.pop("SURFFLOWS_TORCH_THREADS", None)
    if env:
        environ["SURFFLOWS_TORCH_THREADS"] = env
    if settings:
        (tmp_path / "settings.yaml").write_text(f"torch_threads: {settings}\n")
    environ["SURFFLOWS_SETTINGS_FILE"] = str(tmp_path / "settings.yaml")
    environ["PYTHONPATH"] = str(Path(surfflows.__file__).parents[1])
    code = (
        "from surfflows.cli import app\n"
        "try:\n    app(['info'], standalone_mode=False)\n"
        "finally:\n    import torch; print('threads', torch.get_num_threads())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, timeout=300
    )
    assert f"threads {expected}" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_torch_threads_setting_bounded(monkeypatch):
    monkeypatch.setenv("SURFFLOWS_TORCH_THREADS", "0")
    with pytest.raises(ValueError, match="torch_threads: Input should be greater than or equal"):
        get_settings()


# ---------------------------------------------------------------- killed runs


def test_material_interrupted_after_its_bulk_reruns_to_one_document_per_name(tmp_path):
    """Real CHGNet: what kill -9 after the bulk relaxation leaves (the bulk job's document,
    no slab) is replaced on rerun, so every job name has one document."""
    path = campaign(tmp_path)
    config = CampaignConfig.from_yaml(path)
    store = get_job_store()
    bulk_job = config.flows(store)[0].jobs[0]
    with store:
        bulk_job.run(store)  # as run_locally does, then the process dies
        assert store.count({"name": "bulk relax Cu"}) == 1
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    assert "replaced 1 documents of an unfinished earlier run" in result.output
    with store:
        names = [d["name"] for d in store.query({}, properties=["name"])]
    assert names.count("bulk relax Cu") == 1
    repeated = {n for n in names if names.count(n) > 1}
    assert not repeated, repeated


@pytest.mark.slow
def test_kill_9_mid_material_then_rerun(tmp_path):
    """Real CHGNet, a real SIGKILL once the bulk is stored and slabs still relax."""
    slabs = {"miller_indices": [[1, 1, 1], [1, 0, 0], [1, 1, 0]], "min_slab_size": 8.0,
             "min_vacuum_size": 8.0}  # fmt: skip
    path = campaign(tmp_path, slabs=slabs, relax={"fmax": 0.02, "max_steps": 300, "chunk_size": 1})
    env = os.environ | {"PYTHONPATH": str(Path(surfflows.__file__).parents[1])}
    process = subprocess.Popen(
        [sys.executable, "-m", "surfflows.cli", "run", str(path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    store = get_job_store()
    deadline = time.time() + 240
    try:
        while time.time() < deadline and process.poll() is None:
            try:
                with store:
                    if store.count({"name": {"$regex": "^slab relax Cu"}}):
                        break
            except sqlite3.OperationalError as exc:
                # montydb creates a collection's sqlite file, then its table: a reader in
                # between sees "no such table" once; the next poll finds the table.
                assert "no such table" in str(exc), exc
            time.sleep(0.3)
    finally:
        process.kill()
        process.wait()
    with store:
        assert store.count({"name": "bulk relax Cu"}) == 1
        assert not store.count({"name": "store_inputs"}), "the run finished before the kill"
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    with store:
        names = [d["name"] for d in store.query({}, properties=["name"])]
    assert names.count("bulk relax Cu") == 1
    assert not {n for n in names if names.count(n) > 1}


# ---------------------------------------------------------------- results, models, finetune


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--formula", '{"$ne": null}'], "--formula"),
        (["--material", "a\n$(id)"], "--material"),
        (["--miller", "abc"], "Miller index 'abc'"),
        (["--format", "xml"], "--format"),
        (["--format", "json", "--output", "missing/folder/x.json"], "--output"),
    ],
)
def test_bad_results_options_refused(tmp_path, args, fragment):
    if "--output" in args:
        args = [*args[:-1], str(tmp_path / args[-1])]
    assert_one_line_error(cli("results", *args), fragment)


def test_formula_filter_is_reduced(tmp_path):
    result = cli("results", "--formula", "Ti2O4", "--format", "csv")
    assert result.exit_code == 0 and result.output.startswith("material_id,formula")


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("os.system", "standard library"),
        ("builtins.eval", "standard library"),
        ('{"force_field_name": "subprocess.run", "calculator_kwargs": {"args": ["id"]}}',
         "standard library"),
        ("sha256:" + "ab" * 32, "no registered models match"),
        ("sha256:", "hex digits"),
        ("", "is neither a pretrained CHGNet"),
        ("x" * 300, "is neither"),
        ("not_chgnet.pt", "is not a CHGNet checkpoint"),
    ],
)  # fmt: skip
def test_bad_models_refused_before_anything_is_stored(tmp_path, model, fragment):
    if model == "not_chgnet.pt":
        torch.save({"weights": torch.zeros(3)}, tmp_path / model)
        model = str(tmp_path / model)
    result = cli("run", campaign(tmp_path, model=model))
    assert_one_line_error(result, fragment)
    assert len(result.output) < 800
    assert n_docs("outputs") == 0


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--epochs", "0"], "epochs"),
        (["--layers", "99"], "--layers (depth)"),
        (["--lr", "-0.001"], "--lr (learning_rate)"),
        (["--lr", "inf"], "--lr (learning_rate)"),
        (["--batch-size", "0"], "batch_size"),
    ],
)
def test_bad_finetune_settings_refused_naming_the_field(args, field):
    result = cli("finetune", "--reference", "pbe_metal_surfaces", *args)
    assert_one_line_error(result, field)
    assert n_docs("outputs") == 0 and n_docs("references") == 0


# ---------------------------------------------------------------- reference folders


def _reference_folder(tmp_path: Path, slab_edit=None, bulk_edit=None) -> Path:
    """A one-slab copy of pbe_metal_surfaces, its slab / bulk header lines edited."""
    source = PACKAGED / "pbe_metal_surfaces"
    folder = tmp_path / "refs"
    folder.mkdir()
    (folder / "README.md").write_text((source / "README.md").read_text())
    slab_lines = (source / "slabs.extxyz").read_text().splitlines(keepends=True)
    slab = slab_lines[: int(slab_lines[0]) + 2]
    bulk_id = re.search(r"bulk_id=(\S+)", slab[1]).group(1)
    bulk_lines = (source / "bulks.extxyz").read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(bulk_lines) if f"bulk_id={bulk_id} " in line) - 1
    bulk = bulk_lines[start : start + int(bulk_lines[start]) + 2]
    for lines, edit in ((slab, slab_edit), (bulk, bulk_edit)):
        if edit:
            edit(lines)
    (folder / "slabs.extxyz").write_text("".join(slab))
    (folder / "bulks.extxyz").write_text("".join(bulk))
    return folder


def _gamma(value):
    def edit(lines):
        lines[1] = re.sub(r"gamma_ref=\S+", f"gamma_ref={value}", lines[1])

    return edit


def _nan_position(lines):
    lines[2] = "Cu nan nan nan\n"


def _cell(text):
    def edit(lines):
        lines[1] = re.sub(r'Lattice="[^"]*"', f'Lattice="{text}"', lines[1])

    return edit


def _no_atoms(lines):
    del lines[2:]
    lines[0] = "0\n"


@pytest.mark.parametrize(
    ("slab_edit", "bulk_edit", "fragments"),
    [
        (_gamma("nan"), None, ["slabs.extxyz, frame 0", "'gamma_ref' is nan"]),
        (_gamma("inf"), None, ["slabs.extxyz, frame 0", "'gamma_ref' is inf"]),
        (_gamma("-1.2"), None, ["slabs.extxyz, frame 0", "'gamma_ref' is -1.2"]),
        (_gamma("abc"), None, ["slabs.extxyz, frame 0", "'gamma_ref' is not a number"]),
        (_nan_position, None, ["slabs.extxyz, frame 0", "positions are not finite"]),
        (None, _cell("3.6 0 0 0 3.6 0 0 0 0"), ["bulks.extxyz, frame 0", "volume 0"]),
        (None, _cell("3.6 0 0 3.6 0 0 0 0 3.6"), ["bulks.extxyz, frame 0", "volume 0"]),
        (_no_atoms, None, ["slabs.extxyz, frame 0", "no atoms"]),
    ],
)
def test_hostile_reference_folders_refused_storing_nothing(
    tmp_path, slab_edit, bulk_edit, fragments
):
    folder = _reference_folder(tmp_path, slab_edit, bulk_edit)
    result = cli("ingest", folder, "--set-name", "hostile", "--level-of-theory", "VASP PBE")
    assert_one_line_error(result, *fragments)
    assert n_docs("references") == 0


def test_flagged_reference_keeps_its_bad_gamma_flagged(tmp_path):
    def flagged_negative(lines):
        _gamma("-0.3")(lines)
        lines[1] = lines[1].replace(" formula=", " flags=negative_gamma formula=")

    folder = _reference_folder(tmp_path, flagged_negative)
    result = cli("ingest", folder, "--set-name", "flagged", "--level-of-theory", "VASP PBE")
    assert result.exit_code == 0, result.output
    assert n_docs("references") == 2
