"""Pure functions behind the error and benchmark builders (no I/O).

Surface-energy error of one reference slab under one model and mode::

    gamma_model = (E_model(slab) - n E_model(bulk)) / 2A,  n = N_slab / N_bulk
    error       = gamma_model - gamma_ref      (J/m²)

with ``gamma_ref`` recomputed from the set's own DFT energies where possible (else the
published value: gamma-only sets), slab and bulk evaluated by the same model at the same
(DFT) lattice.

Bulk energy error of one reference bulk (the forgetting check)::

    r      = E_ref / N - E_model / N                   (eV/atom, residual)
    error  = sum_el x_el mu_el - r                     (eV/atom, aligned model - reference)

``x_el`` the atom fractions and ``mu_el`` per-element offsets fitted by least squares on a
*disjoint* part: the bulks of the set's other split parts (a test bulk is aligned with
offsets fitted on train and val bulks), since data sets and models differ in energy scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
from pymatgen.core import Composition, Lattice, Structure

from surfflows.core.folds import mean_std
from surfflows.core.thermo import bulk_units_and_excess, slab_area, surface_energy, to_j_per_m2


def facet_family(miller_index: Sequence[int] | None) -> str:
    """``{100}``, ``{110}``, ``{111}`` (sorted absolute indices) or ``high-index``."""
    if miller_index is None:
        return "unknown"
    key = tuple(sorted((abs(int(i)) for i in miller_index), reverse=True))
    if max(key) > 1:
        return "high-index"
    return "{" + "".join(str(i) for i in key) + "}"


@lru_cache(maxsize=4096)
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
    # A gamma-only slab (ref_energy None) has no energy error: none is invented for it.
    evaluated = model_slab and model_slab.get("energy") is not None
    if evaluated and ref_slab.get("ref_energy") is not None:
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
        slab_composition = _composition(ref_slab["structure"])
        bulk_composition = _composition(ref_bulk["structure"])
        _, excess = bulk_units_and_excess(slab_composition, bulk_composition)
        if excess:
            reason = "non-stoichiometric (needs delta mu)"
        else:
            gamma = surface_energy(
                model_slab["energy"],
                slab_composition,
                model_bulk["energy"],
                bulk_composition,
                slab_area(Lattice(ref_slab["structure"]["lattice"]["matrix"])),
            )
            out["gamma_model"] = to_j_per_m2(gamma)
            out["gamma_error"] = out["gamma_model"] - gamma_ref
            out["status"] = "ok"
    out["reason"] = reason
    return out


def _composition(structure: dict[str, Any]) -> Composition:
    """The composition of a Structure's ``as_dict()``, read without building the Structure
    (about 1 ms per slab)."""
    return Composition(_amounts(structure))


def _amounts(structure: dict[str, Any]) -> dict[str, float]:
    """Element -> sum of site occupancies of a Structure's ``as_dict()``."""
    amounts: dict[str, float] = {}
    for site in structure["sites"]:
        for species in site["species"]:
            amounts[species["element"]] = amounts.get(species["element"], 0) + species["occu"]
    return amounts


def reason_category(reason: str | None) -> str | None:
    """Coarse exclusion category for counting (``flagged: a,b`` -> ``flagged``)."""
    return None if reason is None else reason.split(":")[0]


def _fractions(compositions: Sequence[dict[str, float]], elements: Sequence[str]) -> np.ndarray:
    """Atom fractions, one row per composition, one column per element."""
    column = {el: i for i, el in enumerate(elements)}
    x = np.zeros((len(compositions), len(elements)))
    for row, comp in enumerate(compositions):
        total = sum(comp.values())
        for el, amount in comp.items():
            x[row, column[el]] = amount / total
    return x


