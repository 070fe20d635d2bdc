"""Surface thermodynamics of a surface-energy campaign: gamma(delta mu_O), stable terminations.

Pure functions of stored documents (no model, no database): the
:class:`~surfflows.schemas.thermo.SurfaceThermoDoc` of one material under one model, built
with pymatgen's ``SlabEntry`` / ``SurfaceEnergyPlotter`` from the physics in
:mod:`surfflows.core.thermo`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.core import Composition

from surfflows.analysis.wulff import surface_properties
from surfflows.core.slabs import SlabSettings, conventional_cell, generate_slabs
from surfflows.core.thermo import (
    DELU_O,
    bulk_units_and_excess,
    formation_energy,
    oxygen_chemical_potential_bounds,
    stable_terminations,
    surface_energy_line,
    surface_energy_plotter,
    to_j_per_m2,
)
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import (
    DEFAULT_DELTA_MU_O_RANGE,
    ElementReferenceDoc,
    ExcludedSlab,
    StableTermination,
    SurfaceEntryDoc,
    SurfaceThermoDoc,
    TerminationLine,
)


def thermo_from_surface_energies(
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

    Conventions: see :class:`~surfflows.schemas.thermo.SurfaceThermoDoc`.

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
    bounds, formation, note = oxygen_bounds(bulk, o2_energy, metals, refs)
    window = delta_mu_o_range
    if has_oxygen and window is None:
        low, high = bounds
        window = (low, high) if low is not None and low < high else DEFAULT_DELTA_MU_O_RANGE
    lines, entries, excluded = termination_lines(bulk, surfaces, slab_settings, mu_ref)
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
            surface_properties(
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
    return SurfaceThermoDoc(
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


def oxygen_bounds(
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


def termination_lines(
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
