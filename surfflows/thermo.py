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

from collections.abc import Mapping

import numpy as np
from pymatgen.core import Composition, Lattice

#: eV/Å² -> J/m² (1 eV = 1.602176634e-19 J, 1 Å² = 1e-20 m²).
EV_PER_A2_TO_J_PER_M2 = 16.02176634


def slab_area(lattice: Lattice) -> float:
    """In-plane area ``|a x b|`` of a slab cell, Å²."""
    return float(np.linalg.norm(np.cross(lattice.matrix[0], lattice.matrix[1])))


def bulk_units_and_excess(
    slab_composition: Composition, bulk_composition: Composition, tol: float = 1e-6
) -> tuple[float, dict[str, float]]:
    """Split a slab composition into bulk formula units plus an excess.

    The number of bulk units is set by the element that is scarcest relative to the bulk
    (so the excess is non-negative), preferring the bulk's most abundant element when the
    slab is stoichiometric.

    Parameters
    ----------
    slab_composition, bulk_composition
        Compositions of the slab and of the bulk cell used as reference.

    Returns
    -------
    n_units
        Number of bulk cells (``N_slab / N_bulk`` for a stoichiometric slab).
    excess
        Element -> excess atoms relative to ``n_units`` bulk cells (empty if stoichiometric).
    """
    slab = slab_composition.get_el_amt_dict()
    bulk = bulk_composition.get_el_amt_dict()
    unknown = set(slab) - set(bulk)
    if unknown:
        raise ValueError(f"slab has elements {sorted(unknown)} that the bulk has not")
    n_units = min(slab.get(el, 0.0) / amt for el, amt in bulk.items())
    excess = {
        el: slab.get(el, 0.0) - n_units * amt
        for el, amt in bulk.items()
        if abs(slab.get(el, 0.0) - n_units * amt) > tol
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
        Chemical potentials (eV/atom, absolute) of the excess elements. Required when the
        slab is not stoichiometric; an error names the missing elements otherwise.
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
    missing = sorted(set(excess) - set(mu or {}))
    if missing:
        raise ValueError(
            f"slab {slab_composition.formula} is not stoichiometric (excess "
            f"{ {k: round(v, 3) for k, v in excess.items()} }): chemical potentials of "
            f"{missing} are needed"
        )
    reservoir = sum(n * (mu or {})[el] for el, n in excess.items())
    return (slab_energy - n_units * bulk_energy - reservoir) / (n_surfaces * area)


def to_j_per_m2(gamma_ev_per_a2: float) -> float:
    """eV/Å² -> J/m²."""
    return gamma_ev_per_a2 * EV_PER_A2_TO_J_PER_M2
