"""Zero-shot CHGNet on the PBE sets: mp_elemental_surfaces, wbm_bulks, mp_elemental_refs.

Runs the command-line pipeline on the configured database (``SURFFLOWS_DB_DIR``), timing each
step, then saves the benchmark rows of these sets and the parity plots:

    python benchmarks/zero_shot_pbe.py                 # every step
    python benchmarks/zero_shot_pbe.py --start 4       # resume at step 4 (evaluations done)

Writes ``benchmarks/results/zero_shot_pbe.json`` (steps with wall times, benchmark rows) and
``benchmarks/results/zero_shot_pbe_parity_<mode>.png``. The second ``ingest`` and ``build``
must change nothing (their output is kept in the JSON). Set SURFFLOWS_TORCH_THREADS on a
shared machine. Reference data: Tran et al., Sci. Data 3, 160080 (2016); Wang et al., npj
Comput. Mater. 7, 12 (2021); Materials Project (Jain et al. 2013) via matcalc.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SETS = ("mp_elemental_surfaces", "wbm_bulks", "mp_elemental_refs")
CLI = [sys.executable, "-m", "surfflows.cli"]
STEPS = [
    ["ingest", *SETS],
    ["ingest", *SETS],
    ["evaluate", "--reference", "wbm_bulks", "--mode", "both"],
    ["evaluate", "--reference", "mp_elemental_refs", "--mode", "both"],
    ["evaluate", "--reference", "mp_elemental_surfaces", "--mode", "both"],
    ["build"],
    ["build"],
    ["report", "--out", "{out}"],
]
RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0, help="First step to run (0-based).")
    parser.add_argument("--model", default="chgnet-0.3.0")
    args = parser.parse_args()
    out = RESULTS / "zero_shot_pbe_report"
    steps = []
    for index, step in enumerate(STEPS):
        if index < args.start:
            continue
        command = [part.format(out=out) for part in step]
        if command[0] == "evaluate":
            command += ["--model", args.model]
        start = time.perf_counter()
        done = subprocess.run([*CLI, *command], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        tail = [line for line in done.stdout.splitlines() if line.strip()][-8:]
        print(f"[{index}] {' '.join(command)}: rc {done.returncode}, {seconds:.0f} s")
        print("\n".join(tail))
        steps.append(
            {"step": index, "command": ["surfflows", *command], "rc": done.returncode,
             "wall_s": round(seconds, 1), "output_tail": tail}
        )  # fmt: skip
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            sys.exit(done.returncode)

    from surfflows.stores import get_store

    benchmarks = get_store("benchmarks")
    with benchmarks:
        rows = [
            {k: v for k, v in row.items() if k != "_id"}
            for row in benchmarks.query({"set_name": {"$in": list(SETS)}})
        ]
    rows.sort(key=lambda r: (r["set_name"], r["quantity"], r["mode"], r["split"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "zero_shot_pbe.json").write_text(
        json.dumps({"model": args.model, "steps": steps, "rows": rows}, indent=1, default=str)
    )
    for mode in ("single_point", "relaxed"):
        png = out / f"parity_mp_elemental_surfaces_{args.model}_{mode}.png"
        if png.is_file():
            shutil.copy(png, RESULTS / f"zero_shot_pbe_parity_{mode}.png")
    shutil.rmtree(out, ignore_errors=True)
    for r in rows:
        if r["split"] in ("all", "test"):
            print(r["set_name"], r["quantity"], r["mode"], r["split"], r["n"], r["mae"],
                  r["mean_signed_error"], r.get("formation_energy_mae"))  # fmt: skip


if __name__ == "__main__":
    main()
