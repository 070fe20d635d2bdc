"""Pydantic documents of surface campaigns.

Each document names the model that made it (``model_id``: ``chgnet-0.3.0`` or
``chgnet-ft-<sha12>``) and carries the slab metadata (Miller index, shift,
termination, fixed atoms) itself, since relaxed structures lose it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from surfflows.models import ModelSpec
from surfflows.relax import RelaxResult, fixed_mask
from surfflows.slabs import MillerIndex, SlabCandidate
from surfflows.thermo import bulk_units_and_excess, surface_energy, to_j_per_m2


def _now() -> str:
    return datetime.now(UTC).isoformat()


class RelaxFields(BaseModel):
    """Outcome of one CHGNet relaxation (shared by bulk and slab documents)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    model_id: str = Field(description="Model identity (CHGNet version or checkpoint sha256).")
    model: ModelSpec = Field(description="Full model spec, enough to reload the model.")
    formula: str = Field(description="Reduced formula.")
    n_atoms: int = Field(description="Number of atoms.")
    structure: Structure = Field(description="Final (relaxed) structure.")
    energy: float | None = Field(description="Final total energy, eV (None if failed).")
    energy_per_atom: float | None = Field(description="Final energy per atom, eV/atom.")
    initial_energy: float | None = Field(description="Energy of the input geometry, eV.")
    max_force: float | None = Field(description="Largest residual force on a free atom, eV/Å.")
    n_steps: int = Field(description="Optimizer steps taken.")
    converged: bool = Field(description="Force (and stress) criterion met within the step limit.")
    fmax: float = Field(description="Force criterion used, eV/Å.")
    error: str | None = Field(default=None, description="Error summary if the relaxation failed.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")

    @staticmethod
    def relax_fields(result: RelaxResult, model: ModelSpec, fmax: float) -> dict:
        """Fields shared by all relaxation documents, from a :class:`RelaxResult`."""

        def finite(x: float) -> float | None:
            return float(x) if x == x and abs(x) != float("inf") else None

        energy = finite(result.energy)
        return {
            "model_id": model.model_id,
            "model": model,
            "formula": result.structure.composition.reduced_formula,
            "n_atoms": len(result.structure),
            "structure": result.structure,
            "energy": energy,
            "energy_per_atom": None if energy is None else energy / len(result.structure),
            "initial_energy": finite(result.initial_energy),
            "max_force": finite(result.max_force),
            "n_steps": result.n_steps,
            "converged": result.ok,
            "fmax": fmax,
            "error": result.error,
        }


class BulkRelaxDoc(RelaxFields):
    """A bulk relaxed with a free cell."""

    material_id: str = Field(description="User label of the bulk material (e.g. mp-30).")
    relax_cell: bool = Field(default=True, description="Whether the cell was relaxed.")

    @classmethod
    def from_result(
        cls, result: RelaxResult, model: ModelSpec, fmax: float, material_id: str
    ) -> BulkRelaxDoc:
        """Document of a bulk relaxation."""
        return cls(**cls.relax_fields(result, model, fmax), material_id=material_id)


class SlabRelaxDoc(RelaxFields):
    """A slab relaxed with a fixed cell, with its slab metadata."""

    material_id: str = Field(description="Bulk material the slab was cut from.")
    miller_index: MillerIndex = Field(description="Miller index (conventional bulk cell).")
    shift: float = Field(description="SlabGenerator shift of the termination.")
    termination: str = Field(description="Termination label.")
    is_symmetric: bool = Field(description="Two equivalent faces.")
    is_stoichiometric: bool = Field(description="Bulk composition.")
    excess: dict[str, float] = Field(description="Atoms beyond whole bulk units.")
    area: float = Field(description="|a x b|, Å².")
    fixed_indices: list[int] = Field(description="Indices of atoms held fixed.")

    @classmethod
    def from_result(
        cls,
        result: RelaxResult,
        model: ModelSpec,
        fmax: float,
        material_id: str,
        candidate: SlabCandidate,
    ) -> SlabRelaxDoc:
        """Document of a slab relaxation, carrying the candidate's metadata."""
        return cls(
            **cls.relax_fields(result, model, fmax),
            material_id=material_id,
            miller_index=candidate.miller_index,
            shift=candidate.shift,
            termination=candidate.termination,
            is_symmetric=candidate.is_symmetric,
            is_stoichiometric=candidate.is_stoichiometric,
            excess=candidate.excess,
            area=candidate.area,
            fixed_indices=[int(i) for i in fixed_mask(candidate.structure).nonzero()[0]],
        )


