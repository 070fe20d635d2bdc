"""Upsert a reference set into the ``references`` store.

Ingest is idempotent: documents are upserted by ``key`` and a document whose content
(everything but ``ingested_at``) equals the stored one is not written, so its timestamp
stays and incremental builders see no change. Everything is validated and serialised
before the first write, and a set is refused if the store holds it at another level of
theory, so a bad file loses nothing already stored.
"""

from __future__ import annotations

from pathlib import Path

from maggma.core import Store
from pydantic import BaseModel, Field

from surfflows.io.canonical import read_reference_set
from surfflows.io.reference_set import ReferenceSet
from surfflows.stores import ensure_indexes, insert_new_documents, using_store

#: Fields of a stored document that are not its content.
_META_FIELDS = ("_id", "ingested_at")
#: Indexed fields of the references store (where the backend supports indexes).
INDEX_FIELDS = ("key", "set_name", "doc_type", "material_id")


class IngestReport(BaseModel):
    """What one ingest changed in the references store."""

    set_name: str = Field(description="Reference set ingested.")
    level_of_theory: str = Field(description="Its level of theory.")
    inserted: int = Field(description="New documents written.")
    updated: int = Field(description="Stored documents whose content changed, rewritten.")
    unchanged: int = Field(description="Stored documents equal to the new ones, not written.")
    skipped: dict[str, list[str]] = Field(
        description="Reason -> ids of records not ingested (or kept without their bulk / slab "
        "link: bulk_missing, slab_missing), from the reader."
    )
    deduplicated: list[str] = Field(
        default_factory=list,
        description="Keys that were stored more than once and are now stored once (counted "
        "as updated).",
    )
    not_in_files: list[str] = Field(
        default_factory=list,
        description="Keys of stored documents of this set that the files no longer hold "
        "(left in the store).",
    )

    def summary(self) -> str:
        """One paragraph for logs and the command line."""
        text = (
            f"{self.set_name} ({self.level_of_theory}): {self.inserted} inserted, "
            f"{self.updated} updated, {self.unchanged} unchanged"
        )
        if self.skipped:
            reasons = ", ".join(f"{reason} {len(ids)}" for reason, ids in self.skipped.items())
            text += f"; skipped or unlinked: {reasons}"
        if self.deduplicated:
            text += f"; {len(self.deduplicated)} keys stored twice now stored once"
        if self.not_in_files:
            text += f"; {len(self.not_in_files)} stored documents not in the files (kept)"
        return text


def ingest_reference_set(refset: ReferenceSet, store: Store | None = None) -> IngestReport:
    """Upsert the documents of a reference set by ``key``.

    Parameters
    ----------
    refset
        Documents read by :func:`~surfflows.io.canonical.read_reference_set` or
        :func:`~surfflows.io.canonical.documents_from_frames`.
    store
        Target store, left open; default the ``references`` store of the current settings.

    Returns
    -------
    IngestReport
        Counts of inserted / updated / unchanged documents and the reader's skips.

    Raises
    ------
    ValueError
        If the store holds documents of this set at another level of theory (nothing is
        written then).
    """
    info = refset.info
    new = {doc.key: doc.model_dump(mode="json") for doc in refset.documents}
    with using_store(store, "references") as store:
        ensure_indexes(store, INDEX_FIELDS)
        ensure_indexes(store, ("key",), unique=True)
        stored: dict[str, dict] = {}
        duplicated: set[str] = set()  # keys stored more than once (older concurrent ingests)
        for doc in store.query({"set_name": info.name}):
            if doc["key"] in stored:
                duplicated.add(doc["key"])
            stored[doc["key"]] = doc
        theories = {doc["level_of_theory"] for doc in stored.values()} - {info.level_of_theory}
        if theories:
            raise ValueError(
                f"the references store holds set {info.name} at {sorted(theories)}, not "
                f"{info.level_of_theory!r}: ingest it under another name or remove the old "
                "documents first"
            )
        content = {key: _content(doc) for key, doc in stored.items()}
        to_write = [
            doc
            for key, doc in new.items()
            if key in duplicated or content.get(key) != _content(doc)
        ]
        updated = [doc["key"] for doc in to_write if doc["key"] in stored]
        # Remove the changed ones and insert in bulk (not store.update: see
        # insert_new_documents). A crash in between leaves them to be re-inserted.
        if updated:
            store.remove_docs({"key": {"$in": updated}})
        insert_new_documents(store, to_write, key="key")
    return IngestReport(
        set_name=info.name,
        level_of_theory=info.level_of_theory,
        inserted=len(to_write) - len(updated),
        updated=len(updated),
        unchanged=len(new) - len(to_write),
        deduplicated=sorted(duplicated & new.keys()),
        skipped=refset.skipped,
        not_in_files=sorted(stored.keys() - new.keys()),
    )


def ingest_path(
    path_or_name: str | Path, level_of_theory: str | None = None, set_name: str | None = None
) -> IngestReport:
    """Read a reference-set folder (or packaged set name) and ingest it.

    Parameters
    ----------
    path_or_name, level_of_theory, set_name
        As :func:`~surfflows.io.canonical.read_reference_set`.

    Returns
    -------
    IngestReport
        See :func:`ingest_reference_set`.
    """
    return ingest_reference_set(
        read_reference_set(path_or_name, level_of_theory=level_of_theory, set_name=set_name)
    )


def _content(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in _META_FIELDS}
