"""BenchmarkBuilder: surface_errors -> benchmarks (statistics per model, set, mode, split).

Two quantities: ``gamma`` rows from slab errors and ``bulk_energy`` rows from bulk errors (the
forgetting check). A fine-tuned model's rows carry its parent's MAE on the same rows (the
parent is read from its FineTuneDoc in the JobStore outputs) and the relative change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from maggma.core import Builder, Store

from surfflows.core.benchmark import against_parent, bulk_summary, reason_category, summarize
from surfflows.io.packaged import registered_parent
from surfflows.schemas.benchmark import BenchmarkDoc

SPLIT_PARTS = ("train", "val", "test", "all")


class BenchmarkBuilder(Builder):
    """N, MAE, RMSE, mean signed and max error per (model, set, mode, split part, quantity).

    Gamma rows are broken down by facet family and chemistry class; excluded records are
    counted per reason. A group is rebuilt only when one of its errors is newer than its
    benchmark.

    Parameters
    ----------
    surface_errors, benchmarks, outputs
        Stores, opened by the caller (``outputs``, the JobStore's docs store, holds the
        FineTuneDoc that names each fine-tuned model's parent).
    """

    def __init__(
        self,
        surface_errors: Store,
        benchmarks: Store,
        outputs: Store,
        **kwargs,
    ):
        self.surface_errors = surface_errors
        self.benchmarks = benchmarks
        self.outputs = outputs
        super().__init__(
            sources=[self.surface_errors, self.outputs], targets=[self.benchmarks], **kwargs
        )

    def _parent(self, model_id: str) -> str | None:
        """The model ``model_id`` was fine-tuned from (its FineTuneDoc, or its registration's
        parent: :func:`~surfflows.io.packaged.registered_parent`), None if none."""
        doc = self.outputs.query_one(
            {"output.@class": {"$in": ["FineTuneDoc", "CheckpointDoc"]}}
            | {"output.model_id": model_id},
            properties=["output.parent_model_id", "output.metadata", "output.sha256"],
        )
        return None if doc is None else registered_parent(doc["output"])

    def _stale_groups(self) -> list[tuple[str, str, str, str]]:
        """(model, set, mode, newest error) of every group whose errors changed since its
        benchmark."""
        newest: dict[tuple[str, str, str], str] = {}
        for doc in self.surface_errors.query(
            {}, properties=["model_id", "set_name", "mode", "last_updated"]
        ):
            key = (doc["model_id"], doc["set_name"], doc["mode"])
            newest[key] = max(newest.get(key, ""), doc["last_updated"])
        stale = []
        for (model_id, set_name, mode), updated in sorted(newest.items()):
            built = self.benchmarks.query_one(
                {"model_id": model_id, "set_name": set_name, "mode": mode, "split": "all"},
                properties=["source_updated"],
            )
            if not built or built["source_updated"] < updated:
                stale.append((model_id, set_name, mode, updated))
        return stale

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Groups (model, set, mode) whose errors changed since their benchmark.

        ``total`` (read by maggma's runners) is set to their number first.
        """
        stale = self._stale_groups()
        self.total = len(stale)
        for model_id, set_name, mode, updated in stale:
            criteria = {"model_id": model_id, "set_name": set_name, "mode": mode}
            parent = self._parent(model_id)
            yield {
                "model_id": model_id,
                "set_name": set_name,
                "mode": mode,
                "source_updated": updated,
                "errors": list(self.surface_errors.query(criteria)),
                "parent_model_id": parent,
                "parent_errors": (
                    list(self.surface_errors.query({**criteria, "model_id": parent}))
                    if parent
                    else []
                ),
            }

    def process_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """One BenchmarkDoc per split part (and ``all``) and quantity present."""

        def rows_of(errors: list[dict], kind: str, part: str) -> list[dict]:
            return [
                e
                for e in errors
                if e.get("kind", "slab") == kind and (part == "all" or e["split"] == part)
            ]

        docs = []
        for kind, quantity, suffix in (
            ("slab", "gamma", ""),
            ("bulk", "bulk_energy", "|bulk_energy"),
        ):
            for part in SPLIT_PARTS:
                rows = rows_of(item["errors"], kind, part)
                if not rows:
                    continue
                ok = [e for e in rows if e["status"] == "ok"]
                excluded = [e for e in rows if e["status"] != "ok"]
                if kind == "slab":

                    def by(field: str, ok: list[dict] = ok) -> dict[str, dict]:
                        groups = sorted({e[field] for e in ok})
                        return {
                            g: summarize(e["gamma_error"] for e in ok if e[field] == g)
                            for g in groups
                        }

                    stats = {
                        **summarize(e["gamma_error"] for e in ok),
                        "n_gamma_only": sum(bool(e.get("gamma_only")) for e in ok),
                        "by_facet_family": by("facet_family"),
                        "by_chemistry_class": by("chemistry_class"),
                    }
                    parent_rows = rows_of(item["parent_errors"], kind, part)
                    parent_stats = summarize(
                        e["gamma_error"] for e in parent_rows if e["status"] == "ok"
                    )
                else:
                    stats = {**bulk_summary(rows), "by_facet_family": {}, "by_chemistry_class": {}}
                    parent_stats = bulk_summary(rows_of(item["parent_errors"], kind, part))
                docs.append(
                    BenchmarkDoc(
                        benchmark_id=f"{item['model_id']}|{item['set_name']}|{item['mode']}|"
                        f"{part}{suffix}",
                        quantity=quantity,
                        model_id=item["model_id"],
                        set_name=item["set_name"],
                        mode=item["mode"],
                        split=part,
                        **stats,
                        parent_model_id=item["parent_model_id"],
                        **against_parent(stats, parent_stats),
                        n_excluded=dict(Counter(reason_category(e["reason"]) for e in excluded)),
                        excluded_reasons=dict(Counter(e["reason"] for e in excluded)),
                        source_updated=item["source_updated"],
                    ).model_dump()
                )
        return docs

    def update_targets(self, items: list[list[dict[str, Any]]]) -> None:
        """Upsert benchmark rows by benchmark_id."""
        docs = [doc for group in items for doc in group]
        if docs:
            self.benchmarks.update(docs, key="benchmark_id")
