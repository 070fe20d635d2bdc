"""One static HTML page of a project's results: tables, parity plots, model cards, figures.

:func:`write_report_page` writes ``index.html`` into the report folder of
``surfflows report --out DIR``. The page needs no server and no network: its style is
inline, it runs no script, and every image it shows is a file under ``DIR`` (figures
written elsewhere, e.g. the thermodynamics PNGs of a flow's working folder or the
benchmark figures of a clone, are copied into ``DIR/figures/``).

What it shows, each section only where the database has something for it:

* the surface-energy benchmark rows (``benchmarks`` store, gamma), and the test-split
  leaderboard (:func:`surfflows.reports.leaderboard.leaderboard`);
* forgetting: the bulk-energy rows (aligned bulk energy MAE against the parent's);
* every PNG already in ``DIR`` (parity plots, leaderboard, fine-tuning), by kind;
* model cards of packaged models (given by the caller) and the checkpoints registered
  in the JobStore;
* thermodynamics: surface phase diagrams, Wulff shapes and Wulff comparisons of the
  JobStore's documents, where their PNG files are on this machine;
* figures of the folders the caller names (``benchmarks/results`` of a clone: the
  relaxation engine, peers, fine-tuning sweeps), with the JSON next to each.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from jobflow import JobStore
from maggma.core import Store

from surfflows.core.timestamps import now_iso
from surfflows.reports.leaderboard import leaderboard
from surfflows.schemas.models import ModelCard
from surfflows.stores import get_job_store, using_store

#: File name of the page inside the report folder.
PAGE_FILE = "index.html"
#: Sub-folder of the report folder for figures copied from elsewhere.
FIGURES_DIR = "figures"
#: Kinds of the PNGs of the report folder, by file-name prefix (first match wins).
FIGURE_KINDS = (
    ("leaderboard", "Leaderboard"),
    ("parity_", "Parity plots"),
    ("finetune_", "Fine-tuning"),
    ("", "Other figures"),
)


@dataclass
class Figure:
    """An image of the page: its path relative to the page, a caption, optional data file."""

    src: str
    caption: str
    data: str | None = None


@dataclass
class Section:
    """A titled group of figures."""

    title: str
    figures: list[Figure] = field(default_factory=list)


@dataclass
class ReportPage:
    """Everything the page shows (see the module docstring); rendered by :func:`render_page`."""

    created_at: str
    filters: dict[str, str]
    gamma_rows: list[dict[str, Any]] = field(default_factory=list)
    leaderboard_rows: list[dict[str, Any]] = field(default_factory=list)
    bulk_rows: list[dict[str, Any]] = field(default_factory=list)
    report_figures: list[Section] = field(default_factory=list)
    cards: list[ModelCard] = field(default_factory=list)
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    thermo: list[Section] = field(default_factory=list)
    missing_thermo_files: list[str] = field(default_factory=list)
    benchmark_figures: list[Section] = field(default_factory=list)


def _num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: ``-`` for None or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _excluded(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted((counts or {}).items()))


def render_page(page: ReportPage) -> str:
    """The HTML text of ``page`` (jinja2 template ``templates/report.html``, autoescaped)."""
    environment = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (files("surfflows.reports") / "templates" / name).read_text()
        ),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(num=_num, percent=_percent, excluded=_excluded)
    return environment.get_template("report.html").render(page=page)


def _figure_kind(name: str) -> str:
    return next(title for prefix, title in FIGURE_KINDS if name.startswith(prefix))


def _report_figures(out: Path) -> list[Section]:
    """The PNGs directly in the report folder, grouped by kind (in the order of FIGURE_KINDS)."""
    sections = {title: Section(title) for _, title in FIGURE_KINDS}
    for path in sorted(out.glob("*.png")):
        sections[_figure_kind(path.name)].figures.append(Figure(path.name, path.stem))
    return [s for s in sections.values() if s.figures]


def _copy_into(path: Path, out: Path, folder: str) -> str:
    """Copy ``path`` to ``out/figures/<folder>/`` (unless it is there); its path from the page."""
    target = out / FIGURES_DIR / folder / path.name
    target.parent.mkdir(parents=True, exist_ok=True)
    if path.resolve() != target.resolve():
        shutil.copyfile(path, target)
    return target.relative_to(out).as_posix()


def _thermo_figures(outputs: Store, out: Path, criteria: dict[str, Any]) -> tuple[Section, list]:
    """Phase diagrams, Wulff shapes and comparisons of the JobStore's thermodynamics documents.

    A PNG named on a document but absent here (written on a remote worker) is listed, not
    shown.
    """
    section, missing = Section("Surface phase diagrams and Wulff shapes"), []
    wanted: list[tuple[str, str]] = []  # (png path, caption)
    for doc in outputs.query({"output.@class": "SurfaceThermoDoc", **criteria}, ["output"]):
        thermo = doc["output"]
        name = dict.fromkeys((thermo["formula"], thermo["material_id"]))  # once if the same
        label = f"{' '.join(name)}, {thermo['model_id']}"
        if thermo.get("diagram_png"):
            wanted.append((thermo["diagram_png"], f"{label}: gamma versus delta mu_O"))
        for shape in thermo.get("wulff_shapes") or []:
            if shape.get("wulff_png"):
                dmu = shape.get("delta_mu_O")
                at = "" if dmu is None else f" at delta mu_O = {dmu:+.2f} eV"
                wanted.append((shape["wulff_png"], f"{label}: Wulff shape{at}"))
    for doc in outputs.query({"output.@class": "WulffComparisonDoc", **criteria}, ["output"]):
        comparison = doc["output"]
        if comparison.get("comparison_png"):
            caption = (
                f"{comparison['material_id']}: {comparison['model_id']} versus "
                f"{comparison['reference_set']} ({comparison['level_of_theory']})"
            )
            wanted.append((comparison["comparison_png"], caption))
    for png, caption in dict.fromkeys(wanted):
        path = Path(png)
        if path.is_file():
            section.figures.append(Figure(_copy_into(path, out, "thermo"), caption))
        else:
            missing.append(png)
    return section, missing


def _folder_figures(folders: Iterable[Path], out: Path) -> list[Section]:
    """PNGs of each folder copied into the report, each with the JSON it was plotted from."""
    sections = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        section = Section(f"Figures of {folder}")
        data_files = sorted(folder.glob("*.json"), key=lambda p: -len(p.stem))
        for path in sorted(folder.glob("*.png")):
            # the JSON a figure was plotted from: the longest stem its own name starts with
            data = next((d for d in data_files if path.stem.startswith(d.stem)), None)
            section.figures.append(
                Figure(
                    _copy_into(path, out, folder.name),
                    path.stem,
                    None if data is None else _copy_into(data, out, folder.name),
                )
            )
        if section.figures:
            sections.append(section)
    return sections


def _checkpoints(store: JobStore) -> list[dict[str, Any]]:
    """Registered checkpoints of the JobStore: model id, sha256, size, heads, where from."""
    rows = []
    for doc in store.query(
        {"output.@class": "CheckpointDoc"},
        properties=["output.model_id", "output.sha256", "output.n_bytes", "output.heads",
                    "output.default_head", "output.metadata", "completed_at"],
        sort={"completed_at": 1},
    ):  # fmt: skip
        output = doc["output"]
        rows.append(
            {
                "model_id": output["model_id"],
                "sha256": output["sha256"],
                "n_bytes": output.get("n_bytes"),
                "heads": ", ".join(sorted(output.get("heads") or {})),
                "default_head": output.get("default_head"),
                "packaged_model": (output.get("metadata") or {}).get("packaged_model"),
                "registered_at": doc.get("completed_at"),
            }
        )
    return rows


def collect_page(
    out: Path,
    benchmarks: Store,
    job_store: JobStore,
    *,
    model: str | None = None,
    reference: str | None = None,
    cards: Sequence[ModelCard] = (),
    figure_folders: Sequence[Path] = (),
) -> ReportPage:
    """What the page of report folder ``out`` shows, from connected stores (module docstring)."""
    criteria = {k: v for k, v in (("model_id", model), ("set_name", reference)) if v}
    rows = sorted(
        benchmarks.query(criteria),
        key=lambda r: (r["set_name"], r["model_id"], r["mode"], r["split"]),
    )
    page = ReportPage(created_at=now_iso(), filters=criteria)
    page.gamma_rows = [r for r in rows if r.get("quantity", "gamma") == "gamma"]
    page.bulk_rows = [r for r in rows if r.get("quantity") == "bulk_energy"]
    page.leaderboard_rows = leaderboard(
        benchmarks,
        job_store,
        "test",
        [model] if model else None,
        [reference] if reference else None,
    )
    page.report_figures = _report_figures(out)
    page.cards = list(cards)
    page.checkpoints = _checkpoints(job_store)
    thermo_criteria = {f"output.{k}": v for k, v in criteria.items() if k == "model_id"}
    thermo, page.missing_thermo_files = _thermo_figures(job_store.docs_store, out, thermo_criteria)
    page.thermo = [thermo] if thermo.figures else []
    page.benchmark_figures = _folder_figures(figure_folders, out)
    return page


def write_report_page(
    out: str | Path,
    *,
    model: str | None = None,
    reference: str | None = None,
    cards: Sequence[ModelCard] = (),
    figure_folders: Sequence[Path] = (),
    benchmarks: Store | None = None,
    job_store: JobStore | None = None,
) -> Path:
    """Write ``out/index.html``: the project's results as one static page.

    Parameters
    ----------
    out
        The report folder (``surfflows report --out``); its PNGs are shown, figures from
        elsewhere are copied into ``out/figures/``.
    model, reference
        Only this model id / reference set in the tables (as ``surfflows report``).
    cards
        Model cards to show (the packaged models').
    figure_folders
        Folders of benchmark figures to include (e.g. ``benchmarks/results`` of a clone).
    benchmarks, job_store
        The ``benchmarks`` store and the JobStore; default: those of the settings.

    Returns
    -------
    Path
        The page.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    own_job_store = job_store is None
    job_store = get_job_store() if own_job_store else job_store
    job_store.connect()  # a no-op for a connected store; the caller's is left open
    try:
        with using_store(benchmarks, "benchmarks") as bench:
            page = collect_page(
                out,
                bench,
                job_store,
                model=model,
                reference=reference,
                cards=cards,
                figure_folders=figure_folders,
            )
    finally:
        if own_job_store:
            job_store.close()
    path = out / PAGE_FILE
    path.write_text(render_page(page), encoding="utf-8")
    return path