def fit_element_offsets(
    compositions: Sequence[dict[str, float]], residuals: Sequence[float]
) -> dict[str, float]:
    """Per-element offsets ``mu_el`` minimising ``sum (r_i - sum_el x_i,el mu_el)^2``.

    ``x`` are atom fractions, ``r`` residuals per atom; numpy's least squares without
    intercept (minimum-norm where the elements are not all determined; what sklearn's
    ``LinearRegression(fit_intercept=False)`` solves, without its seconds of import).
    """
    elements = sorted({el for comp in compositions for el in comp})
    if not elements:
        return {}
    x = _fractions(compositions, elements)
    coefficients = np.linalg.lstsq(x, np.asarray(residuals, dtype=float), rcond=None)[0]
    return dict(zip(elements, coefficients.tolist(), strict=True))


def offset_of(composition: dict[str, float], offsets: dict[str, float]) -> float | None:
    """``sum_el x_el mu_el`` of one composition; None if an element has no offset."""
    if not set(composition) <= offsets.keys():
        return None
    total = sum(composition.values())
    return float(sum(amount / total * offsets[el] for el, amount in composition.items()))


def aligned_energy_mae(
    fit_compositions: Sequence[dict[str, float]],
    fit_residuals: Sequence[float],
    compositions: Sequence[dict[str, float]],
    residuals: Sequence[float],
) -> tuple[float | None, int, int]:
    """MAE per atom of energy residuals after per-element offsets fitted on other cells.

    The offsets come from :func:`fit_element_offsets` on the ``fit`` cells
    (``r = e_ref - e_model`` per atom); the MAE is taken over the evaluated cells that contain
    only fitted elements.

    Returns
    -------
    mae, n_evaluated, n_elements
        MAE (eV/atom; None if no cell is evaluated), cells evaluated, elements with an
        offset.
    """
    offsets = fit_element_offsets(fit_compositions, fit_residuals)
    errors = [
        shift - r
        for comp, r in zip(compositions, residuals, strict=True)
        if (shift := offset_of(comp, offsets)) is not None
    ]
    if not errors:
        return None, 0, len(offsets)
    return float(np.abs(errors).mean()), len(errors), len(offsets)


def elemental_offsets(
    ref_elements: Sequence[dict[str, Any]], model_elements: dict[str, dict[str, Any]]
) -> dict[str, float]:
    """``E_ref / N - E_model / N`` of each element's DFT ground state (lowest ref energy).

    With these offsets, :func:`offset_of` minus a bulk's residual is the model-minus-DFT
    formation energy per atom, ``Delta H_f = E / N - sum_el x_el mu_el`` with each side's
    ``mu_el`` from its own energies of the same elemental structures (e.g. mp_elemental_refs).
    Elements whose ground state the model failed on get no offset.
    """
    lowest: dict[str, dict[str, Any]] = {}
    for ref in ref_elements:
        elements = Structure.from_dict(ref["structure"]).composition.elements
        if len(elements) != 1:
            continue
        el = elements[0].symbol
        if el not in lowest or ref["ref_energy_per_atom"] < lowest[el]["ref_energy_per_atom"]:
            lowest[el] = ref
    offsets = {}
    for el, ref in lowest.items():
        model = model_elements.get(ref["key"])
        if model and model.get("converged") and model.get("energy") is not None:
            offsets[el] = (ref["ref_energy"] - model["energy"]) / ref["n_atoms"]
    return offsets


#: Largest change of a per-element alignment offset (eV/atom) below which a build that only
#: adds bulks keeps a group's stored offsets (and its stored bulk errors): a tenth of a
#: meV/atom, far below the tens of meV/atom of aligned errors the forgetting check compares.
ALIGNMENT_TOLERANCE_EV = 1e-4


def _usable_bulks(
    ref_bulks: Sequence[dict[str, Any]], model_bulks: dict[str, dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, float], float]]:
    """(reference, composition, residual per atom ``E_ref / N - E_model / N``) of every bulk
    that is not flagged and that the model evaluated and converged on."""
    usable = []
    for ref in ref_bulks:
        model = model_bulks.get(ref["key"])
        if _bulk_exclusion(ref, model) is None:
            residual = (ref["ref_energy"] - model["energy"]) / ref["n_atoms"]
            usable.append((ref, _amounts(ref["structure"]), residual))
    return usable


