"""SrTiO3(001) under each model of a chemical-system campaign: the model columns of the DFT table.

Reads the newest ``ChemicalSystemThermoDoc`` of SrTiO3 per model from the configured
database (run ``surfflows run configs/sr-ti-o.yaml`` first; read only) and, for the (001)
facet, reports: the termination stable at the vertices on the TiO2 edge and on the Sr-rich
edge, the share of the region each termination holds, the cleavage energy
``E_cl = (gamma_SrO + gamma_TiO2) / 2`` (the same at every point), the width of
``Δμ_Sr + Δμ_O`` across the region, and gamma of both terminations at two named points (the
O-rich TiO2-rich vertex and the centroid). Prints a Markdown table and writes
``benchmarks/results/srtio3_001_models.json``.

Examples
--------
::

    surfflows run configs/sr-ti-o.yaml
    python benchmarks/srtio3_001_models.py
"""

from __future__ import annotations

import json
from pathlib import Path

from monty.json import MontyDecoder

from surfflows.core.text import miller_text
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc

RESULTS = Path(__file__).resolve().parent / "results" / "srtio3_001_models.json"
FACET = (1, 0, 0)
#: Phases on the Sr-rich side of SrTiO3's region.
SR_RICH = ("SrO", "Sr2TiO4", "Sr3Ti2O7")


def newest_documents(target: str = "SrTiO3") -> dict[str, ChemicalSystemThermoDoc]:
    """Model id -> the newest thermo document of ``target`` in the configured database."""
    from surfflows.stores import get_job_store

    store = get_job_store()
    with store:
        docs = store.query(
            {"output.@class": "ChemicalSystemThermoDoc", "output.material_id": target},
            sort={"completed_at": 1},
            load=True,
        )
        newest = {}
        for doc in docs:
            thermo = MontyDecoder().process_decoded(doc["output"])
            newest[thermo.model_id] = thermo
    return newest


def model_column(doc: ChemicalSystemThermoDoc) -> dict:
    """The SrTiO3(001) figures of one model."""
    facet = miller_text(FACET)
    planes = {p.termination.split("_")[0]: p for p in doc.planes if tuple(p.miller_index) == FACET}
    sro, tio2 = planes["SrO"], planes["TiO2"]
    (facet_map,) = [m for m in doc.maps if tuple(m.miller_index) == FACET]
    region = doc.region
    names = {sro.entry_id: "SrO", tio2.entry_id: "TiO2"}

    def at(point) -> dict:
        return {
            "delta_mu": point.delta_mu,
            "stable": names.get(point.stable[facet], point.stable[facet]),
            "gamma_SrO": point.gamma[sro.entry_id],
            "gamma_TiO2": point.gamma[tio2.entry_id],
        }

    vertices = doc.points[:-1]
    tio2_edge = [
        at(p) for p, phases in zip(vertices, region.vertex_phases, strict=True) if "TiO2" in phases
    ]
    sr_edge = [
        at(p)
        for p, phases in zip(vertices, region.vertex_phases, strict=True)
        if set(phases) & set(SR_RICH)
    ]
    o_rich_ti_rich = [
        (p, at(p))
        for p, phases in zip(vertices, region.vertex_phases, strict=True)
        if "TiO2" in phases and "O2" in phases
    ]
    sums = [sum(v) for v in region.vertices]
    centroid = at(doc.centroid)
    return {
        "model_id": doc.model_id,
        "region_vertices": region.vertices,
        "vertex_phases": region.vertex_phases,
        "termination_at_TiO2_edge": sorted({v["stable"] for v in tio2_edge}),
        "termination_at_Sr_rich_edge": sorted({v["stable"] for v in sr_edge}),
        "sr_rich_phases": sorted({p for ph in region.vertex_phases for p in ph if p in SR_RICH}),
        "share": {names[k]: v for k, v in facet_map.area_fractions.items() if k in names},
        "cleavage_energy": (centroid["gamma_SrO"] + centroid["gamma_TiO2"]) / 2,
        "width_delta_mu_SrO": max(sums) - min(sums),
        "at_O_rich_TiO2_vertex": o_rich_ti_rich[0][1] if o_rich_ti_rich else None,
        "at_centroid": centroid,
        "slab_formulas": {"SrO": sro.slab_formula, "TiO2": tio2.slab_formula},
    }


def main() -> None:
    columns = {model: model_column(doc) for model, doc in newest_documents().items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(columns, indent=1))
    rows = [
        ("termination at the SrTiO3/TiO2 edge", lambda c: ", ".join(c["termination_at_TiO2_edge"])),
        (
            "termination at the Sr-rich edge",
            lambda c: (
                f"{', '.join(c['termination_at_Sr_rich_edge'])} "
                f"(edge phase {', '.join(c['sr_rich_phases'])})"
            ),
        ),
        (
            "share of the region SrO / TiO2",
            lambda c: f"{c['share']['SrO']:.0%} / {c['share']['TiO2']:.0%}",
        ),
        ("E_cl = gamma on the coexistence line (J/m²)", lambda c: f"{c['cleavage_energy']:.2f}"),
        ("width of Δμ_Sr + Δμ_O (eV)", lambda c: f"{c['width_delta_mu_SrO']:.2f}"),
        (
            "gamma SrO / TiO2 at the O-rich TiO2 vertex (J/m²)",
            lambda c: (
                "-"
                if c["at_O_rich_TiO2_vertex"] is None
                else f"{c['at_O_rich_TiO2_vertex']['gamma_SrO']:.2f} / "
                f"{c['at_O_rich_TiO2_vertex']['gamma_TiO2']:.2f} at "
                + ", ".join(
                    f"Δμ_{k} {v:+.2f}" for k, v in c["at_O_rich_TiO2_vertex"]["delta_mu"].items()
                )
            ),
        ),
        (
            "gamma SrO / TiO2 at the centroid (J/m²)",
            lambda c: (
                f"{c['at_centroid']['gamma_SrO']:.2f} / {c['at_centroid']['gamma_TiO2']:.2f}"
                " at "
                + ", ".join(f"Δμ_{k} {v:+.2f}" for k, v in c["at_centroid"]["delta_mu"].items())
            ),
        ),
    ]
    print("| SrTiO3(001) | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for label, cell in rows:
        print(f"| {label} | " + " | ".join(cell(c) for c in columns.values()) + " |")


if __name__ == "__main__":
    main()
