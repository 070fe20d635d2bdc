"""Surface thermodynamics documents: elemental references, gamma(delta mu_O), Wulff shapes.

The Wulff documents mirror emmet's surface-properties document
(emmet.core.surface_properties: SurfacePropDoc / SurfaceEntry field names) plus the surfflows
fields. Documents only: they are built by :mod:`surfflows.analysis.thermo` and
:mod:`surfflows.analysis.wulff`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from surfflows.core.text import MillerIndex
from surfflows.core.timestamps import now_iso
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.relax import RelaxFields

if TYPE_CHECKING:
    from surfflows.engine.relax import RelaxResult


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


class SurfacePropertiesDoc(OutputDoc):
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
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


class ReferenceWulffDoc(BaseModel):
    """A DFT reference set's Wulff shape of one material, with the set's provenance."""

    reference_set: str = Field(description="Reference set name.")
    level_of_theory: str = Field(description="Level of theory of the reference gammas.")
    citation: str | None = Field(default=None, description="Citation of the reference data.")
    wulff: SurfacePropertiesDoc = Field(
        description="Wulff shape of the set's gammas (model_id '<set> (<level of theory>)')."
    )


class SurfaceThermoDoc(OutputDoc):
    """Surface thermodynamics of one material under one model.

    Conventions: ``mu_O = E(O2) / 2 + delta mu_O`` with E(O2) from the same model as slabs and
    bulk; ``gamma(delta mu_O) = (E_slab - n E_bulk - n_O mu_O) / 2A`` per termination
    (:func:`surfflows.core.thermo.surface_energy_line`); the stable termination of each facet is
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
    dft_metal_references: dict[str, float] = Field(
        default_factory=dict,
        description="Metal -> DFT energy per atom of its ground state (dft_elemental_set), "
        "eV/atom: the DFT side of the metal chemical potential, shown beside the model's. "
        "gamma and the bounds use the model's references only (energies of two levels of "
        "theory are never mixed).",
    )
    dft_elemental_set: str | None = Field(
        default=None, description="Reference set of dft_metal_references (mp_elemental_refs)."
    )
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
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


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


class WulffComparisonDoc(OutputDoc):
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
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")
