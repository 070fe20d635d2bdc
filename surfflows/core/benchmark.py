"""Pure functions behind the error and benchmark builders (no I/O).

Surface-energy error of one reference slab under one model and mode::

    gamma_model = (E_model(slab) - n E_model(bulk)) / 2A,  n = N_slab / N_bulk
    error       = gamma_model - gamma_ref      (J/m²)

with ``gamma_ref`` recomputed from the set's own DFT energies where possible (else the
published value), slab and bulk evaluated by the same model at the same (DFT) lattice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

from surfflows.core.thermo import bulk_units_and_excess, slab_area, surface_energy, to_j_per_m2


def facet_family(miller_index: Sequence[int] | None) -> str:
    """``{100}``, ``{110}``, ``{111}`` (sorted absolute indices) or ``high-index``."""
    if miller_index is None:
        return "unknown"
    key = tuple(sorted((abs(int(i)) for i in miller_index), reverse=True))
    if max(key) > 1:
        return "high-index"
    return "{" + "".join(str(i) for i in key) + "}"


def chemistry_class(formula: str) -> str:
    """``oxide`` (O plus another element), ``metal`` (only metals) or ``other``."""
    elements = Composition(formula).elements
    symbols = {el.symbol for el in elements}
    if "O" in symbols and len(symbols) > 1:
        return "oxide"
    if all(el.is_metal for el in elements):
        return "metal"
    return "other"


def summarize(errors: Iterable[float]) -> dict[str, float | int | None]:
    """N, MAE, RMSE, mean signed error and max absolute error of a list of errors."""
    values = np.asarray([e for e in errors if e is not None and math.isfinite(e)], dtype=float)
    if values.size == 0:
        return {"n": 0, "mae": None, "rmse": None, "mean_signed_error": None, "max_abs_error": None}
    return {
        "n": int(values.size),
        "mae": float(np.abs(values).mean()),
        "rmse": float(np.sqrt((values**2).mean())),
        "mean_signed_error": float(values.mean()),
        "max_abs_error": float(np.abs(values).max()),
    }


def slab_surface_error(
    ref_slab: dict[str, Any],
    ref_bulk: dict[str, Any] | None,
    model_slab: dict[str, Any] | None,
    model_bulk: dict[str, Any] | None,
) -> dict[str, Any]:
    """Error fields of one reference slab, or the reason it is excluded.

    Parameters
    ----------
    ref_slab, ref_bulk
        Reference documents (``structure``, ``ref_energy``, ``flags``, ``gamma_ref``...).
    model_slab, model_bulk
        The model's energy documents of the same structures (``energy``, ``converged``).

    Returns
    -------
    dict
        ``status`` (``ok`` or ``excluded``), ``reason``, ``gamma_ref``, ``gamma_model``,
        ``gamma_error`` (J/m²) and ``energy_error_per_atom`` (eV/atom, raw: data sets and
        models differ in energy scale, so only differences between models are meaningful).
    """
    out: dict[str, Any] = {
        "status": "excluded",
        "reason": None,
        "gamma_ref": None,
        "gamma_model": None,
        "gamma_error": None,
        "energy_error_per_atom": None,
    }
    if model_slab and model_slab.get("energy") is not None:
        n_atoms = model_slab["n_atoms"]
        out["energy_error_per_atom"] = (model_slab["energy"] - ref_slab["ref_energy"]) / n_atoms
    gamma_ref = ref_slab.get("gamma_ref_recomputed")
    if gamma_ref is None:
        gamma_ref = ref_slab.get("gamma_ref")
    out["gamma_ref"] = gamma_ref
    reason = None
    if ref_slab.get("flags"):
        reason = "flagged: " + ",".join(ref_slab["flags"])
    elif ref_bulk is None:
        reason = "no bulk reference"
    elif gamma_ref is None:
        reason = "no reference gamma"
    elif model_slab is None or model_bulk is None:
        reason = "not evaluated"
    elif not model_slab.get("converged") or model_slab.get("energy") is None:
        reason = "model failed on slab"
    elif not model_bulk.get("converged") or model_bulk.get("energy") is None:
        reason = "model failed on bulk"
    if reason is None:
        slab = Structure.from_dict(ref_slab["structure"])
        bulk = Structure.from_dict(ref_bulk["structure"])
        _, excess = bulk_units_and_excess(slab.composition, bulk.composition)
        if excess:
            reason = "non-stoichiometric (needs delta mu)"
        else:
            gamma = surface_energy(
                model_slab["energy"],
                slab.composition,
                model_bulk["energy"],
                bulk.composition,
                slab_area(slab.lattice),
            )
            out["gamma_model"] = to_j_per_m2(gamma)
            out["gamma_error"] = out["gamma_model"] - gamma_ref
            out["status"] = "ok"
    out["reason"] = reason
    return out


def reason_category(reason: str | None) -> str | None:
    """Coarse exclusion category for counting (``flagged: a,b`` -> ``flagged``)."""
    return None if reason is None else reason.split(":")[0]
