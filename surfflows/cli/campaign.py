"""Commands of surface campaigns: run one locally, read its results, submit it to jobflow-remote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from surfflows.cli.common import app, console, fail, load_campaign, parse_miller


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (see configs/demo.yaml).")],
    model: Annotated[
        list[str] | None,
        typer.Option(help="Chemical-system campaigns: run with this model instead (repeatable)."),
    ] = None,
) -> None:
    """Run a surface-energy campaign locally into the configured store.

    Materials already computed with the same structure, settings and model are skipped
    (rerun an interrupted campaign to resume it). Exits 1 if anything failed. A campaign
    over a chemical system (configs/sr-ti-o.yaml) relaxes its phases, builds the model's
    hull and maps the stable terminations of its targets.
    """
    from surfflows.cli.chemsys import run_chemical_system_campaign
    from surfflows.flows.campaign import campaign_results, run_campaign
    from surfflows.flows.chemsys import ChemicalSystemConfig
    from surfflows.stores import get_job_store

    campaign = load_campaign(config)
    if isinstance(campaign, ChemicalSystemConfig):
        run_chemical_system_campaign(campaign.with_models(model, config) if model else campaign)
        return
    if model:
        fail("--model is for chemical-system campaigns; set model: in the campaign file")
    store = get_job_store()
    start = time.perf_counter()
    run = run_campaign(campaign, store)
    elapsed = time.perf_counter() - start
    docs, failures = campaign_results(store, run)
    _print_surface_table(docs, title=f"campaign {campaign.name} ({run.model.model_id})")
    statuses = [d["status"] for d in docs]
    counts = {s: statuses.count(s) for s in ("ok", "non_stoichiometric", "failed")}
    console.print(
        f"{len(docs)} slabs in {elapsed:.0f} s: {counts}; {len(run.ran)} materials computed, "
        f"{len(run.skipped)} skipped (already stored with the same structure, settings and "
        "model)"
    )
    if failures:
        console.print(f"[bold red]{len(failures)} failures:[/]", highlight=False)
        for where, reason in failures.items():
            console.print(f"  {where}: {reason}", highlight=False)
        raise typer.Exit(code=1)


def _print_surface_table(docs: list[dict], title: str) -> None:
    from surfflows.reports.query import to_rows

    table = Table(title=title)
    for column in ("material", "facet", "termination", "model", "status", "γ (J/m²)", "atoms"):
        table.add_column(column, overflow="fold")
    for row in to_rows(docs):
        gamma = f"{row['gamma']:.3f}" if row["gamma"] is not None else "-"
        table.add_row(
            row["material_id"],
            row["miller_index"],
            row["termination"],
            row["model_id"],
            row["status"],
            gamma,
            str(row["n_slab_atoms"]),
        )
    console.print(table)


@app.command()
def results(
    formula: Annotated[str | None, typer.Option(help="Reduced formula, e.g. TiO2.")] = None,
    material: Annotated[str | None, typer.Option(help="Material id.")] = None,
    miller: Annotated[str | None, typer.Option(help="Miller index, e.g. 111 or '1,-1,0'.")] = None,
    model: Annotated[str | None, typer.Option(help="Model id, e.g. chgnet-0.3.0.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, json or csv.")] = "table",
    output: Annotated[Path | None, typer.Option(help="Write json/csv here.")] = None,
) -> None:
    """List surface energies (newest per slab and model) as a table, JSON or CSV."""
    from surfflows.reports.query import export, newest_surface_energies, surface_energy_criteria
    from surfflows.stores import query_collection

    miller_index = parse_miller(miller)
    if formula is not None or material is not None:
        # core.validation imports pymatgen (half a second): only for the filters that need it
        from surfflows.core.validation import check_formula, check_material_id

        try:
            formula = check_formula(formula) if formula is not None else None
        except ValueError as exc:
            fail(f"--formula: {exc}")
        try:
            material = check_material_id(material) if material is not None else None
        except ValueError as exc:
            fail(f"--material: {exc}")
    if fmt not in ("table", "json", "csv"):
        fail(f"--format {fmt!r}: use table, json or csv")
    if output and not output.parent.is_dir():
        fail(f"--output {output}: folder {output.parent} does not exist")
    criteria = surface_energy_criteria(
        formula=formula, material_id=material, miller_index=miller_index, model_id=model
    )
    docs = newest_surface_energies(query_collection("outputs", criteria))
    if fmt == "table":
        _print_surface_table(docs, title=f"{len(docs)} surface energies")
        return
    text = export(docs, fmt)
    if output:
        output.write_text(text)
        console.print(f"wrote {len(docs)} documents to {output}")
    else:
        print(text)


@app.command()
def submit(
    config: Annotated[Path, typer.Argument(help="Campaign YAML.")],
    worker: Annotated[str | None, typer.Option(help="jobflow-remote worker.")] = None,
    project: Annotated[str | None, typer.Option(help="jobflow-remote project.")] = None,
    priority: Annotated[int, typer.Option(help="Queue priority.")] = 0,
) -> None:
    """Submit a campaign to jobflow-remote (needs its MongoDB-backed project)."""
    from surfflows.flows.remote import submit_campaign

    campaign = load_campaign(config)
    ids = submit_campaign(campaign, worker=worker, project=project, priority=priority)
    console.print(f"submitted {len(ids)} jobs: {ids[:5]}...")
