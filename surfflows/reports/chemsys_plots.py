"""Figures of chemical-system thermodynamics: termination maps and Wulff shapes over a region.

The termination map is the figure of ab initio thermodynamics papers: the target's stability
region in (Δμ_A, Δμ_O), its edges labelled with the competing phase, coloured by the stable
termination of each facet (one panel per facet).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Patch, Polygon

from surfflows.core.text import miller_text
from surfflows.reports.plots import wulff_comparison_plot
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc, TerminationMap


def _axis_label(element: str) -> str:
    return f"Δμ$_{{{element}}}$ (eV)"


def _termination_names(doc: ChemicalSystemThermoDoc, facet: TerminationMap) -> list[str]:
    planes = {p.entry_id: p for p in doc.planes}
    return [f"{planes[e].termination} ({planes[e].slab_formula})" for e in facet.entry_ids]


def _title(doc: ChemicalSystemThermoDoc) -> str:
    region = doc.region
    status = (
        "on the model's hull"
        if region.stable
        else f"{region.e_above_hull:.3f} eV/atom above the model's hull (region: shifted onto it)"
    )
    return (
        f"{doc.formula} ({doc.material_id}), {doc.model_id}: stable terminations, "
        f"{region.dependent} from the bulk; {status}"
    )


def _edge_labels(ax: plt.Axes, doc: ChemicalSystemThermoDoc) -> None:
    """Competing phase at the middle of each edge, just outside the polygon."""
    vertices = np.asarray(doc.region.vertices)
    centroid = np.asarray(doc.region.centroid)
    span = np.ptp(vertices, axis=0).max()
    for i, phases in enumerate(doc.region.edge_phases):
        a, b = vertices[i], vertices[(i + 1) % len(vertices)]
        middle = (a + b) / 2
        outward = middle - centroid
        outward /= np.linalg.norm(outward) or 1.0
        x, y = middle + 0.04 * span * outward
        angle = np.degrees(np.arctan2(b[1] - a[1], b[0] - a[0]))
        if angle > 90 or angle < -90:
            angle -= 180 * np.sign(angle)
        ax.text(
            x,
            y,
            " / ".join(phases) or "?",
            rotation=angle,
            rotation_mode="anchor",
            ha="center",
            va="center",
            fontsize=7,
            color="0.15",
        )


def _map_panel(ax: plt.Axes, doc: ChemicalSystemThermoDoc, facet: TerminationMap) -> None:
    region = doc.region
    names = _termination_names(doc, facet)
    colours = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    vertices = np.asarray(region.vertices)
    if len(region.independent) == 1:
        for i, entry in enumerate(facet.entry_ids):
            if entry in facet.cells:
                (lo,), (hi,) = facet.cells[entry]
                ax.axvspan(lo, hi, color=colours(i % colours.N))
        for vertex, phases in zip(vertices[:, 0], region.vertex_phases, strict=True):
            ax.annotate(", ".join(phases), (vertex, 1.0), ha="center", va="bottom", fontsize=7)
        ax.set_yticks([])
        ax.set_xlabel(_axis_label(region.independent[0]))
    else:
        for i, entry in enumerate(facet.entry_ids):
            if entry in facet.cells:
                ax.add_patch(Polygon(facet.cells[entry], closed=True, color=colours(i % colours.N)))
        ax.add_patch(Polygon(vertices, closed=True, fill=False, lw=1.2, ec="k"))
        ax.plot(*region.centroid, marker="+", color="k", ms=8)
        _edge_labels(ax, doc)
        margin = 0.12 * np.ptp(vertices, axis=0)
        ax.set_xlim(vertices[:, 0].min() - margin[0], vertices[:, 0].max() + margin[0])
        ax.set_ylim(vertices[:, 1].min() - margin[1], vertices[:, 1].max() + margin[1])
        ax.set_xlabel(_axis_label(region.independent[0]))
        ax.set_ylabel(_axis_label(region.independent[1]))
    handles = [
        Patch(color=colours(i % colours.N), label=f"{name}: {facet.area_fractions[entry]:.0%}")
        for i, (name, entry) in enumerate(zip(names, facet.entry_ids, strict=True))
        if entry in facet.cells
    ]
    ax.legend(handles=handles, fontsize=7, loc="lower left", framealpha=0.85)
    ax.set_title(miller_text(facet.miller_index), fontsize=10)


def termination_map_plot(doc: ChemicalSystemThermoDoc, path: str | Path) -> Path:
    """PNG of the termination map: one panel per facet over the stability region.

    Each panel shows the region (polygon, or interval for a binary target) split into the
    exact cells where each of the facet's terminations has the lowest gamma, the competing
    phase on each edge, the centroid (+) and the fraction of the region each termination
    holds.
    """
    n = len(doc.maps)
    cols = min(n, 3)
    rows = -(-n // cols)
    one_d = len(doc.region.independent) == 1
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(5.2 * cols, (2.0 if one_d else 4.6) * rows + 0.6),
        dpi=120,
        squeeze=False,
        layout="constrained",
    )
    for ax, facet in zip(axes.flat, doc.maps, strict=False):
        _map_panel(ax, doc, facet)
    for ax in list(axes.flat)[n:]:
        ax.set_axis_off()
    fig.suptitle(_title(doc), fontsize=10)
    if doc.region.reason:
        fig.supxlabel(doc.region.reason, fontsize=7, color="0.3", wrap=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path.resolve()


def region_wulff_plot(doc: ChemicalSystemThermoDoc, path: str | Path) -> Path:
    """PNG of the Wulff shapes at every vertex of the region and at its centroid."""
    panels = []
    for point in doc.points:
        # Δμ_O is in the Wulff panel's own title.
        others = ", ".join(f"Δμ_{el} {v:+.2f}" for el, v in point.delta_mu.items() if el != "O")
        panels.append((f"{point.label}\n{others}" if others else point.label, point.wulff))
    caption = f"{doc.formula} ({doc.material_id}), {doc.model_id}: Wulff shapes over the region"
    return wulff_comparison_plot(panels, path, caption=caption)


def write_pngs(doc: ChemicalSystemThermoDoc, folder: str | Path) -> ChemicalSystemThermoDoc:
    """Draw both PNGs of ``doc`` (termination maps, Wulff shapes) into ``folder`` as
    ``<system>_<target>_<model id>_termination_map.png`` and ``…_wulff.png``; their paths go
    on ``doc``, which is returned."""
    folder = Path(folder)
    stem = f"{'-'.join(doc.chemical_system)}_{doc.material_id}_{doc.model_id}"
    doc.map_png = str(termination_map_plot(doc, folder / f"{stem}_termination_map.png"))
    doc.wulff_png = str(region_wulff_plot(doc, folder / f"{stem}_wulff.png"))
    return doc
