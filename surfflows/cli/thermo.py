"""Commands of surface thermodynamics: gamma(delta mu_O), Wulff shapes, comparisons."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

if TYPE_CHECKING:
    from jobflow import Flow, JobStore, OutputReference

    from surfflows.flows.campaign import CampaignConfig
    from surfflows.schemas.models import ModelSpec
    from surfflows.schemas.thermo import ReferenceWulffDoc

from surfflows.cli.common import (
    MODEL_HELP,
    app,
    console,
    fail,
    load_campaign,
    num,
    parse_miller,
    write_json,
)


def resolved_models(
    names: list[str] | None, campaign: CampaignConfig | None, store: JobStore
) -> list[tuple[ModelSpec, OutputReference | None]]:
    """The models named (default: the campaign's, else CHGNet 0.3.0), each resolved once
    with its checkpoint (:func:`~surfflows.flows.campaign.resolved_model`); a calculator that
    cannot be made fails here, before any work."""
    from surfflows.engine.models import get_calculator
    from surfflows.flows.campaign import CampaignConfig, resolved_model

    default = campaign.model if campaign else CampaignConfig.model_fields["model"].default
    models = [resolved_model(name, store) for name in names or [default]]
    for spec, _ in models:
        if not spec.is_chgnet:
            get_calculator(spec)
    return models


def thermo_flows(
    material: str,
    structure: Path | None,
    campaign: CampaignConfig | None,
    models: list[tuple[ModelSpec, OutputReference | None]],
    store: JobStore,
    slab_overrides: dict | None = None,
    relax_overrides: dict | None = None,
    **thermo_options: Any,
) -> tuple[str, list[tuple[ModelSpec, Flow, list[str]]]]:
    """The thermo flow of one material per model, and what each reuses from ``store``.

    ``material`` is a material id of ``campaign`` or a structure file (``structure`` names
    the file explicitly). The material runs as a one-material campaign: the campaign's slab
    and relaxation settings (its optimizer included) apply, then the command-line
    overrides, and its SurfaceEnergyMaker is the one a plain campaign uses
    (:meth:`CampaignConfig.surface_maker`). ``models``: each model with its checkpoint,
    resolved once for the run (:func:`resolved_models`). ``thermo_options``: fields of
    :class:`~surfflows.flows.thermo.ThermoMaker`.

    Returns
    -------
    tuple
        The material id, and per model its spec, flow and what the flow reuses.

    Raises
    ------
    ValueError, FileNotFoundError
        Naming the material, file or setting that is wrong.
    """
    from surfflows.core.slabs import SlabSettings
    from surfflows.flows.campaign import CampaignConfig, MaterialConfig, RelaxSettings
    from surfflows.flows.thermo import ThermoMaker, thermo_flow

    entry = next((m for m in campaign.materials if m.id == material), None) if campaign else None
    if structure is None and Path(material).is_file():
        structure, material = Path(material), Path(material).stem
    if structure is None and entry is None:
        known = [m.id for m in campaign.materials] if campaign else []
        raise ValueError(
            f"{material!r} is neither a structure file nor a campaign material {known}"
        )
    slabs = (entry.slabs if entry else None) or (campaign.slabs if campaign else SlabSettings())
    relax = (campaign.relax if campaign else RelaxSettings()).model_dump()
    one = MaterialConfig(
        id=material,
        structure=structure or entry.structure,
        slabs=SlabSettings.model_validate(slabs.model_dump() | (slab_overrides or {})),
    )
    config = CampaignConfig(
        name=campaign.name if campaign else material,
        relax=RelaxSettings.model_validate(relax | (relax_overrides or {})),
        materials=[one],
    )
    bulk = config.load_structures()[material]
    plans = []
    for spec, checkpoint in models:
        maker = ThermoMaker(surface_maker=config.surface_maker(one, spec), **thermo_options)
        flow, reused = thermo_flow(maker, bulk, material, store, checkpoint)
        plans.append((spec, flow, reused))
    return material, plans


def _models(
    names: list[str] | None, campaign: CampaignConfig | None
) -> list[tuple[ModelSpec, OutputReference | None]]:
    """:func:`resolved_models` in the configured store, or one ``error:`` line."""
    from surfflows.stores import get_job_store

    try:
        return resolved_models(names, campaign, get_job_store())
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))


def _thermo_runs(
    material: str,
    structure: Path | None,
    campaign: CampaignConfig | None,
    models: list[tuple[ModelSpec, OutputReference | None]],
    slab_overrides: dict,
    relax_overrides: dict,
    delta_mu_o: list[float] | None,
    out: Path,
    reference: ReferenceWulffDoc | None = None,
    dft_elements: str | None = None,
) -> list[dict]:
    """Run what is missing of the thermo flow of one material per model; print and save.

    See :func:`thermo_flows` (``models`` from :func:`_models`). ``reference``: a DFT
    reference set's Wulff shape of the material to compare with. ``dft_elements`` names an
    ingested set of elemental ground states whose DFT energies are recorded beside the
    model's metal references.

    Returns
    -------
    list[dict]
        Per model: ``thermo`` (SurfaceThermoDoc as JSON), ``comparison`` (WulffComparisonDoc
        as JSON when ``reference`` is given, else None), ``seconds`` (wall time) and
        ``label`` (:attr:`ModelSpec.label`, what tables show).
    """
    from jobflow import run_locally
    from monty.json import jsanitize

    from surfflows.stores import get_job_store

    store = get_job_store()
    try:
        dft_refs = None
        if dft_elements:
            from surfflows.io.elements import dft_elemental_references

            dft_refs = dft_elemental_references(dft_elements)
        material, plans = thermo_flows(
            material,
            structure,
            campaign,
            models,
            store,
            slab_overrides,
            relax_overrides,
            delta_mu_o=delta_mu_o or None,
            plot_dir=str(out.resolve()),
            reference=reference,
            dft_elemental_references=dft_refs,
            dft_elemental_set=dft_elements if dft_refs else None,
        )
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    runs = []
    for spec, flow, reused in plans:
        console.print(f"[bold]{material}[/] {spec.label}: reusing {', '.join(reused) or 'nothing'}")
        start = time.perf_counter()
        try:
            run_locally(  # a fine-tuned checkpoint's bytes are an output of an earlier job
                flow,
                store=store,
                log=False,
                ensure_success=True,
                raise_immediately=True,
                allow_external_references=True,
            )
        except Exception as exc:  # a job raised: say which material and model
            fail(f"{material} ({spec.model_id}): {type(exc).__name__}: {exc}")
        run = {"seconds": time.perf_counter() - start, "label": spec.label}
        with store:
            for key, output_reference in flow.output.items():
                output = None if output_reference is None else output_reference.resolve(store)
                run[key] = None if output is None else jsanitize(output, strict=True)
        _print_thermo(run["thermo"], spec.label)
        path = out / f"{material}_{spec.model_id}_thermo.json"
        write_json(run["thermo"], path)
        console.print(f"{material} ({spec.label}): {run['seconds']:.0f} s; wrote {path}")
        runs.append(run)
    return runs


def _print_thermo(doc: dict, label: str) -> None:
    """Bounds, stable termination per facet and Wulff shapes of a SurfaceThermoDoc (JSON);
    ``label`` names the model in the titles."""
    from surfflows.core.text import miller_text

    title = f"{doc['formula']} ({doc['material_id']}), {label}"
    for el, dft in doc.get("dft_metal_references", {}).items():
        console.print(
            f"{el} reference: model {num(doc['metal_references'].get(el))} eV/atom "
            f"({doc['metal_prototypes'].get(el, '-')}), DFT {dft:.4f} eV/atom "
            f"({doc['dft_elemental_set']})"
        )
    if doc["reservoir"]:
        console.print(
            f"Δμ_O bounds: O-poor {num(doc['delta_mu_O_min'])} eV, O-rich "
            f"{num(doc['delta_mu_O_max'])} eV; E(O2) = {doc['o2_energy']:.4f} eV; "
            f"{doc['bounds_note']}"
        )
    table = Table(title=f"stable termination per facet, {title}")
    for column in ("facet", "Δμ_O from", "Δμ_O to", "termination", "slab", "γ from", "γ to"):
        table.add_column(column)
    for row in doc["stable"]:
        table.add_row(
            miller_text(row["miller_index"]),
            num(row["delta_mu_O_from"]),
            num(row["delta_mu_O_to"]),
            row["termination"],
            row["slab_formula"],
            f"{row['gamma_from']:.3f}",
            f"{row['gamma_to']:.3f}",
        )
    console.print(table)
    shapes = doc["wulff_shapes"]
    wulff = Table(title=f"Wulff shapes (γ J/m² / area fraction, termination), {title}")
    wulff.add_column("facet")
    for shape in shapes:
        dmu = shape["delta_mu_O"]
        wulff.add_column("Δμ_O -" if dmu is None else f"Δμ_O {dmu:+.2f} eV")
    for i, surface in enumerate(shapes[0]["surfaces"]):
        cells = []
        for shape in shapes:
            s = shape["surfaces"][i]
            cells.append(
                f"{s['surface_energy']:.3f} / {num(s['area_fraction'])} {s['termination']}"
            )
        wulff.add_row(miller_text(surface["miller_index"]), *cells)
    for label, key in (
        ("weighted γ (J/m²)", "weighted_surface_energy"),
        ("shape factor", "shape_factor"),
        ("anisotropy", "surface_anisotropy"),
    ):
        wulff.add_row(label, *(num(shape[key]) for shape in shapes))
    console.print(wulff)
    for shape in shapes:
        if shape["note"]:
            console.print(f"Δμ_O {shape['delta_mu_O']}: {shape['note']}")
    if doc["excluded"]:
        reasons = [f"{miller_text(e['miller_index'])} {e['reason']}" for e in doc["excluded"]]
        console.print(f"{len(reasons)} slabs excluded: {reasons}")
    pngs = [doc["diagram_png"], *(shape["wulff_png"] for shape in shapes)]
    console.print("PNG: " + ", ".join(p for p in pngs if p))


def _slab_relax_overrides(
    max_index: int | None,
    miller: list[str] | None,
    min_slab_size: float | None,
    min_vacuum_size: float | None,
    fmax: float | None,
    max_steps: int | None,
) -> tuple[dict, dict]:
    """Command-line slab and relax settings that override the campaign file's."""
    slabs = {"min_slab_size": min_slab_size, "min_vacuum_size": min_vacuum_size}
    slabs = {k: v for k, v in slabs.items() if v is not None}
    if miller:
        slabs["miller_indices"] = [parse_miller(m) for m in miller]
    elif max_index is not None:
        slabs |= {"max_index": max_index, "miller_indices": None}
    relax = {k: v for k, v in (("fmax", fmax), ("max_steps", max_steps)) if v is not None}
    return slabs, relax


ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", help=f"{MODEL_HELP} Repeatable."),
]


