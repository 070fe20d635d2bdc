"""Surface thermodynamics as pure functions (no I/O, no models).

Conventions
-----------
* Surface energy of a symmetric slab with two equivalent faces:
  ``gamma = (E_slab - sum_i n_i mu_i) / (2 A)``, where for a stoichiometric slab
  ``sum_i n_i mu_i = (N_slab / N_bulk) E_bulk``.
* Non-stoichiometric slabs: the bulk fixes the chemical potentials of the bulk formula,
  and each excess element ``X`` needs a reference ``mu_X = mu_X^ref + delta mu_X`` (for
  oxygen ``mu_O^ref = E(O2) / 2``), giving ``gamma(delta mu)``.
* ``A = |a x b|`` of the slab cell, Å²; ``1 eV/Å² = 16.0218 J/m²``.
* ML slab and bulk energies always come from the same model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

if TYPE_CHECKING:
    from pymatgen.analysis.surface_analysis import SlabEntry, SurfaceEnergyPlotter
    from sympy import Symbol

# pymatgen's surface analysis, its entries, scipy.stats and sympy load in seconds: they are
# imported by the functions that use them, so importing the gamma helpers stays fast.

#: eV/Å² -> J/m² (1 eV = 1.602176634e-19 J, 1 Å² = 1e-20 m²).
EV_PER_A2_TO_J_PER_M2 = 16.02176634


def slab_area(lattice: Lattice) -> float:
    """In-plane area ``|a x b|`` of a slab cell, Å²."""
    return float(np.linalg.norm(np.cross(lattice.matrix[0], lattice.matrix[1])))


def bulk_units_and_excess(
    slab_composition: Composition,
    bulk_composition: Composition,
    reservoir: Iterable[str] | None = None,
    tol: float = 1e-6,
) -> tuple[float, dict[str, float]]:
    """Split a slab composition into bulk cells plus an excess of reservoir elements.

    Parameters
    ----------
    slab_composition, bulk_composition
        Compositions of the slab and of the bulk cell used as reference.
    reservoir
        Elements exchanged with a reservoir (e.g. ``["O"]``). The other ("host") bulk
        elements fix the number of bulk cells and must be in the bulk's ratio. ``None``:
        no reservoir is chosen and the excess is reported relative to the scarcest
        element (non-negative), which is enough to tell whether a slab is stoichiometric.
    tol
        Tolerance on atom counts.

    Returns
    -------
    n_units
        Number of bulk cells (``N_slab / N_bulk`` for a stoichiometric slab).
    excess
        Element -> excess atoms relative to ``n_units`` bulk cells (empty if stoichiometric;
        negative for a deficit when a reservoir is given).
    """
    slab = slab_composition.get_el_amt_dict()
    bulk = bulk_composition.get_el_amt_dict()
    if reservoir is None:
        unknown = set(slab) - set(bulk)
        if unknown:
            raise ValueError(f"slab has elements {sorted(unknown)} that the bulk has not")
        n_units = min(slab.get(el, 0.0) / amt for el, amt in bulk.items())
        candidates = set(bulk)
    else:
        reservoir = set(reservoir)
        unknown = set(slab) - set(bulk) - reservoir
        if unknown:
            raise ValueError(f"slab elements {sorted(unknown)} are neither bulk nor reservoir")
        host = {el: slab.get(el, 0.0) / amt for el, amt in bulk.items() if el not in reservoir}
        if not host:
            raise ValueError("every bulk element is a reservoir: the bulk cannot fix the slab")
        if max(host.values()) - min(host.values()) > tol:
            raise ValueError(
                f"slab {slab_composition.formula} cannot be balanced against bulk "
                f"{bulk_composition.formula} with reservoir {sorted(reservoir)}: host element "
                f"ratios {host} differ"
            )
        n_units = next(iter(host.values()))
        candidates = set(bulk) | reservoir
    excess = {
        el: slab.get(el, 0.0) - n_units * bulk.get(el, 0.0)
        for el in sorted(candidates)
        if abs(slab.get(el, 0.0) - n_units * bulk.get(el, 0.0)) > tol
    }
    return n_units, excess


def surface_energy(
    slab_energy: float,
    slab_composition: Composition,
    bulk_energy: float,
    bulk_composition: Composition,
    area: float,
    mu: Mapping[str, float] | None = None,
    n_surfaces: int = 2,
) -> float:
    """Surface energy in eV/Å².

    Parameters
    ----------
    slab_energy
        Total energy of the slab, eV.
    slab_composition, bulk_composition
        Compositions of slab and bulk cell.
    bulk_energy
        Total energy of the bulk cell, eV (same model / level of theory as the slab).
    area
        ``|a x b|`` of the slab, Å².
    mu
        Absolute chemical potentials (eV/atom) of the reservoir elements, e.g.
        ``{"O": E_O2 / 2 + delta_mu_O}``. Required when the slab is not stoichiometric.
    n_surfaces
        Number of surfaces the slab exposes (2 for a symmetric slab).

    Returns
    -------
    float
        gamma, eV/Å². Multiply by :data:`EV_PER_A2_TO_J_PER_M2` for J/m².
    """
    if area <= 0:
        raise ValueError(f"slab area must be positive, got {area}")
    n_units, excess = bulk_units_and_excess(slab_composition, bulk_composition)
    if excess:
        if not mu:
            raise ValueError(
                f"slab {slab_composition.formula} is not stoichiometric (excess "
                f"{ {k: round(v, 3) for k, v in excess.items()} } against bulk "
                f"{bulk_composition.reduced_formula}): give chemical potentials of the "
                "reservoir elements"
            )
        n_units, excess = bulk_units_and_excess(slab_composition, bulk_composition, mu)
    reservoir_energy = sum(n * mu[el] for el, n in excess.items())
    return (slab_energy - n_units * bulk_energy - reservoir_energy) / (n_surfaces * area)


def to_j_per_m2(gamma_ev_per_a2: float) -> float:
    """eV/Å² -> J/m²."""
    return gamma_ev_per_a2 * EV_PER_A2_TO_J_PER_M2


# ---------------------------------------------------------------------------------------------
# Surface thermodynamics: reference chemical potentials, gamma(delta mu), Wulff shapes.
#
# Oxygen is the reservoir element: mu_O = E(O2) / 2 + delta mu_O, with E(O2) from the same
# model as slab and bulk. gamma of a symmetric slab is linear in delta mu_O,
#     gamma(delta mu_O) = gamma_0 - n_O / (2 A) * delta mu_O,
# n_O being the slab's oxygen excess over whole bulk units (negative for a deficit).
# pymatgen's SlabEntry / SurfaceEnergyPlotter name the same variable ``delu_O``.
# ---------------------------------------------------------------------------------------------


def __getattr__(name: str) -> Symbol:
    """``DELU_O``: the sympy symbol of delta mu_O in pymatgen's surface analysis
    (``delu_<element>``), made on first use."""
    if name == "DELU_O":
        from sympy import Symbol

        return Symbol("delu_O")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def oxygen_molecule(
    bond_length: float = 1.21, box: tuple[float, float, float] = (10.0, 10.5, 11.0)
) -> Structure:
    """An O2 molecule in a large, slightly non-cubic box: the gas reference of oxygen.

    Unequal box edges keep the periodic images from imposing cubic symmetry; every edge is
    well beyond CHGNet's 6 Å atom-graph cutoff, so the molecule does not see its images.
    Relax it with a fixed cell (``relax_one(..., relax_cell=False)``).

    Parameters
    ----------
    bond_length
        Starting O-O distance, Å.
    box
        Orthorhombic box edges, Å.
    """
    a, b, c = box
    centre = np.array([a, b, c]) / 2
    half = np.array([0.0, 0.0, bond_length / 2])
    return Structure(
        Lattice.orthorhombic(a, b, c),
        ["O", "O"],
        [centre - half, centre + half],
        coords_are_cartesian=True,
    )


def elemental_prototypes(element: str) -> dict[str, Structure]:
    """fcc, bcc and hcp (ideal c/a) primitive cells of ``element``, sized from its radius.

    Starting lattice constants are those of touching hard spheres of pymatgen's
    ``Element`` radius r (metallic radius, else the empirical atomic radius):
    fcc ``a = 2 sqrt(2) r``, bcc ``a = 4 r / sqrt(3)``, hcp ``a = 2 r``,
    ``c = sqrt(8/3) a``. Relaxed by a model with a free cell, the lowest energy per atom
    of the three is that model's elemental reference ``E_model(M)``.

    Parameters
    ----------
    element
        Element symbol, e.g. ``"Ti"``.

    Returns
    -------
    dict[str, Structure]
        ``{"fcc": ..., "bcc": ..., "hcp": ...}`` with 1, 1 and 2 atoms.
    """
    el = Element(element)
    radius = float(el.metallic_radius or el.atomic_radius or 0.0)
    if radius <= 0:
        raise ValueError(f"pymatgen has no radius for {element}: cannot size its prototypes")
    fcc = Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(2 * math.sqrt(2) * radius), [element], [[0, 0, 0]]
    )
    bcc = Structure.from_spacegroup(
        "Im-3m", Lattice.cubic(4 * radius / math.sqrt(3)), [element], [[0, 0, 0]]
    )
    a = 2 * radius
    hcp = Structure.from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(a, math.sqrt(8 / 3) * a), [element], [[1 / 3, 2 / 3, 0.25]]
    )
    return {
        "fcc": fcc.get_primitive_structure(),
        "bcc": bcc.get_primitive_structure(),
        "hcp": hcp,
    }


def surface_energy_line(
    slab_energy: float,
    slab_composition: Composition,
    bulk_energy: float,
    bulk_composition: Composition,
    area: float,
    mu_ref: Mapping[str, float],
    n_surfaces: int = 2,
) -> tuple[float, dict[str, float]]:
    """gamma as a linear function of the reservoir chemical potentials.

    ``gamma(delta mu) = gamma_0 + sum_X slope_X * delta mu_X`` with
    ``mu_X = mu_ref[X] + delta mu_X``; ``gamma_0`` is :func:`surface_energy` at
    ``mu = mu_ref`` and ``slope_X = -n_X / (n_surfaces A)``, ``n_X`` the excess of ``X``
    over whole bulk units (see :func:`bulk_units_and_excess`).

    Parameters
    ----------
    slab_energy, slab_composition, bulk_energy, bulk_composition, area, n_surfaces
        As for :func:`surface_energy`.
    mu_ref
        Reference chemical potentials of the reservoir elements, eV/atom, e.g.
        ``{"O": E_O2 / 2}``. Ignored for a stoichiometric slab.

    Returns
    -------
    gamma_0
        gamma at ``delta mu = 0``, eV/Å².
    slopes
        Element -> ``d gamma / d delta mu_X``, Å⁻² (empty for a stoichiometric slab).
    """
    gamma_0 = surface_energy(
        slab_energy, slab_composition, bulk_energy, bulk_composition, area, mu_ref, n_surfaces
    )
    _, excess = bulk_units_and_excess(slab_composition, bulk_composition)
    if excess:
        _, excess = bulk_units_and_excess(slab_composition, bulk_composition, mu_ref)
    return gamma_0, {el: -n / (n_surfaces * area) for el, n in excess.items()}


def formation_energy(
    bulk_energy: float, bulk_composition: Composition, element_energies: Mapping[str, float]
) -> float:
    """Formation energy per reduced formula unit, eV.

    ``Delta H_f = E(bulk) / n_fu - sum_el x_el E_el`` with ``E_el`` the elemental reference
    energy per atom (``E(O2) / 2`` for oxygen, the lowest metal prototype for a metal), all
    from one model.
    """
    reduced, n_fu = bulk_composition.get_reduced_composition_and_factor()
    amounts = reduced.get_el_amt_dict()
    missing = sorted(set(amounts) - set(element_energies))
    if missing:
        raise ValueError(f"no elemental reference energy for {missing}")
    return bulk_energy / n_fu - sum(x * element_energies[el] for el, x in amounts.items())


def oxygen_chemical_potential_bounds(
    bulk_energy: float,
    bulk_composition: Composition,
    o2_energy: float,
    metal_energies: Mapping[str, float] | None = None,
) -> tuple[float | None, float]:
    """Range of delta mu_O over which an oxide is stable against its elements.

    O-rich limit: ``delta mu_O = 0`` (the oxide in equilibrium with O2 gas,
    ``mu_O = E(O2) / 2``). O-poor limit, binary oxide M_xO_y only: ``x mu_M + y mu_O =
    E(M_xO_y)`` with ``mu_M <= E(M)`` gives ``delta mu_O >= Delta H_f / y``,
    ``Delta H_f = E(M_xO_y) - x E(M) - (y / 2) E(O2)`` per formula unit. For an oxide of
    several other elements the O-poor limit depends on competing phases that are not
    computed here: it is returned as None (the range is bounded by the O-rich limit only).

    Parameters
    ----------
    bulk_energy, bulk_composition
        Energy (eV) and composition of the oxide cell.
    o2_energy
        Energy of the O2 molecule, eV (same model).
    metal_energies
        Metal -> energy per atom of its elemental reference, eV (needed for a binary oxide).

    Returns
    -------
    tuple[float | None, float]
        ``(O-poor limit or None, O-rich limit = 0.0)``, eV.
    """
    amounts = bulk_composition.reduced_composition.get_el_amt_dict()
    if "O" not in amounts:
        raise ValueError(f"{bulk_composition.reduced_formula} contains no oxygen")
    metals = sorted(set(amounts) - {"O"})
    if len(metals) != 1:
        return None, 0.0
    energies = {"O": o2_energy / 2, **(metal_energies or {})}
    return formation_energy(bulk_energy, bulk_composition, energies) / amounts["O"], 0.0


def surface_energy_plotter(
    bulk: Structure,
    bulk_energy: float,
    slab_entries: Sequence[SlabEntry],
    o2_energy: float | None = None,
) -> SurfaceEnergyPlotter:
    """pymatgen's SurfaceEnergyPlotter with delta mu_O (``delu_O``) as the variable.

    Parameters
    ----------
    bulk, bulk_energy
        The bulk cell the slabs were cut from and its energy (eV); its conventional cell
        frames the Miller indices and the Wulff shapes.
    slab_entries
        One SlabEntry per termination; give each a unique ``entry_id``.
    o2_energy
        Energy of the O2 molecule (eV); required when the bulk contains oxygen, since the
        O reference makes ``gamma`` a function of ``delu_O`` (the other elements follow
        from the bulk).
    """
    from pymatgen.analysis.surface_analysis import SurfaceEnergyPlotter
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    has_oxygen = "O" in bulk.composition.get_el_amt_dict()
    if has_oxygen and o2_energy is None:
        raise ValueError(f"{bulk.composition.reduced_formula} contains O: give the O2 energy")
    references = [ComputedEntry(Composition("O2"), o2_energy)] if has_oxygen else None
    ucell = ComputedStructureEntry(bulk, bulk_energy)
    return SurfaceEnergyPlotter(list(slab_entries), ucell, ref_entries=references)


def stable_terminations(
    plotter: SurfaceEnergyPlotter, window: tuple[float, float]
) -> list[tuple[SlabEntry, float, float]]:
    """Terminations on the lower envelope of gamma(delta mu_O), per facet.

    pymatgen's ``SurfaceEnergyPlotter.stable_u_range_dict`` over ``window``; where gamma
    does not depend on delta mu_O (no oxygen, or only stoichiometric slabs) the lowest
    termination of each facet holds the whole window.

    Returns
    -------
    list[tuple[SlabEntry, float, float]]
        ``(entry, delta mu_O from, delta mu_O to)`` sorted by facet and range.
    """
    delu_o = __getattr__("DELU_O")
    lo, hi = sorted(window)
    if delu_o in plotter.list_of_chempots:
        with warnings.catch_warnings():  # parallel lines: "No solution"
            warnings.simplefilter("ignore")
            ranges = plotter.stable_u_range_dict([lo, hi], delu_o, no_doped=True)
        rows = [(entry, float(min(u)), float(max(u))) for entry, u in ranges.items() if u]
    else:
        rows = [
            (plotter.get_stable_entry_at_u(hkl, no_doped=True)[0], lo, hi)
            for hkl in plotter.all_slab_entries
        ]
    return sorted(rows, key=lambda row: (tuple(row[0].miller_index), row[1]))


def ranking_agreement(
    reference: Mapping[tuple[int, ...], float], model: Mapping[tuple[int, ...], float]
) -> dict[str, float | int | None]:
    """Agreement of two facet rankings by surface energy (facets both rank).

    Returns
    -------
    dict
        ``n_facets``, ``kendall_tau``, ``kendall_p``, ``spearman_rho``, ``spearman_p``
        (scipy.stats; None where undefined, e.g. fewer than two facets or constant energies).
    """
    from scipy.stats import kendalltau, spearmanr

    common = sorted(set(reference) & set(model))
    out: dict[str, float | int | None] = {"n_facets": len(common)}
    if len(common) < 2:
        return out | dict.fromkeys(("kendall_tau", "kendall_p", "spearman_rho", "spearman_p"))
    ref = [reference[hkl] for hkl in common]
    mod = [model[hkl] for hkl in common]
    with warnings.catch_warnings():  # constant input: NaN and a warning
        warnings.simplefilter("ignore")
        tau = kendalltau(ref, mod)
        rho = spearmanr(ref, mod)

    def finite(x: float) -> float | None:
        return float(x) if math.isfinite(x) else None

    return out | {
        "kendall_tau": finite(tau.statistic),
        "kendall_p": finite(tau.pvalue),
        "spearman_rho": finite(rho.statistic),
        "spearman_p": finite(rho.pvalue),
    }
