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

from collections.abc import Iterable, Mapping

import numpy as np
from pymatgen.core import Composition, Lattice

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
