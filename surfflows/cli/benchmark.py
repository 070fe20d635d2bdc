"""Commands of the zero-shot / fine-tuned benchmark: evaluate, build, report."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from surfflows.cli.common import MODEL_HELP, app, console, fail, num
from surfflows.schemas.evaluate import RELAXED_FMAX, RELAXED_MAX_STEPS


@app.command()
def evaluate(
    reference: Annotated[
        str, typer.Option(help="Reference set name in the store, or a canonical folder.")
    ],
    model: Annotated[str, typer.Option(help=MODEL_HELP)] = "chgnet-0.3.0",
    mode: Annotated[str, typer.Option(help="single_point, relaxed or both.")] = "both",
    split: Annotated[str, typer.Option(help="all, train, val or test.")] = "all",
    level_of_theory: Annotated[
        str | None, typer.Option(help="For a folder that is not yet ingested.")
    ] = None,
    fmax: Annotated[float, typer.Option(help="Relaxed mode force criterion, eV/Å.")] = RELAXED_FMAX,
    max_steps: Annotated[int, typer.Option(help="Relaxed mode step limit.")] = RELAXED_MAX_STEPS,
    chunk_size: Annotated[int, typer.Option(help="Structures per job.")] = 128,
) -> None:
    """Evaluate a model on a reference set: single points and/or ions relaxed at the DFT cell."""
    from jobflow import run_locally

    from surfflows.engine.models import get_calculator
    from surfflows.flows.evaluate import EvaluateMaker
    from surfflows.io.ingest import ingest_path
    from surfflows.io.inputs import reference_inputs, reference_items
    from surfflows.io.registry import checkpoint_reference, resolve_model
    from surfflows.stores import get_job_store, get_store

    if mode not in ("single_point", "relaxed", "both"):
        fail(f"unknown mode {mode!r}; use single_point, relaxed or both")
    modes = ("single_point", "relaxed") if mode == "both" else (mode,)
    if split not in ("all", "train", "val", "test"):
        fail(f"unknown split part {split!r}")
    store = get_job_store()
    try:
        spec = resolve_model(model, store)
        if not spec.is_chgnet:
            get_calculator(spec)  # a calculator that cannot be made fails here, before any work
        set_name = reference
        if Path(reference).is_dir():
            report = ingest_path(reference, level_of_theory=level_of_theory)
            console.print(report.summary())
            set_name = report.set_name
        with get_store("references") as references, get_store("splits") as splits:
            inputs = reference_inputs(set_name, references, splits)
        items = reference_items(inputs, None if split == "all" else (split,))
        flow = EvaluateMaker(
            model=spec, modes=modes, fmax=fmax, max_steps=max_steps, chunk_size=chunk_size
        ).make(set_name, items, checkpoint_reference(spec, store))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    start = time.perf_counter()
    console.print(f"evaluating {spec.label} on {len(items)} structures of {set_name} {modes}")
    responses = run_locally(
        flow, store=store, log=False, ensure_success=True, allow_external_references=True
    )
    console.print(f"done in {time.perf_counter() - start:.0f} s; now run: surfflows build")
    failed = responses[flow.output.uuid][1].output.failures
    if failed:
        console.print(f"[bold red]{len(failed)} structures failed or did not converge:[/]")
        for line in failed[:20]:
            console.print(f"  {line}")
        raise typer.Exit(code=1)


@app.command()
def build(
    progress: Annotated[bool, typer.Option(help="Show maggma's progress bars.")] = False,
) -> None:
    """Run the error and benchmark builders incrementally (same as mrun configs/builders.py).

    On the embedded database, a build after which no store it reads or writes has changed
    stops at once.
    """
    from surfflows.builders.last_build import recording_build, unchanged_since_last_build
    from surfflows.settings import get_settings

    settings = get_settings()
    finished = unchanged_since_last_build(settings)
    if finished:
        console.print(f"nothing changed since the last build ({finished}): nothing to do")
        return
    from surfflows.builders import campaign_builders, run_builders
    from surfflows.builders.run import BUILDER_STORES
    from surfflows.stores import get_store

    stores = {name: get_store(name, settings) for name in BUILDER_STORES}
    seconds: dict[str, float] = {}
    with recording_build(settings):
        counts = run_builders(campaign_builders(stores), progress=progress, seconds=seconds)
    for name, n_items in counts.items():
        console.print(f"{name}: {n_items} groups processed in {seconds[name]:.2f} s")


#: The fields of an error document a parity plot reads.
PARITY_FIELDS = [
    "model_id", "set_name", "mode", "kind", "status", "gamma_ref", "gamma_model", "gamma_error",
    "chemistry_class",
]  # fmt: skip

BENCHMARK_COLUMNS = ("set", "model", "mode", "split", "N", "MAE", "RMSE", "mean signed", "max")


BULK_COLUMNS = (
    "set", "model", "mode", "split", "N", "MAE", "mean signed", "raw MAE", "force MAE",
    "parent", "parent MAE", "change", "parent raw MAE", "raw change",
)  # fmt: skip


def _change(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _bulk_table(rows: list[dict], labels: dict[str, str]) -> Table:
    from surfflows.reports.leaderboard import model_label

    table = Table(
        title="bulk energy errors (eV/atom) after per-element alignment fitted on the other "
        "split parts; raw = unaligned; force MAE eV/Å; change = MAE / parent MAE - 1"
    )
    for column in (*BULK_COLUMNS, "excluded"):
        table.add_column(column, overflow="fold")
    for r in rows:
        stats = (r["mae"], r["mean_signed_error"], r["raw_energy_mae"], r["force_mae"])
        excluded = ", ".join(f"{k} {v}" for k, v in sorted(r["n_excluded"].items()))
        table.add_row(
            r["set_name"], model_label(r["model_id"], labels), r["mode"], r["split"],
            str(r["n"]), *(num(x) for x in stats), r.get("parent_model_id") or "-",
            num(r["parent_mae"]), _change(r["relative_change"]),
            num(r.get("parent_raw_energy_mae")), _change(r.get("raw_relative_change")), excluded,
        )  # fmt: skip
    return table


def _benchmark_table(rows: list[dict], labels: dict[str, str]) -> Table:
    from surfflows.reports.leaderboard import model_label

    table = Table(title="surface-energy errors (J/m²): model - reference")
    for column in (*BENCHMARK_COLUMNS, "excluded"):
        table.add_column(column, overflow="fold")
    for r in rows:
        stats = (r["mae"], r["rmse"], r["mean_signed_error"], r["max_abs_error"])
        excluded = ", ".join(f"{k} {v}" for k, v in sorted(r["n_excluded"].items()))
        table.add_row(
            r["set_name"], model_label(r["model_id"], labels), r["mode"], r["split"],
            str(r["n"]), *(num(x) for x in stats), excluded,
        )  # fmt: skip
    return table


def leaderboard_table(rows: list[dict], title: str) -> Table:
    """Models side by side per reference set and mode (rows of ``reports.leaderboard``)."""
    table = Table(title=title)
    for column in (
        "set",
        "mode",
        "model",
        "model id",
        "package",
        "N",
        "MAE",
        "mean signed",
        "RMSE",
        "s/structure",
    ):
        table.add_column(column, overflow="fold")
    for r in rows:
        cost = r["seconds_per_structure"]
        table.add_row(
            r["set_name"], r["mode"], r.get("model", r["model_id"]), r["model_id"],
            r["package"] or "-", str(r["n"]),
            num(r["mae"]), num(r["mean_signed_error"]), num(r["rmse"]),
            "-" if cost is None else f"{cost:.2f}",
        )  # fmt: skip
    return table


def report_page(out: Path, model: str | None, reference: str | None) -> Path:
    """Write ``out/index.html`` (:func:`surfflows.reports.html.write_report_page`) with the
    packaged models' cards and, run from a clone, the figures of ``benchmarks/results``."""
    from surfflows.io.packaged import model_card, packaged_names
    from surfflows.reports.html import write_report_page

    return write_report_page(
        out,
        model=model,
        reference=reference,
        cards=[model_card(name) for name in packaged_names()],
        figure_folders=[Path("benchmarks") / "results"],
    )


