"""Issue 14: bad inputs and events a careless or hostile user produces, one test per row.

Each fails with the code before the reliability round: exit 0 on failures, silent
overwrites, code run from pickles, tracebacks, slow MongoDB failures, repeated work.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import lmdb
import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.io import oc22, oc22_download
from surfflows.io.checkpoints import check_checkpoint
from surfflows.io.safe_pickle import restricted_loads
from surfflows.settings import redact_uri
from surfflows.stores import STORE_NAMES, get_store, insert_new_documents, writer_lock

ROOT = Path(__file__).parents[1]
CU_CIF = ROOT / "configs" / "structures" / "Cu.cif"
PACKAGED = ROOT / "surfflows" / "data" / "references"
TINY = {"miller_indices": [[1, 1, 1]], "min_slab_size": 5.0, "min_vacuum_size": 8.0}
runner = CliRunner()


def campaign(tmp_path: Path, name: str = "c", **overrides) -> Path:
    config = {
        "name": name,
        "slabs": TINY,
        "relax": {"fmax": 0.2, "max_steps": 50},
        "materials": [{"id": "Cu", "structure": str(CU_CIF)}],
    } | overrides
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def n_docs(name: str) -> int:
    with get_store(name) as store:
        return store.count()


def assert_one_line_error(result, *fragments: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.output
    for fragment in fragments:
        assert fragment in error[0], result.output


# ---------------------------------------------------------------- row 1: false success


def test_overlapping_atoms_refused_before_work(tmp_path):
    cif = tmp_path / "overlap.cif"
    Structure(Lattice.cubic(3.6), ["Cu", "Cu"], [[0, 0, 0], [0.02, 0, 0]]).to(filename=str(cif))
    result = cli("run", campaign(tmp_path, materials=[{"id": "Cu2", "structure": str(cif)}]))
    assert_one_line_error(result, "Cu2", "overlap.cif", "0.07 Å apart")
    assert n_docs("outputs") == 0


def test_disordered_structure_refused(tmp_path):
    cif = tmp_path / "disordered.cif"
    Structure(Lattice.cubic(3.6), [{"Cu": 0.5, "Au": 0.5}], [[0, 0, 0]]).to(filename=str(cif))
    result = cli("run", campaign(tmp_path, materials=[{"id": "CuAu", "structure": str(cif)}]))
    assert_one_line_error(result, "CuAu", "disordered")
    assert n_docs("outputs") == 0


def test_random_bytes_checkpoint_refused_before_registering(tmp_path):
    bogus = tmp_path / "bogus.pth.tar"
    bogus.write_bytes(os.urandom(4096))
    result = cli("run", campaign(tmp_path, model=str(bogus)))
    assert_one_line_error(result, "bogus.pth.tar", "not a CHGNet checkpoint")
    assert n_docs("outputs") == 0 and n_docs("outputs_data") == 0  # nothing registered
    # A pickle that would run code is refused too (weights only), and so is a torch file
    # without CHGNet's fields.
    marker = tmp_path / "ran"
    crafted = tmp_path / "crafted.pth.tar"
    torch.save({"model": _Payload(marker)}, crafted)
    with pytest.raises(ValueError, match=r"crafted\.pth\.tar"):
        check_checkpoint(crafted)
    assert not marker.exists()
    plain = tmp_path / "plain.pth.tar"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match=r"model\.model_args"):
        check_checkpoint(plain)


def test_failed_run_exits_non_zero_and_shows_only_this_run(tmp_path):
    """Real CHGNet: a good run, then one whose relaxations cannot converge (1 step)."""
    good = cli("run", campaign(tmp_path, name="good"))
    assert good.exit_code == 0, good.output
    assert "1 materials computed" in good.output
    bad = cli("run", campaign(tmp_path, name="bad", relax={"fmax": 0.01, "max_steps": 1}))
    assert bad.exit_code == 1, bad.output
    assert "failures:" in bad.output
    assert "Cu: bulk relaxation: not converged" in bad.output
    assert "Cu (1 1 1)" in bad.output and "not converged" in bad.output
    table = bad.output.split("failures:")[0]
    assert " ok " not in table  # the good run's document is not shown as this run's
    assert "failed" in table


# ---------------------------------------------------------------- rows 2-4: limits


@pytest.mark.parametrize("fmax", [".inf", "1e9"])
def test_fmax_bounds(tmp_path, fmax):
    path = campaign(tmp_path)
    path.write_text(path.read_text().replace("fmax: 0.2", f"fmax: {fmax}"))
    assert_one_line_error(cli("run", path), "relax.fmax")
    assert n_docs("outputs") == 0


def test_step_bound(tmp_path):
    result = cli("run", campaign(tmp_path, relax={"fmax": 0.05, "max_steps": 10**9}))
    assert_one_line_error(result, "relax.max_steps")


def test_thick_slabs_refused_with_size_and_estimated_atoms(tmp_path):
    huge = cli("run", campaign(tmp_path, slabs=TINY | {"min_slab_size": 500}))
    assert_one_line_error(huge, "slabs.min_slab_size", "less than or equal to 100")
    vacuum = cli("run", campaign(tmp_path, slabs=TINY | {"min_vacuum_size": 1e4}))
    assert_one_line_error(vacuum, "slabs.min_vacuum_size")
    over = cli("run", campaign(tmp_path, slabs=TINY | {"min_slab_size": 60, "max_atoms": 20}))
    assert_one_line_error(over, "Cu (1, 1, 1): about 29", "max_atoms")
    assert n_docs("outputs") == 0


def test_high_miller_index_refused_at_once(tmp_path):
    start = time.perf_counter()
    result = cli("run", campaign(tmp_path, slabs=TINY | {"miller_indices": [[9, 7, 5]]}))
    assert_one_line_error(result, "(9, 7, 5)", "+-4")
    assert time.perf_counter() - start < 30
    assert n_docs("outputs") == 0


# ---------------------------------------------------------------- rows 5-6: embedded DB


def test_second_writer_refused_and_duplicates_repaired(tmp_path):
    with writer_lock():
        busy = cli("ingest", "pbe_metal_surfaces")
    assert_one_line_error(busy, "in use by pid", "one writer at a time")
    assert n_docs("references") == 0
    assert cli("ingest", "pbe_metal_surfaces").exit_code == 0
    # What two unlocked ingests used to leave: a key stored twice.
    with get_store("references") as store:
        doc = store.query_one({"set_name": "pbe_metal_surfaces"})
        del doc["_id"]
        insert_new_documents(store, [doc], key="key")
    again = cli("ingest", "pbe_metal_surfaces")
    assert again.exit_code == 0 and "1 keys stored twice now stored once" in again.output
    with get_store("references") as store:
        keys = [d["key"] for d in store.query({}, properties=["key"])]
    assert len(keys) == len(set(keys))
    assert "0 updated" in cli("ingest", "pbe_metal_surfaces").output


def test_user_folder_named_like_packaged_set(tmp_path):
    folder = tmp_path / "pbe_metal_surfaces"
    shutil.copytree(PACKAGED / "pbe_metal_surfaces", folder)
    (folder / "README.md").write_text("my metals\nlevel_of_theory: VASP PBE\n")
    assert_one_line_error(cli("ingest", folder), "packaged reference set", "--set-name")
    assert n_docs("references") == 0
    renamed = cli("ingest", folder, "--set-name", "my_metals")
    assert renamed.exit_code == 0 and "my_metals (VASP PBE)" in renamed.output


# ---------------------------------------------------------------- row 7: no code from pickles


class _Payload:
    """Unpickling this creates ``marker``: what a crafted file could do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_crafted_oc22_metadata_and_lmdb_value_refused(tmp_path):
    marker = tmp_path / "ran"
    meta = tmp_path / "oc22_metadata.pkl"
    meta.write_bytes(pickle.dumps({1: _Payload(marker)}))
    with pytest.raises(ValueError, match=r"oc22_metadata\.pkl.*refused to load pathlib"):
        oc22.read_metadata(meta)
    shard = tmp_path / "split" / "data.0000.lmdb"
    shard.parent.mkdir()
    env = lmdb.open(str(shard), subdir=False, map_size=1 << 20)
    with env, env.begin(write=True) as txn:
        txn.put(b"0", pickle.dumps(_Payload(marker)))
    with pytest.raises(ValueError, match=r"data\.0000\.lmdb.*key '0'.*refused"):
        list(oc22.iter_lmdb(shard))
    # A tensor storage is torch.load-ed by torch's own unpickler without restriction;
    # the restricted one reads it as weights only.
    inner = pickle.dumps(_Payload(marker))
    nested = pickle.dumps(_Storage(inner))
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(nested)
    assert not marker.exists()
    tensor = restricted_loads(pickle.dumps(torch.arange(3)))
    assert tensor.tolist() == [0, 1, 2]


