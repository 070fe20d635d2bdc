"""A large chemical-system campaign through ``surfflows run``'s code, measured.

``run`` runs the campaign files in turn (default: ``configs/large/*.yaml``, five ternary
oxide systems, every facet up to index 2 and every symmetric termination of each target,
``chgnet-surf``) with :func:`surfflows.flows.chemsys.run_chemical_system`, the function
``surfflows run`` calls, holding the embedded database's writer lock as the CLI does; then
runs the campaign builders (``surfflows build``). It records the wall time per stage (bulks
and elemental references, slab relaxations, builders, thermodynamics), slabs relaxed and
slabs per hour, the database size, the peak memory (``resource.getrusage``), and the time
10,000 slabs would take at the measured rate, and writes ``benchmarks/results/
chemsys_campaign.json`` and ``.png``. The campaign is resumable: rerun the same command
and what is stored is reused (its timings then cover only the new work; the JSON keeps
every run's figures under ``runs``).

``report`` reads the database of a run that is still going (no lock: read only) and the
running process (``--pid``: its peak memory from ``/proc``), and writes the figures so far
to ``chemsys_campaign_progress.json`` and ``.png``: slabs stored, slabs per hour over the
slab stage (from the documents' completion times), database size.

Examples
--------
The measured campaign (1 torch thread, its own database, in the background)::

    export SURFFLOWS_TORCH_THREADS=1 SURFFLOWS_DB_DIR=/tmp/bigdb
    nohup python benchmarks/chemsys_campaign.py run > big.log 2>&1 &
    python benchmarks/chemsys_campaign.py report --pid $!
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
DEFAULT_CONFIGS = [
    ROOT / "configs" / "large" / f"{name}.yaml"
    for name in ("sr-ti-o", "ca-ti-o", "ba-ti-o", "mg-ti-o", "mg-al-o")
]
#: The projection's campaign size.
PROJECTED_SLABS = 10_000


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(),
        "note": "CPU shared with other processes (load average above); figures are a lower "
        "bound of what the machine does alone",
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def database_bytes(folder: Path) -> int:
    """Bytes under the embedded database's folder."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def stored_slabs(store) -> list[dict]:
    """Every surface-energy document of the database: material, status, completion time."""
    with store:
        docs = store.query(
            {"output.@class": "SurfaceEnergyDoc"},
            properties=["completed_at", "output.material_id", "output.status", "output.model_id"],
        )
        return [
            {
                "completed_at": d["completed_at"],
                "material_id": d["output"]["material_id"],
                "status": d["output"]["status"],
                "model_id": d["output"]["model_id"],
            }
            for d in docs
        ]


def relaxed_chunks(store) -> list[tuple[float, int]]:
    """(completion time stamp, slabs) of every slab-relaxation chunk job, in time order."""
    with store:
        docs = store.query(
            {"name": {"$regex": "^slab relax "}}, properties=["completed_at", "output"]
        )
        chunks = [
            (datetime.fromisoformat(d["completed_at"]).timestamp(), len(d["output"]))
            for d in docs
            if isinstance(d.get("output"), list)
        ]
    return sorted(chunks)


def slab_rate(chunks: list[tuple[float, int]]) -> tuple[float | None, float]:
    """Slabs relaxed per hour between the first and the last chunk (the first chunk's slabs
    left out: its start is not recorded), and the hours spanned."""
    if len(chunks) < 2 or chunks[-1][0] <= chunks[0][0]:
        return None, 0.0
    hours = (chunks[-1][0] - chunks[0][0]) / 3600
    return sum(n for _, n in chunks[1:]) / hours, hours


