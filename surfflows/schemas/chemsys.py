"""Documents of chemical-system thermodynamics: the model's hull and surface phase diagrams.

One :class:`ChemicalSystemThermoDoc` per (target phase, model) holds the target's stability
region in the chemical potentials of two of its elements (the third removed by the bulk
constraint), gamma of every slab termination as a plane over that region, the stable
termination per facet (a termination map) and Wulff shapes at the region's vertices and
centroid. Built by :mod:`surfflows.analysis.chemsys` from the physics in
:mod:`surfflows.core.chempot`.

Conventions
-----------
* ``mu_X = mu0_X + Δμ_X`` with ``mu0_X`` the model's own elemental reference, eV/atom: the
  lowest-energy elemental phase of the model's hull (``E(O2) / 2`` for oxygen, the O2
  molecule relaxed in a box; the lowest of the metal's relaxed prototypes, or a lower
  elemental phase among the phases).
* The bulk constraint ``g_bulk = sum_X x_X mu_X`` (per formula unit of the target) fixes the
  dependent element's potential; the other (independent) potentials are the diagram's axes.
* ``gamma = (E_slab - sum_X N_X mu_X) / 2A``, J/m² in the documents (eV/Å² where the field
  name says so); see :func:`surfflows.core.chempot.surface_energy_plane`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from surfflows.core.text import MillerIndex
from surfflows.core.timestamps import now_iso
from surfflows.schemas.provenance import OutputDoc
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.thermo import ExcludedSlab, SurfacePropertiesDoc, WulffComparisonDoc


class PhaseEnergy(BaseModel):
    """One competing phase (or elemental reference) relaxed by a model: a hull entry."""

    name: str = Field(description="Phase id (file stem, e.g. 'SrTiO3-cubic', or mp-id).")
    formula: str = Field(description="Reduced formula.")
    composition: dict[str, float] = Field(description="Element -> atoms in the relaxed cell.")
    energy: float = Field(description="Total energy of the relaxed cell, eV.")
    n_atoms: int = Field(description="Atoms in the cell.")
    model_id: str = Field(description="Model that relaxed it.")
    source: str | None = Field(default=None, description="Structure file or database it came from.")

    @property
    def energy_per_atom(self) -> float:
        """Total energy per atom, eV/atom."""
        return self.energy / self.n_atoms

    @classmethod
    def from_bulk(
        cls, doc: BulkRelaxDoc, name: str | None = None, source: str | None = None
    ) -> PhaseEnergy:
        """The hull entry of a converged bulk relaxation.

        Raises
        ------
        ValueError
            If the relaxation failed or did not converge (the hull needs real minima).
        """
        name = name or doc.material_id
        if doc.energy is None or not doc.converged:
            raise ValueError(f"phase {name}: relaxation did not converge ({doc.error})")
        return cls(
            name=name,
            formula=doc.structure.composition.reduced_formula,
            composition=doc.structure.composition.get_el_amt_dict(),
            energy=doc.energy,
            n_atoms=doc.n_atoms,
            model_id=doc.model_id,
            source=source,
        )


class StabilityRegion(BaseModel):
    """Where a target phase is stable on the model's hull, in its independent chemical potentials.

    The region is the target's domain of pymatgen's ``ChemicalPotentialDiagram`` of the phases
    in the target's own elements (elements outside the target are taken as absent, their
    potentials at -infinity), projected onto the independent potentials: a polygon for a
    ternary target, an interval for a binary one. ``vertices`` go counter-clockwise;
    ``edge_phases[i]`` is the competing phase that coexists with the target on the edge from
    ``vertices[i]`` to ``vertices[i + 1]`` (cyclically); ``vertex_phases[i]`` all phases that
    coexist with it at ``vertices[i]``.

    A target above the model's hull (``stable=False``) gets the region it would have were its
    energy lowered onto the hull and ``margin`` below it (``energy_shift`` per atom in all): a
    thin region around the chemical potentials where its decomposition products coexist,
    the only place a metastable phase can be in near-equilibrium with them. ``reason`` says so.
    """

    target: str = Field(description="Target phase name.")
    formula: str = Field(description="Reduced formula of the target.")
    model_id: str = Field(description="Model whose energies make the hull.")
    elements: list[str] = Field(description="Elements of the target (the region's system).")
    independent: list[str] = Field(description="Axes: the independent elements, e.g. ['Sr', 'O'].")
    dependent: str | None = Field(
        description="Element whose potential the bulk constraint fixes, e.g. 'Ti' (None: element)."
    )
    mu0: dict[str, float] = Field(
        description="Reference potentials mu0 per element, eV/atom (the model's elemental phases; "
        "O: E(O2)/2)."
    )
    vertices: list[list[float]] = Field(
        description="Region vertices in (Δμ of each independent element), eV, counter-clockwise."
    )
    vertex_phases: list[list[str]] = Field(
        description="Phases coexisting with the target at each vertex (formulas)."
    )
    edge_phases: list[list[str]] = Field(
        description="Competing phase(s) on the edge vertices[i] -> vertices[i+1] (polygons)."
    )
    centroid: list[float] = Field(description="Area centroid of the region, eV.")
    area: float = Field(description="Area (polygon, eV²) or length (interval, eV) of the region.")
    e_above_hull: float = Field(description="Target's energy above the model's hull, eV/atom.")
    stable: bool = Field(description="Whether the target is a vertex of the model's hull.")
    decomposition: dict[str, float] = Field(
        default_factory=dict,
        description="Above the hull: decomposition products -> atomic fraction (pymatgen).",
    )
    energy_shift: float = Field(
        default=0.0,
        description="Energy per atom subtracted from the target to get the region (0 if stable).",
    )
    reason: str | None = Field(default=None, description="Why the region is not the plain one.")

    def delta_mu(self, point: list[float]) -> dict[str, float]:
        """``{element: Δμ}`` of a point given in the region's coordinates."""
        return dict(zip(self.independent, point, strict=True))