class _Storage:
    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return (torch.storage._load_from_bytes, (self.data,))


# ---------------------------------------------------------------- row 8: one-line errors


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"\x00\xff garbage \x13\n" * 5, "slabs.extxyz"),
        (b'3\nProperties=species:S:1:pos:R:3 pbc="T T T"\nCu 0 0 0\n', "slabs.extxyz"),
        (b"", "slabs.extxyz"),
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_bad_extxyz_is_one_line(tmp_path, content, fragment):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("level_of_theory: VASP PBE\n")
    (folder / "slabs.extxyz").write_bytes(content)
    assert_one_line_error(cli("ingest", folder), fragment)
    debug = cli("--debug", "ingest", folder)
    assert debug.exit_code == 2 and "Traceback" in debug.output


def test_bad_oc22_files_are_one_line(tmp_path, monkeypatch):
    empty = tmp_path / "empty_split"
    empty.mkdir()
    meta = tmp_path / "meta.pkl"
    meta.write_bytes(pickle.dumps({}))
    assert_one_line_error(cli("oc22", "ingest", empty, "--metadata", meta), "no *.lmdb shards")
    for name, data in (("zero", b""), ("garbage", os.urandom(8192))):
        split = tmp_path / name
        split.mkdir()
        (split / "data.0000.lmdb").write_bytes(data)
        result = cli("oc22", "ingest", split, "--metadata", meta)
        assert_one_line_error(result, "data.0000.lmdb")
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(os.urandom(512))
    assert_one_line_error(cli("oc22", "ingest", empty, "--metadata", garbage), "garbage.pkl")

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(oc22_download.urllib.request, "urlopen", offline)
    result = cli("oc22", "download", tmp_path / "dl", "--file", "oc22_metadata.pkl")
    assert_one_line_error(result, "oc22_metadata.pkl", "online")


