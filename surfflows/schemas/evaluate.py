"""Model energies of stored DFT reference structures (single point or relaxed)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from surfflows.core.timestamps import now_iso
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc

#: Relaxed mode (ions relaxed by the model in the DFT cell): force criterion, eV/Å, and step
#: limit of the evaluation, which fine-tuning's relaxed-mode epoch selection uses too.
RELAXED_FMAX = 0.05
RELAXED_MAX_STEPS = 300


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
    forces: list[list[float]] | None = Field(
        default=None,
        description="Model forces, eV/Å: single points of structures with DFT forces only.",
    )
    error: str | None = Field(default=None, description="Error summary if it failed.")


class EvaluationDoc(OutputDoc):
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
    wall_seconds: float | None = Field(
        default=None, description="Wall time of the chunk's energies/relaxations, s (no loading)."
    )
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


class EvaluationSummaryDoc(OutputDoc):
    """What one evaluation flow did: the structures of each mode and those that failed.

    The last job of :class:`surfflows.flows.evaluate.EvaluateMaker`'s flow, so that its chunk
    jobs form one connected flow.
    """

    model_id: str = Field(description="Model identity.")
    set_name: str = Field(description="Reference set.")
    n_structures: dict[str, int] = Field(description="Mode -> structures evaluated.")
    failures: list[str] = Field(
        description="'<mode> <reference key>: <first line of the error, or not converged>' of "
        "every structure that failed or did not converge."
    )
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")
