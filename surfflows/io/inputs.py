"""Read what a flow needs from the stores, where the stores are at hand (CLI, tests).

Jobs get these as inputs and never open a store themselves, so the same flow runs with
``run_locally`` and on a jobflow-remote worker that has no surfflows settings.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection

import numpy as np
from jobflow import JobStore
from maggma.core import Store
from pydantic import ValidationError
from pymatgen.core import Structure

from surfflows.analysis.wulff import surface_properties
from surfflows.core.slabs import conventional_cell
from surfflows.core.text import validation_summary
from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2
from surfflows.io.canonical import PACKAGED_SETS, read_reference_set
from surfflows.io.splits import get_or_create_split
from surfflows.schemas.references import ReferenceDoc, ReferenceInputs
from surfflows.schemas.thermo import ReferenceWulffDoc, SurfaceEntryDoc


def require_ingested(set_names: list[str] | tuple[str, ...], references: Store) -> None:
    """Refuse, before any work, sets that have no document in the references store.

    Raises
    ------
    ValueError
        One line naming every missing set and the ``surfflows ingest`` command that adds it
        (a packaged set by its name, any other set from its folder).
    """
    references.connect()
    missing = [n for n in dict.fromkeys(set_names) if not references.count({"set_name": n})]
    if not missing:
        return
    packaged = [n for n in missing if n in PACKAGED_SETS]
    folders = [n for n in missing if n not in PACKAGED_SETS]
    names = ", ".join(repr(n) for n in missing)
    fixes = [f"surfflows ingest {' '.join(packaged)}"] if packaged else []
    fixes += [f"surfflows ingest <folder of {n}> --set-name {n}" for n in folders]
    raise ValueError(
        f"reference set{'s' if len(missing) > 1 else ''} {names} "
        f"{'are' if len(missing) > 1 else 'is'} not in the database; run "
        + " and ".join(f"`{fix}`" for fix in fixes)
        + " first"
    )


def reference_inputs(
    set_name: str,
    references: Store,
    splits: Store | None,
    doc_types: tuple[str, ...] = ("slab", "bulk"),
) -> ReferenceInputs:
    """The documents of a set (some types) and its seed-0 split, created if missing.

    ``splits`` None: no split (a bulk set of the forgetting check).

    Raises
    ------
    ValueError
        If the set is not ingested (:func:`require_ingested`), has no documents of these
        types, or holds documents that are not valid reference documents (the typed
        documents jobs read: :class:`~surfflows.schemas.references.ReferenceInputs`).
    """
    require_ingested([set_name], references)
    split = None
    if splits is not None:
        split = get_or_create_split(set_name, store=splits, references=references)
    docs = list(references.query({"set_name": set_name, "doc_type": {"$in": list(doc_types)}}))
    if not docs:
        raise ValueError(
            f"the references store has no {list(doc_types)} documents of set {set_name!r}"
        )
    split_fields = {} if split is None else split.model_dump(include={"split_id", "assignments"})
    try:
        return ReferenceInputs(set_name=set_name, docs=docs, **split_fields)
    except ValidationError as exc:
        raise ValueError(
            f"reference set {set_name!r}: stored documents are not valid reference documents "
            f"({validation_summary(exc)}); ingest the set again"
        ) from None


def training_inputs(
    set_name: str, bulk_sets: tuple[str, ...], references: Store, splits: Store
) -> tuple[ReferenceInputs, list[ReferenceInputs]]:
    """A fine-tuning set with its split, and the bulk sets of the forgetting check.

    The set's trajectory frames (OC22 S2EF) come with its slabs and bulks as training samples.
    Every set missing from the references store is named at once (:func:`require_ingested`).
    """
    require_ingested([set_name, *bulk_sets], references)
    training = reference_inputs(set_name, references, splits, ("slab", "bulk", "frame"))
    bulks = [reference_inputs(name, references, None, ("bulk",)) for name in bulk_sets]
    return training, bulks


def reference_items(
    inputs: ReferenceInputs,
    parts: tuple[str, ...] | None = None,
    slab_keys: Collection[str] | None = None,
) -> list[tuple[str, str, Structure, bool]]:
    """(key, doc type, structure, has DFT forces) of a set's slabs and bulks.

    Optionally of some split parts only, and of some slabs only (``slab_keys``, e.g.
    :func:`slab_keys`). The bulks are those of the selected materials and those the
    selected slabs name (with ``slab_keys``: only those the slabs name), so a bulk-only set
    (``wbm_bulks``) gives its bulks and a slab set its slabs with their bulks. Reference
    structures carry the DFT fixed atoms as ``selective_dynamics`` (e.g. OC22), which the
    relaxed mode of the evaluation respects; single points of structures with DFT forces
    also give the model's forces.
    """

    def selected(doc: ReferenceDoc) -> bool:
        return parts is None or inputs.assignments.get(doc.material_id) in parts

    slabs = [d for d in inputs.of_type("slab") if selected(d)]
    if slab_keys is not None:
        slabs = [d for d in slabs if d.key in slab_keys]
    bulk_keys = {d.bulk_key for d in slabs if d.bulk_key}
    bulks = sorted(
        (
            d
            for d in inputs.of_type("bulk")
            if d.key in bulk_keys or (slab_keys is None and selected(d))
        ),
        key=lambda d: d.key,
    )
    return [(d.key, "slab", d.structure.copy(), False) for d in slabs] + [
        (d.key, "bulk", d.structure.copy(), d.ref_forces is not None) for d in bulks
    ]


def slab_keys(
    inputs: ReferenceInputs,
    parts: tuple[str, ...] | None = None,
    max_slabs: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Keys of the unflagged slabs of some split parts, at most ``max_slabs`` of them.

    The subset is drawn with a fixed generator (``seed``) from the sorted keys, so every
    model gets the same slabs.
    """
    keys = sorted(
        d.key
        for d in inputs.of_type("slab")
        if not d.flags and (parts is None or inputs.assignments.get(d.material_id) in parts)
    )
    if max_slabs is None or len(keys) <= max_slabs:
        return keys
    picked = np.random.default_rng(seed).choice(len(keys), size=max_slabs, replace=False)
    return sorted(keys[i] for i in picked)


