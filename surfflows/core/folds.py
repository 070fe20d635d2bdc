"""Element-wise (and material-wise) k-fold cross-validation of a reference set.

A fold holds whole *groups*: every material of one element for elemental materials (all
polymorphs of Cu in one fold, so no element is on two sides of a fold boundary), and each
compound material on its own (material-wise). Groups are ranked by
``sha256(f"{seed}:{group}")`` and dealt to the folds in turn, so the folds differ in size by
at most one group and the assignment depends only on the seed and the group names.

For fold ``i`` of ``k`` the held-out part is fold ``i`` (``test``: never used for training
or epoch selection), the epoch is selected on fold ``(i + 1) % k`` (``val``) and the other
folds train. The figures of a cross-validation are the held-out folds' errors; the epoch
count of a final model trained on every fold is chosen from the folds' validation curves
(:func:`choose_epochs`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from surfflows.core.splits import SplitPart, material_identities


def fold_groups(materials: Iterable[tuple[str, str]]) -> dict[str, str]:
    """material_id -> its fold group: ``element:<symbol>`` for an elemental material, else
    the material id; ``materials``: (material_id, formula) of each document.

    Examples
    --------
    >>> fold_groups([("mp-30", "Cu4"), ("mp-2", "CuO")])
    {'mp-30': 'element:Cu', 'mp-2': 'mp-2'}
    """
    groups = {}
    for material, identities in material_identities(materials).items():
        elemental = sorted(i for i in identities if i.startswith("element:"))
        groups[material] = elemental[0] if elemental else material
    return groups


def kfold_assignments(
    materials: Iterable[tuple[str, str]], k: int, seed: int = 0
) -> dict[str, int]:
    """material_id -> fold index in ``range(k)`` (see the module docstring); ``materials``:
    (material_id, formula) of each document.

    Raises
    ------
    ValueError
        If ``k`` < 3 (a fold needs a held-out, a validation and a training part) or the
        set has fewer groups than folds.
    """
    groups = fold_groups(materials)
    names = sorted(set(groups.values()))
    if k < 3:
        raise ValueError(f"cross-validation needs at least 3 folds, got {k}")
    if len(names) < k:
        raise ValueError(
            f"{k} folds need at least {k} elements or materials, the set has {len(names)}"
        )
    ranked = sorted(names, key=lambda g: hashlib.sha256(f"{seed}:{g}".encode()).hexdigest())
    fold_of_group = {group: rank % k for rank, group in enumerate(ranked)}
    return {material: fold_of_group[group] for material, group in groups.items()}


def fold_parts(folds: Mapping[str, int], fold: int, k: int) -> dict[str, SplitPart]:
    """Split of fold ``fold``: held out ``test``, the next fold ``val``, the others ``train``.

    Examples
    --------
    >>> fold_parts({"a": 0, "b": 1, "c": 2}, 2, 3)
    {'a': 'val', 'b': 'train', 'c': 'test'}
    """
    return {
        m: "test" if f == fold else "val" if f == (fold + 1) % k else "train"
        for m, f in folds.items()
    }


def choose_epochs(val_curves: Sequence[Sequence[float | None]]) -> int:
    """Epoch count of the final model: the epoch (>= 1) of the lowest mean validation MAE
    over the folds, each fold's curve indexed by epoch (0: the parent).

    Epochs some fold did not reach (stopped early) are averaged over the folds that did.

    Examples
    --------
    >>> choose_epochs([[0.3, 0.2, 0.1, 0.15], [0.3, 0.2, 0.12, 0.11]])
    2
    """
    n = max(len(c) for c in val_curves)
    means = []
    for epoch in range(1, n):
        values = [c[epoch] for c in val_curves if epoch < len(c) and c[epoch] is not None]
        means.append(float(np.mean(values)) if values else math.inf)
    return int(np.argmin(means)) + 1


def gamma_statistics(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """N, MAE, mean signed error and MAPE of gamma error rows (``gamma_error``,
    ``gamma_ref``, J/m²), over the rows with an error."""
    ok = [r for r in rows if r.get("gamma_error") is not None]
    if not ok:
        return {"n": 0, "mae": None, "mean_signed_error": None, "mape": None}
    errors = np.array([r["gamma_error"] for r in ok])
    refs = np.array([r["gamma_ref"] for r in ok])
    return {
        "n": len(ok),
        "mae": float(np.abs(errors).mean()),
        "mean_signed_error": float(errors.mean()),
        "mape": float(np.mean(np.abs(errors) / np.abs(refs))),
    }


def mean_std(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (ddof 1; None for one value) and N of the finite values.

    Examples
    --------
    >>> mean_std([1.0, 3.0, None])
    {'mean': 2.0, 'std': 1.4142135623730951, 'n': 2}
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    return {
        "mean": float(np.mean(finite)) if finite else None,
        "std": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "n": len(finite),
    }


def gamma_errors(
    docs: Sequence[Mapping[str, Any]],
    energies: Mapping[str, Mapping[str, Any]],
    groups: Mapping[str, str],
) -> list[dict[str, Any]]:
    """Gamma error of every slab of ``docs`` (:func:`surfflows.core.benchmark.slab_surface_error`)
    with its fold group.

    Parameters
    ----------
    docs
        Reference documents (slabs and the bulks they name).
    energies
        reference key -> the model's energy document (one model and mode).
    groups
        material_id -> fold group (:func:`fold_groups`).

    Returns
    -------
    list of dict
        Per slab: ``key``, ``group``, ``gamma_ref``, ``gamma_error`` (None when excluded),
        ``reason``.
    """
    from surfflows.core.benchmark import slab_surface_error

    bulks = {d["key"]: d for d in docs if d["doc_type"] == "bulk"}
    rows = []
    for slab in (d for d in docs if d["doc_type"] == "slab"):
        bulk = bulks.get(slab.get("bulk_key"))
        error = slab_surface_error(
            slab, bulk, energies.get(slab["key"]), bulk and energies.get(bulk["key"])
        )
        rows.append(
            {
                "key": slab["key"],
                "group": groups[slab["material_id"]].removeprefix("element:"),
                "gamma_ref": error["gamma_ref"],
                "gamma_error": error["gamma_error"],
                "reason": error["reason"],
            }
        )
    return rows


def aligned_assignments(
    materials: Iterable[tuple[str, str]],
    assignments: Mapping[str, str],
    reference_materials: Iterable[tuple[str, str]],
    reference_assignments: Mapping[str, str],
) -> dict[str, str]:
    """A second set's split made to agree with a reference set's.

    ``materials``, ``reference_materials``: (material_id, formula) of each document of the
    two sets. A material of the second set that is also in the reference set (same
    material id, or the same element for elemental materials,
    :func:`surfflows.core.splits.material_identities`)
    takes the reference material's part (the most held-out one if several match: test,
    then val); the others keep their own. Used for replay sets next to a fold or a
    final model, so a replay set's own split neither drops training materials nor lets a
    held-out element in.

    Examples
    --------
    >>> aligned_assignments([("mp-30", "Cu"), ("mp-2", "CuO")],
    ...                     {"mp-30": "val", "mp-2": "test"},
    ...                     [("mp-30", "Cu4")], {"mp-30": "train"})
    {'mp-30': 'train', 'mp-2': 'test'}
    """
    rank = {"test": 0, "val": 1, "train": 2}
    part_of: dict[str, str] = {}
    for material, identities in material_identities(reference_materials).items():
        part = reference_assignments.get(material)
        if part is None:
            continue
        for identity in identities:
            if identity not in part_of or rank[part] < rank[part_of[identity]]:
                part_of[identity] = part
    out = dict(assignments)
    for material, identities in material_identities(materials).items():
        matched = [part_of[i] for i in identities if i in part_of]
        if matched:
            out[material] = min(matched, key=rank.__getitem__)
    return out