def _bulk_exclusion(ref: dict[str, Any], model: dict[str, Any] | None) -> str | None:
    """Why a reference bulk has no energy error under a model, or None."""
    if ref.get("flags"):
        return "flagged: " + ",".join(ref["flags"])
    if model is None:
        return "not evaluated"
    if not model.get("converged") or model.get("energy") is None:
        return "model failed on bulk"
    return None


def alignment_offsets(
    ref_bulks: Sequence[dict[str, Any]],
    model_bulks: dict[str, dict[str, Any]],
    assignments: dict[str, str],
) -> dict[str, dict[str, float]]:
    """Per split part, the element offsets that align its bulks: :func:`fit_element_offsets`
    on the usable bulks of the *other* parts (disjoint from it).

    Arguments as :func:`bulk_energy_errors`; returns part -> element -> ``mu_el`` (eV/atom)
    for every part holding a usable bulk (``none`` for materials without a part).
    """
    usable = _usable_bulks(ref_bulks, model_bulks)
    part_of = [assignments.get(ref["material_id"], "none") for ref, _, _ in usable]
    offsets = {}
    for part in sorted(set(part_of)):
        others = [(c, r) for (_, c, r), p in zip(usable, part_of, strict=True) if p != part]
        offsets[part] = fit_element_offsets([c for c, _ in others], [r for _, r in others])
    return offsets


def alignment_drift(
    stored: dict[str, dict[str, float]], fitted: dict[str, dict[str, float]]
) -> float | None:
    """Largest change of an offset between two :func:`alignment_offsets` fits (eV/atom);
    None where they do not cover the same parts and elements (no comparison holds)."""
    if stored.keys() != fitted.keys() or any(stored[p].keys() != fitted[p].keys() for p in stored):
        return None
    return max(
        (abs(fitted[p][el] - mu) for p, mus in stored.items() for el, mu in mus.items()),
        default=0.0,
    )