class TerminationPlane(BaseModel):
    """``gamma(Δμ) = gamma_0 + sum_X slope_X Δμ_X`` of one slab termination (independent X)."""

    entry_id: str = Field(description="material|(hkl)|shift|termination, unique per slab.")
    miller_index: MillerIndex = Field(description="Miller index (conventional bulk cell).")
    shift: float = Field(description="SlabGenerator shift of the termination.")
    termination: str = Field(description="Termination label.")
    slab_formula: str = Field(description="Formula of the slab cell.")
    n_bulk_units: float = Field(description="Bulk cells fixed by the dependent element's count.")
    excess: dict[str, float] = Field(
        description="Independent element -> atoms beyond n_bulk_units bulk cells (<0: deficit)."
    )
    area: float = Field(description="|a x b| of the slab, Å².")
    gamma_0: float = Field(description="gamma at Δμ = 0 for every independent element, J/m².")
    gamma_0_EV_PER_ANG2: float = Field(description="gamma at Δμ = 0, eV/Å².")
    slopes: dict[str, float] = Field(
        description="Independent element -> d gamma / d Δμ_X = -excess_X / 2A, J/m² per eV."
    )

    def gamma(self, delta_mu: dict[str, float]) -> float:
        """gamma at ``delta_mu`` (element -> Δμ, eV), J/m²."""
        missing = sorted(el for el, s in self.slopes.items() if s and el not in delta_mu)
        if missing:
            raise ValueError(f"{self.entry_id}: gamma depends on Δμ of {missing}")
        return self.gamma_0 + sum(s * delta_mu.get(el, 0.0) for el, s in self.slopes.items())


class TerminationMap(BaseModel):
    """Stable termination of one facet over the stability region (the termination map).

    ``stable`` and ``gamma`` are sampled on the document's grid (rows along the second
    independent element, columns along the first); points outside the region hold -1 / None.
    ``cells`` and ``area_fractions`` are exact: the sub-polygon (sub-interval) where each
    termination has the lowest gamma, and its area over the region's.
    """

    miller_index: MillerIndex = Field(description="Facet.")
    entry_ids: list[str] = Field(description="Terminations of the facet (index = map value).")
    stable: list[list[int]] = Field(
        description="Index into entry_ids of the lowest-gamma termination per grid point (-1: out)."
    )
    gamma: list[list[float | None]] = Field(description="Lowest gamma per grid point, J/m².")
    area_fractions: dict[str, float] = Field(
        description="entry_id -> fraction of the region where it is the stable termination."
    )
    cells: dict[str, list[list[float]]] = Field(
        default_factory=dict,
        description="entry_id -> vertices (in order) of the part of the region where it is "
        "stable, eV (terminations stable nowhere are absent).",
    )


