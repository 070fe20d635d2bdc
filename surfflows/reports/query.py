"""Queries over campaign results in the JobStore: surface energies, reusable results.

:func:`surface_energies`, its parts and its exports import neither jobflow nor pymatgen (a
second or two at the start of ``surfflows results``); the queries that rebuild documents and
slabs import them where they run.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from surfflows.core.text import miller_text

if TYPE_CHECKING:
    from jobflow import JobStore
    from maggma.core import Store

    from surfflows.core.slabs import SlabSettings
    from surfflows.schemas.relax import BulkRelaxDoc
    from surfflows.schemas.surface import SurfaceEnergyDoc
    from surfflows.schemas.thermo import ElementReferenceDoc

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


def surface_energy_criteria(
    *,
    formula: str | None = None,
    material_id: str | None = None,
    miller_index: tuple[int, int, int] | None = None,
    model_id: str | None = None,
    criteria: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Query criteria of the stored surface-energy job documents matching the filters.

    Parameters
    ----------
    formula, material_id, miller_index, model_id
        Optional exact-match filters.
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
    return criteria


def newest_surface_energies(
    job_docs: Iterable[dict[str, Any]], latest_only: bool = True
) -> list[dict[str, Any]]:
    """The surface-energy documents of stored job documents, sorted by material, facet,
    gamma; with ``latest_only`` only the newest per (material, model, facet, shift,
    termination), so reruns of a campaign do not show twice."""
    docs = [d["output"] | {"completed_at": d.get("completed_at")} for d in job_docs]
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
        The campaign JobStore, or its docs store ``outputs``.
    formula, material_id, miller_index, model_id, criteria
        Filters (:func:`surface_energy_criteria`).
    latest_only
        See :func:`newest_surface_energies`.
    """
    criteria = surface_energy_criteria(
        formula=formula,
        material_id=material_id,
        miller_index=miller_index,
        model_id=model_id,
        criteria=criteria,
    )
    with store:
        return newest_surface_energies(store.query(criteria), latest_only=latest_only)


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


def _decoded(doc: dict | None):
    from monty.json import MontyDecoder

    return None if doc is None else MontyDecoder().process_decoded(doc["output"])


def stored_reference(store: JobStore, element: str, model_id: str) -> ElementReferenceDoc | None:
    """Newest converged elemental reference of ``element`` by ``model_id`` in ``store``."""
    with store:
        return _decoded(
            store.query_one(
                {
                    "output.@class": "ElementReferenceDoc",
                    "output.element": element,
                    "output.model_id": model_id,
                    "output.converged": True,
                },
                sort={"completed_at": -1},
                load=True,
            )
        )


def stored_surface_energies(
    store: JobStore, material_id: str, model_id: str, fmax: float, slab_settings: SlabSettings
) -> tuple[BulkRelaxDoc, list[SurfaceEnergyDoc]] | None:
    """The newest complete surface-energy campaign of a material that a flow can reuse.

    Complete: the newest bulk relaxation of ``material_id`` by ``model_id``, converged at
    an ``fmax`` no looser than ``fmax``, with a surface-energy document (computed against
    that bulk energy) for every slab ``slab_settings`` cut from it, with the same cell and
    composition. None if anything is missing.
    """
    from pymatgen.core import Composition

    from surfflows.core.slabs import generate_slabs
    from surfflows.schemas.surface import SurfaceEnergyDoc

    with store:
        bulk = _decoded(
            store.query_one(
                {
                    "output.@class": "BulkRelaxDoc",
                    "output.material_id": material_id,
                    "output.model_id": model_id,
                },
                sort={"completed_at": -1},
                load=True,
            )
        )
    if bulk is None or not bulk.converged or bulk.fmax > fmax:
        return None
    docs = {
        (tuple(d["miller_index"]), d["shift"], d["termination"]): d
        for d in surface_energies(store, material_id=material_id, model_id=model_id)
        if d["bulk_energy"] == bulk.energy
    }
    surfaces = []
    for candidate in generate_slabs(bulk.structure, slab_settings):
        doc = docs.get((candidate.miller_index, candidate.shift, candidate.termination))
        if doc is None or abs(doc["area"] - candidate.area) > 1e-6:
            return None
        if Composition(doc["slab_formula"]) != candidate.structure.composition:
            return None
        surfaces.append(SurfaceEnergyDoc.model_validate(doc))
    return bulk, surfaces