def bulk_energy_errors(
    ref_bulks: Sequence[dict[str, Any]],
    model_bulks: dict[str, dict[str, Any]],
    assignments: dict[str, str],
    formation_offsets: dict[str, float] | None = None,
    offsets: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Aligned energy (and force) error fields of every reference bulk of one set.

    Parameters
    ----------
    ref_bulks
        Reference bulk documents of one set (``key``, ``material_id``, ``structure``,
        ``ref_energy``, ``n_atoms``, ``flags``, ``ref_forces``).
    model_bulks
        reference key -> the model's energy document (``energy``, ``converged``, optional
        ``forces``), one model and mode.
    assignments
        material_id -> split part. A bulk's offsets are fitted on the usable bulks of the
        other parts (disjoint from it); with a single part there is nothing to fit on.
    formation_offsets
        :func:`elemental_offsets` of the same model and mode; adds
        ``formation_energy_error_per_atom`` (model - DFT formation energy, eV/atom).
    offsets
        :func:`alignment_offsets` to apply (fitted before on the set's bulks, of which
        ``ref_bulks`` may then be a few); None: fitted here on ``ref_bulks``.

    Returns
    -------
    dict
        key -> ``status`` (``ok`` / ``excluded``), ``reason``, ``energy_error_per_atom``
        (raw model - reference, eV/atom), ``aligned_energy_error_per_atom`` (eV/atom),
        ``formation_energy_error_per_atom`` (eV/atom, with ``formation_offsets``),
        ``alignment`` (what the offsets were fitted on), ``force_mae`` (eV/Å, where the
        reference has forces and the model gave them), ``n_atoms``.
    """
    if offsets is None:
        offsets = alignment_offsets(ref_bulks, model_bulks, assignments)
    out: dict[str, dict[str, Any]] = {}
    for ref in ref_bulks:
        out[ref["key"]] = {
            "status": "excluded",
            "reason": _bulk_exclusion(ref, model_bulks.get(ref["key"])),
            "energy_error_per_atom": None,
            "aligned_energy_error_per_atom": None,
            "formation_energy_error_per_atom": None,
            "alignment": None,
            "force_mae": None,
            "n_atoms": ref["n_atoms"],
        }
    for ref, comp, residual in _usable_bulks(ref_bulks, model_bulks):
        fields = out[ref["key"]]
        fields["energy_error_per_atom"] = -residual
        model, reference_forces = model_bulks[ref["key"]], ref.get("ref_forces")
        if model.get("forces") is not None and reference_forces is not None:
            delta = np.asarray(model["forces"]) - np.asarray(reference_forces)
            fields["force_mae"] = float(np.abs(delta).mean())
        shift = offset_of(comp, formation_offsets or {})
        if shift is not None:
            fields["formation_energy_error_per_atom"] = shift - residual
        part = assignments.get(ref["material_id"], "none")
        part_offsets = offsets.get(part, {})
        shift = offset_of(comp, part_offsets)
        if shift is None:
            missing = sorted(set(comp) - part_offsets.keys())
            fields["reason"] = "elements outside the alignment fit: " + ",".join(missing)
            continue
        fields.update(
            status="ok",
            aligned_energy_error_per_atom=shift - residual,
            alignment="offsets fitted on the bulks of parts "
            + ",".join(p for p in sorted(offsets) if p != part),
        )
    return out


def bulk_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of bulk error rows: aligned energy (the row's N, MAE...), raw energy, forces.

    ``n``, ``mae``, ``rmse``, ``mean_signed_error``, ``max_abs_error`` over the aligned
    errors of the ``ok`` rows (eV/atom); ``raw_energy_mae`` / ``n_raw`` over every row with a
    raw error; ``formation_energy_mae`` / ``n_formation`` over rows with a formation-energy
    error; ``force_mae`` / ``n_force`` over rows with a force error, weighted by atoms.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    raw = [r["energy_error_per_atom"] for r in rows if r.get("energy_error_per_atom") is not None]
    forced = [r for r in rows if r.get("force_mae") is not None]
    formation = [
        r["formation_energy_error_per_atom"]
        for r in rows
        if r.get("formation_energy_error_per_atom") is not None
    ]
    weights = [r["n_atoms"] for r in forced]
    return {
        **summarize(r["aligned_energy_error_per_atom"] for r in ok),
        "raw_energy_mae": float(np.abs(raw).mean()) if raw else None,
        "n_raw": len(raw),
        "formation_energy_mae": float(np.abs(formation).mean()) if formation else None,
        "n_formation": len(formation),
        "force_mae": (
            float(np.average([r["force_mae"] for r in forced], weights=weights)) if forced else None
        ),
        "n_force": len(forced),
    }


def against_parent(stats: dict[str, Any], parent_stats: dict[str, Any]) -> dict[str, Any]:
    """A model's MAE next to its parent's on the same rows: ``parent_mae`` and
    ``relative_change`` (``mae / parent_mae - 1``; for bulk rows the aligned MAE), and for
    bulk rows also ``parent_raw_energy_mae`` and ``raw_relative_change`` (unaligned).

    Examples
    --------
    >>> round(against_parent({"mae": 0.11}, {"mae": 0.1})["relative_change"], 6)
    0.1
    """
    out = {
        "parent_mae": parent_stats.get("mae"),
        "relative_change": relative_change(stats.get("mae"), parent_stats.get("mae")),
    }
    if "raw_energy_mae" in stats:
        raw = parent_stats.get("raw_energy_mae")
        out |= {
            "parent_raw_energy_mae": raw,
            "raw_relative_change": relative_change(stats["raw_energy_mae"], raw),
        }
    return out


def relative_change(value: float | None, reference: float | None) -> float | None:
    """``value / reference - 1`` (None when either is missing or the reference is 0)."""
    return value / reference - 1 if value is not None and reference else None


def gamma_stats(errors: Sequence[dict[str, Any]], keys: Iterable[str]) -> dict[str, Any]:
    """Gamma statistics (J/m²) of the ``ok`` slab errors of ``keys``, one model and mode.

    ``errors``: surface-error documents (``reference_key``, ``status``, ``gamma_error``,
    ``gamma_ref``). :func:`summarize` plus ``relative_mae`` (mean of |error| / gamma_ref) and
    ``n_planned`` (slabs asked for; the rest failed or are excluded).
    """
    keys = set(keys)
    ok = [e for e in errors if e["reference_key"] in keys and e["status"] == "ok"]
    relative = [abs(e["gamma_error"]) / e["gamma_ref"] for e in ok if e.get("gamma_ref")]
    return {
        **summarize(e["gamma_error"] for e in ok),
        "relative_mae": float(np.mean(relative)) if relative else None,
        "n_planned": len(keys),
    }


def paired_gap(
    single_point: Sequence[dict[str, Any]], relaxed: Sequence[dict[str, Any]], keys: Iterable[str]
) -> dict[str, Any]:
    """Relaxed minus single-point gamma MAE (J/m²) on the slabs of ``keys`` ``ok`` in both
    modes (surface-error documents of one model)."""
    ok = [
        {e["reference_key"]: e["gamma_error"] for e in errors if e["status"] == "ok"}
        for errors in (single_point, relaxed)
    ]
    common = sorted(set(keys) & ok[0].keys() & ok[1].keys())
    sp, rx = (summarize(o[k] for k in common)["mae"] for o in ok)
    return {"n": len(common), "gap": None if sp is None else rx - sp}


def step_stats(steps: Iterable[int | None]) -> dict[str, Any]:
    """Median and mean of the relaxation steps that were recorded (None: not relaxed)."""
    values = [n for n in steps if n is not None]
    if not values:
        return {"n": 0, "median": None, "mean": None}
    return {"n": len(values), "median": float(np.median(values)), "mean": float(np.mean(values))}


def correlation(x: Sequence[float | None], y: Sequence[float | None]) -> dict[str, Any]:
    """Pearson and Spearman correlation (with p-values) of the pairs where both are finite;
    None where fewer than three pairs or either side is constant."""
    from scipy.stats import pearsonr, spearmanr

    pairs = [
        (a, b)
        for a, b in zip(x, y, strict=True)
        if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)
    ]
    out: dict[str, Any] = {"n": len(pairs), "pearson": None, "pearson_p": None}
    out |= {"spearman": None, "spearman_p": None}
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return out
    xs, ys = zip(*pairs, strict=True)
    pearson, spearman = pearsonr(xs, ys), spearmanr(xs, ys)
    return out | {
        "pearson": float(pearson.statistic),
        "pearson_p": float(pearson.pvalue),
        "spearman": float(spearman.statistic),
        "spearman_p": float(spearman.pvalue),
    }


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of nested dicts under dotted keys (bools and strings left out).

    Examples
    --------
    >>> flatten({"test": {"mae": 0.1, "model": "x"}, "n": 3})
    {'test.mae': 0.1, 'n': 3}
    """
    out: dict[str, float] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{path}."))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = value
    return out


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        node = out
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return out


def aggregate(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds of every numeric leaf of the rows (nested as the rows are).

    Each leaf becomes ``{"mean", "std", "n"}`` (:func:`~surfflows.core.folds.mean_std`); a
    leaf missing from some rows counts the rows that have it.
    """
    flat = [flatten(r) for r in rows]
    paths = sorted({p for f in flat for p in f})
    return unflatten({p: mean_std(f.get(p) for f in flat) for p in paths})