def stored_evaluations(
    store: JobStore, model_id: str, set_name: str, keys: set[str]
) -> list[dict] | None:
    """The newest stored evaluation documents of ``model_id`` on ``set_name`` if together
    they cover ``keys`` in both modes, else None (so a flow evaluates the model itself)."""
    found, covered = [], {"single_point": set(), "relaxed": set()}
    with store:
        for doc in store.query(
            {"output.@class": "EvaluationDoc", "output.model_id": model_id}
            | {"output.set_name": set_name},
            properties=["output"],
            sort={"completed_at": -1},
        ):
            mode = doc["output"]["mode"]
            new = {r["reference_key"] for r in doc["output"]["results"]} - covered[mode]
            if new:
                covered[mode] |= new
                found.append(doc["output"])
    return found if all(keys <= c for c in covered.values()) else None


def reference_wulff(set_name: str, material: str) -> ReferenceWulffDoc:
    """Wulff document of a DFT reference set's surface energies for one material.

    The lowest reference gamma per facet (``gamma_ref``, else ``gamma_ref_recomputed``) on the
    conventional cell of the set's bulk of that material. Flagged slabs are left out; where
    the material's slabs were cut from several bulk polymorphs (``mp_elemental_surfaces``),
    only those of the polymorph with the most slabs are used, so facets of different
    crystals are never mixed.

    Returns
    -------
    ReferenceWulffDoc
        The Wulff document (``model_id`` = ``"<set> (<level of theory>)"``) with the set's
        level of theory and citation: the input of
        :func:`surfflows.jobs.thermo.wulff_comparison`.
    """
    refset = read_reference_set(set_name)
    slabs = [
        s for s in refset.slabs if s.material_id == material and s.miller_index and not s.flags
    ]
    polymorphs = Counter(s.bulk_key for s in slabs if s.bulk_key)
    if len(polymorphs) > 1:
        main = polymorphs.most_common(1)[0][0]
        slabs = [s for s in slabs if s.bulk_key == main]
    gammas: dict[tuple[int, ...], float] = {}
    for slab in slabs:
        gamma = slab.gamma_ref if slab.gamma_ref is not None else slab.gamma_ref_recomputed
        if gamma is not None:
            hkl = tuple(slab.miller_index)
            gammas[hkl] = min(gamma, gammas.get(hkl, gamma))
    if not gammas:
        known = sorted({s.material_id for s in refset.slabs})
        raise ValueError(f"{set_name} has no surface energies of {material!r}; it has {known}")
    bulk_keys = {s.bulk_key for s in slabs if s.bulk_key}
    bulk = next(b for b in refset.bulks if b.key in bulk_keys)
    info = refset.info
    wulff = surface_properties(
        conventional_cell(bulk.structure),
        [
            SurfaceEntryDoc(
                miller_index=list(hkl),
                surface_energy=gamma,
                surface_energy_EV_PER_ANG2=gamma / EV_PER_A2_TO_J_PER_M2,
            )
            for hkl, gamma in sorted(gammas.items())
        ],
        material_id=material,
        pretty_formula=bulk.formula,
        model_id=f"{info.name} ({info.level_of_theory})",
    )
    return ReferenceWulffDoc(
        reference_set=set_name,
        level_of_theory=info.level_of_theory,
        citation=info.citation,
        wulff=wulff,
    )
