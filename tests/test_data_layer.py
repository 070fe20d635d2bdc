"""The data layer: incremental builds (documents counted), export / import, db check on a
damaged database, SIGTERM, a full disk and a killed writer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from jobflow import run_locally
from test_evaluate_builders import tiny_set  # noqa: F401 (fixture)
from typer.testing import CliRunner

from surfflows.builders import configured_builders, run_builders
from surfflows.builders.last_build import (
    record_file,
    recording_build,
    unchanged_since_last_build,
)
from surfflows.cli import app
from surfflows.core.benchmark import ALIGNMENT_TOLERANCE_EV
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.schemas.models import ModelSpec
from surfflows.settings import get_settings
from surfflows.stores import (
    CHECK_FAILED_FILE,
    collection_file,
    get_job_store,
    get_store,
    insert_new_documents,
    query_collection,
    writer_lock,
)

ROOT = Path(__file__).parents[1]
runner = CliRunner()

#: Fields a rebuild rewrites whatever the inputs (when and with what it was written).
STAMPS = ("_id", "last_updated", "source_completed_at", "references_updated_at", "provenance")


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def evaluate_keys(keys: set[str] | None = None, set_name: str = "tiny_metals") -> None:
    """CHGNet single points of a set's structures (those of ``keys`` only)."""
    with get_store("references") as references, get_store("splits") as splits:
        items = reference_items(reference_inputs(set_name, references, splits))
    items = [item for item in items if keys is None or item[0] in keys]
    flow = EvaluateMaker(model=ModelSpec(), modes=("single_point",)).make(set_name, items)
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)


def errors_by_id() -> dict[str, dict]:
    with get_store("surface_errors") as errors:
        docs = list(errors.query({}))
    by_id = {d["error_id"]: d for d in docs}
    assert len(by_id) == len(docs), "an error document is stored twice"
    return by_id


def content(docs: dict[str, dict]) -> dict[str, dict]:
    return {k: {f: v for f, v in d.items() if f not in STAMPS} for k, d in docs.items()}


@pytest.mark.slow
def test_incremental_build_processes_only_the_new_evaluations(tiny_set):  # noqa: F811
    ingest_path(tiny_set)
    with get_store("references") as references:
        refs = {d["key"]: d for d in references.query({"set_name": "tiny_metals"})}
    first_material = sorted({d["material_id"] for d in refs.values()})[0]
    first = {k for k, d in refs.items() if d["material_id"] == first_material}
    evaluate_keys(first)
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 1,
        "BenchmarkBuilder": 1,
    }
    before = errors_by_id()
    slabs = {k for k, d in refs.items() if d["doc_type"] == "slab"}
    # every slab has a document ("not evaluated" where no energy yet); one bulk evaluated
    assert len(before) == len(slabs) + 1

    # nothing new: nothing read into the builders, nothing written
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 0,
        "BenchmarkBuilder": 0,
    }
    assert errors_by_id() == before

    # the other materials' evaluation: only their slabs and the (refitted) bulks rewritten
    evaluate_keys(set(refs) - first)
    assert run_builders(configured_builders()) == {
        "SurfaceEnergyErrorBuilder": 1,
        "BenchmarkBuilder": 1,
    }
    after = errors_by_id()
    rewritten = {k for k in after if k not in before or after[k]["_id"] != before[k]["_id"]}
    new_slabs = {f"chgnet-0.3.0|single_point|{k}" for k in slabs - first}
    bulks = {f"chgnet-0.3.0|single_point|{k}" for k, d in refs.items() if d["doc_type"] == "bulk"}
    assert rewritten == new_slabs | bulks
    kept = set(after) - rewritten
    assert kept and all(after[k] == before[k] for k in kept)

    # the same documents as one build of everything from nothing
    with get_store("surface_errors") as errors, get_store("builder_state") as state:
        errors.remove_docs({})
        state.remove_docs({})
    run_builders(configured_builders())
    assert content(errors_by_id()) == content(after)