class ChemicalPotentialPoint(BaseModel):
    """gamma of every termination and the Wulff shape at one point of the region."""

    label: str = Field(description="'vertex i (phases)' or 'centroid'.")
    delta_mu: dict[str, float] = Field(description="Independent element -> Δμ, eV.")
    mu: dict[str, float] = Field(description="Every element -> absolute mu (bulk constraint), eV.")
    gamma: dict[str, float] = Field(description="entry_id -> gamma at this point, J/m².")
    stable: dict[str, str] = Field(description="Facet '(hkl)' -> entry_id of the stable one.")
    wulff: SurfacePropertiesDoc = Field(description="Wulff shape of the stable terminations.")


class ChemicalSystemThermoDoc(OutputDoc):
    """Surface phase diagram of one target phase under one model, over two chemical potentials.

    Conventions: see :mod:`surfflows.schemas.chemsys`. The hull, the bulk and every slab come
    from ``model_id``; nothing of another level of theory enters.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    material_id: str = Field(description="Target bulk (its phase name).")
    formula: str = Field(description="Reduced formula of the target.")
    model_id: str = Field(description="Model of the hull, bulk, references and slabs.")
    chemical_system: list[str] = Field(description="Elements of the campaign's phases.")
    phases: list[PhaseEnergy] = Field(description="Every hull entry (phases and elements).")
    region: StabilityRegion = Field(description="Stability region of the target.")
    planes: list[TerminationPlane] = Field(description="gamma(Δμ) of every usable termination.")
    excluded: list[ExcludedSlab] = Field(description="Slabs left out, with reasons.")
    grid_axes: list[list[float]] = Field(
        description="Grid coordinates per independent element (Δμ, eV) of the maps."
    )
    maps: list[TerminationMap] = Field(description="Termination map per facet.")
    points: list[ChemicalPotentialPoint] = Field(
        description="Region vertices (in order), then the centroid (last)."
    )
    n_phases: int = Field(description="Hull entries.")
    n_slabs: int = Field(description="Usable slab terminations.")
    n_facets: int = Field(description="Facets.")
    map_png: str | None = Field(default=None, description="PNG of the termination maps.")
    wulff_png: str | None = Field(default=None, description="PNG of the Wulff shapes.")
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")

    @property
    def centroid(self) -> ChemicalPotentialPoint:
        """The point at the region's centroid."""
        return self.points[-1]


class FacetMapAgreement(BaseModel):
    """Agreement of two models' stable terminations on one facet."""

    miller_index: MillerIndex = Field(description="Facet.")
    agreement: float | None = Field(
        description="Fraction of the common region where the stable terminations agree."
    )
    agreement_on_a: float = Field(
        description="The same over region A (model B's planes evaluated there too)."
    )
    stable_at_centroid_a: str = Field(description="Model A's termination at A's centroid.")
    stable_at_centroid_b: str = Field(description="Model B's termination at A's centroid.")


class TerminationMapComparisonDoc(OutputDoc):
    """Two models' termination maps and centroid Wulff shapes for one target.

    Terminations match by facet, termination label and slab formula (the slabs are cut the
    same way from each model's relaxed bulk). Regions differ between models (each has its own
    hull): the agreement is measured exactly over their intersection, and again over region A
    alone (model B's planes evaluated there).
    """

    material_id: str = Field(description="Target.")
    model_a: str = Field(description="First model (the reference of the comparison).")
    model_b: str = Field(description="Second model.")
    region_overlap: float = Field(
        description="Area of the intersection of the two regions over their union (IoU)."
    )
    facets: list[FacetMapAgreement] = Field(description="Per common facet.")
    missing_in_b: list[MillerIndex] = Field(description="Facets of A that B lacks.")
    missing_in_a: list[MillerIndex] = Field(description="Facets of B that A lacks.")
    wulff_at_centroid: WulffComparisonDoc | None = Field(
        description="Wulff shape of B against A, each at its own region's centroid."
    )
    note: str | None = Field(default=None, description="Why a part is missing.")
    created_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")
