"""Pydantic documents of surface campaigns.

Each document names the model that made it (``model_id``: ``chgnet-0.3.0`` or
``chgnet-ft-<sha12>``) and carries the slab metadata (Miller index, shift,
termination, fixed atoms) itself, since relaxed structures lose it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.analysis.wulff import WulffShape
from pymatgen.core import Composition, Structure
from scipy.spatial import QhullError

from surfflows.models import ModelSpec
from surfflows.relax import RelaxResult, fixed_mask
from surfflows.slabs import (
    MillerIndex,
    SlabCandidate,
    SlabSettings,
    conventional_cell,
    generate_slabs,
)
from surfflows.thermo import (
    DELU_O,
    bulk_units_and_excess,
    formation_energy,
    oxygen_chemical_potential_bounds,
    ranking_agreement,
    stable_terminations,
    surface_energy,
    surface_energy_line,
    surface_energy_plotter,
    to_j_per_m2,
)


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


# ---------------------------------------------------------------------------------------------
# Surface thermodynamics: elemental references, gamma(delta mu_O), Wulff shapes. The Wulff
# documents mirror emmet's surface-properties document (emmet.core.surface_properties:
# SurfacePropDoc / SurfaceEntry field names) plus the surfflows fields.
# ---------------------------------------------------------------------------------------------

#: delta mu_O range (eV) of diagrams whose O-poor limit is not computed (oxides of several
#: other elements) or not meaningful (a non-negative model formation energy).
DEFAULT_DELTA_MU_O_RANGE = (-3.0, 0.0)


class ElementReferenceDoc(RelaxFields):
    """The model's elemental reference: the O2 molecule, or a metal's lowest prototype.

    ``energy_per_atom`` is the reference chemical potential: ``E(O2) / 2`` for oxygen (the
    molecule relaxed in a fixed box), the lowest energy per atom of the fcc / bcc / hcp
    prototypes relaxed with a free cell for a metal.
    """

    element: str = Field(description="Element symbol.")
    prototype: str = Field(description="'O2 molecule', or fcc / bcc / hcp for a metal.")
    relax_cell: bool = Field(description="Whether the cell was relaxed.")
    candidates: dict[str, float | None] = Field(
        description="Energy per atom of every structure tried, eV/atom (None: failed)."
    )

    @classmethod
    def from_results(
        cls,
        element: str,
        results: Mapping[str, RelaxResult],
        model: ModelSpec,
        fmax: float,
        relax_cell: bool,
    ) -> ElementReferenceDoc:
        """The lowest converged candidate (the lowest finite one, unconverged, if none is)."""

        def per_atom(result: RelaxResult) -> float:
            finite = math.isfinite(result.energy)
            return result.energy / len(result.structure) if finite else math.inf

        pool = {name: r for name, r in results.items() if r.ok} or dict(results)
        best = min(pool, key=lambda name: per_atom(pool[name]))
        return cls(
            **cls.relax_fields(results[best], model, fmax),
            element=element,
            prototype=best,
            relax_cell=relax_cell,
            candidates={
                name: per_atom(r) if math.isfinite(per_atom(r)) else None
                for name, r in results.items()
            },
        )


class TerminationLine(BaseModel):
    """``gamma(delta mu_O) = gamma_0 + slope * delta mu_O`` of one slab termination."""

    entry_id: str = Field(description="material|(hkl)|shift|termination, unique per slab.")
    miller_index: MillerIndex = Field(description="Miller index (conventional bulk cell).")
    shift: float = Field(description="SlabGenerator shift of the termination.")
    termination: str = Field(description="Termination label.")
    slab_formula: str = Field(description="Formula of the slab cell.")
    excess: dict[str, float] = Field(
        description="Atoms beyond whole bulk units against the O reservoir (negative: deficit)."
    )
    area: float = Field(description="|a x b| of the slab, Å².")
    gamma_0: float = Field(description="gamma at delta mu_O = 0 (O-rich limit), J/m².")
    gamma_0_EV_PER_ANG2: float = Field(description="gamma at delta mu_O = 0, eV/Å².")
    slope: float = Field(description="d gamma / d delta mu_O = -n_O / 2A, J/m² per eV.")

    def gamma(self, delta_mu_o: float | None) -> float:
        """gamma at ``delta_mu_o`` (eV; None for a line that does not depend on it), J/m²."""
        if delta_mu_o is None and self.slope:
            raise ValueError(f"{self.entry_id}: gamma depends on delta mu_O, give a value")
        return self.gamma_0 + self.slope * (delta_mu_o or 0.0)


class StableTermination(BaseModel):
    """A termination on the lower envelope of one facet over a delta mu_O range."""

    entry_id: str = Field(description="Line (termination) that is stable.")
    miller_index: MillerIndex = Field(description="Facet.")
    termination: str = Field(description="Termination label.")
    shift: float = Field(description="SlabGenerator shift.")
    slab_formula: str = Field(description="Formula of the slab cell.")
    delta_mu_O_from: float | None = Field(description="Lower end of the range, eV (None: no O).")
    delta_mu_O_to: float | None = Field(description="Upper end of the range, eV (None: no O).")
    gamma_from: float = Field(description="gamma at the lower end, J/m².")
    gamma_to: float = Field(description="gamma at the upper end, J/m².")


class ExcludedSlab(BaseModel):
    """A slab left out of the analysis, and why."""

    miller_index: MillerIndex = Field(description="Facet.")
    shift: float = Field(description="SlabGenerator shift.")
    termination: str = Field(description="Termination label.")
    reason: str = Field(description="Why it was left out.")


class SurfaceEntryDoc(BaseModel):
    """One facet of a Wulff document (emmet ``SurfaceEntry`` fields plus the termination)."""

    miller_index: list[int] = Field(description="Miller index of the surface.")
    surface_energy: float = Field(description="Surface energy, J/m².")
    surface_energy_EV_PER_ANG2: float = Field(description="Surface energy, eV/Å².")
    is_reconstructed: bool = Field(default=False, description="Reconstructed surface (never).")
    area_fraction: float | None = Field(default=None, description="Area fraction on the Wulff.")
    has_wulff: bool = Field(default=False, description="Whether the facet is on the Wulff shape.")
    termination: str | None = Field(default=None, description="Stable termination (model).")
    shift: float | None = Field(default=None, description="SlabGenerator shift of it.")
    slab_formula: str | None = Field(default=None, description="Formula of its slab cell.")


class SurfacePropertiesDoc(BaseModel):
    """Wulff shape and surface energies of one material at one delta mu_O, emmet-style.

    Field names follow emmet's ``SurfacePropDoc``; surfflows adds the model, delta mu_O and
    the O2 reference. Wulff quantities come from pymatgen's ``WulffShape`` on the
    conventional cell: ``weighted_surface_energy = sum_i f_i gamma_i`` (area fractions
    ``f_i``), ``shape_factor = A / V^(2/3)``, ``surface_anisotropy`` the area-weighted
    coefficient of variation of gamma. They are None (with a ``note``) when a stable gamma
    is not positive or the facets do not enclose a finite shape.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    material_id: str = Field(description="Bulk material.")
    pretty_formula: str = Field(description="Reduced formula.")
    model_id: str = Field(description="Model, or '<set> (<level of theory>)' for DFT data.")
    delta_mu_O: float | None = Field(default=None, description="delta mu_O, eV (None: no O).")
    mu_O: float | None = Field(default=None, description="mu_O = E(O2)/2 + delta mu_O, eV.")
    o2_energy: float | None = Field(default=None, description="Model energy of O2 used, eV.")
    surfaces: list[SurfaceEntryDoc] = Field(description="Lowest-gamma termination per facet.")
    weighted_surface_energy: float | None = Field(default=None, description="J/m².")
    weighted_surface_energy_EV_PER_ANG2: float | None = Field(default=None, description="eV/Å².")
    shape_factor: float | None = Field(default=None, description="Wulff A / V^(2/3).")
    surface_anisotropy: float | None = Field(default=None, description="Coefficient of variation.")
    has_reconstructed: bool = Field(default=False, description="Any reconstructed facet (never).")
    structure: Structure = Field(description="Conventional bulk cell (frame of the Wulff shape).")
    note: str | None = Field(default=None, description="Why Wulff quantities are missing.")
    wulff_png: str | None = Field(default=None, description="PNG of the Wulff shape.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")

    def to_wulff(self) -> WulffShape:
        """pymatgen WulffShape of the surfaces (energies in eV/Å²)."""
        return WulffShape(
            self.structure.lattice,
            [tuple(s.miller_index) for s in self.surfaces],
            [s.surface_energy_EV_PER_ANG2 for s in self.surfaces],
        )

    @classmethod
    def from_surfaces(
        cls, structure: Structure, surfaces: Sequence[SurfaceEntryDoc], **fields
    ) -> SurfacePropertiesDoc:
        """Document with the Wulff quantities of ``surfaces`` on ``structure``'s lattice.

        Parameters
        ----------
        structure
            Conventional bulk cell (Miller indices refer to it).
        surfaces
            One entry per facet; area fractions and ``has_wulff`` are filled in here.
        **fields
            The other fields (material_id, pretty_formula, model_id, delta_mu_O...).
        """
        doc = cls(structure=structure, surfaces=[s.model_copy() for s in surfaces], **fields)
        gammas = [s.surface_energy_EV_PER_ANG2 for s in doc.surfaces]
        if min(gammas) <= 0:
            doc.note = "a stable gamma is not positive: no Wulff shape"
            return doc
        try:
            wulff = doc.to_wulff()
        except (QhullError, ValueError) as exc:
            doc.note = f"the facets do not enclose a finite Wulff shape ({type(exc).__name__})"
            return doc
        fractions = wulff.area_fraction_dict
        for surface in doc.surfaces:
            surface.area_fraction = float(fractions[tuple(surface.miller_index)])
            surface.has_wulff = surface.area_fraction > 1e-6
        weighted = float(wulff.weighted_surface_energy)
        doc.weighted_surface_energy_EV_PER_ANG2 = weighted
        doc.weighted_surface_energy = to_j_per_m2(weighted)
        doc.shape_factor = float(wulff.shape_factor)
        doc.surface_anisotropy = float(wulff.anisotropy)
        return doc

    def restricted(self, miller_indices: Sequence[Sequence[int]]) -> SurfacePropertiesDoc:
        """The same document on a subset of its facets (Wulff quantities recomputed)."""
        keep = {tuple(hkl) for hkl in miller_indices}
        return self.from_surfaces(
            self.structure,
            [s for s in self.surfaces if tuple(s.miller_index) in keep],
            **self.model_dump(include=_GIVEN_FIELDS),
        )