@pytest.mark.slow
def test_a_build_after_new_results_of_one_set_reads_and_writes_only_their_work(tiny_set):  # noqa: F811
    """Counted by the error builder: after new evaluations in one of two sets, a build
    reads only that set's evaluations and the references its new slabs and refitted bulks
    need, writes only their documents, and leaves the other set's group untouched."""
    ingest_path(tiny_set)
    ingest_path(tiny_set, set_name="tiny_metals_b")
    with get_store("references") as references:
        refs = {d["key"]: d for d in references.query({"set_name": "tiny_metals_b"})}
    first_material = sorted({d["material_id"] for d in refs.values()})[0]
    first = {k for k, d in refs.items() if d["material_id"] == first_material}
    evaluate_keys()
    evaluate_keys(first, set_name="tiny_metals_b")
    assert set(run_builders(configured_builders()).values()) == {2}
    before = errors_by_id()

    evaluate_keys(set(refs) - first, set_name="tiny_metals_b")
    builders = configured_builders()
    assert run_builders(builders) == {"SurfaceEnergyErrorBuilder": 1, "BenchmarkBuilder": 1}
    slabs = {k for k, d in refs.items() if d["doc_type"] == "slab"}
    bulks = {k for k, d in refs.items() if d["doc_type"] == "bulk"}
    new_slabs = slabs - first
    with get_store("outputs") as outputs:
        evaluations_b = outputs.count(
            {"output.@class": "EvaluationDoc", "output.set_name": "tiny_metals_b"}
        )
    assert dict(builders[0].counts) == {
        "evaluations": evaluations_b,  # none of the other set's
        "references": len(new_slabs | bulks),
        "written": len(new_slabs | bulks),
        # the new slabs' "not evaluated" documents and the one bulk evaluated before
        "replaced": len(new_slabs) + 1,
    }
    after = errors_by_id()
    untouched = {k for k in before if "|tiny_metals:" in k}
    assert untouched and all(after[k] == before[k] for k in untouched)


def evaluation_job(refs: list[dict], model_id: str = "model-a", shift: float = 0.01) -> dict:
    """A stored EvaluationDoc job document of ``refs``: the DFT energies shifted by ``shift``
    eV per atom (no model run: what the builders read of it)."""
    from surfflows.core.timestamps import now_iso
    from surfflows.schemas.evaluate import ModelEnergyDoc

    results = [
        ModelEnergyDoc(
            reference_key=r["key"],
            doc_type=r["doc_type"],
            n_atoms=r["n_atoms"],
            energy=r["ref_energy"] + shift * r["n_atoms"],
            energy_per_atom=r["ref_energy"] / r["n_atoms"] + shift,
            converged=True,
        ).model_dump()
        for r in refs
        if r.get("ref_energy") is not None
    ]
    output = {"@class": "EvaluationDoc", "model_id": model_id, "set_name": refs[0]["set_name"]}
    return {
        "uuid": f"evaluation-{model_id}-{refs[0]['key']}-{len(refs)}",
        "index": 1,
        "completed_at": now_iso(),
        "output": output | {"mode": "single_point", "results": results},
    }


def bulk_copies(bulks: list[dict], first: int, count: int) -> list[dict]:
    """Reference bulks of ``count`` new materials, each a copy of one of ``bulks``."""
    from surfflows.core.timestamps import now_iso

    return [
        bulk
        | {"key": f"{bulk['key']}-copy{i}", "material_id": f"copy{i}", "ingested_at": now_iso()}
        for i in range(first, first + count)
        for bulk in [bulks[i % len(bulks)]]
    ]