@app.command()
def report(
    out: Annotated[
        Path, typer.Option(help="Folder for the PNG plots and the page index.html.")
    ] = Path("reports"),
    model: Annotated[str | None, typer.Option(help="Only this model id.")] = None,
    reference: Annotated[str | None, typer.Option(help="Only this reference set.")] = None,
) -> None:
    """Benchmark tables, test-split leaderboard and parity plots; all on OUT/index.html.

    The leaderboard puts models side by side with their seconds per structure; the page
    (static, offline) adds model cards, thermodynamics plots and benchmark figures.
    """
    from surfflows.reports.finetune import finetune_report_plots
    from surfflows.reports.leaderboard import leaderboard, model_label, model_labels
    from surfflows.reports.plots import leaderboard_plot, parity_plot
    from surfflows.stores import get_job_store, get_store, read_documents

    criteria = {k: v for k, v in (("model_id", model), ("set_name", reference)) if v}
    benchmarks = get_store("benchmarks")
    errors = get_store("surface_errors")
    refs = get_store("references")
    with benchmarks, errors, refs:
        rows = sorted(
            benchmarks.query(criteria),
            key=lambda r: (r["set_name"], r["model_id"], r["mode"], r["split"]),
        )
        if not rows:
            fail("no benchmark rows: run surfflows evaluate, then surfflows build")
        gamma_rows = [r for r in rows if r.get("quantity", "gamma") == "gamma"]
        bulk_rows = [r for r in rows if r.get("quantity") == "bulk_energy"]
        store = get_job_store()
        with store:
            labels = model_labels(store)
        if gamma_rows:
            console.print(_benchmark_table(gamma_rows, labels))
        with store:
            board = leaderboard(
                benchmarks,
                store,
                "test",
                [model] if model else None,
                [reference] if reference else None,
            )
        if board:
            title = "test split: models side by side (γ errors J/m², model - reference)"
            console.print(leaderboard_table(board, title))
            path = leaderboard_plot(board, out / "leaderboard_test.png", title="test split")
            console.print(f"wrote {path}")
        if bulk_rows:
            console.print(_bulk_table(bulk_rows, labels))
        parity_rows = [r for r in gamma_rows if r["split"] == "all"]
        # one read of each store (montydb reads a whole collection for any query)
        slabs = defaultdict(list)
        for e in read_documents(errors, criteria, PARITY_FIELDS):
            if e.get("kind", "slab") == "slab":
                slabs[(e["model_id"], e["set_name"], e["mode"])].append(e)
        sources: dict[str, str | None] = {}
        for ref in read_documents(
            refs,
            {"set_name": {"$in": sorted({r["set_name"] for r in parity_rows})}},
            ["set_name", "source", "citation"],
        ):
            sources.setdefault(ref["set_name"], ref.get("citation") or ref.get("source"))
        for r in parity_rows:
            source = sources.get(r["set_name"])
            path = parity_plot(
                slabs[(r["model_id"], r["set_name"], r["mode"])],
                out / f"parity_{r['set_name']}_{r['model_id']}_{r['mode']}.png",
                title=f"{model_label(r['model_id'], labels)} on {r['set_name']} ({r['mode']})",
                attribution=f"Reference data: {source}" if source else "",
            )
            console.print(f"wrote {path}")
    with get_store("outputs") as outputs, get_store("benchmarks") as benchmarks:
        for path in finetune_report_plots(out, outputs, benchmarks, reference):
            console.print(f"wrote {path}")
    page = report_page(out, model, reference)
    console.print(f"wrote {page} (open it in a browser)")
