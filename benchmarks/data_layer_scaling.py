"""Data-layer scaling: insert, build, rerun and query at 1k, 10k and 100k slabs.

The data are synthetic but schema-valid, cloned from a real tiny evaluation: the 4-atom Ni,
Pt and Rh slabs of ``pbe_metal_surfaces`` (and their bulks) are ingested and evaluated with
CHGNet (single points) once; each cloned material is a copy of one of them under a new key,
with the model energies shifted by a small random amount per model. N counts slab results
(one slab of one set evaluated by one model in one mode: one ``surface_errors`` document);
they are spread over 4 reference sets x 3 models x 2 modes (relaxed-mode results are cloned
from the single points, with their energies shifted like another model's), so N = 100,000 is
about 4,200 reference slabs per set, 1,700 bulks and 1,600 EvaluationDocs of 128 structures.

Steps timed, each a fresh process (wall and CPU seconds, peak RSS):

``insert``       references and evaluation outputs written as ``surfflows ingest`` and the
                 JobStore write them (one bulk insert per store)
``full``         ``surfflows build`` on the new data
``noop``         ``surfflows build`` again, nothing new
``plus1``        1 % more materials in every set, evaluated by every model and mode,
                 inserted, then ``surfflows build``
``report_one``   ``surfflows report --model M --reference S`` (one model and set)
``report``       ``surfflows report`` (every model and set, parity PNGs included)
``results``      ``surfflows results --model M --format json``

on each embedded montydb storage engine (sqlite, lightning = LMDB, flatfile), and the
build steps on maggma MemoryStores (mongomock, in process) to separate the builders' own
cost from the storage's. A step still running after ``STEP_TIMEOUT_S`` is stopped with
SIGTERM and recorded so (rc 143). Results go to ``benchmarks/results/data_layer_scaling.json``
(resumable: finished (backend, N) runs are kept) and a log-log PNG.

Usage::

    python benchmarks/data_layer_scaling.py --sizes 1000 10000
    python benchmarks/data_layer_scaling.py --sizes 100000 --backends sqlite memory
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PBE = ROOT / "surfflows" / "data" / "references" / "pbe_metal_surfaces"

SETS = ("synth_a", "synth_b", "synth_c", "synth_d")
MODELS = ("chgnet-0.3.0", "model-b", "model-c")
MODES = ("single_point", "relaxed")
CHUNK = 128  # structures per EvaluationDoc, as `surfflows evaluate` makes them
BACKENDS = ("sqlite", "lightning", "flatfile", "memory")
#: Wall seconds after which a step is stopped (and recorded as stopped).
STEP_TIMEOUT_S = 1200


def now() -> str:
    return datetime.now(UTC).isoformat()


# -- the seed: a real tiny evaluation ---------------------------------------------------------


def make_seed(work: Path) -> dict:
    """Ingest the 4-atom Ni, Pt, Rh slabs of pbe_metal_surfaces and evaluate them with CHGNet
    (single points) in ``work``; return the stored reference docs and one EvaluationDoc."""
    cached = work / "seed.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    from ase.io import read, write

    folder = work / "seed_set" / "tiny_metals"
    folder.mkdir(parents=True, exist_ok=True)
    slabs = [
        a for a in read(PBE / "slabs.extxyz", ":") if len(a) == 4 and a.info["formula"] != "La"
    ]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    write(folder / "slabs.extxyz", slabs)
    write(
        folder / "bulks.extxyz",
        [a for a in read(PBE / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids],
    )
    (folder / "README.md").write_text("# tiny metals\nlevel_of_theory: VASP PBE\n")
    os.environ["SURFFLOWS_DB_DIR"] = str(work / "seed_db")
    from jobflow import run_locally

    from surfflows.flows.evaluate import EvaluateMaker
    from surfflows.io.ingest import ingest_path
    from surfflows.io.inputs import reference_inputs, reference_items
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_job_store, get_store

    ingest_path(folder)
    with get_store("references") as references, get_store("splits") as splits:
        items = reference_items(reference_inputs("tiny_metals", references, splits))
        refs = [
            {k: v for k, v in d.items() if k != "_id"}
            for d in references.query({"set_name": "tiny_metals"})
        ]
    flow = EvaluateMaker(model=ModelSpec(), modes=("single_point",)).make("tiny_metals", items)
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    with get_store("outputs") as outputs:
        evaluation = outputs.query_one({"output.@class": "EvaluationDoc"})
    evaluation = json.loads(
        json.dumps({k: v for k, v in evaluation.items() if k != "_id"}, default=str)
    )
    seed = {"references": refs, "evaluation": evaluation}
    cached.write_text(json.dumps(seed))
    return seed


# -- synthetic documents ------------------------------------------------------------------------


def materials_per_set(n_slab_results: int, slabs_per_material: float) -> int:
    per_set = n_slab_results / (len(SETS) * len(MODELS) * len(MODES))
    return max(1, round(per_set / slabs_per_material))


def synthetic(seed: dict, set_name: str, first: int, count: int) -> tuple[list, list]:
    """Reference docs of materials ``first .. first+count-1`` of ``set_name`` and the
    EvaluationDoc job documents of every model and mode for them."""
    refs = seed["references"]
    bulks = [r for r in refs if r["doc_type"] == "bulk"]
    slabs_of = {b["key"]: [r for r in refs if r.get("bulk_key") == b["key"]] for b in bulks}
    seed_results = {r["reference_key"]: r for r in seed["evaluation"]["output"]["results"]}
    stamp = now()
    docs, pairs = [], []
    for j in range(first, first + count):
        bulk = bulks[j % len(bulks)]
        material = f"{set_name}-mat{j}"
        bulk_key = f"{set_name}:bulk{j}"
        clone = copy.deepcopy(bulk) | {
            "key": bulk_key,
            "set_name": set_name,
            "material_id": material,
            "ingested_at": stamp,
        }
        docs.append(clone)
        pairs.append((clone, bulk["key"]))
        for i, slab in enumerate(slabs_of[bulk["key"]]):
            clone = copy.deepcopy(slab) | {
                "key": f"{set_name}:slab{j}_{i}",
                "set_name": set_name,
                "material_id": material,
                "bulk_key": bulk_key,
                "ingested_at": stamp,
            }
            docs.append(clone)
            pairs.append((clone, slab["key"]))
    outputs = []
    for m, model_id in enumerate(MODELS):
        for mode in MODES:
            rng = random.Random(f"{model_id}{mode}{set_name}{first}")
            shift = 0.01 * (m + 1) * (2 if mode == "relaxed" else 1)
            results = []
            for ref, seed_key in pairs:
                result = dict(seed_results[seed_key])
                result["reference_key"] = ref["key"]
                if result["energy"] is not None:
                    per_atom = result["energy_per_atom"] - shift + rng.gauss(0, 0.005)
                    result["energy_per_atom"] = per_atom
                    result["energy"] = per_atom * result["n_atoms"]
                if mode == "relaxed":
                    result["n_steps"] = 20
                results.append(result)
            for start in range(0, len(results), CHUNK):
                job = copy.deepcopy(seed["evaluation"])
                job["uuid"] = str(uuid.uuid4())
                job["completed_at"] = now()
                job["output"].update(
                    model_id=model_id,
                    mode=mode,
                    set_name=set_name,
                    results=results[start : start + CHUNK],
                )
                job["output"]["model"] = job["output"]["model"] | {"name": model_id}
                outputs.append(job)
    return docs, outputs


def slabs_per_material(seed: dict) -> float:
    refs = seed["references"]
    return sum(r["doc_type"] == "slab" for r in refs) / sum(r["doc_type"] == "bulk" for r in refs)


def insert(seed: dict, stores: dict, n: int, plus: bool) -> float:
    """Write the synthetic data of size ``n`` (``plus``: the extra 1 %); seconds of the writes."""
    from surfflows.stores import insert_new_documents

    n_mat = materials_per_set(n, slabs_per_material(seed))
    first, count = (n_mat, max(1, math.ceil(n_mat / 100))) if plus else (0, n_mat)
    seconds = 0.0
    for set_name in SETS:
        refs, outputs = synthetic(seed, set_name, first, count)
        start = time.perf_counter()
        insert_new_documents(stores["references"], refs, key="key")
        insert_new_documents(stores["outputs"], outputs, key="uuid")
        seconds += time.perf_counter() - start
    return seconds


# -- the runs -----------------------------------------------------------------------------


def measured(argv: list[str], env: dict) -> dict:
    """Run a command; its wall and CPU seconds, peak RSS (MB), exit status and last line."""
    start = time.perf_counter()
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT
    )
    timer = threading.Timer(STEP_TIMEOUT_S, process.terminate)  # SIGTERM: the CLI stops cleanly
    timer.start()
    out = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in out.splitlines() if line.strip()]
    # `surfflows build` prints each builder's own seconds ("... processed in 0.42 s")
    builder_s = [float(m) for m in re.findall(r"processed in ([0-9.]+) s", out)]
    return {
        "builders_s": round(sum(builder_s), 3) if builder_s else None,
        "wall_s": round(time.perf_counter() - start, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "rc": process.returncode,
        "last_line": lines[-1][:200] if lines else "",
    }


def disk_mb(path: Path) -> float:
    return round(sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20, 2)


def run_embedded(backend: str, n: int, work: Path) -> dict:
    db = work / f"db_{backend}_{n}"
    shutil.rmtree(db, ignore_errors=True)
    env = os.environ | {
        "SURFFLOWS_DB_DIR": str(db),
        "SURFFLOWS_DB_STORAGE": backend,
        "SURFFLOWS_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
        "SURFFLOWS_SETTINGS_FILE": str(work / "no_settings.yaml"),
    }
    me = [sys.executable, __file__, "--work", str(work)]
    cli = [sys.executable, "-m", "surfflows.cli"]
    steps = {"insert": measured([*me, "--insert", str(n)], env)}
    steps["full"] = measured([*cli, "build"], env)
    steps["noop"] = measured([*cli, "build"], env)
    steps["insert_plus1"] = measured([*me, "--insert", str(n), "--plus"], env)
    steps["plus1"] = measured([*cli, "build"], env)
    out = work / f"reports_{backend}_{n}"
    steps["report_one"] = measured(
        [*cli, "report", "--out", str(out), "--model", MODELS[0], "--reference", SETS[0]], env
    )
    steps["report"] = measured([*cli, "report", "--out", str(out)], env)
    steps["results"] = measured([*cli, "results", "--model", MODELS[0], "--format", "json"], env)
    return {"steps": steps, "disk_mb": disk_mb(db)}


def run_memory(n: int, work: Path) -> dict:
    """The build steps in one process on maggma MemoryStores (mongomock)."""
    import resource

    from maggma.stores import MemoryStore

    from surfflows.builders import campaign_builders, run_builders
    from surfflows.builders.run import BUILDER_STORES

    class KeptMemoryStore(MemoryStore):
        """A MemoryStore that outlives a build (maggma's runner closes stores at the end)."""

        def close(self) -> None:
            pass

    def stop(signum, frame):
        raise TimeoutError

    signal.signal(signal.SIGALRM, stop)
    seed = make_seed(work)
    stores = {name: KeptMemoryStore(name) for name in BUILDER_STORES}
    for store in stores.values():
        store.connect()
    steps = {}

    def timed(name, fn):
        wall, cpu = time.perf_counter(), time.process_time()
        signal.alarm(STEP_TIMEOUT_S)  # mongomock matches $in by comparing every pair
        try:
            value = fn()
        except TimeoutError:
            value = f"stopped after {STEP_TIMEOUT_S} s"
        finally:
            signal.alarm(0)
        steps[name] = {
            "wall_s": round(time.perf_counter() - wall, 3),
            "cpu_s": round(time.process_time() - cpu, 3),
            "value": value,
        }

    timed("insert", lambda: insert(seed, stores, n, plus=False))
    timed("full", lambda: run_builders(campaign_builders(stores)))
    timed("noop", lambda: run_builders(campaign_builders(stores)))
    timed("insert_plus1", lambda: insert(seed, stores, n, plus=True))
    timed("plus1", lambda: run_builders(campaign_builders(stores)))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"steps": steps, "peak_rss_mb_process": round(peak, 1)}


