"""The stored train / validation / test split of a reference set (:mod:`surfflows.core.splits`)."""

from __future__ import annotations

from collections.abc import Iterable

from maggma.core import Store

from surfflows.core.splits import DEFAULT_FRACTIONS, SplitDoc, make_split, split_id


def get_or_create_split(
    set_name: str,
    seed: int = 0,
    *,
    store: Store,
    references: Store,
    fractions: tuple[float, float, float] | None = None,
) -> SplitDoc:
    """The stored split of a reference set, created or extended from its material ids.

    Parameters
    ----------
    set_name
        Reference set, already ingested into the references store.
    seed
        Seed of the split.
    store
        Splits store (connected on the way, left open).
    fractions
        Fractions of a new split (default :data:`DEFAULT_FRACTIONS`). For a stored split
        they must be None or equal to the stored ones.
    references
        References store to read material ids from (connected on the way, left open).

    Returns
    -------
    SplitDoc
        The stored split, unchanged if it covers every material of the set; else extended
        with the new materials (existing assignments kept) and stored again.

    Raises
    ------
    ValueError
        If the set has no documents, or ``fractions`` contradict the stored split.
    """
    references.connect()
    material_ids = references.distinct("material_id", {"set_name": set_name})
    return split_of_materials(set_name, material_ids, seed, store=store, fractions=fractions)


def split_of_materials(
    set_name: str,
    material_ids: Iterable[str | None],
    seed: int = 0,
    *,
    store: Store,
    fractions: tuple[float, float, float] | None = None,
) -> SplitDoc:
    """:func:`get_or_create_split` from material ids the caller has read (the builders take
    them from their one read of the references, not from one more query per set).

    Parameters
    ----------
    set_name, seed, store, fractions
        As for :func:`get_or_create_split`.
    material_ids
        Material ids of every document of the set (None entries are skipped).
    """
    store.connect()
    material_ids = sorted({m for m in material_ids if m is not None})
    if not material_ids:
        raise ValueError(f"the references store has no documents of set {set_name!r}")
    stored = store.query_one({"split_id": split_id(set_name, seed)})
    if stored is None:
        split = make_split(
            set_name, material_ids, fractions=fractions or DEFAULT_FRACTIONS, seed=seed
        )
    else:
        split = SplitDoc.model_validate(stored)
        if fractions is not None and tuple(fractions) != split.fractions:
            raise ValueError(
                f"split {split.split_id} is stored with fractions {split.fractions}, "
                f"not {tuple(fractions)}: use another seed for another split"
            )
        extended = split.with_materials(material_ids)
        if extended is split:
            return split
        split = extended
    store.update([split.model_dump(mode="json")], key="split_id")
    return split
