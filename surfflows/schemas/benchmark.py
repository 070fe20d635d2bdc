"""Builder outputs: per-slab surface-energy and per-bulk energy errors, per-model statistics."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from surfflows.core.text import MillerIndex
from surfflows.core.timestamps import now_iso
from surfflows.schemas.provenance import OutputDoc


class SurfaceErrorDoc(OutputDoc):
    """Error of one reference slab (gamma) or bulk (energy) under one model and mode.

    Slabs: gamma model - reference. A gamma-only slab (no DFT total energy) has no
    ``energy_error_per_atom``. Bulks (``kind="bulk"``): energy per atom after per-element
    offsets fitted on the bulks of the set's other split parts, and forces where labelled.
    """

    error_id: str = Field(description="model_id|mode|reference_key (upsert key).")
    kind: Literal["slab", "bulk"] = Field(default="slab", description="Kind of reference record.")
    model_id: str = Field(description="Model identity.")
    set_name: str = Field(description="Reference set.")
    mode: str = Field(description="single_point or relaxed.")
    reference_key: str = Field(description="Key of the reference slab.")
    material_id: str = Field(description="Bulk material (split unit).")
    split: str | None = Field(description="train / val / test part of the material.")
    formula: str = Field(description="Reduced formula of the structure.")
    miller_index: MillerIndex | None = Field(description="Miller index, if recorded.")
    facet_family: str = Field(description="{100}, {110}, {111}, high-index or unknown.")
    chemistry_class: str = Field(description="oxide, metal or other.")
    status: Literal["ok", "excluded"] = Field(description="ok: error computed.")
    reason: str | None = Field(description="Why the record is excluded.")
    gamma_only: bool = Field(
        default=False,
        description="Slab with a published gamma and no DFT total energy: judged on gamma "
        "only, no energy error.",
    )
    gamma_ref: float | None = Field(default=None, description="Reference surface energy, J/m².")
    gamma_model: float | None = Field(default=None, description="Model surface energy, J/m².")
    gamma_error: float | None = Field(default=None, description="gamma_model - gamma_ref, J/m².")
    energy_error_per_atom: float | None = Field(
        description="Raw energy error (model - DFT), eV/atom; None without a DFT energy."
    )
    aligned_energy_error_per_atom: float | None = Field(
        default=None,
        description="Bulks: energy error after per-element alignment, eV/atom (offsets "
        "fitted on the bulks of the other split parts; kept while bulks added move them by at "
        "most 0.1 meV/atom).",
    )
    formation_energy_error_per_atom: float | None = Field(
        default=None,
        description="Bulks: model - DFT formation energy per atom, eV/atom, each side "
        "referenced to its own energies of the elemental set (mp_elemental_refs) when the model "
        "evaluated it in the same mode.",
    )
    alignment: str | None = Field(
        default=None, description="Bulks: what the per-element offsets were fitted on."
    )
    force_mae: float | None = Field(
        default=None, description="Bulks: force MAE over components, eV/Å (where labelled)."
    )
    n_atoms: int | None = Field(default=None, description="Atoms in the structure.")
    source_completed_at: str = Field(description="Newest evaluation this error was built from.")
    references_updated_at: str = Field(description="Newest reference ingest it saw.")
    last_updated: str = Field(default_factory=now_iso, description="When the builder wrote it.")


class BenchmarkDoc(OutputDoc):
    """Error statistics of one model on one reference set, mode, split part and quantity.

    ``quantity="gamma"``: surface-energy errors of slabs (J/m²). ``quantity="bulk_energy"``:
    aligned bulk energy errors per atom (eV/atom), the forgetting check, with the change
    relative to the parent model for a fine-tuned one.
    """

    benchmark_id: str = Field(
        description="model_id|set_name|mode|split, plus '|bulk_energy' for bulk rows (upsert key)."
    )
    quantity: Literal["gamma", "bulk_energy"] = Field(
        default="gamma", description="gamma (slabs, J/m²) or bulk_energy (bulks, eV/atom)."
    )
    model_id: str = Field(description="Model identity.")
    set_name: str = Field(description="Reference set.")
    mode: str = Field(description="single_point or relaxed.")
    split: str = Field(description="train, val, test or all.")
    n: int = Field(description="Records with an error.")
    mae: float | None = Field(description="Mean absolute error (J/m² or eV/atom).")
    rmse: float | None = Field(description="Root-mean-square error.")
    mean_signed_error: float | None = Field(description="Mean of model - reference.")
    max_abs_error: float | None = Field(description="Largest absolute error.")
    n_gamma_only: int = Field(default=0, description="Gamma rows from gamma-only slabs.")
    raw_energy_mae: float | None = Field(
        default=None, description="Bulk rows: MAE of the unaligned energy per atom, eV/atom."
    )
    n_raw: int = Field(default=0, description="Bulk rows: bulks with an unaligned error.")
    formation_energy_mae: float | None = Field(
        default=None,
        description="Bulk rows: MAE of model - DFT formation energies against the elemental "
        "set, eV/atom.",
    )
    n_formation: int = Field(default=0, description="Bulk rows: bulks with a formation error.")
    force_mae: float | None = Field(
        default=None, description="Bulk rows: force MAE, eV/Å, over labelled bulks' atoms."
    )
    n_force: int = Field(default=0, description="Bulk rows: bulks with a force error.")
    parent_model_id: str | None = Field(
        default=None, description="Model this one was fine-tuned from (registry), if any."
    )
    parent_mae: float | None = Field(
        default=None, description="The parent's MAE on the same rows, if built."
    )
    relative_change: float | None = Field(
        default=None, description="mae / parent_mae - 1 (0.1: 10 % worse than the parent)."
    )
    parent_raw_energy_mae: float | None = Field(
        default=None, description="Bulk rows: the parent's unaligned energy MAE, eV/atom."
    )
    raw_relative_change: float | None = Field(
        default=None,
        description="Bulk rows: raw_energy_mae / parent_raw_energy_mae - 1 (unaligned).",
    )
    by_facet_family: dict[str, dict] = Field(description="Statistics per facet family.")
    by_chemistry_class: dict[str, dict] = Field(description="Statistics per chemistry class.")
    n_excluded: dict[str, int] = Field(description="Excluded records per reason category.")
    excluded_reasons: dict[str, int] = Field(description="Excluded records per exact reason.")
    source_updated: str = Field(description="Newest surface-error document used.")
    last_updated: str = Field(default_factory=now_iso, description="When the builder wrote it.")
