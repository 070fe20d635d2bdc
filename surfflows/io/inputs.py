"""Read what a flow needs from the stores, where the stores are at hand (CLI, tests).

Jobs get these as inputs and never open a store themselves, so the same flow runs with
``run_locally`` and on a jobflow-remote worker that has no surfflows settings.
"""

from __future__ import annotations

from maggma.core import Store
from pymatgen.core import Structure

from surfflows.io.splits import get_or_create_split
from surfflows.schemas.references import ReferenceInputs


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
        If the references store has no such documents.
    """
    split = None
    if splits is not None:
        split = get_or_create_split(set_name, store=splits, references=references)
    docs = list(references.query({"set_name": set_name, "doc_type": {"$in": list(doc_types)}}))
    if not docs:
        raise ValueError(
            f"the references store has no {list(doc_types)} documents of set {set_name!r}"
        )
    for doc in docs:
        doc.pop("_id", None)
    if split is None:
        return ReferenceInputs(set_name=set_name, docs=docs)
    return ReferenceInputs(
        set_name=set_name, split_id=split.split_id, assignments=split.assignments, docs=docs
    )


def training_inputs(
    set_name: str, bulk_sets: tuple[str, ...], references: Store, splits: Store
) -> tuple[ReferenceInputs, list[ReferenceInputs]]:
    """A fine-tuning set with its split, and the bulk sets of the forgetting check.

    The set's trajectory frames (OC22 S2EF) come with its slabs and bulks as training samples.
    """
    training = reference_inputs(set_name, references, splits, ("slab", "bulk", "frame"))
    bulks = [reference_inputs(name, references, None, ("bulk",)) for name in bulk_sets]
    return training, bulks


def reference_items(
    inputs: ReferenceInputs, parts: tuple[str, ...] | None = None
) -> list[tuple[str, str, Structure, bool]]:
    """(key, doc type, structure, has DFT forces) of a set's slabs and bulks.

    Optionally of some split parts only. The bulks are those of the selected materials and
    those the selected slabs name, so a bulk-only set (``wbm_bulks``) gives its bulks and a
    slab set its slabs with their bulks. Reference structures carry the DFT fixed atoms as
    ``selective_dynamics`` (e.g. OC22), which the relaxed mode of the evaluation respects;
    single points of structures with DFT forces also give the model's forces.
    """

    def selected(doc: dict) -> bool:
        return parts is None or inputs.assignments.get(doc["material_id"]) in parts

    slabs = [d for d in inputs.of_type("slab") if selected(d)]
    bulk_keys = {d["bulk_key"] for d in slabs if d.get("bulk_key")}
    bulks = sorted(
        (d for d in inputs.of_type("bulk") if d["key"] in bulk_keys or selected(d)),
        key=lambda d: d["key"],
    )
    return [(d["key"], "slab", Structure.from_dict(d["structure"]), False) for d in slabs] + [
        (d["key"], "bulk", Structure.from_dict(d["structure"]), d.get("ref_forces") is not None)
        for d in bulks
    ]