def plot(
    chunks: list[tuple[float, int]],
    split: dict[str, float] | None,
    title: str,
    path: Path,
    split_title: str = "wall time per stage",
) -> None:
    """Slabs relaxed over time (and the wall-time split of a finished run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if split else 1, figsize=(11 if split else 6, 4), squeeze=False)
    ax = axes[0][0]
    if chunks:
        start, total = chunks[0][0], 0
        hours, relaxed = [], []
        for stamp, n in chunks:
            total += n
            hours.append((stamp - start) / 3600)
            relaxed.append(total)
        ax.step(hours, relaxed, where="post")
    ax.set_xlabel("hours since the first slab chunk ended")
    ax.set_ylabel("slabs relaxed")
    ax.set_title(title, fontsize=9)
    if split:
        ax = axes[0][1]
        ax.barh(list(split), [v / 3600 for v in split.values()])
        ax.set_xlabel("wall time, h")
        ax.set_title(split_title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(configs: list[Path]) -> dict:
    """Run every campaign file in turn, then the builders; the figures as a dict."""
    from surfflows.builders import configured_builders, run_builders
    from surfflows.cli.common import quiet_library_warnings
    from surfflows.flows.campaign import CampaignConfig
    from surfflows.flows.chemsys import run_chemical_system
    from surfflows.settings import get_settings
    from surfflows.stores import get_job_store, writer_lock

    quiet_library_warnings()
    settings = get_settings()
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    started = time.perf_counter()
    split = {"bulks": 0.0, "slab relaxations": 0.0, "thermo": 0.0, "builders": 0.0}
    parts, computed_slabs, errors = [], 0, {}
    with writer_lock():
        store = get_job_store()
        for path in configs:
            config = CampaignConfig.from_yaml(path)
            before = len(stored_slabs(store))
            result = run_chemical_system(config, store)
            after = len(stored_slabs(store))
            computed_slabs += after - before
            for model_run in result.runs:
                split["bulks"] += model_run.seconds.get("bulks", 0.0)
                split["slab relaxations"] += model_run.seconds.get("slabs", 0.0)
                split["thermo"] += model_run.seconds.get("thermo", 0.0)
                split["bulks"] += model_run.seconds.get("hull", 0.0)
                errors |= {f"{config.name} {k}": v for k, v in model_run.errors.items()}
            parts.append(
                {
                    "config": str(path.relative_to(ROOT)),
                    "slabs_computed": after - before,
                    "targets": [r.targets for r in result.runs],
                    "seconds": [r.seconds for r in result.runs],
                    "errors": result.errors,
                }
            )
            print(f"{path.name}: {after - before} slabs computed, {after} stored", flush=True)
        start = time.perf_counter()
        builder_counts = run_builders(configured_builders())
        split["builders"] = time.perf_counter() - start
        slabs = stored_slabs(store)
    wall = time.perf_counter() - started
    rate = computed_slabs / split["slab relaxations"] * 3600 if split["slab relaxations"] else None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "SURFFLOWS_TORCH_THREADS=1 python benchmarks/chemsys_campaign.py run "
        + " ".join(str(p.relative_to(ROOT)) for p in configs),
        "machine": machine(),
        "parts": parts,
        "slabs_stored": len(slabs),
        "slabs_ok": sum(s["status"] != "failed" for s in slabs),
        "slabs_failed": sum(s["status"] == "failed" for s in slabs),
        "slabs_computed_this_run": computed_slabs,
        "wall_s": wall,
        "wall_split_s": split,
        "slabs_per_hour": rate,
        "projected_hours_10000_slabs": PROJECTED_SLABS / rate if rate else None,
        "builder_groups": builder_counts,
        "database_bytes": database_bytes(settings.db_dir),
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "errors": errors,
    }


def report(pid: int | None) -> dict:
    """Figures of a campaign still running, read from its database (and process)."""
    from surfflows.settings import get_settings
    from surfflows.stores import get_job_store

    settings = get_settings()
    store = get_job_store()
    slabs = stored_slabs(store)
    chunks = relaxed_chunks(store)
    rate, hours = slab_rate(chunks)
    figures = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "database": str(settings.db_dir),
        "slabs_stored": len(slabs),
        "slabs_relaxed": sum(n for _, n in chunks),
        "slabs_failed": sum(s["status"] == "failed" for s in slabs),
        "by_material": {
            m: sum(s["material_id"] == m for s in slabs)
            for m in sorted({s["material_id"] for s in slabs})
        },
        "slab_stage_hours_so_far": hours,
        "slabs_per_hour": rate,
        "projected_hours_10000_slabs": PROJECTED_SLABS / rate if rate else None,
        "database_bytes": database_bytes(settings.db_dir),
        "load_average": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "note": "CPU shared with other processes; 1 torch thread",
    }
    if pid is not None and Path(f"/proc/{pid}/status").exists():
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        memory = {k: v for k, _, v in (line.partition(":") for line in status)}
        figures["peak_memory_mb"] = int(memory["VmHWM"].split()[0]) / 1024
        figures["running"] = True
        elapsed = subprocess.run(
            ["ps", "-o", "etimes=", "-p", str(pid)], capture_output=True, text=True
        ).stdout.strip()
        figures["process_wall_s"] = int(elapsed) if elapsed else None
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run (or resume) the campaign and measure it")
    run_parser.add_argument("configs", nargs="*", type=Path, default=DEFAULT_CONFIGS)
    report_parser = sub.add_parser("report", help="figures of a run still going")
    report_parser.add_argument("--pid", type=int, default=None, help="the running process")
    args = parser.parse_args()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.command == "run":
        configs = [p.resolve() for p in args.configs]
        figures = run(configs)
        path = RESULTS_DIR / "chemsys_campaign.json"
        previous = json.loads(path.read_text()).get("runs", []) if path.exists() else []
        figures["runs"] = [*previous, {k: v for k, v in figures.items() if k != "runs"}]
        path.write_text(json.dumps(figures, indent=1))
        from surfflows.stores import get_job_store

        plot(
            relaxed_chunks(get_job_store()),
            figures["wall_split_s"],
            f"{figures['slabs_stored']} slabs, {figures['slabs_per_hour'] or 0:.0f} slabs/h "
            "(shared CPU, 1 torch thread)",
            RESULTS_DIR / "chemsys_campaign.png",
            f"wall time per stage of this run ({figures['slabs_computed_this_run']} slabs "
            "computed; a resumed run times only its new work)",
        )
    else:
        figures = report(args.pid)
        (RESULTS_DIR / "chemsys_campaign_progress.json").write_text(json.dumps(figures, indent=1))
        from surfflows.stores import get_job_store

        plot(
            relaxed_chunks(get_job_store()),
            None,
            f"{figures['slabs_stored']} slabs so far, {figures['slabs_per_hour'] or 0:.0f} slabs/h "
            "(shared CPU, 1 torch thread)",
            RESULTS_DIR / "chemsys_campaign_progress.png",
        )
    print(json.dumps({k: v for k, v in figures.items() if k not in ("runs", "parts")}, indent=1))


if __name__ == "__main__":
    main()
