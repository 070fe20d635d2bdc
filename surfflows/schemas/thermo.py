"""Surface thermodynamics documents: elemental references, gamma(delta mu_O), Wulff shapes.

The Wulff documents mirror emmet's surface-properties document
(emmet.core.surface_properties: SurfacePropDoc / SurfaceEntry field names) plus the surfflows
fields.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.analysis.wulff import WulffShape
from pymatgen.core import Composition, Structure
from scipy.spatial import QhullError

from surfflows.core.slabs import (
    MillerIndex,
    SlabSettings,
    conventional_cell,
    generate_slabs,
)
from surfflows.core.thermo import (
    DELU_O,
    bulk_units_and_excess,
    formation_energy,
    oxygen_chemical_potential_bounds,
    ranking_agreement,
    stable_terminations,
    surface_energy_line,
    surface_energy_plotter,
    to_j_per_m2,
)
from surfflows.core.timestamps import now_iso
from surfflows.engine.models import ModelSpec
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.relax import BulkRelaxDoc, RelaxFields
from surfflows.schemas.surface import SurfaceEnergyDoc

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

    @classmethod
    def from_surface_energies(
        cls,
        bulk: BulkRelaxDoc,
        surfaces: Sequence[SurfaceEnergyDoc],
        references: Sequence[ElementReferenceDoc],
        slab_settings: SlabSettings,
        delta_mu_o_range: tuple[float, float] | None = None,
        delta_mu_o: Sequence[float] | None = None,
        dft_elemental_references: Mapping[str, float] | None = None,
        dft_elemental_set: str | None = None,
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
        dft_elemental_references, dft_elemental_set
            Element -> DFT energy per atom of its ground state and the set it comes from
            (:func:`surfflows.io.elements.dft_elemental_references`); recorded for the
            bulk's metals as the DFT side of their chemical potentials.
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
            dft_metal_references={
                el: e
                for el, e in (dft_elemental_references or {}).items()
                if el in composition.get_el_amt_dict() and el != "O"
            },
            dft_elemental_set=dft_elemental_set if dft_elemental_references else None,
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
