"""Builder outputs: per-slab surface-energy errors and per-model statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from surfflows.core.slabs import (
    MillerIndex,
)
from surfflows.core.timestamps import now_iso
from surfflows.schemas.provenance import OutputDoc


class SurfaceErrorDoc(OutputDoc):
    """Surface-energy error of one reference slab under one model and mode (builder output)."""

    error_id: str = Field(description="model_id|mode|reference_key (upsert key).")
    model_id: str = Field(description="Model identity.")
    set_name: str = Field(description="Reference set.")
    mode: str = Field(description="single_point or relaxed.")
    reference_key: str = Field(description="Key of the reference slab.")
    material_id: str = Field(description="Bulk material (split unit).")
    split: str | None = Field(description="train / val / test part of the material.")
    formula: str = Field(description="Formula of the slab.")
    miller_index: MillerIndex | None = Field(description="Miller index, if recorded.")
    facet_family: str = Field(description="{100}, {110}, {111}, high-index or unknown.")
    chemistry_class: str = Field(description="oxide, metal or other.")
    status: Literal["ok", "excluded"] = Field(description="ok: error computed.")
    reason: str | None = Field(description="Why the slab is excluded.")
    gamma_ref: float | None = Field(description="Reference surface energy, J/m².")
    gamma_model: float | None = Field(description="Model surface energy, J/m².")
    gamma_error: float | None = Field(description="gamma_model - gamma_ref, J/m².")
    energy_error_per_atom: float | None = Field(description="Raw slab energy error, eV/atom.")
    source_completed_at: str = Field(description="Newest evaluation this error was built from.")
    references_updated_at: str = Field(description="Newest reference ingest it saw.")
    last_updated: str = Field(default_factory=now_iso, description="When the builder wrote it.")


class BenchmarkDoc(OutputDoc):
    """Error statistics of one model on one reference set, mode and split part."""

    benchmark_id: str = Field(description="model_id|set_name|mode|split (upsert key).")
    model_id: str = Field(description="Model identity.")
    set_name: str = Field(description="Reference set.")
    mode: str = Field(description="single_point or relaxed.")
    split: str = Field(description="train, val, test or all.")
    n: int = Field(description="Slabs with an error.")
    mae: float | None = Field(description="Mean absolute gamma error, J/m².")
    rmse: float | None = Field(description="Root-mean-square gamma error, J/m².")
    mean_signed_error: float | None = Field(description="Mean of gamma_model - gamma_ref.")
    max_abs_error: float | None = Field(description="Largest absolute gamma error, J/m².")
    by_facet_family: dict[str, dict] = Field(description="Statistics per facet family.")
    by_chemistry_class: dict[str, dict] = Field(description="Statistics per chemistry class.")
    n_excluded: dict[str, int] = Field(description="Excluded slabs per reason category.")
    excluded_reasons: dict[str, int] = Field(description="Excluded slabs per exact reason.")
    source_updated: str = Field(description="Newest surface-error document used.")
    last_updated: str = Field(default_factory=now_iso, description="When the builder wrote it.")
