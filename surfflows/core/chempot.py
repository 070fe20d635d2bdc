"""Surface energy over several chemical potentials, for slabs of a multi-component bulk.

Conventions
-----------
A symmetric slab of ``N_X`` atoms of each element X, cut from a bulk of formula
``prod_X X_{x_X}`` (per formula unit, energy ``g_bulk``), exchanges atoms with reservoirs
of chemical potentials ``mu_X = mu0_X + Δμ_X`` (``mu0_X`` the elemental reference, eV/atom;
``mu0_O = E(O2) / 2``):

    gamma = [E_slab - sum_X N_X mu_X] / 2A.

The slab is in equilibrium with its bulk, ``g_bulk = sum_X x_X mu_X``, which fixes the
potential of one *dependent* element B:

    mu_B = (g_bulk - sum_{X != B} x_X mu_X) / x_B.

Substituting, with ``n = N_B / x_B`` formula units (here: ``N_B / n_B`` bulk *cells* of
energy ``E_bulk``, the same thing) and ``e_X = N_X - n x_X`` the excess of each independent
element X over whole bulk units,

    gamma(Δμ) = [E_slab - n E_bulk - sum_{X != B} e_X (mu0_X + Δμ_X)] / 2A
              = gamma_0 + sum_{X != B} slope_X Δμ_X,   slope_X = -e_X / 2A.

For SrTiO3 with B = Ti: ``gamma = [E_slab - N_Ti e_bulk - (N_Sr - N_Ti) mu_Sr
- (N_O - 3 N_Ti) mu_O] / 2A``. gamma is a plane in the independent Δμ (up to three for a
four-element bulk). ``A = |a x b|``, Å²; ``1 eV/Å² = 16.0218 J/m²``
(:data:`surfflows.core.thermo.EV_PER_A2_TO_J_PER_M2`). Slab, bulk and references must come
from one model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pymatgen.core import Composition, Element

from surfflows.core.thermo import bulk_units_and_excess

#: Most elements of a bulk whose surfaces are mapped (three independent potentials).
MAX_ELEMENTS = 4


def default_independent(elements: Sequence[str]) -> list[str]:
    """The independent elements of a bulk's diagram: all but the dependent one, O last.

    The dependent element (the one the bulk constraint removes) is the most
    electronegative non-oxygen element, so for ABO3 perovskites the axes are
    ``(Δμ_A, Δμ_O)`` with B dependent (SrTiO3: Sr and O, Ti dependent). Without oxygen the
    most electronegative element is dependent. A single element has no independent one.

    Parameters
    ----------
    elements
        Element symbols of the bulk.

    Returns
    -------
    list[str]
        Independent elements, by increasing electronegativity, oxygen last.
    """
    unique = sorted(set(elements), key=lambda el: (el == "O", Element(el).X, el))
    if len(unique) > MAX_ELEMENTS:
        raise ValueError(f"{len(unique)} elements {unique}: at most {MAX_ELEMENTS} are supported")
    if len(unique) < 2:
        return []
    others = [el for el in unique if el != "O"]
    dependent = others[-1]
    return [el for el in unique if el != dependent]


def dependent_element(bulk_composition: Composition, independent: Sequence[str]) -> str:
    """The one element of the bulk that is not independent.

    Raises
    ------
    ValueError
        If ``independent`` names an element outside the bulk or does not leave exactly one.
    """
    elements = set(bulk_composition.get_el_amt_dict())
    outside = sorted(set(independent) - elements)
    if outside:
        raise ValueError(
            f"independent elements {outside} are not in {bulk_composition.reduced_formula}"
        )
    rest = sorted(elements - set(independent))
    if len(rest) != 1:
        raise ValueError(
            f"{bulk_composition.reduced_formula} with independent {list(independent)} leaves "
            f"{rest}: exactly one element must be fixed by the bulk constraint"
        )
    return rest[0]


def surface_energy_plane(
    slab_energy: float,
    slab_composition: Composition,
    bulk_energy: float,
    bulk_composition: Composition,
    area: float,
    mu0: Mapping[str, float],
    independent: Sequence[str],
    n_surfaces: int = 2,
) -> tuple[float, dict[str, float], float, dict[str, float]]:
    """gamma of a slab as a plane in the independent chemical potentials.

    ``gamma(Δμ) = gamma_0 + sum_X slope_X Δμ_X`` (conventions in the module docstring).

    Parameters
    ----------
    slab_energy
        Total energy of the slab, eV.
    slab_composition, bulk_composition
        Compositions of the slab and of the bulk cell it was cut from.
    bulk_energy
        Total energy of the bulk cell, eV (same model as the slab).
    area
        ``|a x b|`` of the slab, Å².
    mu0
        Reference chemical potential of every independent element, eV/atom.
    independent
        The independent elements; the bulk's remaining element is dependent.
    n_surfaces
        Surfaces the slab exposes (2 for a symmetric slab).

    Returns
    -------
    gamma_0
        gamma at ``Δμ_X = 0`` for every independent X, eV/Å².
    slopes
        Independent element -> ``d gamma / d Δμ_X = -e_X / (n_surfaces A)``, Å⁻² (every
        independent element, zero where the slab has no excess of it).
    n_units
        Bulk cells in the slab (``N_B / n_B`` of the dependent element B).
    excess
        Independent element -> ``e_X``, atoms beyond ``n_units`` bulk cells.
    """
    if area <= 0:
        raise ValueError(f"slab area must be positive, got {area}")
    dependent_element(bulk_composition, independent)
    missing = sorted(set(independent) - set(mu0))
    if missing:
        raise ValueError(f"no reference chemical potential mu0 for {missing}")
    n_units, excess = bulk_units_and_excess(slab_composition, bulk_composition, independent)
    excess = {el: float(excess.get(el, 0.0)) for el in independent}
    gamma_0 = (
        slab_energy - n_units * bulk_energy - sum(e * mu0[el] for el, e in excess.items())
    ) / (n_surfaces * area)
    slopes = {el: -e / (n_surfaces * area) for el, e in excess.items()}
    return gamma_0, slopes, float(n_units), excess


def evaluate_planes(
    gamma_0: Sequence[float] | np.ndarray,
    slopes: Sequence[Sequence[float]] | np.ndarray,
    points: Sequence[Sequence[float]] | np.ndarray,
) -> np.ndarray:
    """gamma of several planes at several points: ``gamma_0[k] + slopes[k] . points[p]``.

    Parameters
    ----------
    gamma_0
        Shape (K,): gamma of each plane at Δμ = 0.
    slopes
        Shape (K, D): slope of each plane along each independent Δμ.
    points
        Shape (P, D): Δμ of each point, in the same element order as ``slopes``.

    Returns
    -------
    numpy.ndarray
        Shape (P, K).
    """
    points = np.atleast_2d(np.asarray(points, dtype=float))
    return points @ np.asarray(slopes, dtype=float).T + np.asarray(gamma_0, dtype=float)


def dependent_chemical_potential(
    delta_mu: Mapping[str, float],
    mu0: Mapping[str, float],
    bulk_energy: float,
    bulk_composition: Composition,
) -> dict[str, float]:
    """Absolute potentials of every bulk element, the dependent one from the bulk constraint.

    ``mu_X = mu0_X + Δμ_X`` for the independent elements (the keys of ``delta_mu``) and
    ``mu_B = (E_bulk - sum_X n_X mu_X) / n_B`` (per bulk cell) for the dependent one.
    """
    amounts = bulk_composition.get_el_amt_dict()
    dependent = dependent_element(bulk_composition, list(delta_mu))
    mu = {el: mu0[el] + d for el, d in delta_mu.items()}
    mu[dependent] = (bulk_energy - sum(amounts[el] * m for el, m in mu.items())) / amounts[
        dependent
    ]
    return mu
