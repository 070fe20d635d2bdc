"""Surface energy of one slab termination from its slab and bulk relaxations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from surfflows.core.text import MillerIndex
from surfflows.core.thermo import (
    bulk_units_and_excess,
    surface_energy,
    to_j_per_m2,
)
from surfflows.core.timestamps import now_iso
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc


class SurfaceEnergyDoc(OutputDoc):
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
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")

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