def test_bulks_only_added_keep_the_stored_alignment_unless_it_moves(tiny_set):  # noqa: F811
    """New bulks that leave the per-element offsets (fitted on the other split parts) where
    they were are written alone; a bulk that moves them has every bulk error refitted."""
    ingest_path(tiny_set)
    with get_store("references") as references:
        refs = [{k: v for k, v in d.items() if k != "_id"} for d in references.query({})]
    bulks = [r for r in refs if r["doc_type"] == "bulk"]

    def add(docs: list[dict], shift: float = 0.01) -> dict[str, int]:
        with get_store("references") as references, get_store("outputs") as outputs:
            insert_new_documents(references, docs, key="key")
            insert_new_documents(outputs, [evaluation_job(docs, shift=shift)], key="uuid")
        builders = configured_builders()
        run_builders(builders)
        return dict(builders[0].counts)

    first = bulk_copies(bulks, 0, 12)  # four materials of each element
    add([r for r in refs if r["doc_type"] in ("slab", "bulk")] + first)
    before = errors_by_id()
    n_bulks = sum(d["kind"] == "bulk" for d in before.values())
    assert n_bulks == len(bulks) + 12
    assert any(d["kind"] == "bulk" and d["status"] == "ok" for d in before.values())

    # three more materials, their energies off by what the others' are: offsets unchanged
    counts = add(bulk_copies(bulks, 12, 3))
    assert counts["written"] == 3 and counts["replaced"] == 0
    assert counts["alignments kept"] == 1
    kept = errors_by_id()
    assert all(kept[k] == before[k] for k in before)
    with get_store("builder_state") as state, get_store("surface_errors") as errors:
        state.remove_docs({})
        errors.remove_docs({})
    run_builders(configured_builders())  # a build from nothing: the same errors
    refitted = errors_by_id()
    aligned = "aligned_energy_error_per_atom"
    assert refitted.keys() == kept.keys()
    for key, doc in kept.items():
        assert content({key: doc | {aligned: None}}) == content(
            {key: refitted[key] | {aligned: None}}
        )
        if doc[aligned] is not None:
            assert doc[aligned] == pytest.approx(refitted[key][aligned], abs=ALIGNMENT_TOLERANCE_EV)

    # one material 40 meV/atom off the others: the offsets move, every bulk is refitted
    counts = add(bulk_copies(bulks, 15, 1), shift=0.05)
    assert "alignments kept" not in counts
    assert counts["written"] == n_bulks + 4 and counts["replaced"] == n_bulks + 3
    shifted = errors_by_id()
    assert any(
        d[aligned] != refitted[k][aligned]
        for k, d in shifted.items()
        if d["kind"] == "bulk" and d[aligned] is not None and k in refitted
    )


def build_did_work() -> bool:
    """``surfflows build``: True if it ran the builders, False if it found nothing changed."""
    out = cli("build")
    assert out.exit_code == 0, out.output
    assert ("groups processed" in out.output) != ("nothing changed" in out.output), out.output
    return "groups processed" in out.output


