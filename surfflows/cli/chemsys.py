"""What ``surfflows run`` prints for a chemical-system campaign: hull, polygons, maps, PNGs."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from surfflows.cli.common import console
from surfflows.core.text import miller_text
from surfflows.flows.chemsys import ChemicalSystemConfig, ModelRun
from surfflows.schemas.chemsys import TerminationMapComparisonDoc


def run_chemical_system_campaign(campaign: ChemicalSystemConfig) -> None:
    """Run the campaign into the configured store and print its results; exit 1 on failures."""
    from surfflows.flows.chemsys import run_chemical_system
    from surfflows.stores import get_job_store

    start = time.perf_counter()
    result = run_chemical_system(campaign, get_job_store())
    elapsed = time.perf_counter() - start
    for run in result.runs:
        print_model_run(run)
    labels = {r.model_id: r.label for r in result.runs}
    for comparison in result.comparisons:
        print_comparison(comparison, labels)
    computed = sum(len(v) for r in result.runs for v in r.computed.values())
    reused = sum(len(v) for r in result.runs for v in r.reused.values())
    console.print(
        f"{campaign.name}: {len(result.runs)} models in {elapsed:.0f} s; {computed} items "
        f"computed, {reused} reused (stored with the same inputs)"
    )
    if result.errors:
        console.print(f"[bold red]{len(result.errors)} failures:[/]", highlight=False)
        for where, reason in result.errors.items():
            console.print(f"  {where}: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


def _mu(values: list[float], axes: list[str]) -> str:
    return ", ".join(f"Δμ_{el} {v:+.2f}" for el, v in zip(axes, values, strict=True))


def print_model_run(run: ModelRun) -> None:
    """The hull, each target's polygon and its stable terminations at the centroid."""
    for target, doc in run.thermo.items():
        region = doc.region
        title = (
            f"{target} ({run.label}): E above hull {region.e_above_hull * 1000:.0f} meV/atom"
            f"{'' if region.stable else ' (above the hull: ' + (region.reason or '') + ')'}"
        )
        console.print(f"\n[bold]{title}[/]", highlight=False)
        console.print(f"stability region in Δμ of {', '.join(region.independent)} (eV):")
        table = Table()
        for column in ("vertex", "Δμ", "coexisting phases", "edge to next: competing phase"):
            table.add_column(column, overflow="fold")
        for i, vertex in enumerate(region.vertices):
            table.add_row(
                str(i),
                _mu(vertex, region.independent),
                ", ".join(region.vertex_phases[i]),
                ", ".join(region.edge_phases[i]) if i < len(region.edge_phases) else "-",
            )
        console.print(table)
        centroid = doc.centroid
        by_id = {p.entry_id: p for p in doc.planes}
        where = _mu(region.centroid, region.independent)
        console.print(f"stable termination per facet at the centroid ({where}):")
        table = Table()
        for column in ("facet", "termination", "slab", "γ (J/m²)", "share of region"):
            table.add_column(column, overflow="fold")
        fractions = {tuple(m.miller_index): m.area_fractions for m in doc.maps}
        for facet, entry_id in centroid.stable.items():
            plane = by_id[entry_id]
            share = fractions.get(tuple(plane.miller_index), {}).get(entry_id)
            table.add_row(
                facet,
                plane.termination,
                plane.slab_formula,
                f"{centroid.gamma[entry_id]:.3f}",
                "-" if share is None else f"{share:.0%}",
            )
        console.print(table)
        console.print(f"PNGs: {doc.map_png}\n      {doc.wulff_png}", highlight=False)
    for target, reason in run.no_thermo.items():
        console.print(
            f"\n{target} ({run.label}): slabs and gamma stored, no stability region ({reason}); "
            f"see `surfflows results --material {target}`",
            highlight=False,
        )


def print_comparison(doc: TerminationMapComparisonDoc, labels: dict[str, str]) -> None:
    """Agreement of two models' termination maps per facet, and their centroid Wulff shapes
    (``labels``: model id -> what to print)."""
    a, b = labels.get(doc.model_a, doc.model_a), labels.get(doc.model_b, doc.model_b)
    console.print(
        f"\n[bold]{doc.material_id}: {b} (B) against {a} (A)[/], stable terminations; the "
        f"regions overlap {doc.region_overlap:.0%} (intersection over union)",
        highlight=False,
    )
    table = Table()
    for column in (
        "facet",
        "agreement (common region)",
        "agreement (region A)",
        "A at centroid",
        "B at centroid",
    ):
        table.add_column(column, overflow="fold")
    for facet in doc.facets:
        common = "-" if facet.agreement is None else f"{facet.agreement:.0%}"
        table.add_row(
            miller_text(facet.miller_index),
            common,
            f"{facet.agreement_on_a:.0%}",
            facet.stable_at_centroid_a.split("|")[-1],
            facet.stable_at_centroid_b.split("|")[-1],
        )
    console.print(table)
    wulff = doc.wulff_at_centroid
    if wulff is not None:
        console.print(
            f"Wulff at the centroid: Kendall tau {wulff.kendall_tau}, lowest facet "
            f"{miller_text(wulff.lowest_facet_reference)} (A) vs "
            f"{miller_text(wulff.lowest_facet_model)} (B), mean |Δ area fraction| "
            f"{wulff.mean_abs_area_fraction_difference}",
            highlight=False,
        )
    if doc.note:
        console.print(doc.note, highlight=False)