# ---------------------------------------------------------------- rows 9-10: MongoDB


def test_unreachable_mongodb_fails_in_seconds_naming_host(tmp_path, monkeypatch):
    monkeypatch.setenv("SURFFLOWS_MONGODB_URI", "mongodb://ann:s3cret@127.0.0.1:1/")
    start = time.perf_counter()
    result = cli("run", campaign(tmp_path))
    assert time.perf_counter() - start < 20
    assert_one_line_error(result, "127.0.0.1:1", "did not answer")
    assert "s3cret" not in result.output
    info = cli("info")
    assert "s3cret" not in info.output and "ann:***@127.0.0.1:1" in info.output


def test_redact_uri():
    assert redact_uri("x mongodb+srv://u:p@ss@h.org/db y") == "x mongodb+srv://u:***@h.org/db y"
    assert redact_uri("mongodb://h:27017") == "mongodb://h:27017"


# ---------------------------------------------------------------- row 11: resume


def test_rerun_skips_finished_materials(tmp_path):
    """Real CHGNet: the second run computes nothing and stores nothing new."""
    path = campaign(tmp_path)
    first = cli("run", path)
    assert first.exit_code == 0 and "1 materials computed, 0 skipped" in first.output
    before = n_docs("outputs")
    second = cli("run", path)
    assert second.exit_code == 0 and "0 materials computed, 1 skipped" in second.output
    assert n_docs("outputs") == before
    assert "Cu_P6/mmm_4" in second.output  # the reused result is in the table
    other = cli("run", campaign(tmp_path, relax={"fmax": 0.15, "max_steps": 50}))
    assert "1 materials computed, 0 skipped" in other.output  # other settings: computed
    # An interrupted campaign: its first material finished, the second did not.
    both = [{"id": "Cu", "structure": str(CU_CIF)}, {"id": "Cu-b", "structure": str(CU_CIF)}]
    resumed = cli("run", campaign(tmp_path, materials=both))
    assert resumed.exit_code == 0 and "1 materials computed, 1 skipped" in resumed.output


# ---------------------------------------------------------------- rows 12-13


def test_evaluate_bad_mode_writes_nothing():
    assert_one_line_error(
        cli("evaluate", "--reference", "pbe_metal_surfaces", "--mode", "bogus"), "bogus"
    )
    assert n_docs("splits") == 0 and n_docs("references") == 0


SWEEP_YAML = ROOT / "configs" / "finetune_sweep.yaml"
CURVE_YAML = ROOT / "configs" / "learning_curve.yaml"


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (
            "finetune --reference jarvis_surfaces --layers 4 --work-dir {w}",
            "jarvis_surfaces bo2_bulk_eos",
        ),
        ("finetune --reference jarvis_surfaces --no-evaluate --work-dir {w}", "jarvis_surfaces"),
        ("evaluate --reference jarvis_surfaces", "jarvis_surfaces"),
        (f"sweep {SWEEP_YAML} --out {{w}}", "jarvis_surfaces bo2_bulk_eos"),
        (f"learning-curve {CURVE_YAML} --out {{w}}", "jarvis_surfaces"),
    ],
)
def test_set_not_ingested_is_refused_naming_the_ingest_command(tmp_path, command, missing):
    """On a fresh database, commands that read reference sets refuse before any work (no
    model loaded, no split made), with the ``surfflows ingest`` command of the missing sets."""
    work = tmp_path / "work"
    result = cli(*command.format(w=work).split())
    assert_one_line_error(result, f"run `surfflows ingest {missing}` first")
    assert all(n_docs(name) == 0 for name in STORE_NAMES)
    assert not work.exists()


def test_readme_prose_is_not_a_level_of_theory(tmp_path):
    folder = tmp_path / "my_jarvis"
    shutil.copytree(PACKAGED / "jarvis_surfaces", folder)
    assert "Level of theory: the slab energies" in (folder / "README.md").read_text()
    result = cli("ingest", folder, "--level-of-theory", "VASP OptB88vdW")
    assert result.exit_code == 0, result.output
    assert "my_jarvis (VASP OptB88vdW)" in result.output


# ---------------------------------------------------------------- row 14: clean output


def test_cli_output_has_no_library_warnings_and_few_progress_lines(tmp_path):
    env = os.environ | {"SURFFLOWS_TORCH_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "surfflows.cli", "run", str(campaign(tmp_path))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    output = done.stdout + done.stderr
    for noise in ("FutureWarning", "UserWarning", "DeprecationWarning", "Traceback"):
        assert noise not in output
    assert output.count("\r") <= 4  # tqdm off a terminal: not one line per update
