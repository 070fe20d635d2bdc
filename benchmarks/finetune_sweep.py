"""Fine-tuning depth sweep on jarvis_surfaces: validation and test gamma errors per X.

Runs the sweep of ``configs/finetune_sweep.yaml`` (``FineTuneSweepMaker``: one fine-tune
per X and seed, each checkpoint and the zero-shot parent evaluated in single-point mode on
the val and test parts, bulk forgetting on bo2_bulk_eos and the test materials' bulk
cells) in a scratch database, runs the builders and saves

* ``results/finetune_sweep.json``: per model the val and test gamma MAE and mean signed
  error (J/m²), bulk forgetting (relative change of the aligned bulk MAE), best epoch,
  mean epoch time, set-up and wall time of the fine-tune; per X the means over seeds; the
  total wall time and the machine;
* ``results/finetune_sweep.png``: test and val MAE versus X next to zero-shot;
* ``results/finetune_sweep_curves.png``: loss curves.

Examples
--------
::

    python benchmarks/finetune_sweep.py                     # the configured sweep, 2 threads
    python benchmarks/finetune_sweep.py --config my.yaml --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "finetune_sweep.yaml"
ATTRIBUTION = (
    "Reference data: JARVIS-DFT surfaces, K. Choudhary et al., Digital Discovery (2024), CC BY 4.0"
)


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def per_depth(rows: list[dict]) -> dict[str, dict]:
    """Means over seeds per X (the parent as ``zero-shot``); ``test_mae_std`` over seeds."""
    out = {}
    for depth in sorted({r["depth"] for r in rows}, key=lambda d: -1 if d is None else d):
        group = [r for r in rows if r["depth"] == depth]
        sets = sorted({name for r in group for name in r["forgetting"]})
        tests = [r["test_mae"] for r in group if r["test_mae"] is not None]
        out["zero-shot" if depth is None else f"X={depth}"] = {
            "n_seeds": len(group),
            **{
                k: _mean([r[k] for r in group])
                for k in ("val_mae", "val_signed", "test_mae", "test_signed")
            },
            "test_mae_std": float(np.std(tests)) if len(tests) > 1 else None,
            "bulk_forgetting": {n: _mean([r["forgetting"].get(n) for r in group]) for n in sets},
            "bulk_mae": {n: _mean([r["bulk_mae"].get(n) for r in group]) for n in sets},
            **{k: _mean([r.get(k) for r in group]) for k in ("epoch_s", "wall_s", "best_epoch")},
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="Sweep YAML.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--db-dir", type=Path, default=None, help="Scratch database folder.")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "finetune_sweep.json")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="finetune_sweep_"))
    os.environ["SURFFLOWS_DB_DIR"] = str(args.db_dir or scratch / "db")
    os.environ["SURFFLOWS_TORCH_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(message)s")
    logging.getLogger("surfflows.jobs.finetune").setLevel(logging.INFO)

    from jobflow import run_locally

    from surfflows.cli.benchmark import build
    from surfflows.flows.finetune import SweepConfig
    from surfflows.io.ingest import ingest_path
    from surfflows.io.inputs import training_inputs
    from surfflows.reports.finetune import sweep_summary
    from surfflows.reports.plots import finetune_curves_plot, finetune_depth_plot
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_job_store, get_store

    config = SweepConfig.from_yaml(args.config)
    if config.work_dir is None:
        config.work_dir = str(scratch / "runs")
    start = time.perf_counter()
    for name in (config.reference, *config.bulk_sets):
        print(ingest_path(name).summary())
    with get_store("references") as references, get_store("splits") as splits:
        inputs, bulk_sets = training_inputs(
            config.reference, tuple(config.bulk_sets), references, splits
        )
    flow = config.maker(ModelSpec.parse(config.parent)).make(inputs, bulk_sets)
    store = get_job_store()
    run_locally(flow, store=store, log=False, ensure_success=True)
    build()
    wall = time.perf_counter() - start

    with store, get_store("benchmarks") as benchmarks:
        summary = {
            mode: sweep_summary(store.docs_store, benchmarks, config.reference, config.name, mode)
            for mode in config.modes
        }
        criteria = {"output.@class": "FineTuneDoc", "output.sweep": config.name}
        docs = [d["output"] for d in store.docs_store.query(criteria)]
    mode = config.modes[0]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    stem = args.output.with_suffix("")
    png = finetune_depth_plot(
        summary[mode],
        stem.with_suffix(".png"),
        f"{config.name}: {ModelSpec.parse(config.parent).model_id} fine-tuned on "
        f"{config.reference} ({mode})",
        attribution=ATTRIBUTION,
    )
    curves = finetune_curves_plot(docs, f"{stem}_curves.png", f"{config.name} loss curves")
    result = {
        "config": config.model_dump(exclude={"work_dir"}),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": args.threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "wall_seconds": wall,
        "per_depth": {m: per_depth(rows) for m, rows in summary.items()},
        "rows": summary,
        "dropped": docs[0]["dropped"] if docs else {},
        "n_train": docs[0]["n_train"] if docs else {},
        "n_val": docs[0]["n_val"] if docs else {},
    }
    args.output.write_text(json.dumps(result, indent=2))
    for label, row in result["per_depth"][mode].items():
        print(
            f"{label:10s} val {row['val_mae']:.3f} ({row['val_signed']:+.3f})  test "
            f"{row['test_mae']:.3f} ({row['test_signed']:+.3f})  forgetting "
            + ", ".join(f"{k} {v:+.1%}" for k, v in row["bulk_forgetting"].items())
            + f"  epoch {row['epoch_s'] or 0:.1f} s  wall {row['wall_s'] or 0:.0f} s"
        )
    print(f"total {wall:.0f} s; wrote {args.output}, {png}, {curves}")


if __name__ == "__main__":
    main()
