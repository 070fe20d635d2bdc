"""SurfaceEnergyErrorBuilder: model evaluations + references -> surface_errors.

One error document per reference slab (gamma) and per reference bulk (aligned energy per
atom, forces where labelled) of every evaluated (model, set, mode).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from maggma.core import Builder, Store

from surfflows.core.benchmark import (
    bulk_energy_errors,
    chemistry_class,
    elemental_offsets,
    facet_family,
    slab_surface_error,
)
from surfflows.io.splits import get_or_create_split
from surfflows.schemas.benchmark import SurfaceErrorDoc
from surfflows.stores import ensure_indexes, insert_new_documents

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
        Stores, opened by the caller (:func:`surfflows.builders.run.campaign_builders`):
        the JobStore's docs store, the reference documents, the target, and the stored
        splits (a set's split is created or extended there).
    elemental_set
        Reference set of elemental ground states (DFT energies per element). Where a model
        evaluated it in a mode, bulk errors of other sets in that mode also get the model -
        DFT formation energy per atom, each side referenced to its own elemental energies.
    """

    def __init__(
        self,
        outputs: Store,
        references: Store,
        surface_errors: Store,
        splits: Store,
        elemental_set: str = "mp_elemental_refs",
        **kwargs,
    ):
        self.elemental_set = elemental_set
        self.outputs = outputs
        self.references = references
        self.surface_errors = surface_errors
        self.splits = splits
        super().__init__(
            sources=[self.outputs, self.references],
            targets=[self.surface_errors, self.splits],
            **kwargs,
        )

    def connect(self) -> None:
        super().connect()
        ensure_indexes(self.surface_errors, ("error_id", "model_id", "set_name"))

    def _energies(self, model_id: str, set_name: str, mode: str) -> dict[str, dict]:
        """reference key -> the model's energy document (newest evaluation wins)."""
        criteria = EVALUATION_CLASS | {
            "output.model_id": model_id,
            "output.set_name": set_name,
            "output.mode": mode,
        }
        energies: dict[str, dict] = {}
        for doc in sorted(self.outputs.query(criteria), key=lambda d: d["completed_at"]):
            for result in doc["output"]["results"]:
                energies[result["reference_key"]] = result
        return energies

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

    def _stale_groups(self) -> list[tuple[str, str, str, str, str, bool]]:
        """(model, set, mode, newest evaluation, newest reference, uses the elemental set)
        of every group with evaluations or references newer than its surface errors."""
        updated: dict[str, str] = {}
        groups = self._groups()
        elemental = self.elemental_set
        stale = []
        for (model_id, set_name, mode), completed in sorted(groups.items()):
            # formation energies use the same model's evaluation of the elemental set
            uses_elements = set_name != elemental and (model_id, elemental, mode) in groups
            if uses_elements:
                completed = max(completed, groups[(model_id, elemental, mode)])
            for name in (set_name, elemental):
                if name not in updated:
                    updated[name] = self._references_updated(name)
            refs_updated = updated[set_name]
            if uses_elements:
                refs_updated = max(refs_updated, updated[elemental])
            built = self.surface_errors.query_one(
                {"model_id": model_id, "set_name": set_name, "mode": mode},
                properties=["source_completed_at", "references_updated_at"],
                sort={"source_completed_at": -1},
            )
            if built and built["source_completed_at"] >= completed:
                if built["references_updated_at"] >= refs_updated:
                    continue
            stale.append((model_id, set_name, mode, completed, refs_updated, uses_elements))
        return stale

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Groups with evaluations or references newer than their surface errors.

        ``total`` (read by maggma's runners) is set to their number first. A reference set
        and its split are read once, however many models and modes evaluated it; the
        groups of one set share them.
        """
        stale = self._stale_groups()
        self.total = len(stale)
        elemental = self.elemental_set
        loaded: dict[str, tuple[list[dict], dict[str, str]]] = {}
        elemental_docs: list[dict] | None = None
        for model_id, set_name, mode, completed, refs_updated, uses_elements in stale:
            energies = self._energies(model_id, set_name, mode)
            formation_offsets = None
            if uses_elements:
                if elemental_docs is None:
                    elemental_docs = list(
                        self.references.query({"set_name": elemental, "doc_type": "bulk"})
                    )
                formation_offsets = elemental_offsets(
                    elemental_docs, self._energies(model_id, elemental, mode)
                )
            if set_name not in loaded:
                split = get_or_create_split(set_name, store=self.splits, references=self.references)
                references = list(
                    self.references.query(
                        {"set_name": set_name, "doc_type": {"$in": ["slab", "bulk"]}}
                    )
                )
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
                "formation_offsets": formation_offsets,
                "references": references,
                "assignments": assignments,
            }

    def process_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """One SurfaceErrorDoc per reference slab and per evaluated reference bulk."""
        refs = {doc["key"]: doc for doc in item["references"]}
        energies = item["energies"]
        common = {
            "model_id": item["model_id"],
            "set_name": item["set_name"],
            "mode": item["mode"],
            "source_completed_at": item["source_completed_at"],
            "references_updated_at": item["references_updated_at"],
        }

        def doc(ref: dict[str, Any], **fields: Any) -> dict[str, Any]:
            return SurfaceErrorDoc(
                error_id=f"{item['model_id']}|{item['mode']}|{ref['key']}",
                reference_key=ref["key"],
                material_id=ref["material_id"],
                split=item["assignments"].get(ref["material_id"]),
                formula=ref["formula"],
                chemistry_class=chemistry_class(ref["formula"]),
                **common,
                **fields,
            ).model_dump()

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
                doc(
                    ref,
                    miller_index=ref.get("miller_index"),
                    facet_family=facet_family(ref.get("miller_index")),
                    gamma_only=ref.get("ref_energy") is None,
                    n_atoms=ref["n_atoms"],
                    **fields,
                )
            )
        # Bulks the evaluation covered (a slab set's bulks and a bulk-only set's alike).
        bulks = [r for r in refs.values() if r["doc_type"] == "bulk" and r["key"] in energies]
        bulk_errors = bulk_energy_errors(
            bulks, energies, item["assignments"], item.get("formation_offsets")
        )
        for ref in bulks:
            docs.append(
                doc(
                    ref,
                    kind="bulk",
                    miller_index=None,
                    facet_family="bulk",
                    **bulk_errors[ref["key"]],
                )
            )
        return docs

    def update_targets(self, items: list[list[dict[str, Any]]]) -> None:
        """Replace each rebuilt group's error documents, in two bulk writes per group.

        Not ``store.update``: on a MontyStore it scans the whole collection for each
        document (see :func:`~surfflows.stores.insert_new_documents`), which grows with
        the square of the models evaluated. A crash between removal and insert leaves
        the group without errors, so the next build rebuilds it.
        """
        for docs in items:
            if docs:
                group = {k: docs[0][k] for k in ("model_id", "set_name", "mode")}
                if self.surface_errors.count(group):  # montydb: no delete before a write
                    self.surface_errors.remove_docs(group)
                insert_new_documents(self.surface_errors, docs, key="error_id")
