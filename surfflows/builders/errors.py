"""SurfaceEnergyErrorBuilder: model evaluations + references -> surface_errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from maggma.core import Builder, Store

from surfflows.core.benchmark import chemistry_class, facet_family, slab_surface_error
from surfflows.io.splits import get_or_create_split
from surfflows.schemas.benchmark import SurfaceErrorDoc
from surfflows.stores import ensure_indexes, get_store

EVALUATION_CLASS = {"output.@class": "EvaluationDoc"}


class SurfaceEnergyErrorBuilder(Builder):
    """Surface-energy error per reference slab, model and mode.

    Sources are the JobStore's ``outputs`` (EvaluationDoc outputs of the evaluation
    flows) and ``references``; the target is ``surface_errors``. Work is grouped by
    (model, reference set, mode); a group is processed only if its newest evaluation or
    the set's newest reference ingest is newer than what the target was built from.

    Parameters
    ----------
    outputs, references, surface_errors, splits
        Stores; default: the configured database's stores of these names.
    """

    def __init__(
        self,
        outputs: Store | None = None,
        references: Store | None = None,
        surface_errors: Store | None = None,
        splits: Store | None = None,
        **kwargs,
    ):
        self.outputs = outputs or get_store("outputs")
        self.references = references or get_store("references")
        self.surface_errors = surface_errors or get_store("surface_errors")
        self.splits = splits or get_store("splits")
        super().__init__(
            sources=[self.outputs, self.references],
            targets=[self.surface_errors, self.splits],
            **kwargs,
        )

    def connect(self) -> None:
        super().connect()
        ensure_indexes(self.surface_errors, ("error_id", "model_id", "set_name"))

    def _groups(self) -> dict[tuple[str, str, str], str]:
        newest: dict[tuple[str, str, str], str] = {}
        fields = ["output.model_id", "output.set_name", "output.mode", "completed_at"]
        for doc in self.outputs.query(EVALUATION_CLASS, properties=fields):
            out = doc["output"]
            key = (out["model_id"], out["set_name"], out["mode"])
            newest[key] = max(newest.get(key, ""), doc["completed_at"])
        return newest

    def _references_updated(self, set_name: str) -> str:
        stamps = [
            d["ingested_at"]
            for d in self.references.query({"set_name": set_name}, properties=["ingested_at"])
        ]
        return max(stamps, default="")

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Groups with evaluations or references newer than their surface errors.

        A reference set and its split are read once, however many models and modes
        evaluated it; the groups of one set share them.
        """
        updated: dict[str, str] = {}
        loaded: dict[str, tuple[list[dict], dict[str, str]]] = {}
        for (model_id, set_name, mode), completed in sorted(self._groups().items()):
            if set_name not in updated:
                updated[set_name] = self._references_updated(set_name)
            refs_updated = updated[set_name]
            built = self.surface_errors.query_one(
                {"model_id": model_id, "set_name": set_name, "mode": mode},
                properties=["source_completed_at", "references_updated_at"],
                sort={"source_completed_at": -1},
            )
            if built and built["source_completed_at"] >= completed:
                if built["references_updated_at"] >= refs_updated:
                    continue
            criteria = EVALUATION_CLASS | {
                "output.model_id": model_id,
                "output.set_name": set_name,
                "output.mode": mode,
            }
            energies: dict[str, dict] = {}
            for doc in sorted(self.outputs.query(criteria), key=lambda d: d["completed_at"]):
                for result in doc["output"]["results"]:
                    energies[result["reference_key"]] = result  # newest evaluation wins
            if set_name not in loaded:
                split = get_or_create_split(set_name, store=self.splits, references=self.references)
                references = list(self.references.query({"set_name": set_name}))
                loaded[set_name] = (references, split.assignments)
            references, assignments = loaded[set_name]
            self.logger.info(f"surface errors: {model_id} {set_name} {mode}")
            yield {
                "model_id": model_id,
                "set_name": set_name,
                "mode": mode,
                "source_completed_at": completed,
                "references_updated_at": refs_updated,
                "energies": energies,
                "references": references,
                "assignments": assignments,
            }

    def process_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """One SurfaceErrorDoc per reference slab of the group."""
        refs = {doc["key"]: doc for doc in item["references"]}
        energies = item["energies"]
        docs = []
        for ref in refs.values():
            if ref["doc_type"] != "slab":
                continue
            bulk_key = ref.get("bulk_key")
            fields = slab_surface_error(
                ref,
                refs.get(bulk_key) if bulk_key else None,
                energies.get(ref["key"]),
                energies.get(bulk_key) if bulk_key else None,
            )
            docs.append(
                SurfaceErrorDoc(
                    error_id=f"{item['model_id']}|{item['mode']}|{ref['key']}",
                    model_id=item["model_id"],
                    set_name=item["set_name"],
                    mode=item["mode"],
                    reference_key=ref["key"],
                    material_id=ref["material_id"],
                    split=item["assignments"].get(ref["material_id"]),
                    formula=ref["formula"],
                    miller_index=ref.get("miller_index"),
                    facet_family=facet_family(ref.get("miller_index")),
                    chemistry_class=chemistry_class(ref["formula"]),
                    source_completed_at=item["source_completed_at"],
                    references_updated_at=item["references_updated_at"],
                    **fields,
                ).model_dump()
            )
        return docs

    def update_targets(self, items: list[list[dict[str, Any]]]) -> None:
        """Upsert the error documents by error_id."""
        docs = [doc for group in items for doc in group]
        if docs:
            self.surface_errors.update(docs, key="error_id")
