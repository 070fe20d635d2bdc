"""Surface phase diagrams over two chemical potentials, from a model's own convex hull.

Pure functions of stored documents (no model, no database):

* :func:`model_phase_diagram`: pymatgen ``PhaseDiagram`` of the phases and elemental
  references one model relaxed;
* :func:`stability_region`: a target's stability region in its independent chemical
  potentials (pymatgen ``ChemicalPotentialDiagram``), with the competing phase on each edge,
  or, above the hull, the closest region and the reason;
* :func:`termination_planes`, :func:`termination_maps`, :func:`region_points`: gamma of every
  slab termination as a plane over the region (:mod:`surfflows.core.chempot`), the stable
  termination per facet on a grid with exact area fractions, Wulff shapes at the vertices
  and centroid (pymatgen ``WulffShape`` via :mod:`surfflows.analysis.wulff`);
* :func:`chemical_system_thermo`: the whole
  :class:`~surfflows.schemas.chemsys.ChemicalSystemThermoDoc`;
* :func:`compare_termination_maps`: two models' maps and centroid Wulff shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pymatgen.analysis.chempot_diagram import ChemicalPotentialDiagram
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition, Element
from scipy.optimize import linprog
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

from surfflows.analysis.wulff import compare_wulff, surface_properties
from surfflows.core.chempot import (
    default_independent,
    dependent_chemical_potential,
    dependent_element,
    evaluate_planes,
    surface_energy_plane,
)
from surfflows.core.slabs import conventional_cell
from surfflows.core.text import miller_text
from surfflows.core.thermo import to_j_per_m2
from surfflows.schemas.chemsys import (
    ChemicalPotentialPoint,
    ChemicalSystemThermoDoc,
    FacetMapAgreement,
    PhaseEnergy,
    StabilityRegion,
    TerminationMap,
    TerminationMapComparisonDoc,
    TerminationPlane,
)
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import ElementReferenceDoc, ExcludedSlab, SurfaceEntryDoc

#: Energy (eV/atom) a target above the hull is placed below it for its closest region:
#: about k_B T at room temperature.
DEFAULT_MARGIN = 0.025

#: Smallest region area (eV², polygons) or length (eV, intervals) that is not degenerate.
MIN_REGION_SIZE = 1e-6

#: Points of chemical-potential space closer than this (eV) are the same point.
POINT_TOLERANCE = 1e-6

#: Fields that name a slab termination on every document.
SLAB_KEYS = {"miller_index", "shift", "termination"}


def elemental_potentials(references: Sequence[ElementReferenceDoc]) -> dict[str, float]:
    """Element -> the model's reference energy per atom (``E(O2) / 2`` for oxygen).

    Raises
    ------
    ValueError
        If a reference did not converge, or the references come from several models.
    """
    models = sorted({r.model_id for r in references})
    if len(models) > 1:
        raise ValueError(f"elemental references come from several models: {models}")
    failed = sorted(r.element for r in references if not r.converged or r.energy_per_atom is None)
    if failed:
        raise ValueError(f"elemental references of {failed} did not converge")
    return {r.element: r.energy_per_atom for r in references}


def model_phase_diagram(
    phases: Sequence[PhaseEnergy], elemental_refs: Mapping[str, float]
) -> PhaseDiagram:
    """pymatgen ``PhaseDiagram`` of one model's energies.

    Parameters
    ----------
    phases
        Every competing phase the model relaxed (the targets among them), one model.
    elemental_refs
        Element -> the model's elemental reference energy per atom, eV/atom (O: ``E(O2)/2``),
        e.g. from :func:`elemental_potentials`. Each enters the hull as an entry named
        ``"<element> (reference)"``; an elemental phase among ``phases`` lower than it
        becomes the element's reference instead (pymatgen's ``el_refs``).

    Raises
    ------
    ValueError
        For phases of several models, duplicate phase names, or an element of a phase
        without a reference.
    """
    models = sorted({p.model_id for p in phases})
    if len(models) > 1:
        raise ValueError(f"phases come from several models: {models}")
    names = [p.name for p in phases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"duplicate phase names {duplicates}")
    elements = {el for p in phases for el in p.composition}
    missing = sorted(elements - set(elemental_refs))
    if missing:
        raise ValueError(f"no elemental reference for {missing}: relax them with the same model")
    model = {"model_id": models[0] if models else None}
    entries = [
        PDEntry(Composition({el: 1}), energy, name=f"{el} (reference)", attribute=model)
        for el, energy in sorted(elemental_refs.items())
    ]
    entries += [
        PDEntry(Composition(p.composition), p.energy, name=p.name, attribute=model) for p in phases
    ]
    return PhaseDiagram(entries)


def _entry(phase_diagram: PhaseDiagram, name: str) -> PDEntry:
    for entry in phase_diagram.all_entries:
        if entry.name == name:
            return entry
    raise ValueError(f"target {name} is not among the phases of the hull")


def no_region_reason(composition: Composition) -> str | None:
    """Why a target of this composition has no stability region in two potentials, or None.

    An element's gamma does not depend on Δμ (one number per termination, its Wulff shape
    needs no region); a target of four elements has a polyhedron in three potentials.
    """
    n_elements = len(composition.elements)
    if n_elements < 2:
        return "an element: gamma does not depend on Δμ"
    if n_elements > 3:
        return (
            f"{n_elements} elements: its region is a polyhedron; termination maps are made "
            "for binary and ternary targets"
        )
    return None


def stability_region(
    phase_diagram: PhaseDiagram,
    target: str,
    independent: Sequence[str] | None = None,
    margin: float = DEFAULT_MARGIN,
) -> StabilityRegion:
    """Stability region of a target in its independent chemical potentials.

    The region is the target's domain in pymatgen's ``ChemicalPotentialDiagram`` (formal
    potentials ``Δμ = mu - mu0``, ``mu0`` from the hull's elemental references) of the phases
    made of the target's elements, projected onto the independent elements' axes (the
    dependent element follows from the bulk constraint). Conventions and the meaning of a
    target above the hull: see :class:`~surfflows.schemas.chemsys.StabilityRegion`.

    Parameters
    ----------
    phase_diagram
        The model's hull (:func:`model_phase_diagram`).
    target
        Name of the target phase (a ``PhaseEnergy.name``).
    independent
        The axes (default :func:`surfflows.core.chempot.default_independent`: for ABO3
        ``(A, O)``).
    margin
        For a target above the hull: how far below the hull (eV/atom) it is placed.

    Raises
    ------
    ValueError
        For an unknown or elemental target, a target of more than three elements (its region
        is a polyhedron), or a region that degenerates to a point or a line.
    """
    entry = _entry(phase_diagram, target)
    composition = entry.composition
    formula = composition.reduced_formula
    elements = sorted((str(el) for el in composition.elements), key=lambda el: Element(el).X)
    reason = no_region_reason(composition)
    if reason is not None:
        raise ValueError(f"target {target} ({formula}): {reason}")
    independent = list(independent or default_independent(elements))
    dependent = dependent_element(composition, independent)
    mu0 = {el: phase_diagram.el_refs[Element(el)].energy_per_atom for el in elements}
    decomposition, e_above_hull = phase_diagram.get_decomp_and_e_above_hull(entry)
    stable = entry in phase_diagram.stable_entries
    shift = 0.0 if stable else e_above_hull + margin
    subsystem = [
        e
        for e in phase_diagram.all_entries
        if e is not entry and {str(el) for el in e.composition.elements} <= set(elements)
    ]
    shifted = PDEntry(composition, entry.energy - shift * composition.num_atoms, name=target)
    diagram = ChemicalPotentialDiagram([*subsystem, shifted], formal_chempots=True)
    axes = [[str(el) for el in diagram.elements].index(el) for el in independent]
    domains = {name: np.unique(points, axis=0) for name, points in diagram.domains.items()}
    if formula not in domains:
        raise ValueError(
            f"target {target} ({formula}): the stability region degenerates to a point or line "
            "(the target only touches the hull)"
        )
    full = domains[formula]
    ordered, size, centroid = _ordered_region(full[:, axes], f"target {target} ({formula})")
    vertices = full[[_nearest(full[:, axes], p) for p in ordered]]
    vertex_phases = [
        sorted(
            name
            for name, points in domains.items()
            if name != formula and np.min(np.linalg.norm(points - v, axis=1)) < POINT_TOLERANCE
        )
        for v in vertices
    ]
    edge_phases = (
        [
            sorted(set(vertex_phases[i]) & set(vertex_phases[(i + 1) % len(vertices)]))
            for i in range(len(vertices))
        ]
        if len(independent) == 2
        else []
    )
    reason = None
    products = {e.composition.reduced_formula: float(f) for e, f in decomposition.items()}
    if not stable:
        reason = (
            f"{formula} is {e_above_hull:.3f} eV/atom above the model's hull "
            f"(decomposes to {' + '.join(sorted(products))}); region shown: {formula} lowered "
            f"onto the hull and {margin:g} eV/atom below it, the chemical potentials around "
            "the coexistence of its decomposition products"
        )
    return StabilityRegion(
        target=target,
        formula=formula,
        model_id=(entry.attribute or {}).get("model_id") or "unknown",
        elements=elements,
        independent=independent,
        dependent=dependent,
        mu0=mu0,
        vertices=ordered.tolist(),
        vertex_phases=vertex_phases,
        edge_phases=edge_phases,
        centroid=centroid.tolist(),
        area=size,
        e_above_hull=float(e_above_hull),
        stable=stable,
        decomposition={} if stable else products,
        energy_shift=shift,
        reason=reason,
    )


def _nearest(points: np.ndarray, point: np.ndarray) -> int:
    return int(np.argmin(np.linalg.norm(points - point, axis=1)))


def _ordered_region(points: np.ndarray, what: str) -> tuple[np.ndarray, float, np.ndarray]:
    """Vertices in order (counter-clockwise), area or length, and centroid of a region."""
    if points.shape[1] == 1:
        lo, hi = float(points.min()), float(points.max())
        if hi - lo < MIN_REGION_SIZE:
            raise ValueError(f"{what}: the stability region degenerates to a point ({lo:.4f} eV)")
        return np.array([[lo], [hi]]), hi - lo, np.array([(lo + hi) / 2])
    try:
        hull = ConvexHull(points)
    except QhullError:
        hull = None
    if hull is None or hull.volume < MIN_REGION_SIZE:
        extent = np.ptp(points, axis=0).max() if len(points) else 0.0
        kind = "a line" if extent > POINT_TOLERANCE else "a point"
        raise ValueError(
            f"{what}: the stability region degenerates to {kind} "
            f"(vertices {points.round(4).tolist()})"
        )
    ordered = points[hull.vertices]
    x, y = ordered[:, 0], ordered[:, 1]
    cross = x * np.roll(y, -1) - np.roll(x, -1) * y
    area = cross.sum() / 2
    centroid = np.array(
        [((x + np.roll(x, -1)) * cross).sum(), ((y + np.roll(y, -1)) * cross).sum()]
    ) / (6 * area)
    return ordered, float(hull.volume), centroid


def halfspaces(vertices: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    """A convex polygon (interval) as halfspaces ``A x + b <= 0``, rows ``[A, b]`` (scipy)."""
    vertices = np.asarray(vertices, dtype=float)
    if vertices.shape[1] == 1:
        lo, hi = vertices.min(), vertices.max()
        return np.array([[-1.0, lo], [1.0, -hi]])
    return ConvexHull(vertices).equations


def region_halfspaces(region: StabilityRegion) -> np.ndarray:
    """The region as halfspaces ``A x + b <= 0`` (see :func:`halfspaces`)."""
    return halfspaces(region.vertices)


def intersection_size(*cells: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Area (length) of the intersection of convex polygons (intervals) given by vertices."""
    return _size(_cell(np.vstack([halfspaces(c) for c in cells])))


def inside_region(region: StabilityRegion, points: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Boolean mask of the points (shape (P, D)) inside the region (boundary included)."""
    halfspaces = region_halfspaces(region)
    return np.all(points @ halfspaces[:, :-1].T + halfspaces[:, -1] <= tol, axis=1)


def _cell(halfspaces: np.ndarray) -> np.ndarray | None:
    """Vertices of the convex cell ``A x + b <= 0`` (in order); None if empty or flat."""
    a, b = halfspaces[:, :-1], -halfspaces[:, -1]
    if a.shape[1] == 1:
        lo = linprog([1.0], A_ub=a, b_ub=b, bounds=[(None, None)])
        hi = linprog([-1.0], A_ub=a, b_ub=b, bounds=[(None, None)])
        if not (lo.success and hi.success) or hi.x[0] - lo.x[0] < MIN_REGION_SIZE:
            return None
        return np.array([lo.x, hi.x])
    # Chebyshev centre: the interior point HalfspaceIntersection needs.
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    c = np.zeros(a.shape[1] + 1)
    c[-1] = -1.0
    centre = linprog(
        c,
        A_ub=np.hstack([a, norms]),
        b_ub=b,
        bounds=[(None, None)] * a.shape[1] + [(0, None)],
    )
    if not centre.success or centre.x[-1] < 1e-9:
        return None
    corners = HalfspaceIntersection(halfspaces, centre.x[:-1]).intersections
    return corners[ConvexHull(corners).vertices]


def _size(cell: np.ndarray | None) -> float:
    if cell is None:
        return 0.0
    return float(np.ptp(cell)) if cell.shape[1] == 1 else float(ConvexHull(cell).volume)


def stable_cells(
    region: StabilityRegion, gamma_0: np.ndarray, slopes: np.ndarray
) -> list[np.ndarray | None]:
    """Exact part of the region where each plane is the lowest (scipy halfspace intersection).

    The cell of plane k is the region cut by ``gamma_k <= gamma_j`` for every j (strictly
    below for j < k, so ties go to the first plane): a convex polygon (interval) given by its
    vertices in order, None where plane k is nowhere the lowest. The cells tile the region.
    """
    base = region_halfspaces(region)
    cells = []
    for k in range(len(gamma_0)):
        rows = [
            np.append(slopes[k] - slopes[j], gamma_0[k] - gamma_0[j] + (1e-12 if j < k else 0.0))
            for j in range(len(gamma_0))
            if j != k
        ]
        cells.append(_cell(np.vstack([base, *rows]) if rows else base))
    return cells


def termination_planes(
    bulk: BulkRelaxDoc,
    surfaces: Sequence[SurfaceEnergyDoc],
    mu0: Mapping[str, float],
    independent: Sequence[str],
) -> tuple[list[TerminationPlane], list[ExcludedSlab]]:
    """gamma plane of every usable slab (failed, duplicate or unbalanced ones excluded)."""
    planes, excluded, seen = [], [], set()
    for doc in surfaces:
        key = (tuple(doc.miller_index), doc.shift, doc.termination)
        reason = None
        if doc.status == "failed" or doc.slab_energy is None:
            reason = doc.reason or "relaxation failed"
        elif doc.model_id != bulk.model_id:
            reason = f"slab from {doc.model_id}, bulk from {bulk.model_id}"
        elif key in seen:
            reason = "duplicate document of this slab"
        else:
            try:
                gamma_0, slopes, n_units, excess = surface_energy_plane(
                    doc.slab_energy,
                    Composition(doc.slab_formula),
                    bulk.energy,
                    bulk.structure.composition,
                    doc.area,
                    mu0,
                    independent,
                )
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            excluded.append(ExcludedSlab(**doc.model_dump(include=SLAB_KEYS), reason=reason))
            continue
        seen.add(key)
        hkl = miller_text(doc.miller_index, compact=True)
        planes.append(
            TerminationPlane(
                entry_id=f"{bulk.material_id}|({hkl})|{doc.shift}|{doc.termination}",
                miller_index=doc.miller_index,
                shift=doc.shift,
                termination=doc.termination,
                slab_formula=doc.slab_formula,
                n_bulk_units=n_units,
                excess=excess,
                area=doc.area,
                gamma_0=to_j_per_m2(gamma_0),
                gamma_0_EV_PER_ANG2=gamma_0,
                slopes={el: to_j_per_m2(s) for el, s in slopes.items()},
            )
        )
    return planes, excluded


def _facets(planes: Sequence[TerminationPlane]) -> dict[tuple[int, ...], list[TerminationPlane]]:
    facets: dict[tuple[int, ...], list[TerminationPlane]] = {}
    for plane in planes:
        facets.setdefault(tuple(plane.miller_index), []).append(plane)
    return dict(sorted(facets.items()))


def _plane_arrays(
    planes: Sequence[TerminationPlane], independent: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    gamma_0 = np.array([p.gamma_0 for p in planes])
    slopes = np.array([[p.slopes.get(el, 0.0) for el in independent] for p in planes])
    return gamma_0, slopes


def region_grid(
    regions: Sequence[StabilityRegion], n_grid: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Grid axes over the regions' bounding box and the grid points, shape (P, D).

    Points run along the first axis fastest: reshaped to ``(n_grid, n_grid)`` they are rows
    along the second independent element and columns along the first.
    """
    vertices = np.vstack([r.vertices for r in regions])
    axes = [
        np.linspace(lo, hi, n_grid) for lo, hi in zip(vertices.min(0), vertices.max(0), strict=True)
    ]
    mesh = np.meshgrid(*axes, indexing="xy")
    return axes, np.column_stack([m.ravel() for m in mesh])


def termination_maps(
    region: StabilityRegion, planes: Sequence[TerminationPlane], n_grid: int = 61
) -> tuple[list[list[float]], list[TerminationMap]]:
    """The stable termination of every facet on a grid over the region, and exact fractions.

    Parameters
    ----------
    region
        The target's stability region.
    planes
        gamma planes of the terminations (every facet).
    n_grid
        Grid points per axis over the region's bounding box.

    Returns
    -------
    grid_axes
        Coordinates of the grid per independent element, eV.
    maps
        One :class:`~surfflows.schemas.chemsys.TerminationMap` per facet.
    """
    axes, points = region_grid([region], n_grid)
    inside = inside_region(region, points)
    maps = []
    for hkl, facet in _facets(planes).items():
        gamma_0, slopes = _plane_arrays(facet, region.independent)
        gamma = evaluate_planes(gamma_0, slopes, points)
        stable = np.where(inside, gamma.argmin(axis=1), -1)
        lowest = np.where(inside, gamma.min(axis=1), np.nan)
        cells = stable_cells(region, gamma_0, slopes)
        maps.append(
            TerminationMap(
                miller_index=hkl,
                entry_ids=[p.entry_id for p in facet],
                stable=np.reshape(stable, (-1, n_grid)).tolist(),
                gamma=[
                    [None if np.isnan(g) else float(g) for g in row]
                    for row in np.reshape(lowest, (-1, n_grid))
                ],
                area_fractions={
                    p.entry_id: _size(cell) / region.area
                    for p, cell in zip(facet, cells, strict=True)
                },
                cells={
                    p.entry_id: cell.tolist()
                    for p, cell in zip(facet, cells, strict=True)
                    if cell is not None
                },
            )
        )
    return [a.tolist() for a in axes], maps


def region_points(
    region: StabilityRegion,
    planes: Sequence[TerminationPlane],
    bulk: BulkRelaxDoc,
) -> list[ChemicalPotentialPoint]:
    """gamma of every termination and the Wulff shape at each vertex, then at the centroid."""
    labelled = [
        (f"vertex {i + 1} ({', '.join(phases)})", vertex)
        for i, (vertex, phases) in enumerate(
            zip(region.vertices, region.vertex_phases, strict=True)
        )
    ]
    labelled.append(("centroid", region.centroid))
    conventional = conventional_cell(bulk.structure)
    facets = _facets(planes)
    o2_energy = 2 * region.mu0["O"] if "O" in region.mu0 else None
    points = []
    for label, coordinates in labelled:
        delta_mu = region.delta_mu(coordinates)
        mu = dependent_chemical_potential(
            delta_mu, region.mu0, bulk.energy, bulk.structure.composition
        )
        gamma = {p.entry_id: p.gamma(delta_mu) for p in planes}
        stable = {
            miller_text(hkl): min(facet, key=lambda p: gamma[p.entry_id])
            for hkl, facet in facets.items()
        }
        surfaces = [
            SurfaceEntryDoc(
                miller_index=list(p.miller_index),
                surface_energy=gamma[p.entry_id],
                surface_energy_EV_PER_ANG2=gamma[p.entry_id] / to_j_per_m2(1.0),
                termination=p.termination,
                shift=p.shift,
                slab_formula=p.slab_formula,
            )
            for p in stable.values()
        ]
        wulff = surface_properties(
            conventional,
            surfaces,
            material_id=bulk.material_id,
            pretty_formula=region.formula,
            model_id=bulk.model_id,
            delta_mu_O=delta_mu.get("O"),
            mu_O=mu.get("O"),
            o2_energy=o2_energy,
        )
        points.append(
            ChemicalPotentialPoint(
                label=label,
                delta_mu=delta_mu,
                mu=mu,
                gamma=gamma,
                stable={facet: p.entry_id for facet, p in stable.items()},
                wulff=wulff,
            )
        )
    return points


def chemical_system_thermo(
    bulk: BulkRelaxDoc,
    surfaces: Sequence[SurfaceEnergyDoc],
    phases: Sequence[PhaseEnergy],
    elemental_refs: Mapping[str, float] | Sequence[ElementReferenceDoc],
    independent: Sequence[str] | None = None,
    n_grid: int = 61,
    margin: float = DEFAULT_MARGIN,
    target: str | None = None,
) -> ChemicalSystemThermoDoc:
    """The surface phase diagram of one target under one model.

    Parameters
    ----------
    bulk
        The target's bulk relaxation (its ``material_id`` names the target among the
        phases); the slabs were cut from it. Its energy is the target's hull entry.
    surfaces
        Surface-energy documents of its slabs (every facet and termination, one model).
    phases
        Every competing phase relaxed by the same model (the target may be among them, by
        name, with the bulk's energy).
    elemental_refs
        The model's elemental references: element -> energy per atom, or the
        :class:`~surfflows.schemas.thermo.ElementReferenceDoc` documents.
    independent
        Axes of the diagram (default: ``(A, O)`` for ABO3).
    n_grid
        Grid points per axis of the termination maps.
    margin
        For a target above the hull, see :func:`stability_region`.
    target
        Name of the target among ``phases`` (default: the bulk's ``material_id``).

    Raises
    ------
    ValueError
        For a failed bulk, documents of several models, a target phase whose energy differs
        from the bulk's, no usable slab, or a degenerate region.
    """
    if bulk.energy is None or not bulk.converged:
        raise ValueError(f"bulk {bulk.material_id} relaxation failed: {bulk.error}")
    if not isinstance(elemental_refs, Mapping):
        models = {r.model_id for r in elemental_refs}
        if models - {bulk.model_id}:
            raise ValueError(f"bulk is from {bulk.model_id}, references from {sorted(models)}")
        elemental_refs = elemental_potentials(elemental_refs)
    target = PhaseEnergy.from_bulk(bulk, name=target)
    others = []
    for phase in phases:
        if phase.name != target.name:
            others.append(phase)
        elif abs(phase.energy_per_atom - target.energy_per_atom) > 1e-3:
            raise ValueError(
                f"phase {phase.name}: energy {phase.energy_per_atom:.4f} eV/atom differs from "
                f"its bulk relaxation's {target.energy_per_atom:.4f} (use one relaxation)"
            )
    hull_phases = [target, *others]
    region = stability_region(
        model_phase_diagram(hull_phases, elemental_refs), target.name, independent, margin
    )
    planes, excluded = termination_planes(bulk, surfaces, region.mu0, region.independent)
    if not planes:
        raise ValueError(f"{bulk.material_id}: no usable slab ({len(excluded)} excluded)")
    grid_axes, maps = termination_maps(region, planes, n_grid)
    return ChemicalSystemThermoDoc(
        material_id=target.name,
        formula=region.formula,
        model_id=bulk.model_id,
        chemical_system=sorted(
            {el for p in hull_phases for el in p.composition} | set(elemental_refs)
        ),
        phases=hull_phases,
        region=region,
        planes=planes,
        excluded=excluded,
        grid_axes=grid_axes,
        maps=maps,
        points=region_points(region, planes, bulk),
        n_phases=len(hull_phases) + len(elemental_refs),
        n_slabs=len(planes),
        n_facets=len(maps),
    )


def compare_termination_maps(
    doc_a: ChemicalSystemThermoDoc, doc_b: ChemicalSystemThermoDoc
) -> TerminationMapComparisonDoc:
    """Where two models agree on the stable termination, and their centroid Wulff shapes.

    Exact geometry (scipy halfspace intersections of the stored cells): per facet, the
    fraction of the intersection of the two regions where the stable terminations agree (None
    if the regions do not overlap), and the same fraction over region A with B's planes
    evaluated there; terminations match by facet, termination label and slab formula. The
    region overlap is intersection over union. The Wulff shapes at each model's
    own centroid are compared with :func:`surfflows.analysis.wulff.compare_wulff` (Kendall
    tau, area fractions), A as the reference.

    Raises
    ------
    ValueError
        If the two documents are of different targets or axes.
    """
    ra, rb = doc_a.region, doc_b.region
    if doc_a.formula != doc_b.formula or ra.independent != rb.independent:
        raise ValueError(
            f"cannot compare {doc_a.formula} over {ra.independent} with {doc_b.formula} "
            f"over {rb.independent}"
        )
    common = intersection_size(ra.vertices, rb.vertices)
    facets_a, facets_b = _facets(doc_a.planes), _facets(doc_b.planes)
    maps_a = {tuple(m.miller_index): m for m in doc_a.maps}
    maps_b = {tuple(m.miller_index): m for m in doc_b.maps}
    centroid = doc_a.centroid.delta_mu
    rows = []
    for hkl in sorted(set(facets_a) & set(facets_b)):
        planes_a, planes_b = facets_a[hkl], facets_b[hkl]
        cells_a = maps_a[hkl].cells
        cells_b = maps_b[hkl].cells
        # B's terminations over region A (B's planes evaluated outside B's own region too).
        gamma_0, slopes = _plane_arrays(planes_b, ra.independent)
        cells_b_on_a = {
            p.entry_id: cell
            for p, cell in zip(planes_b, stable_cells(ra, gamma_0, slopes), strict=True)
            if cell is not None
        }
        same = [
            (a.entry_id, b.entry_id)
            for a in planes_a
            for b in planes_b
            if (a.termination, a.slab_formula) == (b.termination, b.slab_formula)
        ]
        agree = sum(
            intersection_size(cells_a[a], cells_b[b])
            for a, b in same
            if a in cells_a and b in cells_b
        )
        agree_on_a = sum(
            intersection_size(cells_a[a], cells_b_on_a[b])
            for a, b in same
            if a in cells_a and b in cells_b_on_a
        )
        rows.append(
            FacetMapAgreement(
                miller_index=hkl,
                agreement=agree / common if common > 0 else None,
                agreement_on_a=agree_on_a / ra.area,
                stable_at_centroid_a=min(planes_a, key=lambda p: p.gamma(centroid)).termination,
                stable_at_centroid_b=min(planes_b, key=lambda p: p.gamma(centroid)).termination,
            )
        )
    note = None
    try:
        wulff = compare_wulff(
            doc_a.centroid.wulff,
            doc_b.centroid.wulff,
            reference_set=doc_a.model_id,
            level_of_theory=f"model {doc_a.model_id}",
        )
    except ValueError as exc:
        wulff, note = None, f"no Wulff comparison: {exc}"
    return TerminationMapComparisonDoc(
        material_id=doc_a.material_id,
        model_a=doc_a.model_id,
        model_b=doc_b.model_id,
        region_overlap=common / (ra.area + rb.area - common),
        facets=rows,
        missing_in_b=sorted(set(facets_a) - set(facets_b)),
        missing_in_a=sorted(set(facets_b) - set(facets_a)),
        wulff_at_centroid=wulff,
        note=note,
    )