def test_a_build_stops_at_once_when_nothing_changed_and_not_after_a_write(
    tiny_set,  # noqa: F811
    monkeypatch,
):
    ingest_path(tiny_set)
    with get_store("references") as references:
        refs = list(references.query({"doc_type": {"$in": ["slab", "bulk"]}}))
    with get_store("outputs") as outputs:
        insert_new_documents(outputs, [evaluation_job(refs)], key="uuid")
    assert build_did_work()
    with get_store("surface_errors") as errors:
        n_errors = errors.count()
    assert n_errors > 0
    assert not build_did_work()  # the record of the last build: nothing opened

    # a write into a source after the build: the next build reads and builds it
    with get_store("outputs") as outputs:
        insert_new_documents(outputs, [evaluation_job(refs, "model-b")], key="uuid")
    assert build_did_work()
    with get_store("surface_errors") as errors:
        assert errors.count() == 2 * n_errors
    assert not build_did_work()

    # and into a target (here the statistics removed): rebuilt, not skipped
    with get_store("benchmarks") as benchmarks:
        benchmarks.remove_docs({"model_id": "model-b"})
    assert build_did_work()
    with get_store("benchmarks") as benchmarks:
        assert benchmarks.count({"model_id": "model-b"}) > 0

    # a build that fails part way leaves no record: the next one builds
    import surfflows.builders.run

    with get_store("outputs") as outputs:
        insert_new_documents(outputs, [evaluation_job(refs, "model-c")], key="uuid")

    def failing(builders, **kwargs):
        with get_store("benchmarks") as benchmarks:
            benchmarks.remove_docs({})
        raise OSError("no space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(surfflows.builders.run, "run_builders", failing)
        assert cli("build").exit_code == 2
    assert not record_file(get_settings()).exists()
    assert build_did_work()
    with get_store("benchmarks") as benchmarks:
        assert benchmarks.distinct("model_id") == ["model-a", "model-b", "model-c"]
    assert not build_did_work()


def test_the_build_record_is_not_written_by_a_failed_build(tmp_path):
    settings = get_settings()
    with recording_build(settings):
        pass
    assert unchanged_since_last_build(settings)
    with pytest.raises(KeyboardInterrupt), recording_build(settings):
        raise KeyboardInterrupt
    assert not record_file(settings).exists()
    assert unchanged_since_last_build(settings) is None


def small_docs(n: int) -> list[dict]:
    return [
        {
            "error_id": f"m|single_point|s:{i}",
            "gamma_error": 0.001 * i,
            "excluded_reasons": {"flagged: mismatch (2.5%)": 1},  # a key holding a "."
            "miller_index": [1, 1, i % 3],
        }
        for i in range(n)
    ]


def test_export_import_round_trip(tmp_path, monkeypatch):
    with get_store("surface_errors") as errors, get_store("references") as references:
        insert_new_documents(errors, small_docs(50), key="error_id")
        references.update([{"key": "s:1", "set_name": "s", "structure": {"a": 1}}], key="key")
    out = cli("export", tmp_path / "export")
    assert out.exit_code == 0, out.output
    assert "surface_errors: 50 documents" in out.output
    lines = (tmp_path / "export" / "surface_errors.jsonl").read_text().splitlines()
    assert len(lines) == 50 and '"$oid"' in lines[0]  # extended JSON, what mongoimport reads

    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(tmp_path / "restored"))
    for attempt in range(2):  # idempotent: the second import replaces, adds nothing
        result = cli("import", tmp_path / "export")
        assert result.exit_code == 0, result.output
        assert f"surface_errors: 50 documents from {tmp_path / 'export'}" in result.output
        assert f"({50 * attempt} replaced)" in result.output
    with get_store("surface_errors") as errors, get_store("references") as references:
        restored = sorted(errors.query({}), key=lambda d: d["error_id"])
        assert references.count() == 1
    original = sorted(small_docs(50), key=lambda d: d["error_id"])
    assert [{k: v for k, v in d.items() if k != "_id"} for d in restored] == original


@pytest.mark.parametrize("storage", ["sqlite", "lightning"])
def test_a_read_without_maggma_finds_what_the_store_finds(monkeypatch, storage):
    """``query_collection`` (what ``surfflows results`` reads with) matches the MontyStore
    query, on each engine, and finds nothing (creating nothing) where no database is yet."""
    assert query_collection("surface_errors", {}) == []
    assert not get_settings().db_dir.exists()
    monkeypatch.setenv("SURFFLOWS_DB_STORAGE", storage)
    with get_store("surface_errors") as errors:
        insert_new_documents(errors, small_docs(20), key="error_id")
        criteria = {"miller_index": [1, 1, 2]}
        expected = list(errors.query(criteria))
    assert expected and query_collection("surface_errors", criteria) == expected
    with pytest.raises(ValueError, match="unknown store 'errors'"):
        query_collection("errors", {})


def corrupt(path: Path) -> None:
    """Overwrite pages in the middle of an sqlite file (what a failing disk leaves)."""
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(b"\xde\xad\xbe\xef" * 2048)