DeltaMuOption = Annotated[
    list[float] | None,
    typer.Option("--delta-mu-o", help="Δμ_O (eV) of a Wulff shape (repeatable)."),
]


ConfigOption = Annotated[
    Path | None, typer.Option(help="Campaign YAML naming the material and its settings.")
]


OutOption = Annotated[Path, typer.Option(help="Folder for the PNG and JSON files.")]


SlabSizeOption = Annotated[float | None, typer.Option(help="Minimum slab thickness, Å.")]


VacuumOption = Annotated[float | None, typer.Option(help="Minimum vacuum thickness, Å.")]


FmaxOption = Annotated[float | None, typer.Option(help="Force criterion, eV/Å.")]


StepsOption = Annotated[int | None, typer.Option(help="Step limit per relaxation.")]


@app.command()
def thermo(
    material: Annotated[str, typer.Argument(help="Material id of --config, or a structure file.")],
    model: ModelOption = None,
    structure: Annotated[Path | None, typer.Option(help="Structure file of MATERIAL.")] = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    delta_mu_o: DeltaMuOption = None,
    max_index: Annotated[int | None, typer.Option(help="Largest Miller index.")] = None,
    miller: Annotated[list[str] | None, typer.Option(help="Facet, e.g. 110 (repeatable).")] = None,
    min_slab_size: SlabSizeOption = None,
    min_vacuum_size: VacuumOption = None,
    fmax: FmaxOption = None,
    max_steps: StepsOption = None,
    out: OutOption = Path("thermo"),
    dft_elements: Annotated[
        str | None,
        typer.Option(help="Ingested elemental set (mp_elemental_refs): DFT metal references."),
    ] = None,
) -> None:
    """Surface phase diagram γ(Δμ_O) and Wulff shapes of one material, per model.

    Runs only what the store lacks (surface energies, O2 and metal references of the model),
    prints the stable termination per facet and the Wulff shapes, writes PNGs and JSON.
    """
    slabs, relax = _slab_relax_overrides(
        max_index, miller, min_slab_size, min_vacuum_size, fmax, max_steps
    )
    campaign = load_campaign(config) if config.is_file() else None
    _thermo_runs(
        material,
        structure,
        campaign,
        _models(model, campaign),
        slabs,
        relax,
        delta_mu_o,
        out,
        None,
        dft_elements,
    )


