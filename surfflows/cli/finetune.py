"""Commands of fine-tuning: DIRECT / random selection, fine-tune, depth sweep, learning curve."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from surfflows.cli.benchmark import build
from surfflows.cli.common import app, console, fail, input_error, num


@app.command()
def select(
    reference: Annotated[str, typer.Option(help="Reference set in the store.")],
    budget: Annotated[int, typer.Option(help="Training slabs to select.")],
    method: Annotated[str, typer.Option(help="direct or random.")] = "direct",
    seed: Annotated[int, typer.Option(help="Seed of random picks.")] = 0,
    model: Annotated[str, typer.Option(help="Model whose features DIRECT uses.")] = (
        "chgnet-0.3.0"
    ),
) -> None:
    """Select training slabs of a set's train split by DIRECT sampling or at random."""
    from surfflows.io.selections import select as select_slabs
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_store

    stores = {n: get_store(n) for n in ("references", "splits", "features", "selections")}
    for store in stores.values():
        store.connect()
    try:
        doc = select_slabs(
            reference, method, budget, seed=seed, model=ModelSpec.parse(model), **stores
        )
    except ValueError as exc:
        fail(str(exc))
    finally:
        for store in stores.values():
            store.close()
    pcs = f", {doc.n_components} PCs ({doc.explained_variance:.0%})" if doc.n_components else ""
    console.print(
        f"{doc.selection_id}: {doc.budget} of {doc.n_pool} train slabs{pcs}\n"
        + "\n".join(f"  {key}" for key in doc.reference_keys)
    )


def _show_finetune_progress() -> None:
    """Print the fine-tune jobs' per-epoch log lines."""
    import logging

    from rich.logging import RichHandler

    logger = logging.getLogger("surfflows.jobs.finetune")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False))
    logger.setLevel(logging.INFO)


