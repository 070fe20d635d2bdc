"""Leaderboard: the wheel peers (CHGNet, SevenNet) and a fine-tuned CHGNet on one test split.

For every reference set and model it runs, in one database and one after the other,

    surfflows evaluate --reference <set> --split test --model <model> --mode both

(skipping a model, set and mode already evaluated there), then ``surfflows build``, and
saves the leaderboard of :func:`surfflows.reports.leaderboard.leaderboard`: per set and
mode, N, gamma MAE, RMSE and mean signed error (J/m²) and seconds per structure (the
evaluation jobs' own wall time, model loading excluded), with each command's wall time:

* ``results/peer_leaderboard.json``
* ``results/peer_leaderboard.png``: MAE and mean signed error, seconds per structure.

The fine-tuned CHGNet is ``--finetuned`` (a model name such as ``chgnet-ft-<sha>`` or a
checkpoint file); without it the script first runs the default fine-tune,
``surfflows finetune --reference jarvis_surfaces --layers 4 --no-evaluate``.

Examples
--------
::

    python benchmarks/peer_leaderboard.py --db-dir /tmp/leaderboard/db
    python benchmarks/peer_leaderboard.py --db-dir /tmp/leaderboard/db --finetuned chgnet-ft-1a2b3c
    python benchmarks/peer_leaderboard.py --db-dir /tmp/leaderboard/db --collect-only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's surfflows, as for the CLI runs below
SETS = ("jarvis_surfaces", "pbe_metal_surfaces")
#: Every model whose weights ship in a wheel (chgnet, sevenn): nothing is downloaded.
MODELS = ("chgnet-0.3.0", "chgnet-r2scan", "sevennet-0", "sevennet-l3i5", "sevennet-mf-0")
ATTRIBUTION = (
    "Reference data: JARVIS-DFT surfaces (K. Choudhary et al., CC BY 4.0); PBE metal surfaces "
    "(pymatgen test files, R. Tran et al., MIT)"
)


def cli(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[str, float, int]:
    """Run ``python -m surfflows.cli ARGS`` from the repository; (stdout, wall s, exit code).

    ``evaluate`` exits 1 when some structures failed or did not converge (they are stored
    and counted as excluded by the builders), so it is run with ``ok=(0, 1)``.
    """
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "surfflows.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if done.returncode not in ok:
        raise RuntimeError(f"surfflows {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout, wall, done.returncode


def evaluated_modes(model_id: str, set_name: str) -> set[str]:
    """Modes in which ``model_id`` already has test-split benchmark rows for ``set_name``."""
    from surfflows.stores import get_store

    benchmarks = get_store("benchmarks")
    with benchmarks:
        return {
            d["mode"]
            for d in benchmarks.query(
                {"model_id": model_id, "set_name": set_name, "split": "test", "n": {"$gt": 0}}
            )
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db-dir", type=Path, required=True, help="Database folder to use.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument("--finetuned", default=None, help="Fine-tuned CHGNet (name or file).")
    parser.add_argument("--sets", nargs="+", default=list(SETS))
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="Besides --finetuned.")
    parser.add_argument(
        "--single-point-sets",
        nargs="*",
        default=[],
        help="Sets evaluated at single points only (relaxing every peer on them costs too much).",
    )
    parser.add_argument("--collect-only", action="store_true", help="Only build and tabulate.")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "peer_leaderboard.json")
    args = parser.parse_args()

    args.db_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SURFFLOWS_DB_DIR"] = str(args.db_dir)
    os.environ["SURFFLOWS_TORCH_THREADS"] = str(args.threads)

    from surfflows.io.registry import resolve_model
    from surfflows.reports.leaderboard import leaderboard
    from surfflows.reports.plots import leaderboard_plot
    from surfflows.stores import get_job_store, get_store

    commands: list[dict] = []
    cli("ingest", *args.sets)
    finetuned = args.finetuned
    if finetuned is None and not args.collect_only:
        command = ("finetune", "--reference", "jarvis_surfaces", "--layers", "4", "--no-evaluate")
        stdout, wall, _ = cli(*command)
        finetuned = re.search(r"(chgnet-ft-[0-9a-f]{12})", stdout).group(1)
        commands.append({"command": "surfflows " + " ".join(command), "wall_s": wall})
    # (what to pass as --model, model id): a checkpoint file is evaluated by its path.
    names = (*args.models, *([finetuned] if finetuned else []))
    with get_job_store() as store:  # packaged and registered names resolve in the database
        models = [(name, resolve_model(name, store).model_id) for name in names]
    if not args.collect_only:
        cli("build")  # benchmark rows of evaluations already in the database
        for set_name in args.sets:
            for model, model_id in models:
                wanted = {"single_point"} | (
                    set() if set_name in args.single_point_sets else {"relaxed"}
                )
                missing = wanted - evaluated_modes(model_id, set_name)
                if not missing:
                    continue
                mode = "both" if len(missing) == 2 else missing.pop()
                command = (
                    "evaluate", "--reference", set_name, "--split", "test",
                    "--model", model, "--mode", mode,
                )  # fmt: skip
                print("surfflows", *command, flush=True)
                _, wall, code = cli(*command, ok=(0, 1))
                commands.append(
                    {"command": "surfflows " + " ".join(command), "wall_s": wall, "exit_code": code}
                )
                cli("build")
    cli("build")

    benchmarks, store = get_store("benchmarks"), get_job_store()
    with benchmarks, store:
        rows = leaderboard(benchmarks, store, "test", [i for _, i in models], args.sets)
    for r in rows:
        figures = " ".join(
            f"{label}={'-' if r[key] is None else f'{r[key]:.3f}'}"
            for label, key in (("MAE", "mae"), ("MSE", "mean_signed_error"),
                               ("s/structure", "seconds_per_structure"))
        )  # fmt: skip
        print(f"{r['set_name']:20s} {r['mode']:12s} {r['model']:24s} N={r['n']:3d} {figures}")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {args.threads} torch thread(s)"
    result = {
        "split": "test",
        "models": [i for _, i in models],
        "sets": args.sets,
        "single_point_sets": args.single_point_sets,
        "rows": rows,
        "commands": commands,
        "machine": machine,
        "note": "CPU shared with other jobs; seconds per structure exclude model loading",
        "attribution": ATTRIBUTION,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    png = leaderboard_plot(
        rows, args.output.with_suffix(".png"), f"test split ({machine})", ATTRIBUTION
    )
    print(f"wrote {args.output} and {png}")


if __name__ == "__main__":
    main()