@app.command("thermo-campaign")
def thermo_campaign(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (see configs/demo.yaml).")],
    model: ModelOption = None,
    delta_mu_o: DeltaMuOption = None,
    out: OutOption = Path("thermo"),
) -> None:
    """Surface phase diagrams and Wulff shapes of every material of a campaign file."""

    campaign = load_campaign(config)
    models = _models(model, campaign)  # resolved once for every material
    summary = Table(title=f"thermo campaign {campaign.name}")
    for column in ("material", "model", "Δμ_O bounds (eV)", "stable rows", "excluded", "s"):
        summary.add_column(column)
    for material in campaign.materials:
        for run in _thermo_runs(material.id, None, campaign, models, {}, {}, delta_mu_o, out):
            doc = run["thermo"]
            summary.add_row(
                material.id,
                doc["model_id"],
                f"[{num(doc['delta_mu_O_min'])}, {num(doc['delta_mu_O_max'])}]",
                str(len(doc["stable"])),
                str(len(doc["excluded"])),
                f"{run['seconds']:.0f}",
            )
    console.print(summary)


@app.command("wulff-compare")
def wulff_compare(
    reference: Annotated[str, typer.Option(help="Reference set: packaged name or folder.")] = (
        "pbe_metal_surfaces"
    ),
    material: Annotated[str, typer.Option(help="Material id in the set and in --config.")] = "Cu",
    model: ModelOption = None,
    structure: Annotated[Path | None, typer.Option(help="Bulk structure file.")] = None,
    config: ConfigOption = Path("configs/demo.yaml"),
    max_index: Annotated[
        int | None, typer.Option(help="Cut every facet up to this index (default: the set's).")
    ] = None,
    min_slab_size: SlabSizeOption = None,
    min_vacuum_size: VacuumOption = None,
    fmax: FmaxOption = None,
    max_steps: StepsOption = None,
    out: OutOption = Path("thermo"),
) -> None:
    """Facet ranking and Wulff shape of models against a DFT reference set, side by side."""
    from monty.json import MontyDecoder

    from surfflows.core.text import miller_text
    from surfflows.io.inputs import reference_wulff
    from surfflows.reports.plots import wulff_comparison_plot

    try:
        dft = reference_wulff(reference, material)
    except ValueError as exc:
        fail(str(exc))
    slabs, relax = _slab_relax_overrides(
        max_index, None, min_slab_size, min_vacuum_size, fmax, max_steps
    )
    if max_index is None:
        slabs["miller_indices"] = [tuple(s.miller_index) for s in dft.wulff.surfaces]
    campaign = load_campaign(config) if config.is_file() else None
    models = _models(model, campaign)
    runs = _thermo_runs(material, structure, campaign, models, slabs, relax, None, out, dft)
    comparisons = [run["comparison"] for run in runs]
    labels = [run["label"] for run in runs]
    first = comparisons[0]
    table = Table(title=f"{material}: {first['reference']['model_id']} vs model (γ J/m², f area)")
    for column in ("facet", "γ DFT", "rank", "f DFT"):
        table.add_column(column)
    for label in labels:
        for column in ("γ", "rank", "f", "Δf"):
            table.add_column(f"{column} {label}")
    by_facet = [{tuple(f["miller_index"]): f for f in c["facets"]} for c in comparisons]
    for facet in first["facets"]:
        row = [miller_text(facet["miller_index"]), f"{facet['gamma_reference']:.3f}"]
        row += [str(facet["rank_reference"]), num(facet["area_fraction_reference"])]
        for facets in by_facet:
            f = facets.get(tuple(facet["miller_index"]))
            if f is None:  # this model lacks the facet (e.g. its slab failed)
                row += ["-"] * 4
                continue
            row += [f"{f['gamma_model']:.3f}", str(f["rank_model"])]
            row += [num(f["area_fraction_model"]), num(f["area_fraction_difference"])]
        table.add_row(*row)
    console.print(table)
    summary = Table(title="facet-ranking agreement and Wulff shapes (model vs DFT)")
    for column in (
        "model", "facets", "Kendall τ (p)", "Spearman ρ (p)", "lowest DFT / model",
        "mean |Δf|", "max |Δf|", "mean γ error", "γ_w DFT / model", "shape factor DFT / model",
    ):  # fmt: skip
        summary.add_column(column, overflow="fold")
    for c, label in zip(comparisons, labels, strict=True):
        ref, mod = c["reference"], c["model"]
        summary.add_row(
            label,
            str(c["n_facets"]),
            f"{num(c['kendall_tau'])} ({num(c['kendall_p'])})",
            f"{num(c['spearman_rho'])} ({num(c['spearman_p'])})",
            f"{miller_text(c['lowest_facet_reference'])} / {miller_text(c['lowest_facet_model'])}",
            num(c["mean_abs_area_fraction_difference"]),
            num(c["max_abs_area_fraction_difference"]),
            f"{c['mean_signed_gamma_error']:+.3f}",
            f"{num(ref['weighted_surface_energy'])} / {num(mod['weighted_surface_energy'])}",
            f"{num(ref['shape_factor'])} / {num(mod['shape_factor'])}",
        )
    console.print(summary)
    stem = out / f"{material}_wulff_vs_{Path(reference).name}"
    write_json(comparisons, stem.with_suffix(".json"))
    docs = MontyDecoder().process_decoded(comparisons)
    png = wulff_comparison_plot(
        [(docs[0].reference.model_id, docs[0].reference), *((d.model_id, d.model) for d in docs)],
        stem.with_suffix(".png"),
        caption=f"Reference data: {dft.citation or reference}",
    )
    console.print(f"wrote {stem.with_suffix('.json')}, {png}")