def test_db_check_names_the_damaged_file_and_writes_are_refused(tmp_path):
    with get_store("surface_errors") as errors, get_store("references") as references:
        insert_new_documents(errors, small_docs(3000), key="error_id")
        references.update([{"key": "s:1", "set_name": "s"}], key="key")
    damaged = collection_file("surface_errors")
    corrupt(damaged)
    check = cli("db", "check")
    assert check.exit_code == 2, check.output
    error = [line for line in check.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in check.output
    db_dir = get_settings().db_dir
    for fragment in (str(damaged), str(db_dir), "surface_errors", "export", "backup"):
        assert fragment in error[0], check.output
    assert (db_dir / CHECK_FAILED_FILE).is_file()

    # a writing command is refused before it writes anything
    stamp = {p: p.stat().st_mtime_ns for p in (db_dir / "surfflows").iterdir()}
    ingest = cli("ingest", str(ROOT / "surfflows/data/references/pbe_metal_surfaces"))
    assert ingest.exit_code == 2 and "failed `surfflows db check`" in ingest.output
    assert {p: p.stat().st_mtime_ns for p in (db_dir / "surfflows").iterdir()} == stamp

    # what can be read is exported; the damaged store is named and the command exits 1
    export = cli("export", tmp_path / "salvage")
    assert export.exit_code == 1 and "references: 1 documents" in export.output
    assert "surface_errors" in export.output.splitlines()[-1]

    # the damaged folder moved away and the export imported: a database that passes
    db_dir.rename(tmp_path / "damaged_db")
    assert cli("import", tmp_path / "salvage").exit_code == 0
    check = cli("db", "check")
    assert check.exit_code == 0 and "references: 1 documents read" in check.output


def test_db_migrate_keeps_every_document(tmp_path):
    with get_store("surface_errors") as errors:
        insert_new_documents(errors, small_docs(20), key="error_id")
    result = cli("db", "migrate", "--storage", "lightning")
    assert result.exit_code == 0, result.output
    db_dir = get_settings().db_dir
    assert (db_dir / "surfflows" / "surface_errors.mdb").is_file()
    assert (db_dir.parent / f"{db_dir.name}.sqlite-backup").is_dir()
    with get_store("surface_errors") as errors:  # the new engine, found from the folder
        assert sorted(d["error_id"] for d in errors.query({})) == sorted(
            d["error_id"] for d in small_docs(20)
        )


def cli_process(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = os.environ | {"PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "surfflows.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


@pytest.mark.slow
def test_sigterm_stops_a_run_like_ctrl_c_and_a_rerun_resumes(tmp_path):
    """Real CHGNet: SIGTERM after the first material; what it stored is kept and reused."""
    structures = ROOT / "configs" / "structures"
    config = {
        "name": "c",
        "slabs": {"miller_indices": [[1, 1, 1]], "min_slab_size": 5.0, "min_vacuum_size": 8.0},
        "relax": {"fmax": 0.2, "max_steps": 50},
        # the second material (several rutile terminations) takes seconds on a quiet machine
        "materials": [
            {"id": "Cu", "structure": str(structures / "Cu.cif")},
            {"id": "TiO2", "structure": str(structures / "TiO2_rutile.cif")},
        ],
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    process = cli_process("run", str(path))
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith("Cu: computed"):
            break
    time.sleep(0.5)  # into the second material's relaxation
    process.send_signal(signal.SIGTERM)
    lines += process.stdout.readlines()
    assert process.wait(timeout=120) == 143, "".join(lines)
    output = "".join(lines)
    assert output.count("terminated (SIGTERM): what was stored stays") == 1, output
    assert "Traceback" not in output
    rerun = cli("run", str(path))
    assert rerun.exit_code == 0 and "1 materials computed, 1 skipped" in rerun.output


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (root only, else skipped): a disk that fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; returns it."""
    filler = disk / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_full_disk_during_ingest_and_build_loses_nothing(small_disk, monkeypatch, tiny_set):  # noqa: F811
    monkeypatch.setenv("SURFFLOWS_DB_DIR", str(small_disk / "db"))
    ingest_path(tiny_set)
    evaluate_keys()
    filler = fill(small_disk)
    for args in (
        ("ingest", str(ROOT / "surfflows/data/references/pbe_metal_surfaces")),
        ("build",),
    ):
        result = cli(*args)
        assert result.exit_code == 2, result.output
        error = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(error) == 1 and "Traceback" not in result.output, result.output
        assert "full" in error[0] or "No space left" in error[0], result.output
    filler.unlink()
    assert cli("db", "check").exit_code == 0  # still readable
    with get_store("references") as references:
        assert references.count({"set_name": "pbe_metal_surfaces"}) == 0  # nothing half-written
    assert run_builders(configured_builders())["SurfaceEnergyErrorBuilder"] == 1
    assert len(errors_by_id()) == 8  # 5 slabs and 3 bulks, none doubled


def test_a_killed_writer_leaves_a_lock_the_next_command_takes():
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from surfflows.stores import writer_lock\n"
            "with writer_lock():\n    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
    )
    assert holder.stdout.readline().strip() == "locked"
    busy = cli("ingest", str(ROOT / "surfflows/data/references/pbe_metal_surfaces"))
    assert busy.exit_code == 2 and f"pid {holder.pid}" in busy.output
    holder.kill()  # kill -9: no cleanup; the pid file stays, the kernel drops the lock
    holder.wait()
    assert (get_settings().db_dir / "writer.pid").is_file()
    with writer_lock():
        pid = (get_settings().db_dir / "writer.pid").read_text()
    assert pid.startswith(f"pid {os.getpid()}")


def test_in_process_stores_a_rerun_reads_no_source_document_when_nothing_was_added(tiny_set):  # noqa: F811
    """On stores with indexes (here mongomock) the error builder compares each source's
    count and newest stamp with those recorded by the last complete build."""
    from maggma.stores import MemoryStore

    from surfflows.builders import campaign_builders

    ingest_path(tiny_set)
    with get_store("references") as references:
        refs = [{k: v for k, v in d.items() if k != "_id"} for d in references.query({})]

    class KeptMemoryStore(MemoryStore):
        """A MemoryStore that outlives a build (maggma's runner closes stores at the end)."""

        def close(self) -> None:
            pass

    names = ("outputs", "references", "splits", "surface_errors", "benchmarks", "builder_state")
    stores = {name: KeptMemoryStore(name) for name in names}
    for store in stores.values():
        store.connect()
    stores["references"].update(refs, key="key")
    slab_refs = [r for r in refs if r["doc_type"] in ("slab", "bulk")]
    stores["outputs"].update([evaluation_job(slab_refs)], key="uuid")

    def build(read_sources: bool = True) -> dict[str, int]:
        builders = campaign_builders(stores)
        if not read_sources:  # the no-op must not read evaluations or reference stamps

            def refused(*args):
                raise AssertionError("read the sources")

            builders[0]._evaluations = builders[0]._reference_stamps = refused
        return run_builders(builders)

    assert build() == {"SurfaceEnergyErrorBuilder": 1, "BenchmarkBuilder": 1}
    assert build(read_sources=False) == {"SurfaceEnergyErrorBuilder": 0, "BenchmarkBuilder": 0}
    # an evaluation stamped before the last build (imported): the count tells
    older = evaluation_job(slab_refs, "model-b") | {"completed_at": "2000-01-01T00:00:00"}
    stores["outputs"].update([older], key="uuid")
    assert build() == {"SurfaceEnergyErrorBuilder": 1, "BenchmarkBuilder": 1}
    assert build(read_sources=False)["SurfaceEnergyErrorBuilder"] == 0
    # a reference re-ingested (same count, newer stamp): its set's groups rebuilt
    from surfflows.core.timestamps import now_iso

    stores["references"].update([slab_refs[0] | {"ingested_at": now_iso()}], key="key")
    assert build()["SurfaceEnergyErrorBuilder"] == 2

    # a build stopped part way leaves no record of the sources: the next one reads them
    from surfflows.builders.errors import SOURCES_STATE_ID

    stores["outputs"].update([evaluation_job(slab_refs, "model-c")], key="uuid")
    builders = campaign_builders(stores)

    def stopped(items):
        raise KeyboardInterrupt

    builders[0].update_targets = stopped
    with pytest.raises(KeyboardInterrupt):
        run_builders(builders)
    assert stores["builder_state"].query_one({"state_id": SOURCES_STATE_ID}) is None
    assert build()["SurfaceEnergyErrorBuilder"] == 1
    assert build(read_sources=False)["SurfaceEnergyErrorBuilder"] == 0