class SurfaceEnergyDoc(BaseModel):
    """Surface energy of one slab termination under one model.

    ``gamma = (E_slab - (N_slab / N_bulk) E_bulk) / 2A`` for a symmetric, stoichiometric
    slab, with slab and bulk energies from the same model and the slab cut from that
    model's relaxed bulk. Non-stoichiometric slabs get ``status="non_stoichiometric"`` and
    no gamma here: gamma(delta mu) needs explicit chemical potentials.
    """

    material_id: str = Field(description="Bulk material.")
    formula: str = Field(description="Reduced formula of the bulk.")
    slab_formula: str = Field(description="Formula of the slab cell.")
    model_id: str = Field(description="Model that relaxed slab and bulk.")
    miller_index: MillerIndex = Field(description="Miller index (conventional bulk cell).")
    shift: float = Field(description="SlabGenerator shift of the termination.")
    termination: str = Field(description="Termination label.")
    status: Literal["ok", "non_stoichiometric", "failed"] = Field(
        description="ok: gamma computed; non_stoichiometric: needs mu; failed: a relaxation failed."
    )
    reason: str | None = Field(default=None, description="Why gamma is missing, if it is.")
    gamma: float | None = Field(default=None, description="Surface energy, J/m².")
    gamma_ev_per_a2: float | None = Field(default=None, description="Surface energy, eV/Å².")
    slab_energy: float | None = Field(description="Slab total energy, eV.")
    bulk_energy: float | None = Field(description="Bulk total energy of the bulk cell, eV.")
    bulk_energy_per_atom: float | None = Field(description="Bulk energy per atom, eV/atom.")
    n_slab_atoms: int = Field(description="Atoms in the slab.")
    n_bulk_atoms: int = Field(description="Atoms in the bulk cell.")
    n_bulk_units: float = Field(description="Bulk cells in the slab (N_slab/N_bulk if stoich.).")
    excess: dict[str, float] = Field(description="Atoms beyond whole bulk units.")
    area: float = Field(description="|a x b| of the slab, Å².")
    slab_converged: bool = Field(description="Slab relaxation converged.")
    bulk_converged: bool = Field(description="Bulk relaxation converged.")
    slab_steps: int = Field(description="Optimizer steps of the slab relaxation.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")

    @classmethod
    def from_relaxations(cls, slab: SlabRelaxDoc, bulk: BulkRelaxDoc) -> SurfaceEnergyDoc:
        """Surface energy from a slab and the bulk it was cut from (same model)."""
        if slab.model_id != bulk.model_id:
            raise ValueError(
                f"slab ({slab.model_id}) and bulk ({bulk.model_id}) come from different models"
            )
        n_units, _ = bulk_units_and_excess(slab.structure.composition, bulk.structure.composition)
        fields = {
            "material_id": slab.material_id,
            "formula": bulk.formula,
            "slab_formula": slab.structure.composition.formula.replace(" ", ""),
            "model_id": slab.model_id,
            "miller_index": slab.miller_index,
            "shift": slab.shift,
            "termination": slab.termination,
            "slab_energy": slab.energy,
            "bulk_energy": bulk.energy,
            "bulk_energy_per_atom": bulk.energy_per_atom,
            "n_slab_atoms": slab.n_atoms,
            "n_bulk_atoms": bulk.n_atoms,
            "n_bulk_units": n_units,
            "excess": slab.excess,
            "area": slab.area,
            "slab_converged": slab.converged,
            "bulk_converged": bulk.converged,
            "slab_steps": slab.n_steps,
        }
        failed = [
            f"{what} relaxation: {doc.error.splitlines()[0] if doc.error else 'not converged'}"
            for what, doc in (("bulk", bulk), ("slab", slab))
            if not doc.converged
        ]
        if failed:
            return cls(**fields, status="failed", reason="; ".join(failed))
        if not slab.is_stoichiometric:
            return cls(
                **fields,
                status="non_stoichiometric",
                reason=f"excess {slab.excess}: gamma needs chemical potentials (surfflows thermo)",
            )
        gamma = surface_energy(
            slab.energy,
            slab.structure.composition,
            bulk.energy,
            bulk.structure.composition,
            slab.area,
        )
        return cls(**fields, status="ok", gamma_ev_per_a2=gamma, gamma=to_j_per_m2(gamma))


class ModelEnergyDoc(BaseModel):
    """The model's energy of one reference structure (single point or ions relaxed)."""

    reference_key: str = Field(description="Key of the reference document (set:id).")
    doc_type: Literal["slab", "bulk", "adslab"] = Field(description="Kind of reference record.")
    n_atoms: int = Field(description="Number of atoms.")
    energy: float | None = Field(description="Model total energy, eV (None if failed).")
    energy_per_atom: float | None = Field(description="Model energy per atom, eV/atom.")
    converged: bool = Field(description="Single point succeeded / relaxation converged.")
    n_steps: int = Field(default=0, description="Relaxation steps (0 for a single point).")
    max_force: float | None = Field(default=None, description="Largest force on a free atom.")
    error: str | None = Field(default=None, description="Error summary if it failed.")


class EvaluationDoc(BaseModel):
    """Model energies of a chunk of one reference set, in one mode.

    Modes: ``single_point`` at the DFT geometry, or ``relaxed``: ions relaxed by the model
    from the DFT geometry with the DFT cell kept, for slabs and bulks alike (so slab and
    bulk share the DFT lattice and the same model).
    """

    model_id: str = Field(description="Model identity.")
    model: ModelSpec = Field(description="Full model spec.")
    set_name: str = Field(description="Reference set.")
    mode: Literal["single_point", "relaxed"] = Field(description="Evaluation mode.")
    fmax: float | None = Field(default=None, description="Force criterion (relaxed mode), eV/Å.")
    results: list[ModelEnergyDoc] = Field(description="One entry per reference structure.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")


class SurfaceErrorDoc(BaseModel):
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
    last_updated: str = Field(default_factory=_now, description="When the builder wrote it.")


class BenchmarkDoc(BaseModel):
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
    last_updated: str = Field(default_factory=_now, description="When the builder wrote it.")