def exponents(results: dict) -> dict:
    """Growth exponent of each step's CPU time per backend: slope of log t on log N."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for backend in BACKENDS:
        runs = {
            int(n): r
            for key, r in results["runs"].items()
            for b, n in [key.split("|")]
            if b == backend
        }
        if len(runs) < 2:
            continue
        sizes = sorted(runs)
        for step in runs[sizes[0]]["steps"]:
            points = [
                (n, runs[n]["steps"][step]["cpu_s"]) for n in sizes if step in runs[n]["steps"]
            ]
            # the builders' own seconds too: the CPU seconds hold the fixed start of a process
            own = [
                (n, runs[n]["steps"][step].get("builders_s"))
                for n in sizes
                if step in runs[n]["steps"]
            ]
            for name, series in ((step, points), (f"{step} (builders)", own)):
                series = [(n, t) for n, t in series if t and t > 0]
                if len(series) >= 2:
                    slope = np.polyfit(
                        np.log([p[0] for p in series]), np.log([p[1] for p in series]), 1
                    )[0]
                    out.setdefault(backend, {})[name] = round(float(slope), 2)
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = ("insert", "full", "noop", "plus1", "report_one", "report")
    fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 4), sharey=True)
    for ax, step in zip(axes, steps, strict=True):
        for backend in BACKENDS:
            runs = sorted(
                (int(key.split("|")[1]), r["steps"][step]["cpu_s"])
                for key, r in results["runs"].items()
                if key.split("|")[0] == backend and step in r["steps"]
            )
            if runs:
                ax.loglog(*zip(*runs, strict=True), "o-", label=backend)
        ax.set_title(step)
        ax.set_xlabel("slab results N")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("CPU seconds (2 shared CPU cores, 1 torch thread)")
    axes[0].legend()
    fig.suptitle("surfflows data layer: time per step vs slab results (log-log)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


TABLE_STEPS = ("insert", "full", "noop", "plus1", "report_one", "report", "results")


def markdown_table(results: dict) -> str:
    """CPU seconds (wall) per step, builders' own seconds, peak RSS and disk, per run."""
    head = "| backend | N | " + " | ".join(TABLE_STEPS) + " | build RSS MB | disk MB |"
    lines = [head, "|" + "---|" * (len(TABLE_STEPS) + 4)]
    order = {b: i for i, b in enumerate(BACKENDS)}
    for key in sorted(
        results["runs"], key=lambda k: (int(k.split("|")[1]), order[k.split("|")[0]])
    ):
        backend, n = key.split("|")
        run = results["runs"][key]
        cells = []
        for step in TABLE_STEPS:
            m = run["steps"].get(step)
            if m is None:
                cells.append("-")
                continue
            text = f"{m['cpu_s']:.1f} ({m['wall_s']:.0f})"
            if m.get("builders_s") is not None:
                text += f" [{m['builders_s']:.1f}]"
            if m.get("rc") == 143 or str(m.get("value", "")).startswith("stopped"):
                text = f"stopped after {m['wall_s']:.0f} s wall"
            if m.get("unfinished"):  # sampled from /proc while it ran
                text = f"> {m['cpu_s']:.0f} ({m['wall_s']:.0f}), unfinished"
            cells.append(text)
        rss = max(
            (
                run["steps"][s].get("peak_rss_mb") or 0
                for s in ("full", "plus1")
                if s in run["steps"]
            ),
            default=0,
        ) or run.get("peak_rss_mb_process")
        lines.append(
            f"| {backend} | {int(n):,} | "
            + " | ".join(cells)
            + f" | {rss or '-'} | {run.get('disk_mb', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--work", type=Path, default=Path("/tmp/surfflows_data_layer"))
    parser.add_argument("--out", type=Path, default=RESULTS / "data_layer_scaling.json")
    parser.add_argument("--force", action="store_true", help="Rerun finished runs.")
    parser.add_argument("--insert", type=int, help=argparse.SUPPRESS)  # worker: insert N
    parser.add_argument("--plus", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--memory-run", type=int, help=argparse.SUPPRESS)  # worker
    parser.add_argument("--make-seed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--table", action="store_true", help="Only print the figures of --out (Markdown), replot."
    )
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.memory_run:
        print(json.dumps(run_memory(args.memory_run, args.work)))
        return
    if args.insert:
        from surfflows.stores import get_store

        seed = make_seed(args.work)
        with get_store("references") as references, get_store("outputs") as outputs:
            seconds = insert(
                seed, {"references": references, "outputs": outputs}, args.insert, args.plus
            )
        print(f"inserted in {seconds:.2f} s")
        return
    if args.make_seed:
        make_seed(args.work)
        return
    if args.table:
        results = json.loads(args.out.read_text())
        results["exponents"] = exponents(results)
        args.out.write_text(json.dumps(results, indent=1))
        plot(results, args.out.with_suffix(".png"))
        print(markdown_table(results))
        print(json.dumps(results["exponents"], indent=1))
        return
    # once, before any timing, in its own process: a child forked from a process holding
    # CHGNet would report CHGNet's memory as its own peak RSS
    env = os.environ | {"PYTHONPATH": str(ROOT), "SURFFLOWS_TORCH_THREADS": "1"}
    seed_argv = [sys.executable, __file__, "--work", str(args.work), "--make-seed"]
    subprocess.run(seed_argv, env=env, check=True)
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"runs": {}}
    results["setup"] = {
        "machine": "2 shared CPU cores (other jobs running), 1 torch thread",
        "sets": list(SETS),
        "models": list(MODELS),
        "modes": list(MODES),
        "chunk": CHUNK,
        "command": "python benchmarks/data_layer_scaling.py " + " ".join(sys.argv[1:]),
    }
    for n in args.sizes:
        for backend in args.backends:
            key = f"{backend}|{n}"
            if key in results["runs"] and not args.force:
                continue
            print(f"{backend} N={n} ...", flush=True)
            if backend == "memory":  # its own process, for its peak RSS
                env = os.environ | {"PYTHONPATH": str(ROOT), "SURFFLOWS_TORCH_THREADS": "1"}
                argv = [sys.executable, __file__, "--work", str(args.work), "--memory-run", str(n)]
                out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
                run = json.loads(out.stdout.strip().splitlines()[-1])
            else:
                run = run_embedded(backend, n, args.work)
            run["date"] = now()
            results["runs"][key] = run
            results["exponents"] = exponents(results)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
            print(
                json.dumps(
                    {
                        key: {
                            s: (v["wall_s"], v["cpu_s"], v.get("peak_rss_mb"))
                            for s, v in run["steps"].items()
                        }
                    }
                ),
                flush=True,
            )
            plot(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
