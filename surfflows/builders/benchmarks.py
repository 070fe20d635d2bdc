"""BenchmarkBuilder: surface_errors -> benchmarks (statistics per model, set, mode, split).

Two quantities: ``gamma`` rows from slab errors and ``bulk_energy`` rows from bulk errors (the
forgetting check). A fine-tuned model's rows carry its parent's MAE on the same rows (the
parent is read from its FineTuneDoc in the JobStore outputs) and the relative change.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

from maggma.core import Builder, Store

from surfflows.builders.errors import STATE_TARGET
from surfflows.io.packaged import registered_parent
from surfflows.schemas.benchmark import BenchmarkDoc
from surfflows.stores import ensure_indexes, read_documents, replace_documents

SPLIT_PARTS = ("train", "val", "test", "all")

#: The fields of an error document the statistics read.
ERROR_FIELDS = [
    "model_id", "mode", "kind", "split", "status", "reason", "gamma_error", "gamma_only",
    "facet_family", "chemistry_class", "energy_error_per_atom", "aligned_energy_error_per_atom",
    "formation_energy_error_per_atom", "force_mae", "n_atoms",
]  # fmt: skip


class BenchmarkBuilder(Builder):
    """N, MAE, RMSE, mean signed and max error per (model, set, mode, split part, quantity).

    Gamma rows are broken down by facet family and chemistry class; excluded records are
    counted per reason. A group is rebuilt only when the error builder wrote to it (its
    ``builder_state`` document) after its benchmark, or its parent's group was.

    Changes are found from ``builder_state``, not from the errors' ``last_updated``: on
    MontyDB (no indexes) that query reads every error document, the state one per group.

    Parameters
    ----------
    surface_errors, benchmarks, outputs, state
        Stores, opened by the caller (``outputs``, the JobStore's docs store, holds the
        FineTuneDoc that names each fine-tuned model's parent; ``state`` is
        ``builder_state``, written by the error builder).
    """

    def __init__(
        self,
        surface_errors: Store,
        benchmarks: Store,
        outputs: Store,
        state: Store,
        **kwargs,
    ):
        self.surface_errors = surface_errors
        self.benchmarks = benchmarks
        self.outputs = outputs
        self.state = state
        super().__init__(
            sources=[self.surface_errors, self.outputs, self.state],
            targets=[self.benchmarks],
            **kwargs,
        )

    def connect(self) -> None:
        super().connect()
        ensure_indexes(self.benchmarks, ("benchmark_id",), unique=True)
        ensure_indexes(self.benchmarks, ("model_id", "set_name", "mode", "split"))

    def _parents(self) -> dict[str, str]:
        """model -> the model it was fine-tuned from (its FineTuneDoc, or its registration's
        parent: :func:`~surfflows.io.packaged.registered_parent`), in one query."""
        parents = {}
        for doc in read_documents(
            self.outputs,
            {"output.@class": {"$in": ["FineTuneDoc", "CheckpointDoc"]}},
            properties=[
                "output.@class",
                "output.model_id",
                "output.parent_model_id",
                "output.metadata",
                "output.sha256",
            ],
        ):
            parent = registered_parent(doc["output"])
            if parent and doc["output"].get("model_id"):
                parents.setdefault(doc["output"]["model_id"], parent)
        return parents

    def _stale_groups(self) -> tuple[list[tuple[str, str, str, str]], dict[str, str]]:
        """(model, set, mode, when its errors were written) of every group whose errors were
        written since its benchmark, and the parents of the models (see :meth:`_parents`)."""
        written = {
            (d["model_id"], d["set_name"], d["mode"]): d["written_at"]
            for d in read_documents(
                self.state,
                {"target": STATE_TARGET, "complete": True},
                properties=["model_id", "set_name", "mode", "written_at"],
            )
        }
        built = {
            (d["model_id"], d["set_name"], d["mode"]): d["source_updated"]
            for d in read_documents(
                self.benchmarks,
                {"split": "all"},
                properties=["model_id", "set_name", "mode", "source_updated"],
            )
        }
        stale = {g for g, stamp in written.items() if built.get(g, "") < stamp}
        if not stale:
            return [], {}
        parents = self._parents()
        # a fine-tuned model's rows carry its parent's MAE: rebuilt when the parent's are
        stale |= {g for g in written if (parents.get(g[0]), g[1], g[2]) in stale}
        return [(*g, written[g]) for g in sorted(stale)], parents

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Groups (model, set, mode) whose errors changed since their benchmark, with their
        errors and their parent's, read in one query for all of them.

        ``total`` (read by maggma's runners) is set to their number first.
        """
        stale, parent_of = self._stale_groups()
        self.total = len(stale)
        if not stale:
            return
        parents = {g[0]: parent_of.get(g[0]) for g in stale}
        wanted = {(m, s, mode) for m, s, mode, _ in stale}
        wanted |= {(parents[m], s, mode) for m, s, mode, _ in stale if parents[m]}
        errors: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
        for doc in read_documents(
            self.surface_errors,
            {"set_name": {"$in": sorted({g[1] for g in stale})}},
            properties=[*ERROR_FIELDS, "set_name"],
        ):
            group = (doc["model_id"], doc["set_name"], doc["mode"])
            if group in wanted:
                errors[group].append(doc)
        for model_id, set_name, mode, updated in stale:
            parent = parents[model_id]
            yield {
                "model_id": model_id,
                "set_name": set_name,
                "mode": mode,
                "source_updated": updated,
                "errors": errors[(model_id, set_name, mode)],
                "parent_model_id": parent,
                "parent_errors": errors[(parent, set_name, mode)] if parent else [],
            }

    def process_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """One BenchmarkDoc per split part (and ``all``) and quantity present."""
        # the statistics' module imports pymatgen: only when there is work
        from surfflows.core.benchmark import (
            against_parent,
            bulk_summary,
            reason_category,
            summarize,
        )

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
        """Replace benchmark rows by benchmark_id, in one bulk write."""
        replace_documents(
            self.benchmarks, [doc for group in items for doc in group], "benchmark_id"
        )
