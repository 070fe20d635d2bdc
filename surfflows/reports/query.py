"""Queries over campaign results in the JobStore."""

from __future__ import annotations

import csv
import io
import json
from typing import TYPE_CHECKING, Any

from surfflows.core.text import miller_text

if TYPE_CHECKING:
    from maggma.core import Store

SURFACE_ENERGY_COLUMNS = (
    "material_id",
    "formula",
    "miller_index",
    "termination",
    "model_id",
    "status",
    "gamma",
    "n_slab_atoms",
    "slab_steps",
    "slab_formula",
    "shift",
    "reason",
)


def surface_energies(
    store: Store,
    *,
    formula: str | None = None,
    material_id: str | None = None,
    miller_index: tuple[int, int, int] | None = None,
    model_id: str | None = None,
    latest_only: bool = True,
    criteria: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Surface-energy documents matching the filters, sorted by material, facet, gamma.

    Parameters
    ----------
    store
        The campaign JobStore, or its docs store ``outputs`` (what ``surfflows results``
        opens: it needs no jobflow import).
    formula, material_id, miller_index, model_id
        Optional exact-match filters.
    latest_only
        Keep only the newest document per (material, model, facet, shift, termination), so
        reruns of a campaign do not show twice.
    criteria
        Further query criteria on the stored job documents (e.g. job metadata).
    """
    criteria = {"output.@class": "SurfaceEnergyDoc"} | (criteria or {})
    for field, value in (
        ("formula", formula),
        ("material_id", material_id),
        ("model_id", model_id),
        ("miller_index", list(miller_index) if miller_index else None),
    ):
        if value is not None:
            criteria[f"output.{field}"] = value
    with store:
        docs = [
            d["output"] | {"completed_at": d.get("completed_at")} for d in store.query(criteria)
        ]
    if latest_only:
        newest: dict[tuple, dict] = {}
        for doc in sorted(docs, key=lambda d: d["completed_at"] or ""):
            key = (
                doc["material_id"],
                doc["model_id"],
                tuple(doc["miller_index"]),
                doc["shift"],
                doc["termination"],
            )
            newest[key] = doc
        docs = list(newest.values())
    return sorted(
        docs,
        key=lambda d: (
            d["material_id"],
            d["model_id"],
            tuple(d["miller_index"]),
            d["gamma"] if d["gamma"] is not None else float("inf"),
        ),
    )


def to_rows(docs: list[dict[str, Any]], columns=SURFACE_ENERGY_COLUMNS) -> list[dict[str, Any]]:
    """Flat rows (Miller index as ``(hkl)`` text) for tables and CSV."""
    rows = []
    for doc in docs:
        row = {c: doc.get(c) for c in columns}
        row["miller_index"] = miller_text(doc["miller_index"])
        rows.append(row)
    return rows


def export(docs: list[dict[str, Any]], fmt: str) -> str:
    """Documents as ``json`` (full documents) or ``csv`` (flat rows) text."""
    if fmt == "json":
        return json.dumps(docs, indent=2, default=str)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(SURFACE_ENERGY_COLUMNS))
        writer.writeheader()
        writer.writerows(to_rows(docs))
        return buffer.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; use json or csv")
