"""Epoch time of a jarvis_surfaces fine-tune (X=4) with and without forces and replay.

Trains one epoch per variant on the train part (validation on the val part), from the
stored seed-0 split of ``jarvis_surfaces`` in the configured database (ingest it first:
``surfflows ingest jarvis_surfaces``), and saves ``results/finetune_epoch_time.json``:
per variant the settings changed, the set-up time (graphs, frozen-feature cache, replay
labels), the epoch's wall time (training and validation, the validation force MAE
included where there are force labels) and the validation force MAE before training.

Examples
--------
::

    python benchmarks/finetune_epoch_time.py
    python benchmarks/finetune_epoch_time.py --variants default forces_0.25 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
FORCES = {"force_weight": 1.0, "zero_force_labels": True}
VARIANTS = {
    "default": {},
    "forces_1.0": {**FORCES, "force_fraction": 1.0},
    "forces_0.25": {**FORCES, "force_fraction": 0.25},
    "forces_0.1": {**FORCES, "force_fraction": 0.1},
    "replay": {"replay_weight": 1.0},
    "replay_forces_0.25": {"replay_weight": 1.0, **FORCES, "force_fraction": 0.25},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "finetune_epoch_time.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from surfflows.engine.finetune import finetune, reference_data
    from surfflows.engine.models import ModelSpec, load_model
    from surfflows.io.inputs import reference_inputs
    from surfflows.schemas.finetune import FineTuneSettings
    from surfflows.stores import get_store

    with get_store("references") as references, get_store("splits") as splits:
        inputs = reference_inputs("jarvis_surfaces", references, splits)
    parent = load_model(ModelSpec())
    rows = []
    for name in args.variants:
        settings = FineTuneSettings(depth=4, epochs=1, patience=None, **VARIANTS[name])
        data = {
            part: reference_data(
                inputs.docs,
                inputs.assignments,
                (part,),
                parent.graph_converter,
                zero_force_labels=settings.zero_force_labels,
            )
            for part in ("train", "val")
        }
        tick = time.perf_counter()
        with tempfile.TemporaryDirectory() as work:
            result = finetune(parent, data["train"], data["val"], settings, work)
        row = {
            "variant": name,
            "settings": VARIANTS[name],
            "setup_s": result.setup_seconds,
            "epoch_s": result.history[1].seconds,
            "epoch0_val_force_mae": result.history[0].val_force_mae,
            "wall_s": time.perf_counter() - tick,
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "set": "jarvis_surfaces",
                "depth": 4,
                "threads": args.threads,
                "machine": f"{platform.processor() or platform.machine()}, CPU shared",
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
