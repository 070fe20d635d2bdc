"""Documents of single relaxations: bulk (free cell) and slab (fixed cell)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field
from pymatgen.core import Structure

from surfflows.core.slabs import SlabCandidate, fixed_mask
from surfflows.core.text import MillerIndex, finite_or_none
from surfflows.core.timestamps import now_iso
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc

if TYPE_CHECKING:
    from surfflows.engine.relax import RelaxResult


class RelaxFields(OutputDoc):
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
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")

    @staticmethod
    def relax_fields(result: RelaxResult, model: ModelSpec, fmax: float) -> dict:
        """Fields shared by all relaxation documents, from a :class:`RelaxResult`."""

        energy = finite_or_none(result.energy)
        return {
            "model_id": model.model_id,
            "model": model.installed(),
            "formula": result.structure.composition.reduced_formula,
            "n_atoms": len(result.structure),
            "structure": result.structure,
            "energy": energy,
            "energy_per_atom": None if energy is None else energy / len(result.structure),
            "initial_energy": finite_or_none(result.initial_energy),
            "max_force": finite_or_none(result.max_force),
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
