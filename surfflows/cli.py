"""The ``surfflows`` command line."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from surfflows.campaign import CampaignConfig

app = typer.Typer(
    help="Surface-energy campaigns with CHGNet, stored in MongoDB or an embedded MontyDB.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
# Wide tables when piped (rich assumes 80 columns off a terminal).
console = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _load_campaign(config: Path) -> CampaignConfig:
    """The campaign file parsed and validated, or a clear error naming what is wrong."""
    from surfflows.campaign import CampaignConfig

    try:
        return CampaignConfig.from_yaml(config)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))


def _parse_miller(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.replace(",", " ").split() if (" " in text or "," in text) else list(text)
    try:
        hkl = tuple(int(p) for p in parts)
    except ValueError:
        hkl = ()
    if len(hkl) != 3:
        _fail(f"Miller index {text!r}: give three integers, e.g. 111 or '1,-1,0'")
    return hkl


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (see configs/demo.yaml).")],
) -> None:
    """Run a surface-energy campaign locally into the configured store."""
    from surfflows.campaign import run_campaign
    from surfflows.query import surface_energies
    from surfflows.stores import get_job_store

    campaign = _load_campaign(config)
    store = get_job_store()
    start = time.perf_counter()
    run_campaign(campaign, store)
    elapsed = time.perf_counter() - start
    model_id = campaign.model_spec().model_id
    docs = [
        d
        for m in campaign.materials
        for d in surface_energies(store, material_id=m.id, model_id=model_id)
    ]
    _print_surface_table(docs, title=f"campaign {campaign.name} ({model_id})")
    statuses = [d["status"] for d in docs]
    counts = {s: statuses.count(s) for s in ("ok", "non_stoichiometric", "failed")}
    console.print(f"{len(docs)} slabs in {elapsed:.0f} s: {counts}")


def _print_surface_table(docs: list[dict], title: str) -> None:
    from surfflows.query import to_rows

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
    from surfflows.query import export, surface_energies
    from surfflows.stores import get_job_store

    docs = surface_energies(
        get_job_store(),
        formula=formula,
        material_id=material,
        miller_index=_parse_miller(miller),
        model_id=model,
    )
    if fmt == "table":
        _print_surface_table(docs, title=f"{len(docs)} surface energies")
        return
    if fmt not in ("json", "csv"):
        _fail(f"unknown format {fmt!r}; use table, json or csv")
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
    from surfflows.remote import submit_campaign

    campaign = _load_campaign(config)
    ids = submit_campaign(campaign, worker=worker, project=project, priority=priority)
    console.print(f"submitted {len(ids)} jobs of {len(campaign.materials)} flows: {ids[:5]}...")


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Packaged set names or folders in the canonical format.")
    ],
    level_of_theory: Annotated[
        str | None, typer.Option(help="Level of theory of a user folder (else its README).")
    ] = None,
) -> None:
    """Ingest DFT reference sets (upsert by key: re-ingesting changes nothing)."""
    from surfflows.references.ingest import ingest_path

    for source in sources:
        try:
            report = ingest_path(source, level_of_theory=level_of_theory)
        except (ValueError, FileNotFoundError) as exc:
            _fail(f"{source}: {exc}")
        console.print(report.summary())


oc22_app = typer.Typer(help="OC22: download the published files and ingest them.")
app.add_typer(oc22_app, name="oc22")


@oc22_app.command("download")
def oc22_download(
    dest: Annotated[Path, typer.Argument(help="Download folder.")],
    files: Annotated[
        list[str] | None, typer.Option("--file", help="Published file name (repeatable).")
    ] = None,
    extract: Annotated[bool, typer.Option(help="Unpack tarballs after the md5 check.")] = False,
) -> None:
    """Download OC22 files with md5 check and resume (default: IS2RE LMDBs + metadata)."""
    from surfflows.references.oc22 import download

    names = files or ["is2res_total_train_val_test_lmdbs.tar.gz", "oc22_metadata.pkl"]
    for path in download(names, dest, extract=extract):
        console.print(f"ok {path}")


@oc22_app.command("ingest")
def oc22_ingest(
    split_dir: Annotated[Path, typer.Argument(help="IS2RE-total split folder of LMDB shards.")],
    metadata: Annotated[Path, typer.Option(help="oc22_metadata.pkl")],
    bulks: Annotated[
        Path | None, typer.Option(help="Canonical bulks.extxyz (bulk_id = mp id).")
    ] = None,
    mp_api_key: Annotated[
        str | None,
        typer.Option(envvar="MP_API_KEY", help="Fetch bulks from Materials Project instead."),
    ] = None,
    set_name: Annotated[str, typer.Option(help="Name of the set in the store.")] = "oc22",
) -> None:
    """Ingest an OC22 split as canonical reference documents (clean slabs and adslabs)."""
    from ase.io import read

    from surfflows.references.ingest import ingest_reference_set
    from surfflows.references.oc22 import (
        bulks_from_materials_project,
        oc22_reference_set,
        read_metadata,
    )

    bulk_frames = read(bulks, ":") if bulks else []
    if not bulk_frames and mp_api_key:
        mp_ids = sorted({m["bulk_id"] for m in read_metadata(metadata).values()})
        bulk_frames = bulks_from_materials_project(mp_ids, mp_api_key)
    refset = oc22_reference_set(split_dir, metadata, bulk_frames, set_name=set_name)
    console.print(ingest_reference_set(refset).summary())


@app.command()
def evaluate(
    reference: Annotated[
        str, typer.Option(help="Reference set name in the store, or a canonical folder.")
    ],
    model: Annotated[str, typer.Option(help="Model: chgnet-0.3.0, a checkpoint...")] = (
        "chgnet-0.3.0"
    ),
    mode: Annotated[str, typer.Option(help="single_point, relaxed or both.")] = "both",
    split: Annotated[str, typer.Option(help="all, train, val or test.")] = "all",
    level_of_theory: Annotated[
        str | None, typer.Option(help="For a folder that is not yet ingested.")
    ] = None,
    fmax: Annotated[float, typer.Option(help="Relaxed mode force criterion, eV/Å.")] = 0.05,
    max_steps: Annotated[int, typer.Option(help="Relaxed mode step limit.")] = 300,
    chunk_size: Annotated[int, typer.Option(help="Structures per job.")] = 128,
) -> None:
    """Evaluate a model on a reference set: single points and/or ions relaxed at the DFT cell."""
    from jobflow import run_locally

    from surfflows.jobs.evaluate import EvaluateMaker, reference_items
    from surfflows.models import ModelSpec
    from surfflows.references.ingest import ingest_path
    from surfflows.splits import get_or_create_split
    from surfflows.stores import get_job_store, get_store

    modes = ("single_point", "relaxed") if mode == "both" else (mode,)
    if split not in ("all", "train", "val", "test"):
        _fail(f"unknown split part {split!r}")
    try:
        spec = ModelSpec.parse(model)
        set_name = reference
        if Path(reference).is_dir():
            report = ingest_path(reference, level_of_theory=level_of_theory)
            console.print(report.summary())
            set_name = report.set_name
        splits = get_store("splits")
        with splits:
            assignments = get_or_create_split(set_name, store=splits).assignments
        items = reference_items(
            set_name,
            get_store("references"),
            assignments,
            None if split == "all" else (split,),
        )
        flow = EvaluateMaker(
            model=spec, modes=modes, fmax=fmax, max_steps=max_steps, chunk_size=chunk_size
        ).make(set_name, items)
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    start = time.perf_counter()
    console.print(f"evaluating {spec.model_id} on {len(items)} structures of {set_name} {modes}")
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    console.print(f"done in {time.perf_counter() - start:.0f} s; now run: surfflows build")


@app.command()
def build() -> None:
    """Run the error and benchmark builders incrementally (same as mrun configs/builders.yaml)."""
    from surfflows.builders import BenchmarkBuilder, SurfaceEnergyErrorBuilder

    for builder in (SurfaceEnergyErrorBuilder(), BenchmarkBuilder()):
        builder.connect()
        n_items = n_docs = 0
        for item in builder.get_items():
            docs = builder.process_item(item)
            builder.update_targets([docs])
            n_items += 1
            n_docs += len(docs)
        builder.finalize()
        console.print(f"{type(builder).__name__}: {n_items} items processed, {n_docs} documents")


BENCHMARK_COLUMNS = ("set", "model", "mode", "split", "N", "MAE", "RMSE", "mean signed", "max")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _benchmark_table(rows: list[dict]) -> Table:
    table = Table(title="surface-energy errors (J/m²): model - reference")
    for column in (*BENCHMARK_COLUMNS, "excluded"):
        table.add_column(column, overflow="fold")
    for r in rows:
        stats = (r["mae"], r["rmse"], r["mean_signed_error"], r["max_abs_error"])
        excluded = ", ".join(f"{k} {v}" for k, v in sorted(r["n_excluded"].items()))
        table.add_row(
            r["set_name"], r["model_id"], r["mode"], r["split"], str(r["n"]),
            *(_num(x) for x in stats), excluded,
        )  # fmt: skip
    return table


@app.command()
def report(
    out: Annotated[Path, typer.Option(help="Folder for the PNG plots.")] = Path("reports"),
    model: Annotated[str | None, typer.Option(help="Only this model id.")] = None,
    reference: Annotated[str | None, typer.Option(help="Only this reference set.")] = None,
) -> None:
    """Benchmark table in the terminal and parity plots (PNG) per model, set and mode."""
    from surfflows.jobs.finetune import finetune_report_plots
    from surfflows.plots import parity_plot
    from surfflows.stores import get_store

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
            _fail("no benchmark rows: run surfflows evaluate, then surfflows build")
        console.print(_benchmark_table(rows))
        for r in (r for r in rows if r["split"] == "all"):
            group = {"model_id": r["model_id"], "set_name": r["set_name"], "mode": r["mode"]}
            ref = refs.query_one({"set_name": r["set_name"]}, properties=["source", "citation"])
            source = (ref or {}).get("citation") or (ref or {}).get("source")
            path = parity_plot(
                list(errors.query(group)),
                out / f"parity_{r['set_name']}_{r['model_id']}_{r['mode']}.png",
                title=f"{r['model_id']} on {r['set_name']} ({r['mode']})",
                attribution=f"Reference data: {source}" if source else "",
            )
            console.print(f"wrote {path}")
    for path in finetune_report_plots(out, reference):
        console.print(f"wrote {path}")


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
    from surfflows.models import ModelSpec
    from surfflows.sampling import select as select_slabs
    from surfflows.stores import get_store

    stores = {n: get_store(n) for n in ("references", "splits", "features", "selections")}
    for store in stores.values():
        store.connect()
    try:
        doc = select_slabs(
            reference, method, budget, seed=seed, model=ModelSpec.parse(model), **stores
        )
    except ValueError as exc:
        _fail(str(exc))
    finally:
        for store in stores.values():
            store.close()
    pcs = f", {doc.n_components} PCs ({doc.explained_variance:.0%})" if doc.n_components else ""
    console.print(
        f"{doc.selection_id}: {doc.budget} of {doc.n_pool} train slabs{pcs}\n"
        + "\n".join(f"  {key}" for key in doc.reference_keys)
    )


def _thermo_runs(
    material: str,
    structure: Path | None,
    campaign: CampaignConfig | None,
    models: list[str] | None,
    slab_overrides: dict,
    relax_overrides: dict,
    delta_mu_o: list[float] | None,
    out: Path,
    reference_set: str | None = None,
) -> list[dict]:
    """Run what is missing of the thermo flow of one material per model; print and save.

    MATERIAL is a material id of ``campaign`` or a structure file (``--structure`` names the
    file explicitly); the campaign's settings apply, then the command-line ones.

    Returns
    -------
    list[dict]
        Per model: ``thermo`` (SurfaceThermoDoc as JSON), ``comparison`` (WulffComparisonDoc
        as JSON when ``reference_set`` is given, else None) and ``seconds`` (wall time).
    """
    from jobflow import run_locally
    from monty.json import jsanitize
    from pymatgen.core import Structure

    from surfflows.campaign import RelaxSettings
    from surfflows.jobs.thermo import ThermoMaker, thermo_flow
    from surfflows.models import ModelSpec
    from surfflows.slabs import SlabSettings
    from surfflows.stores import get_job_store

    try:
        entry = (
            next((m for m in campaign.materials if m.id == material), None) if campaign else None
        )
        if structure is None and Path(material).is_file():
            structure, material = Path(material), Path(material).stem
        if structure is None and entry is None:
            known = [m.id for m in campaign.materials] if campaign else []
            _fail(f"{material!r} is neither a structure file nor a campaign material {known}")
        bulk = Structure.from_file(structure or entry.structure)
        slabs = (entry.slabs if entry else None) or (campaign.slabs if campaign else SlabSettings())
        slabs = SlabSettings.model_validate(slabs.model_dump() | slab_overrides)
        relax = (campaign.relax if campaign else RelaxSettings()).model_dump() | relax_overrides
        relax = RelaxSettings.model_validate(relax)
        specs = [ModelSpec.parse(m) for m in models or [campaign.model if campaign else "0.3.0"]]
    except (ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    store = get_job_store()
    runs = []
    for spec in specs:
        maker = ThermoMaker(
            model=spec,
            slab_settings=slabs,
            fmax=relax.fmax,
            max_steps=relax.max_steps,
            chunk_size=relax.chunk_size,
            delta_mu_o=delta_mu_o or None,
            plot_dir=str(out.resolve()),
            reference_set=reference_set,
            reference_material=material if reference_set else None,
        )
        flow, reused = thermo_flow(maker, bulk, material, store)
        console.print(
            f"[bold]{material}[/] {spec.model_id}: reusing {', '.join(reused) or 'nothing'}"
        )
        start = time.perf_counter()
        try:
            run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
        except Exception as exc:  # a job raised: say which material and model
            _fail(f"{material} ({spec.model_id}): {type(exc).__name__}: {exc}")
        run = {"seconds": time.perf_counter() - start, "comparison": None}
        for job in flow.jobs:
            if job.uuid == flow.output.uuid or job.name.startswith("wulff comparison"):
                output = jsanitize(store.get_output(job.uuid, load=True), strict=True)
                run["thermo" if job.uuid == flow.output.uuid else "comparison"] = output
        _print_thermo(run["thermo"])
        path = out / f"{material}_{spec.model_id}_thermo.json"
        _write_json(run["thermo"], path)
        console.print(f"{material} ({spec.model_id}): {run['seconds']:.0f} s; wrote {path}")
        runs.append(run)
    return runs


def _write_json(data: dict | list, path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _print_thermo(doc: dict) -> None:
    """Bounds, stable termination per facet and Wulff shapes of a SurfaceThermoDoc (JSON)."""
    from surfflows.query import hkl_text

    title = f"{doc['formula']} ({doc['material_id']}), {doc['model_id']}"
    if doc["reservoir"]:
        console.print(
            f"Δμ_O bounds: O-poor {_num(doc['delta_mu_O_min'])} eV, O-rich "
            f"{_num(doc['delta_mu_O_max'])} eV; E(O2) = {doc['o2_energy']:.4f} eV; "
            f"{doc['bounds_note']}"
        )
    table = Table(title=f"stable termination per facet, {title}")
    for column in ("facet", "Δμ_O from", "Δμ_O to", "termination", "slab", "γ from", "γ to"):
        table.add_column(column)
    for row in doc["stable"]:
        table.add_row(
            hkl_text(row["miller_index"]),
            _num(row["delta_mu_O_from"]),
            _num(row["delta_mu_O_to"]),
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
                f"{s['surface_energy']:.3f} / {_num(s['area_fraction'])} {s['termination']}"
            )
        wulff.add_row(hkl_text(surface["miller_index"]), *cells)
    for label, key in (
        ("weighted γ (J/m²)", "weighted_surface_energy"),
        ("shape factor", "shape_factor"),
        ("anisotropy", "surface_anisotropy"),
    ):
        wulff.add_row(label, *(_num(shape[key]) for shape in shapes))
    console.print(wulff)
    for shape in shapes:
        if shape["note"]:
            console.print(f"Δμ_O {shape['delta_mu_O']}: {shape['note']}")
    if doc["excluded"]:
        reasons = [f"{hkl_text(e['miller_index'])} {e['reason']}" for e in doc["excluded"]]
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
        slabs["miller_indices"] = [_parse_miller(m) for m in miller]
    elif max_index is not None:
        slabs |= {"max_index": max_index, "miller_indices": None}
    relax = {k: v for k, v in (("fmax", fmax), ("max_steps", max_steps)) if v is not None}
    return slabs, relax


ModelOption = Annotated[
    list[str] | None,
    typer.Option("--model", help="Model (repeatable): chgnet-0.3.0, a checkpoint, sha256:<hex>."),
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
) -> None:
    """Surface phase diagram γ(Δμ_O) and Wulff shapes of one material, per model.

    Runs only what the store lacks (surface energies, O2 and metal references of the model),
    prints the stable termination per facet and the Wulff shapes, writes PNGs and JSON.
    """
    slabs, relax = _slab_relax_overrides(
        max_index, miller, min_slab_size, min_vacuum_size, fmax, max_steps
    )
    campaign = _load_campaign(config) if config.is_file() else None
    _thermo_runs(material, structure, campaign, model, slabs, relax, delta_mu_o, out)


@app.command("thermo-campaign")
def thermo_campaign(
    config: Annotated[Path, typer.Argument(help="Campaign YAML (see configs/demo.yaml).")],
    model: ModelOption = None,
    delta_mu_o: DeltaMuOption = None,
    out: OutOption = Path("thermo"),
) -> None:
    """Surface phase diagrams and Wulff shapes of every material of a campaign file."""

    campaign = _load_campaign(config)
    summary = Table(title=f"thermo campaign {campaign.name}")
    for column in ("material", "model", "Δμ_O bounds (eV)", "stable rows", "excluded", "s"):
        summary.add_column(column)
    for material in campaign.materials:
        for run in _thermo_runs(material.id, None, campaign, model, {}, {}, delta_mu_o, out):
            doc = run["thermo"]
            summary.add_row(
                material.id,
                doc["model_id"],
                f"[{_num(doc['delta_mu_O_min'])}, {_num(doc['delta_mu_O_max'])}]",
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

    from surfflows.jobs.thermo import reference_wulff
    from surfflows.plots import wulff_comparison_plot
    from surfflows.query import hkl_text

    try:
        dft, provenance = reference_wulff(reference, material)
    except ValueError as exc:
        _fail(str(exc))
    slabs, relax = _slab_relax_overrides(
        max_index, None, min_slab_size, min_vacuum_size, fmax, max_steps
    )
    if max_index is None:
        slabs["miller_indices"] = [tuple(s.miller_index) for s in dft.surfaces]
    campaign = _load_campaign(config) if config.is_file() else None
    runs = _thermo_runs(material, structure, campaign, model, slabs, relax, None, out, reference)
    comparisons = [run["comparison"] for run in runs]
    first = comparisons[0]
    table = Table(title=f"{material}: {first['reference']['model_id']} vs model (γ J/m², f area)")
    for column in ("facet", "γ DFT", "rank", "f DFT"):
        table.add_column(column)
    for c in comparisons:
        for column in ("γ", "rank", "f", "Δf"):
            table.add_column(f"{column} {c['model_id']}")
    by_facet = [{tuple(f["miller_index"]): f for f in c["facets"]} for c in comparisons]
    for facet in first["facets"]:
        row = [hkl_text(facet["miller_index"]), f"{facet['gamma_reference']:.3f}"]
        row += [str(facet["rank_reference"]), _num(facet["area_fraction_reference"])]
        for facets in by_facet:
            f = facets.get(tuple(facet["miller_index"]))
            if f is None:  # this model lacks the facet (e.g. its slab failed)
                row += ["-"] * 4
                continue
            row += [f"{f['gamma_model']:.3f}", str(f["rank_model"])]
            row += [_num(f["area_fraction_model"]), _num(f["area_fraction_difference"])]
        table.add_row(*row)
    console.print(table)
    summary = Table(title="facet-ranking agreement and Wulff shapes (model vs DFT)")
    for column in (
        "model", "facets", "Kendall τ (p)", "Spearman ρ (p)", "lowest DFT / model",
        "mean |Δf|", "max |Δf|", "mean γ error", "γ_w DFT / model", "shape factor DFT / model",
    ):  # fmt: skip
        summary.add_column(column, overflow="fold")
    for c in comparisons:
        ref, mod = c["reference"], c["model"]
        summary.add_row(
            c["model_id"],
            str(c["n_facets"]),
            f"{_num(c['kendall_tau'])} ({_num(c['kendall_p'])})",
            f"{_num(c['spearman_rho'])} ({_num(c['spearman_p'])})",
            f"{hkl_text(c['lowest_facet_reference'])} / {hkl_text(c['lowest_facet_model'])}",
            _num(c["mean_abs_area_fraction_difference"]),
            _num(c["max_abs_area_fraction_difference"]),
            f"{c['mean_signed_gamma_error']:+.3f}",
            f"{_num(ref['weighted_surface_energy'])} / {_num(mod['weighted_surface_energy'])}",
            f"{_num(ref['shape_factor'])} / {_num(mod['shape_factor'])}",
        )
    console.print(summary)
    stem = out / f"{material}_wulff_vs_{Path(reference).name}"
    _write_json(comparisons, stem.with_suffix(".json"))
    docs = MontyDecoder().process_decoded(comparisons)
    png = wulff_comparison_plot(
        [(docs[0].reference.model_id, docs[0].reference), *((d.model_id, d.model) for d in docs)],
        stem.with_suffix(".png"),
        caption=f"Reference data: {provenance['citation'] or reference}",
    )
    console.print(f"wrote {stem.with_suffix('.json')}, {png}")


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
            *(_num(r[k]) for k in ("val_mae", "val_mse", "test_mae", "test_mse")),
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


@app.command()
def finetune(
    reference: Annotated[str, typer.Option(help="Reference set in the store (ingested).")],
    layers: Annotated[
        int | None, typer.Option(help="X: trainable units from the readout backwards.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of torch and batch order.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Structures per batch.")] = None,
    energy_weight: Annotated[float | None, typer.Option(help="Energy loss weight.")] = None,
    gamma_weight: Annotated[float | None, typer.Option(help="Surface-energy loss weight.")] = None,
    force_weight: Annotated[float | None, typer.Option(help="Force loss weight (slow).")] = None,
    zero_force_labels: Annotated[
        bool | None, typer.Option(help="Zero forces as labels of relaxed frames.")
    ] = None,
    patience: Annotated[int | None, typer.Option(help="Early-stopping patience.")] = None,
    anchor_weight: Annotated[
        float | None, typer.Option(help="L2-SP pull towards the parent's weights.")
    ] = None,
    parent: Annotated[str, typer.Option(help="Model to fine-tune.")] = "chgnet-0.3.0",
    work_dir: Annotated[
        Path | None, typer.Option(help="Checkpoint folder (a rerun there resumes).")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Evaluate val/test and check bulk forgetting.")
    ] = True,
) -> None:
    """Fine-tune the last X units of CHGNet on a set's train split and register the checkpoint.

    The epoch with the lowest validation gamma MAE is kept. With --evaluate (default) the
    checkpoint and its parent are evaluated on the val and test parts (single point), bulk
    forgetting is checked on bo2_bulk_eos and the set's test bulks, and the builders run.
    """
    from jobflow import Flow, run_locally
    from pydantic import ValidationError

    from surfflows.jobs.finetune import (
        FineTuneMaker,
        bulk_forgetting,
        evaluate_parts,
        sweep_summary,
    )
    from surfflows.models import ModelSpec
    from surfflows.schemas import FineTuneSettings
    from surfflows.stores import get_job_store

    given = {
        "depth": layers, "epochs": epochs, "learning_rate": lr, "seed": seed,
        "batch_size": batch_size, "energy_weight": energy_weight, "gamma_weight": gamma_weight,
        "force_weight": force_weight, "zero_force_labels": zero_force_labels,
        "patience": patience, "anchor_weight": anchor_weight,
    }  # fmt: skip
    try:
        settings = FineTuneSettings(**{k: v for k, v in given.items() if v is not None})
        spec = ModelSpec.parse(parent)
    except (ValidationError, ValueError) as exc:
        _fail(str(exc))
    train = FineTuneMaker(
        parent=spec, settings=settings, work_dir=str(work_dir) if work_dir else None
    ).make(reference)
    jobs = [train]
    if evaluate:
        for model in (spec, train.output.model):
            jobs += [evaluate_parts(model, reference), bulk_forgetting(model, spec, reference)]
    _show_finetune_progress()
    store = get_job_store()
    responses = run_locally(Flow(jobs), store=store, log=False, ensure_success=True)
    doc = responses[train.uuid][1].output
    console.print(
        f"{doc.model_id}: X={doc.depth}, {doc.trainable_parameters:,} trainable parameters, "
        f"best epoch {doc.best_epoch} of {len(doc.history) - 1}, val gamma MAE "
        f"{_num(doc.best_val_gamma_mae)} J/m², {doc.wall_seconds:.0f} s; dropped "
        + ", ".join(f"{reason} {len(keys)}" for reason, keys in sorted(doc.dropped.items()))
    )
    if evaluate:
        build()
        ids = (spec.model_id, doc.model_id)
        rows = [r for r in sweep_summary(reference) if r["model_id"] in ids]
        console.print(_sweep_table(rows, title=f"{doc.model_id} on {reference} (J/m²)"))


@app.command()
def sweep(
    config: Annotated[Path, typer.Argument(help="Sweep YAML (configs/finetune_sweep.yaml).")],
    out: Annotated[Path | None, typer.Option(help="Write the summary rows as JSON.")] = None,
) -> None:
    """Fine-tune for every X and seed of CONFIG, evaluate every checkpoint, tabulate."""
    import json

    from jobflow import run_locally
    from pydantic import ValidationError

    from surfflows.jobs.finetune import SweepConfig, sweep_summary
    from surfflows.stores import get_job_store

    try:
        sweep_config = SweepConfig.from_yaml(config)
        flow = sweep_config.maker().make(sweep_config.reference)
    except (ValidationError, ValueError, FileNotFoundError) as exc:
        _fail(str(exc))
    _show_finetune_progress()
    start = time.perf_counter()
    run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    build()
    summary = {}
    for mode in sweep_config.modes:
        summary[mode] = sweep_summary(sweep_config.reference, sweep_config.name, mode)
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
    import json

    import yaml
    from jobflow import run_locally

    from surfflows.jobs.learning_curve import (
        LearningCurveConfig,
        coverage,
        learning_curve_rows,
        summarize_curve,
    )
    from surfflows.models import ModelSpec
    from surfflows.plots import coverage_plot, learning_curve_plot
    from surfflows.stores import get_job_store, get_store

    try:
        campaign = LearningCurveConfig.model_validate(yaml.safe_load(config.read_text()))
    except Exception as exc:
        _fail(f"{config}: {exc}")
    start = time.perf_counter()
    if run_flow:
        flow = campaign.maker().make(campaign.reference)
        run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
        build()
    names = ("outputs", "benchmarks", "references", "splits", "features", "selections")
    stores = {n: get_store(n) for n in names}
    for store in stores.values():
        store.connect()
    rows = learning_curve_rows(stores["outputs"], stores["benchmarks"], campaign.name)
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
    top = max(campaign.budgets)
    ids = [
        d["selection_id"]
        for d in stores["selections"].query({"set_name": campaign.reference, "seed": 0})
        if d["budget"] == top or len(d["reference_keys"]) == top
    ]
    pca, marked = coverage(campaign.reference, ids, ModelSpec.parse(campaign.parent), stores)
    path = coverage_plot(pca, marked, out / f"{campaign.name}_coverage.png", campaign.reference)
    console.print(f"wrote {path}; {time.perf_counter() - start:.0f} s")


@app.command()
def info() -> None:
    """Show the settings in force and how many documents each store holds."""
    from surfflows.settings import get_settings
    from surfflows.stores import STORE_NAMES, get_store

    settings = get_settings()
    where = settings.mongodb_uri or f"MontyDB at {settings.db_dir}"
    console.print(f"database: [bold]{settings.database}[/] on {where}")
    for name in STORE_NAMES:
        store = get_store(name, settings)
        with store:
            console.print(f"  {name:16s} {store.count():>8d} documents")


if __name__ == "__main__":
    app()
