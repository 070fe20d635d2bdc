"""BenchmarkBuilder: surface_errors -> benchmarks (statistics per model, set, mode, split)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from maggma.core import Builder, Store

from surfflows.core.benchmark import reason_category, summarize
from surfflows.schemas.benchmark import BenchmarkDoc
from surfflows.stores import get_store

SPLIT_PARTS = ("train", "val", "test", "all")


class BenchmarkBuilder(Builder):
    """N, MAE, RMSE, mean signed and max error per (model, set, mode, split part).

    Broken down by facet family and chemistry class; excluded slabs are counted per
    reason. A group is rebuilt only when one of its surface errors is newer than its
    benchmark.

    Parameters
    ----------
    surface_errors, benchmarks
        Stores; default: the configured database's stores of these names.
    """

    def __init__(
        self, surface_errors: Store | None = None, benchmarks: Store | None = None, **kwargs
    ):
        self.surface_errors = surface_errors or get_store("surface_errors")
        self.benchmarks = benchmarks or get_store("benchmarks")
        super().__init__(sources=[self.surface_errors], targets=[self.benchmarks], **kwargs)

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Groups (model, set, mode) whose errors changed since their benchmark."""
        newest: dict[tuple[str, str, str], str] = {}
        for doc in self.surface_errors.query(
            {}, properties=["model_id", "set_name", "mode", "last_updated"]
        ):
            key = (doc["model_id"], doc["set_name"], doc["mode"])
            newest[key] = max(newest.get(key, ""), doc["last_updated"])
        for (model_id, set_name, mode), updated in sorted(newest.items()):
            built = self.benchmarks.query_one(
                {"model_id": model_id, "set_name": set_name, "mode": mode, "split": "all"},
                properties=["source_updated"],
            )
            if built and built["source_updated"] >= updated:
                continue
            criteria = {"model_id": model_id, "set_name": set_name, "mode": mode}
            yield {
                "model_id": model_id,
                "set_name": set_name,
                "mode": mode,
                "source_updated": updated,
                "errors": list(self.surface_errors.query(criteria)),
            }

    def process_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """One BenchmarkDoc per split part (and ``all``)."""
        docs = []
        for part in SPLIT_PARTS:
            rows = [e for e in item["errors"] if part == "all" or e["split"] == part]
            if not rows:
                continue
            ok = [e for e in rows if e["status"] == "ok"]
            excluded = [e for e in rows if e["status"] != "ok"]

            def by(field: str, ok: list[dict] = ok) -> dict[str, dict]:
                groups = sorted({e[field] for e in ok})
                return {g: summarize(e["gamma_error"] for e in ok if e[field] == g) for g in groups}

            docs.append(
                BenchmarkDoc(
                    benchmark_id=f"{item['model_id']}|{item['set_name']}|{item['mode']}|{part}",
                    model_id=item["model_id"],
                    set_name=item["set_name"],
                    mode=item["mode"],
                    split=part,
                    **summarize(e["gamma_error"] for e in ok),
                    by_facet_family=by("facet_family"),
                    by_chemistry_class=by("chemistry_class"),
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