def _sweep_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    bulk_sets = sorted({name for r in rows for name in r["forgetting"]})
    columns = ["model", "X", "seed", "val MAE", "val signed", "test MAE", "test signed", "N test"]
    columns += [f"bulk {name} Δ" for name in bulk_sets]
    for column in (*columns, "best epoch", "epoch s", "wall s"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(
            r["model_id"],
            "zero-shot" if r["depth"] is None else str(r["depth"]),
            "-" if r["seed"] is None else str(r["seed"]),
            *(num(r[k]) for k in ("val_mae", "val_signed", "test_mae", "test_signed")),
            str(r["n_test"]),
            *(
                "-" if r["forgetting"].get(n) is None else f"{r['forgetting'][n]:+.1%}"
                for n in bulk_sets
            ),
            str(r.get("best_epoch", "-")),
            "-" if r.get("epoch_s") is None else f"{r['epoch_s']:.1f}",
            "-" if r.get("wall_s") is None else f"{r['wall_s']:.0f}",
        )
    return table


#: Settings fields whose ``finetune`` option has another name.
OPTION_OF_FIELD = {
    "depth": "layers",
    "learning_rate": "lr",
    "replay_sets": "replay-set",
    "selection": "select-on",
}


@app.command()
def finetune(
    reference: Annotated[
        list[str],
        typer.Option(help="Reference set in the store (ingested); repeat to train on several."),
    ],
    layers: Annotated[
        int | None, typer.Option(help="X: trainable units from the readout backwards.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of torch and batch order.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Structures per batch.")] = None,
    energy_weight: Annotated[float | None, typer.Option(help="Energy loss weight.")] = None,
    gamma_weight: Annotated[float | None, typer.Option(help="Surface-energy loss weight.")] = None,
    force_weight: Annotated[float | None, typer.Option(help="Force loss weight.")] = None,
    zero_force_labels: Annotated[
        bool | None, typer.Option(help="Zero forces as labels of relaxed frames.")
    ] = None,
    force_fraction: Annotated[
        float | None, typer.Option(help="Fraction of each batch's structures with a force term.")
    ] = None,
    replay_weight: Annotated[
        float | None, typer.Option(help="Weight of parent-labelled bulk replay (0: off).")
    ] = None,
    replay_pool_size: Annotated[
        int | None, typer.Option(help="Replay structures: training bulks and copies.")
    ] = None,
    replay_set: Annotated[
        list[str] | None,
        typer.Option(help="Bulk set whose train part joins the replay pool (repeatable)."),
    ] = None,
    heads: Annotated[
        str | None,
        typer.Option(help="per_level_of_theory (one head per level of theory) or single."),
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience.")] = None,
    anchor_weight: Annotated[
        float | None, typer.Option(help="L2-SP pull towards the parent's weights.")
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(help="surfflows (default) or chgnet-trainer: chgnet's own Trainer, the peer."),
    ] = None,
    select_on: Annotated[
        str | None,
        typer.Option(
            help="What selects the epoch: single-point (val gamma at DFT geometries, the "
            "default) or relaxed (val gamma with ions relaxed by the model)."
        ),
    ] = None,
    selection_slabs: Annotated[
        int | None,
        typer.Option(
            help="--select-on relaxed: val slabs relaxed after every epoch (default 24; "
            "more than the set has: all of them)."
        ),
    ] = None,
    parent: Annotated[str, typer.Option(help="Model to fine-tune.")] = "chgnet-0.3.0",
    work_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (a rerun there resumes).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Evaluate val/test and check bulk forgetting.")
    ] = True,
    all_materials: Annotated[
        bool,
        typer.Option(
            help="Train on every material of the set (no validation, no test part): the "
            "final model of a cross-validation, with --epochs from its folds; the last "
            "epoch is kept."
        ),
    ] = False,
    cv_folds: Annotated[
        int | None,
        typer.Option(
            help="Cross-validate the recipe instead: k folds by element (by material for "
            "compounds); each fold trains on k-2 folds, keeps the epoch on the next fold and "
            "is evaluated on its held-out fold in both modes."
        ),
    ] = None,
) -> None:
    """Fine-tune the last X units of CHGNet on a set's train split and register the checkpoint.

    The epoch with the lowest validation gamma MAE is kept (several sets: the lowest mean
    over sets of each set's; --select-on relaxed: the gamma MAE of --selection-slabs val
    slabs relaxed by the model after every epoch; --recipe chgnet-trainer: chgnet's own
    Trainer, the peer baseline, keeps its lowest validation energy MAE). Several
    --reference sets train one shared backbone with one readout head per level of theory
    (choose one with --model chgnet-ft-<sha12>@<head>). With --evaluate (default) the
    checkpoint and its parent are evaluated on the val and test parts of every set (single
    point), bulk forgetting is checked on bo2_bulk_eos and the sets' test bulks, and the
    builders run.
    """
    from jobflow import run_locally
    from pydantic import ValidationError

    from surfflows.flows.finetune import FineTuneSweepMaker
    from surfflows.io.registry import checkpoint_reference, resolve_model
    from surfflows.jobs.cross_validation import aligned_replay, every_material
    from surfflows.jobs.finetune import FineTuneMaker, default_work_dir
    from surfflows.reports.finetune import sweep_summary
    from surfflows.schemas.finetune import FineTuneSettings
    from surfflows.stores import get_job_store, get_store

    given = {
        "depth": layers, "epochs": epochs, "learning_rate": lr, "seed": seed,
        "batch_size": batch_size, "energy_weight": energy_weight, "gamma_weight": gamma_weight,
        "force_weight": force_weight, "zero_force_labels": zero_force_labels,
        "force_fraction": force_fraction, "replay_weight": replay_weight,
        "replay_pool_size": replay_pool_size, "patience": patience,
        "anchor_weight": anchor_weight, "replay_sets": replay_set or None, "heads": heads,
        "recipe": recipe and recipe.replace("-", "_"),
        "selection": select_on and select_on.replace("-", "_"),
        "selection_slabs": selection_slabs,
    }  # fmt: skip
    store = get_job_store()
    try:
        settings = FineTuneSettings(**{k: v for k, v in given.items() if v is not None})
        spec = resolve_model(parent, store)
        references, bulk_sets, replay_sets = _training_inputs(
            reference,
            ("bo2_bulk_eos",) if evaluate and cv_folds is None and not all_materials else (),
            settings.replay_sets,
        )
        finetune_maker = FineTuneMaker(
            parent=spec, settings=settings, work_dir=str(work_dir) if work_dir else None
        )
        parent_checkpoint = checkpoint_reference(spec, store)
    except (ValidationError, ValueError) as exc:
        fail(input_error(exc, {f: f"--{o} ({f})" for f, o in OPTION_OF_FIELD.items()}))
    if all_materials:
        if cv_folds is not None or len(reference) != 1:
            fail(
                "--all-materials trains the final model on one --reference set, without --cv-folds"
            )
        references = every_material(references)
        replay_sets = aligned_replay(replay_sets, references)
        evaluate = False
        if work_dir is None:  # not the folder of a run with a validation part
            folder = default_work_dir(reference[0], spec, settings)
            finetune_maker.work_dir = str(folder.with_name(f"{folder.name}_all"))
    if cv_folds is not None:
        _cross_validate(
            reference, cv_folds, finetune_maker, parent_checkpoint, replay_sets, work_dir, store
        )
        return
    if evaluate:
        flow = FineTuneSweepMaker(
            name="finetune", finetune_maker=finetune_maker, depths=(settings.depth,),
            seeds=(settings.seed,),
        ).make(references, bulk_sets, parent_checkpoint, replay_sets)  # fmt: skip
        output = flow.output["finetunes"][f"X{settings.depth}_seed{settings.seed}"]
    else:
        flow = finetune_maker.make(
            references, parent_checkpoint=parent_checkpoint, replay_sets=replay_sets
        )
        output = flow.output
    _show_finetune_progress()
    run_locally(flow, store=store, log=False, ensure_success=True, allow_external_references=True)
    with store:
        doc = output.resolve(store)
    relaxed = (
        ""
        if doc.best_val_relaxed_gamma_mae is None
        else f" (relaxed, selection slabs: {num(doc.best_val_relaxed_gamma_mae)})"
    )
    console.print(
        f"{doc.model_id}: X={doc.depth}, {doc.trainable_parameters:,} trainable parameters, "
        f"best epoch {doc.best_epoch} of {len(doc.history) - 1}, val gamma MAE "
        f"{num(doc.best_val_gamma_mae)}{relaxed} J/m², {doc.wall_seconds:.0f} s; dropped "
        + ", ".join(f"{reason} {len(keys)}" for reason, keys in sorted(doc.dropped.items()))
    )
    for name, head in doc.heads.items():
        default = " (default)" if name == doc.default_head else ""
        console.print(f"  head {name}{default}: {head.level_of_theory}, sets {head.sets}")
    if evaluate:
        build()
        ids = (spec.model_id, doc.model_id)
        for name in reference:
            with store, get_store("benchmarks") as benchmarks:
                rows = sweep_summary(store.docs_store, benchmarks, doc.set_name, benchmark_set=name)
            rows = [r for r in rows if r["model_id"] in ids]
            console.print(_sweep_table(rows, title=f"{doc.model_id} on {name} (J/m²)"))


def _cross_validate(
    reference: list[str], k: int, finetune_maker, parent_checkpoint, replay_sets, work_dir, store
) -> None:
    """``finetune --cv-folds K``: run the cross-validation flow and print its figures."""
    from surfflows.flows.cross_validation import CrossValidationMaker, run_cross_validation
    from surfflows.io.inputs import reference_inputs
    from surfflows.stores import get_store

    if len(reference) != 1:
        fail(f"--cv-folds cross-validates one --reference set, got {len(reference)}")
    with get_store("references") as references, get_store("splits") as splits:
        inputs = reference_inputs(reference[0], references, splits)
    maker = CrossValidationMaker(
        finetune_maker=finetune_maker, k=k, work_dir=str(work_dir) if work_dir else None
    )
    _show_finetune_progress()
    try:
        flow = run_cross_validation(maker, inputs, store, parent_checkpoint, replay_sets)
    except ValueError as exc:  # too few elements for k folds, a bad split
        fail(str(exc))
    with store:
        doc = flow.output.resolve(store)
    console.print(cross_validation_table(doc))
    console.print(
        f"epoch count for a final model on every fold: {doc.chosen_epochs} "
        f"(mean validation curve {', '.join(num(v) for v in doc.mean_val_curve)} J/m²)"
    )


def cross_validation_table(doc) -> Table:
    """Per fold and mean ± std: held-out gamma MAE, signed error and MAPE in both modes."""
    table = Table(
        title=f"{doc.k}-fold cross-validation on {doc.set_name} by element, held-out γ (J/m²)"
    )
    modes = list(doc.summary)
    for column in ["fold", "held out", "best epoch"] + [
        f"{m.replace('_', ' ')} {q}" for m in modes for q in ("MAE", "signed", "MAPE")
    ]:
        table.add_column(column, overflow="fold")
    for f in doc.folds:
        cells = []
        for m in modes:
            g = f.figures.get(m)
            cells += [num(g.mae), num(g.mean_signed_error), _percent(g.mape)] if g else ["-"] * 3
        table.add_row(str(f.fold), " ".join(f.held_out), str(f.best_epoch), *cells)
    cells = []
    for m in modes:
        s = doc.summary[m]
        cells += [
            f"{num(s.mae.mean)} ± {num(s.mae.std)}",
            f"{num(s.mean_signed_error.mean)} ± {num(s.mean_signed_error.std)}",
            f"{_percent(s.mape.mean)} ± {_percent(s.mape.std)}",
        ]
    table.add_row("mean ± std", "", "", *cells)
    if doc.parent_summary:
        cells = []
        for m in modes:
            s = doc.parent_summary.get(m)
            cells += (
                [num(s.mae.mean), num(s.mean_signed_error.mean), _percent(s.mape.mean)]
                if s
                else ["-"] * 3
            )
        table.add_row(f"parent {doc.parent_model_id}", "", "", *cells)
    return table


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _training_inputs(
    set_names: str | list[str], bulk_sets: tuple[str, ...], replay_sets: list[str] = ()
):
    """The training set(s) (one: as is, several: a list), the forgetting check's bulk sets
    and the replay sets (bulks with their splits)."""
    from surfflows.io.inputs import reference_inputs, training_inputs
    from surfflows.stores import get_store

    names = [set_names] if isinstance(set_names, str) else list(set_names)
    with get_store("references") as references, get_store("splits") as splits:
        sets = [
            training_inputs(n, bulk_sets if i == 0 else (), references, splits)
            for i, n in enumerate(names)
        ]
        replay = [reference_inputs(n, references, splits, ("bulk",)) for n in replay_sets]
    training = [s for s, _ in sets]
    return training[0] if len(training) == 1 else training, sets[0][1], replay


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep YAML (configs/finetune_sweep.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Write the summary rows as JSON.")] = None,
) -> None:
    """Fine-tune for every X and seed of CONFIG, evaluate every checkpoint, tabulate."""

    from jobflow import run_locally
    from pydantic import ValidationError

    from surfflows.flows.finetune import SweepConfig
    from surfflows.io.registry import checkpoint_reference, resolve_model
    from surfflows.reports.finetune import sweep_summary
    from surfflows.stores import get_job_store, get_store

    store = get_job_store()
    try:
        sweep_config = SweepConfig.from_yaml(config)
        parent = resolve_model(sweep_config.parent, store)
        references, bulk_sets, replay_sets = _training_inputs(
            sweep_config.reference,
            tuple(sweep_config.bulk_sets),
            sweep_config.hyperparameters.get("replay_sets", []),
        )
        flow = sweep_config.maker(parent).make(
            references, bulk_sets, checkpoint_reference(parent, store), replay_sets
        )
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        fail(f"{config}: {input_error(exc)}")
    _show_finetune_progress()
    start = time.perf_counter()
    run_locally(flow, store=store, log=False, ensure_success=True, allow_external_references=True)
    build()
    summary = {}
    for mode in sweep_config.modes:
        with store, get_store("benchmarks") as benchmarks:
            summary[mode] = sweep_summary(
                store.docs_store, benchmarks, sweep_config.reference, sweep_config.name, mode
            )
        title = f"sweep {sweep_config.name} on {sweep_config.reference}, {mode} (J/m²)"
        console.print(_sweep_table(summary[mode], title=title))
    if out:
        out.write_text(json.dumps(summary, indent=2))
        console.print(f"wrote {out}")
    console.print(f"sweep done in {time.perf_counter() - start:.0f} s")


@app.command("learning-curve")
def learning_curve(
    config: Annotated[Path, typer.Argument(help="Learning-curve YAML.")] = Path(
        "configs/learning_curve.yaml"
    ),
    out: Annotated[Path, typer.Option(help="Folder for table and plots.")] = Path("reports"),
    run_flow: Annotated[bool, typer.Option("--run/--report-only", help="Run or only report.")] = (
        True
    ),
) -> None:
    """DIRECT versus random fine-tuning data at several budgets: run, build, table, plots."""

    from jobflow import run_locally

    from surfflows.core.yaml_files import load_yaml
    from surfflows.engine.sampling import coverage, training_pool
    from surfflows.flows.learning_curve import LearningCurveConfig
    from surfflows.io.inputs import reference_inputs
    from surfflows.io.registry import checkpoint_reference, resolve_model
    from surfflows.io.selections import stored_features
    from surfflows.reports.finetune import learning_curve_rows, summarize_curve
    from surfflows.reports.plots import coverage_plot, learning_curve_plot
    from surfflows.stores import get_job_store, get_store

    store = get_job_store()
    try:
        campaign = LearningCurveConfig.model_validate(load_yaml(config, "learning-curve file"))
        parent = resolve_model(campaign.parent, store)
        with get_store("references") as references, get_store("splits") as splits:
            inputs = reference_inputs(campaign.reference, references, splits)
    except Exception as exc:
        fail(f"{config}: {input_error(exc)}")
    start = time.perf_counter()
    if run_flow:
        flow = campaign.maker(parent).make(inputs, checkpoint_reference(parent, store))
        run_locally(
            flow, store=store, log=False, ensure_success=True, allow_external_references=True
        )
        build()
    with get_store("outputs") as outputs, get_store("benchmarks") as benchmarks:
        rows = learning_curve_rows(outputs, benchmarks, campaign.name)
        top = max(campaign.budgets)
        selections = [
            d["output"]
            for d in outputs.query(
                {"output.@class": "SelectionDoc", "output.set_name": campaign.reference}
            )
            if d["output"]["seed"] == 0 and len(d["output"]["reference_keys"]) == top
        ]
    summary = summarize_curve(rows)
    table = Table(title=f"{campaign.name}: test γ MAE (J/m²) over seeds")
    for column in ("method", "budget", "seeds", "mean", "std"):
        table.add_column(column)
    for r in summary:
        table.add_row(
            r["method"], str(r["budget"]), str(r["n_seeds"]),
            f"{r['test_mae_mean']:.3f}", f"{r['test_mae_std']:.3f}",
        )  # fmt: skip
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{campaign.name}.json").write_text(json.dumps({"rows": rows, "summary": summary}))
    curve = learning_curve_plot(summary, out / f"{campaign.name}.png", campaign.name)
    console.print(f"wrote {curve}")
    pool = training_pool(inputs)
    with get_store("features") as features:
        pool_features = stored_features(pool, parent, features)
    unique = {d["selection_id"]: d for d in selections}.values()
    pca, marked = coverage([k for k, _ in pool], pool_features, list(unique))
    path = coverage_plot(pca, marked, out / f"{campaign.name}_coverage.png", campaign.reference)
    console.print(f"wrote {path}; {time.perf_counter() - start:.0f} s")