#: Fields of a SurfacePropertiesDoc given by its maker (the others follow from the surfaces).
_GIVEN_FIELDS = {"material_id", "pretty_formula", "model_id", "delta_mu_O", "mu_O", "o2_energy"}


class SurfaceThermoDoc(BaseModel):
    """Surface thermodynamics of one material under one model.

    Conventions: ``mu_O = E(O2) / 2 + delta mu_O`` with E(O2) from the same model as slabs and
    bulk; ``gamma(delta mu_O) = (E_slab - n E_bulk - n_O mu_O) / 2A`` per termination
    (:func:`surfflows.thermo.surface_energy_line`); the stable termination of each facet is
    the lower envelope (pymatgen ``SurfaceEnergyPlotter``). Bounds of delta mu_O come from the
    model's own formation energy of the bulk (binary oxides; O-rich limit only otherwise).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    material_id: str = Field(description="Bulk material.")
    formula: str = Field(description="Reduced formula of the bulk.")
    model_id: str = Field(description="Model of slabs, bulk and references.")
    model: ModelSpec = Field(description="Full model spec.")
    reservoir: Literal["O"] | None = Field(description="Reservoir element (None: no oxygen).")
    o2_energy: float | None = Field(description="Model energy of the O2 molecule, eV.")
    mu_O_ref: float | None = Field(description="E(O2) / 2, eV: mu_O at delta mu_O = 0.")
    metal_references: dict[str, float] = Field(
        description="Metal -> model energy per atom of its lowest prototype, eV/atom."
    )
    metal_prototypes: dict[str, str] = Field(description="Metal -> lowest prototype.")
    formation_energy: float | None = Field(
        description="Model formation energy per formula unit, eV (binary oxides)."
    )
    delta_mu_O_min: float | None = Field(description="O-poor limit Delta H_f / y, eV.")
    delta_mu_O_max: float | None = Field(description="O-rich limit (0, O2 gas), eV.")
    bounds_note: str = Field(description="How the bounds were obtained.")
    delta_mu_O_range: tuple[float, float] | None = Field(
        description="delta mu_O range of the stability table and diagram, eV."
    )
    lines: list[TerminationLine] = Field(description="gamma(delta mu_O) of every termination.")
    stable: list[StableTermination] = Field(description="Stable termination per facet.")
    excluded: list[ExcludedSlab] = Field(description="Slabs left out, with reasons.")
    wulff_shapes: list[SurfacePropertiesDoc] = Field(description="Wulff shapes at chosen mu.")
    diagram_png: str | None = Field(default=None, description="PNG of gamma vs delta mu_O.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")

    @classmethod
    def from_surface_energies(
        cls,
        bulk: BulkRelaxDoc,
        surfaces: Sequence[SurfaceEnergyDoc],
        references: Sequence[ElementReferenceDoc],
        slab_settings: SlabSettings,
        delta_mu_o_range: tuple[float, float] | None = None,
        delta_mu_o: Sequence[float] | None = None,
    ) -> SurfaceThermoDoc:
        """Lines, stable terminations and Wulff shapes from a surface-energy campaign.

        Parameters
        ----------
        bulk, surfaces
            The bulk relaxation and the surface-energy documents of its slabs (one model).
        references
            Elemental references of the same model: O (if the bulk has oxygen) and, for a
            binary oxide, its metal.
        slab_settings
            The settings the slabs were cut with. The slabs are cut again from the bulk to
            recover their cells (lattice and composition, which a fixed-cell relaxation
            keeps) for pymatgen's SlabEntry; a document without a matching slab is excluded.
        delta_mu_o_range
            Range of the stability table; default: the model's bounds.
        delta_mu_o
            delta mu_O values of the Wulff shapes; default: both ends and the middle of the
            range (one Wulff shape when gamma does not depend on delta mu_O).
        """
        model_id = bulk.model_id
        others = sorted({d.model_id for d in [*surfaces, *references]} - {model_id})
        if others:
            raise ValueError(f"bulk is from {model_id}, other documents from {others}")
        if not bulk.converged or bulk.energy is None:
            raise ValueError(f"bulk {bulk.material_id} relaxation failed: {bulk.error}")
        refs = {r.element: r for r in references}
        unusable = sorted(el for el, r in refs.items() if not r.converged)
        if unusable:
            raise ValueError(f"elemental references of {unusable} did not converge")
        composition = bulk.structure.composition
        has_oxygen = "O" in composition.get_el_amt_dict()
        if has_oxygen and "O" not in refs:
            raise ValueError(f"{composition.reduced_formula} contains O: give the O2 reference")
        o2_energy = refs["O"].energy if has_oxygen else None
        mu_ref = {"O": o2_energy / 2} if has_oxygen else {}
        metals = {el: r.energy_per_atom for el, r in refs.items() if el != "O"}
        bounds, formation, note = _oxygen_bounds(bulk, o2_energy, metals, refs)
        window = delta_mu_o_range
        if has_oxygen and window is None:
            low, high = bounds
            window = (low, high) if low is not None and low < high else DEFAULT_DELTA_MU_O_RANGE
        lines, entries, excluded = _termination_lines(bulk, surfaces, slab_settings, mu_ref)
        if not entries:
            raise ValueError(f"{bulk.material_id}: no usable slab ({len(excluded)} excluded)")
        plotter = surface_energy_plotter(bulk.structure, bulk.energy, entries, o2_energy)
        depends = DELU_O in plotter.list_of_chempots
        by_id = {line.entry_id: line for line in lines}
        stable = [
            StableTermination(
                entry_id=entry.entry_id,
                miller_index=by_id[entry.entry_id].miller_index,
                termination=by_id[entry.entry_id].termination,
                shift=by_id[entry.entry_id].shift,
                slab_formula=by_id[entry.entry_id].slab_formula,
                delta_mu_O_from=lo if has_oxygen else None,
                delta_mu_O_to=hi if has_oxygen else None,
                gamma_from=by_id[entry.entry_id].gamma(lo if depends else None),
                gamma_to=by_id[entry.entry_id].gamma(hi if depends else None),
            )
            for entry, lo, hi in stable_terminations(plotter, window or (0.0, 0.0))
        ]
        if delta_mu_o is None:
            delta_mu_o = [window[0], sum(window) / 2, window[1]] if depends else [None]
        conventional = conventional_cell(bulk.structure)
        wulff_shapes = []
        for value in delta_mu_o:
            delu = {DELU_O: value} if depends else None
            facets = []
            for hkl in sorted(plotter.all_slab_entries):
                entry, gamma = plotter.get_stable_entry_at_u(hkl, delu_dict=delu, no_doped=True)
                line = by_id[entry.entry_id]
                facets.append(
                    SurfaceEntryDoc(
                        miller_index=list(hkl),
                        surface_energy=to_j_per_m2(gamma),
                        surface_energy_EV_PER_ANG2=gamma,
                        termination=line.termination,
                        shift=line.shift,
                        slab_formula=line.slab_formula,
                    )
                )
            wulff_shapes.append(
                SurfacePropertiesDoc.from_surfaces(
                    conventional,
                    facets,
                    material_id=bulk.material_id,
                    pretty_formula=composition.reduced_formula,
                    model_id=model_id,
                    delta_mu_O=value if has_oxygen else None,
                    mu_O=None if value is None or not has_oxygen else o2_energy / 2 + value,
                    o2_energy=o2_energy,
                )
            )
        return cls(
            material_id=bulk.material_id,
            formula=composition.reduced_formula,
            model_id=model_id,
            model=bulk.model,
            reservoir="O" if has_oxygen else None,
            o2_energy=o2_energy,
            mu_O_ref=mu_ref.get("O"),
            metal_references=metals,
            metal_prototypes={el: r.prototype for el, r in refs.items() if el != "O"},
            formation_energy=formation,
            delta_mu_O_min=bounds[0],
            delta_mu_O_max=bounds[1],
            bounds_note=note,
            delta_mu_O_range=window,
            lines=lines,
            stable=stable,
            excluded=excluded,
            wulff_shapes=wulff_shapes,
        )


def _oxygen_bounds(
    bulk: BulkRelaxDoc,
    o2_energy: float | None,
    metals: Mapping[str, float],
    refs: Mapping[str, ElementReferenceDoc],
) -> tuple[tuple[float | None, float | None], float | None, str]:
    """(O-poor, O-rich) limits, formation energy per formula unit, and how they were found."""
    composition = bulk.structure.composition
    if o2_energy is None:
        return (None, None), None, "no oxygen: gamma does not depend on a chemical potential"
    others = sorted(set(composition.get_el_amt_dict()) - {"O"})
    if len(others) != 1:
        return (
            (None, 0.0),
            None,
            f"O-rich limit only (0: O2 gas); the O-poor limit of an oxide of {others} depends "
            "on competing phases, which are not computed",
        )
    metal = others[0]
    if metal not in metals:
        raise ValueError(f"binary oxide {composition.reduced_formula}: give the {metal} reference")
    low, high = oxygen_chemical_potential_bounds(bulk.energy, composition, o2_energy, metals)
    formation = formation_energy(bulk.energy, composition, {"O": o2_energy / 2, **metals})
    y = composition.reduced_composition["O"]
    note = (
        f"O-poor limit Delta H_f / y = {formation:.3f} eV / {y:g} from the model's "
        f"{composition.reduced_formula}, {metal} ({refs[metal].prototype}) and O2; "
        "O-rich limit 0 (O2 gas)"
    )
    if low >= high:
        note += f"; the model does not bind the oxide: table over {DEFAULT_DELTA_MU_O_RANGE} eV"
    return (low, high), formation, note


def _termination_lines(
    bulk: BulkRelaxDoc,
    surfaces: Sequence[SurfaceEnergyDoc],
    slab_settings: SlabSettings,
    mu_ref: Mapping[str, float],
) -> tuple[list[TerminationLine], list[SlabEntry], list[ExcludedSlab]]:
    """gamma(delta mu_O) line and pymatgen SlabEntry of every usable surface document."""
    candidates = {
        (c.miller_index, c.shift, c.termination): c
        for c in generate_slabs(bulk.structure, slab_settings)
    }
    lines, entries, excluded, seen = [], [], [], set()
    for doc in surfaces:
        key = (tuple(doc.miller_index), doc.shift, doc.termination)
        candidate = candidates.get(key)
        reason = None
        if doc.status == "failed":
            reason = doc.reason or "relaxation failed"
        elif key in seen:
            reason = "duplicate document of this slab"
        elif (
            candidate is None
            or candidate.structure.composition != Composition(doc.slab_formula)
            or abs(candidate.area - doc.area) > 1e-6
        ):
            reason = "no slab of these slab settings matches it (cell or composition differ)"
        elif not candidate.is_symmetric:
            reason = "asymmetric slab: gamma = dE / 2A needs two equivalent faces"
        if reason is None:
            try:
                gamma_0, slopes = surface_energy_line(
                    doc.slab_energy,
                    candidate.structure.composition,
                    bulk.energy,
                    bulk.structure.composition,
                    doc.area,
                    mu_ref,
                )
                _, excess = bulk_units_and_excess(
                    candidate.structure.composition, bulk.structure.composition, mu_ref or None
                )
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            excluded.append(
                ExcludedSlab(
                    miller_index=doc.miller_index,
                    shift=doc.shift,
                    termination=doc.termination,
                    reason=reason,
                )
            )
            continue
        seen.add(key)
        hkl = "".join(str(i) for i in doc.miller_index)
        entry_id = f"{bulk.material_id}|({hkl})|{doc.shift}|{doc.termination}"
        lines.append(
            TerminationLine(
                entry_id=entry_id,
                miller_index=doc.miller_index,
                shift=doc.shift,
                termination=doc.termination,
                slab_formula=doc.slab_formula,
                excess=excess,
                area=doc.area,
                gamma_0=to_j_per_m2(gamma_0),
                gamma_0_EV_PER_ANG2=gamma_0,
                slope=to_j_per_m2(slopes.get("O", 0.0)),
            )
        )
        entries.append(
            SlabEntry(
                candidate.structure,
                doc.slab_energy,
                doc.miller_index,
                entry_id=entry_id,
                label=doc.termination,
            )
        )
    return lines, entries, excluded


class FacetComparison(BaseModel):
    """One facet of a reference-versus-model Wulff comparison."""

    miller_index: MillerIndex = Field(description="Facet.")
    gamma_reference: float = Field(description="Reference surface energy, J/m².")
    gamma_model: float = Field(description="Model surface energy, J/m².")
    rank_reference: int = Field(description="Rank by reference gamma (1 = lowest).")
    rank_model: int = Field(description="Rank by model gamma (1 = lowest).")
    area_fraction_reference: float | None = Field(description="On the reference Wulff shape.")
    area_fraction_model: float | None = Field(description="On the model Wulff shape.")
    area_fraction_difference: float | None = Field(description="Model minus reference.")


class WulffComparisonDoc(BaseModel):
    """A model's facet ranking and Wulff shape against a DFT reference, on their common facets.

    Both Wulff shapes are built on the facets the two share (so area fractions compare);
    rank agreement is Kendall's tau and Spearman's rho of gamma over those facets (scipy).
    """

    material_id: str = Field(description="Material.")
    model_id: str = Field(description="Model compared.")
    reference_set: str = Field(description="Reference set name.")
    level_of_theory: str = Field(description="Level of theory of the reference gammas.")
    citation: str | None = Field(default=None, description="Citation of the reference data.")
    delta_mu_O: float | None = Field(default=None, description="delta mu_O of the model, eV.")
    facets: list[FacetComparison] = Field(description="Common facets, by reference gamma.")
    missing_in_model: list[MillerIndex] = Field(description="Reference facets the model lacks.")
    missing_in_reference: list[MillerIndex] = Field(description="Model facets not in the set.")
    n_facets: int = Field(description="Facets compared.")
    kendall_tau: float | None = Field(description="Kendall tau of the gamma rankings.")
    kendall_p: float | None = Field(description="p-value of Kendall tau.")
    spearman_rho: float | None = Field(description="Spearman rho of the gamma rankings.")
    spearman_p: float | None = Field(description="p-value of Spearman rho.")
    lowest_facet_reference: MillerIndex = Field(description="Lowest-gamma reference facet.")
    lowest_facet_model: MillerIndex = Field(description="Lowest-gamma model facet.")
    mean_signed_gamma_error: float = Field(description="Mean of model - reference gamma, J/m².")
    mean_abs_area_fraction_difference: float | None = Field(description="Over common facets.")
    max_abs_area_fraction_difference: float | None = Field(description="Over common facets.")
    reference: SurfacePropertiesDoc = Field(description="Reference Wulff on common facets.")
    model: SurfacePropertiesDoc = Field(description="Model Wulff on common facets.")
    comparison_png: str | None = Field(default=None, description="PNG of the two shapes.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")

    @classmethod
    def from_properties(
        cls,
        reference: SurfacePropertiesDoc,
        model: SurfacePropertiesDoc,
        reference_set: str,
        level_of_theory: str,
        citation: str | None = None,
    ) -> WulffComparisonDoc:
        """Compare two Wulff documents of one material on the facets they share."""
        ref_gamma = {tuple(s.miller_index): s.surface_energy for s in reference.surfaces}
        mod_gamma = {tuple(s.miller_index): s.surface_energy for s in model.surfaces}
        common = sorted(set(ref_gamma) & set(mod_gamma), key=lambda hkl: ref_gamma[hkl])
        if len(common) < 2:
            raise ValueError(f"fewer than two common facets: {common}")
        reference, model = reference.restricted(common), model.restricted(common)
        ref_fraction = {tuple(s.miller_index): s.area_fraction for s in reference.surfaces}
        mod_fraction = {tuple(s.miller_index): s.area_fraction for s in model.surfaces}
        mod_rank = sorted(common, key=lambda hkl: mod_gamma[hkl])
        facets = []
        for rank, hkl in enumerate(common, start=1):
            fr, fm = ref_fraction[hkl], mod_fraction[hkl]
            facets.append(
                FacetComparison(
                    miller_index=hkl,
                    gamma_reference=ref_gamma[hkl],
                    gamma_model=mod_gamma[hkl],
                    rank_reference=rank,
                    rank_model=mod_rank.index(hkl) + 1,
                    area_fraction_reference=fr,
                    area_fraction_model=fm,
                    area_fraction_difference=None if fr is None or fm is None else fm - fr,
                )
            )
        diffs = [
            abs(f.area_fraction_difference)
            for f in facets
            if f.area_fraction_difference is not None
        ]
        return cls(
            material_id=model.material_id,
            model_id=model.model_id,
            reference_set=reference_set,
            level_of_theory=level_of_theory,
            citation=citation,
            delta_mu_O=model.delta_mu_O,
            facets=facets,
            missing_in_model=sorted(set(ref_gamma) - set(mod_gamma)),
            missing_in_reference=sorted(set(mod_gamma) - set(ref_gamma)),
            n_facets=len(common),
            **{k: v for k, v in ranking_agreement(ref_gamma, mod_gamma).items() if k != "n_facets"},
            lowest_facet_reference=common[0],
            lowest_facet_model=mod_rank[0],
            mean_signed_gamma_error=sum(mod_gamma[h] - ref_gamma[h] for h in common) / len(common),
            mean_abs_area_fraction_difference=sum(diffs) / len(diffs) if diffs else None,
            max_abs_area_fraction_difference=max(diffs) if diffs else None,
            reference=reference,
            model=model,
        )


class FineTuneSettings(BaseModel):
    """Hyperparameters of one CHGNet fine-tune (see :mod:`surfflows.finetune`)."""

    depth: int = Field(
        default=1,
        ge=0,
        description="X: trainable units counted from the readout backwards (0: only the "
        "per-element reference energies, 1: readout, 2: + last atom_conv, then whole "
        "[atom_conv, bond_conv, angle] blocks, the largest X adds the embeddings).",
    )
    epochs: int = Field(default=20, ge=0, description="Training epochs (maximum).")
    learning_rate: float = Field(default=1e-3, gt=0, description="Initial Adam learning rate.")
    lr_decay_fraction: float = Field(
        default=0.1, gt=0, le=1, description="Cosine decay to this fraction of the learning rate."
    )
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    anchor_weight: float = Field(
        default=0.0,
        ge=0,
        description="L2-SP weight: penalty anchor_weight * sum((theta - theta_parent)^2) over "
        "the trainable parameters, against forgetting (0: off).",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Structures per batch (about: a slab always shares its batch with its bulk).",
    )
    energy_weight: float = Field(
        default=1.0,
        ge=0,
        description="Weight of the energy-per-atom loss (eV/atom), slabs and bulks.",
    )
    gamma_weight: float = Field(
        default=1.0, ge=0, description="Weight of the surface-energy loss (J/m²) of each slab."
    )
    force_weight: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the force loss (eV/Å); needs force labels (the set's ref_forces "
        "or zero_force_labels) and a full forward pass with forces each step (slow).",
    )
    zero_force_labels: bool = Field(
        default=False,
        description="Use zero forces as labels for frames without ref_forces: valid only for "
        "DFT-relaxed geometries (relaxed slabs and bulks).",
    )
    criterion: Literal["mse", "huber", "l1"] = Field(
        default="mse", description="Loss of each term (huber with delta huber_delta)."
    )
    huber_delta: float = Field(default=0.1, gt=0, description="Delta of the Huber loss.")
    patience: int | None = Field(
        default=8,
        ge=1,
        description="Stop after this many epochs without a lower validation gamma MAE (None: "
        "never stop early).",
    )
    seed: int = Field(default=0, description="Seed of torch and of the batch order.")


class EpochRecord(BaseModel):
    """Losses and errors after one epoch (epoch 0: after the per-element fit, no step yet)."""

    epoch: int = Field(description="Epoch number; 0 is the model before any gradient step.")
    train_loss: float = Field(description="Mean training loss over the epoch's batches.")
    train_energy_mae: float = Field(description="Training energy MAE, eV/atom.")
    train_gamma_mae: float | None = Field(description="Training gamma MAE, J/m².")
    val_energy_mae: float = Field(description="Validation energy MAE, eV/atom.")
    val_gamma_mae: float | None = Field(description="Validation gamma MAE, J/m² (selects epochs).")
    val_gamma_mean_signed_error: float | None = Field(
        description="Validation mean of gamma_model - gamma_ref, J/m²."
    )
    learning_rate: float = Field(description="Learning rate used in the epoch.")
    seconds: float = Field(description="Wall time of the epoch (training and validation), s.")


class FineTuneDoc(BaseModel):
    """A fine-tuned CHGNet checkpoint: how it was made and how it trained.

    Output of the fine-tune job and the ``metadata`` of its entry in the ``models`` store.
    """

    model_id: str = Field(description="chgnet-ft-<sha12> of the best-epoch checkpoint.")
    model: ModelSpec = Field(description="Spec of the checkpoint (registered by sha256).")
    sha256: str = Field(description="sha256 of the checkpoint file.")
    parent_model_id: str = Field(description="Model fine-tuned.")
    parent: ModelSpec = Field(description="Spec of the parent model.")
    set_name: str = Field(description="Reference set trained on.")
    level_of_theory: str = Field(description="Level of theory of the set's energies.")
    split_id: str = Field(description="Split used: train part for training, val for selection.")
    sweep: str | None = Field(default=None, description="Name of the sweep the run belongs to.")
    depth: int = Field(description="X, trainable units from the readout backwards.")
    trainable_modules: list[str] = Field(
        description="Modules fitted: composition_model (least squares) and the X units."
    )
    frozen_modules: list[str] = Field(description="Modules kept at the parent's weights.")
    trainable_parameters: int = Field(
        description="Parameters of the trainable modules (AtomRef's 94 included)."
    )
    atomref_shift: dict[str, float] = Field(
        description="Per-element reference energies fitted to the training data and added to "
        "the parent's AtomRef, eV/atom, by element."
    )
    hyperparameters: FineTuneSettings = Field(description="Settings of the run.")
    n_train: dict[str, int] = Field(
        description="Training data: structures, slabs, bulks, gamma_pairs, materials, "
        "force_labelled."
    )
    n_val: dict[str, int] = Field(description="Validation data, same counts.")
    train_keys: list[str] = Field(description="Reference keys of every training structure.")
    val_keys: list[str] = Field(description="Reference keys of every validation structure.")
    dropped: dict[str, list[str]] = Field(
        description="Reason -> keys of train/val records not used (flags are screened: a "
        "record with two flags appears under both)."
    )
    n_dropped: int = Field(description="Records of the train and val parts not used.")
    history: list[EpochRecord] = Field(description="Loss curves, one record per epoch.")
    best_epoch: int = Field(description="Epoch with the lowest validation gamma MAE (kept).")
    best_val_gamma_mae: float | None = Field(description="Validation gamma MAE there, J/m².")
    best_val_energy_mae: float = Field(description="Validation energy MAE there, eV/atom.")
    stopped_early: bool = Field(description="Training stopped by patience before `epochs`.")
    resumed_from_epoch: int | None = Field(
        default=None, description="Last epoch of the checkpoint the run resumed from."
    )
    setup_seconds: float = Field(description="Graphs, batches and frozen-feature cache, s.")
    mean_epoch_seconds: float | None = Field(description="Mean wall time of an epoch, s.")
    wall_seconds: float = Field(description="Wall time of the whole fine-tune, s.")
    checkpoint_path: str = Field(description="Checkpoint file on the machine that trained.")
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")


class BulkSetErrors(BaseModel):
    """Aligned bulk energy errors of a model and its parent on one set of unseen bulks."""

    name: str = Field(description="Bulk set: a reference set, or '<set>:test' bulk cells.")
    level_of_theory: str = Field(description="Level of theory of its energies.")
    alignment: str = Field(description="Bulks the per-element offsets were fitted on.")
    n_structures: int = Field(description="Bulk cells evaluated.")
    n_excluded: int = Field(
        default=0, description="Cells left out: an element without a fitted offset, or failed."
    )
    n_elements: int = Field(description="Elements with an offset (free parameters).")
    mae_per_atom: float | None = Field(
        description="MAE of the aligned residual, eV/atom (None: no cell evaluated)."
    )
    parent_mae_per_atom: float | None = Field(description="The parent's, eV/atom.")
    relative_change: float | None = Field(description="mae / parent_mae - 1 (0.1: 10 % worse).")
    force_mae: float | None = Field(default=None, description="Force MAE, eV/Å (if labelled).")
    parent_force_mae: float | None = Field(default=None, description="The parent's, eV/Å.")


class ForgettingDoc(BaseModel):
    """Bulk forgetting of a model: aligned bulk energy errors beside its parent's."""

    model_id: str = Field(description="Model checked.")
    model: ModelSpec = Field(description="Its spec.")
    parent_model_id: str = Field(description="Model it is compared with.")
    sets: list[BulkSetErrors] = Field(description="One entry per bulk set.")
    max_relative_change: float | None = Field(
        description="Largest relative_change over the sets (None if none has one)."
    )
    created_at: str = Field(default_factory=_now, description="ISO time the document was made.")
