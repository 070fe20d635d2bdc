"""SurfaceEnergyErrorBuilder: model evaluations + references -> surface_errors.

One error document per reference slab (gamma) and per reference bulk (aligned energy per
atom, forces where labelled) of every evaluated (model, set, mode).

Incremental by what changed: one projected query of each source (evaluation and reference
keys and time stamps) is compared with the small ``builder_state`` document of each
group; only new evaluations and new references are processed, and only their error
documents are written. A bulk's alignment is fitted on the group's other bulks: where
bulks are only added and the fit on all of them moves no offset by more than
``ALIGNMENT_TOLERANCE_EV`` (0.1 meV/atom), the stored offsets stay (recorded in the group's
state) and only the new bulks are written; else every bulk error of the group is refitted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from maggma.core import Builder, Store

from surfflows.core.timestamps import now_iso
from surfflows.io.splits import split_of_materials
from surfflows.schemas.benchmark import SurfaceErrorDoc
from surfflows.stores import (
    ensure_indexes,
    insert_new_documents,
    is_embedded,
    prepare_removal,
    read_documents,
    remove_prepared,
    source_marks,
    unchanged_since,
)

EVALUATION_CLASS = {"output.@class": "EvaluationDoc"}

#: ``target`` of this builder's documents in the ``builder_state`` store.
STATE_TARGET = "surface_errors"
#: ``state_id`` of the document recording what the sources held when the last complete
#: build started.
SOURCES_STATE_ID = f"{STATE_TARGET}|sources"
#: Each source store and the time stamp its writes set.
SOURCE_STAMPS = (("outputs", "completed_at"), ("references", "ingested_at"))

Group = tuple[str, str, str]  # (model_id, set_name, mode)


def state_id(target: str, group: Group) -> str:
    """Key of a group's document in ``builder_state``."""
    return "|".join((target, *group))


@dataclass
class _Plan:
    """What a stale group needs: everything (``full``) or the evaluations and references
    newer than its state."""

    group: Group
    completed: str
    refs_updated: str
    elemental_stamps: tuple[str, str] | None
    full: bool
    state: dict | None
    new_evaluations: set[tuple[str, int]] = field(default_factory=set)


class SurfaceEnergyErrorBuilder(Builder):
    """Surface-energy error per reference slab, model and mode.

    Sources are the JobStore's ``outputs`` (EvaluationDoc outputs of the evaluation
    flows) and ``references``; the targets are ``surface_errors`` and, per (model,
    reference set, mode) group, a ``builder_state`` document recording the newest
    evaluation and reference ingest it was built from.

    maggma's ``GroupBuilder`` (and ``Store.newer_in``) does not fit: it rebuilds a whole
    group when one source document of it changes and finds changes by reading the target's
    time stamps, which on MontyDB (no indexes) reads every error document; here a rerun
    reads the small state store, and a group with new evaluations gets only their
    documents. maggma's runner does the rest: ``get_items`` -> ``process_item`` (the
    physics, pure) -> ``update_targets`` per chunk of ``chunk_size`` groups.

    Parameters
    ----------
    outputs, references, surface_errors, splits, state
        Stores, opened by the caller (:func:`surfflows.builders.run.campaign_builders`):
        the JobStore's docs store, the reference documents, the target, the stored
        splits (a set's split is created or extended there) and ``builder_state``.
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
        state: Store,
        elemental_set: str = "mp_elemental_refs",
        **kwargs,
    ):
        self.elemental_set = elemental_set
        self.outputs = outputs
        self.references = references
        self.surface_errors = surface_errors
        self.splits = splits
        self.state = state
        #: What the last run read and wrote (documents): ``evaluations`` and ``references``
        #: read whole, error documents ``written`` and ``replaced``; logged at the end.
        self.counts: Counter[str] = Counter()
        self._removal: dict[Group, Any] = {}
        self._sources: dict[str, list] | None = None
        # maggma's runners hold a chunk of items (a group's energies and references) and
        # their documents in memory at once: a few groups, not a whole campaign
        kwargs.setdefault("chunk_size", 8)
        super().__init__(
            sources=[self.outputs, self.references],
            targets=[self.surface_errors, self.splits, self.state],
            **kwargs,
        )

    def connect(self) -> None:
        super().connect()
        # not unique: mongomock checks a unique index by reading every document per insert
        ensure_indexes(self.surface_errors, ("error_id", "model_id", "set_name", "mode"))
        ensure_indexes(self.references, ("key", "set_name"))
        ensure_indexes(self.outputs, ("output.@class", "output.set_name", "completed_at"))
        ensure_indexes(self.references, ("ingested_at",))
        ensure_indexes(self.state, ("state_id",), unique=True)

    def finalize(self) -> None:
        if self._sources is not None:  # every group written: the sources are built
            self.state.update(
                [{"state_id": SOURCES_STATE_ID, "target": "sources", **self._sources}],
                key="state_id",
            )
        counts = ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))
        self.logger.info(f"surface errors: {self.total} groups; documents {counts or 'none'}")
        super().finalize()

    # -- what changed: one projected query per source, and the state -------------------------

    def _evaluations(self) -> dict[Group, list[tuple[str, str, int]]]:
        """(completed_at, uuid, index) of every evaluation, per group."""
        fields = ["uuid", "index", "completed_at", "output.model_id", "output.set_name"]
        groups: dict[Group, list[tuple[str, str, int]]] = defaultdict(list)
        for doc in read_documents(self.outputs, EVALUATION_CLASS, [*fields, "output.mode"]):
            out = doc["output"]
            key = (out["model_id"], out["set_name"], out["mode"])
            groups[key].append((doc["completed_at"], doc["uuid"], doc.get("index", 1)))
        return groups

    def _reference_stamps(
        self, set_names: list[str]
    ) -> tuple[dict[str, dict[str, dict]], dict[str, set[str]]]:
        """set -> key -> (doc_type, material_id, bulk_key, ingested_at) of its slabs and
        bulks, and set -> material ids of all its documents (what its split covers)."""
        fields = ["key", "set_name", "doc_type", "material_id", "bulk_key", "ingested_at"]
        stamps: dict[str, dict[str, dict]] = defaultdict(dict)
        materials: dict[str, set[str]] = defaultdict(set)
        for doc in read_documents(self.references, {"set_name": {"$in": set_names}}, fields):
            materials[doc["set_name"]].add(doc.get("material_id"))
            if doc.get("doc_type") in ("slab", "bulk"):
                stamps[doc["set_name"]][doc["key"]] = doc
        return stamps, materials

    def _source_marks(self) -> dict[str, list] | None:
        """[number of documents, newest time stamp] of each source, where the store answers
        them from its indexes; None on MontyDB, where they cost a read of every document
        (``surfflows build`` compares the database files there:
        :mod:`surfflows.builders.last_build`)."""
        if is_embedded(self.outputs) or is_embedded(self.references):
            return None
        return {name: source_marks(getattr(self, name), stamp) for name, stamp in SOURCE_STAMPS}

    def _sources_unchanged(self) -> bool:
        """The sources hold what they held when the last complete build started.

        Safe because a write to a source adds a document (an evaluation rerun adds an
        ``index``) or stamps one later than the newest stamp recorded then (a re-ingested
        reference); only a removal and an insertion of an older-stamped document together
        would go unseen, as they would by the per-group stamps.
        """
        if is_embedded(self.outputs) or is_embedded(self.references):
            return False
        stored = self.state.query_one({"state_id": SOURCES_STATE_ID})
        return stored is not None and all(
            name in stored and unchanged_since(getattr(self, name), stamp, stored[name])
            for name, stamp in SOURCE_STAMPS
        )

    def _stored_state(self) -> dict[Group, dict]:
        return {
            (d["model_id"], d["set_name"], d["mode"]): d
            for d in read_documents(self.state, {"target": STATE_TARGET})
        }

    def _plans(
        self, evaluations: dict[Group, list], refs: dict[str, dict[str, dict]]
    ) -> list[_Plan]:
        """The stale groups, sorted, and what each needs."""
        state = self._stored_state()
        # A database written before builder_state existed has errors but no state: its
        # groups are rebuilt whole (their old documents removed first).
        legacy = not state and self.surface_errors.query_one({}, properties=["error_id"])
        elemental = self.elemental_set
        newest_ref = {
            s: max((r["ingested_at"] for r in keys.values()), default="")
            for s, keys in refs.items()
        }
        plans = []
        for group in sorted(evaluations):
            model_id, set_name, mode = group
            completed = max(e[0] for e in evaluations[group])
            refs_updated = newest_ref.get(set_name, "")
            elemental_group = (model_id, elemental, mode)
            # formation energies use the same model's evaluation of the elemental set
            elemental_stamps = None
            if set_name != elemental and elemental_group in evaluations:
                elemental_stamps = (
                    max(e[0] for e in evaluations[elemental_group]),
                    newest_ref.get(elemental, ""),
                )
            stored = state.get(group)
            if stored is None or not stored.get("complete"):
                plans.append(
                    _Plan(group, completed, refs_updated, elemental_stamps, True,
                          stored or ({} if legacy else None))
                )  # fmt: skip
                continue
            stored_elemental = stored.get("elemental_stamps")
            if (
                stored["evaluations_completed_at"] >= completed
                and stored["references_updated_at"] >= refs_updated
                and (stored_elemental and tuple(stored_elemental)) == elemental_stamps
            ):
                continue
            old_refs = sum(
                r["ingested_at"] <= stored["references_updated_at"]
                for r in refs.get(set_name, {}).values()
            )
            # A reference re-ingested with new content, or removed: the group is rebuilt.
            full = old_refs != stored["n_references"]
            new = {
                (uuid, index)
                for stamp, uuid, index in evaluations[group]
                if stamp > stored["evaluations_completed_at"]
            }
            plans.append(_Plan(group, completed, refs_updated, elemental_stamps, full, stored, new))
        return plans

    # -- the work --------------------------------------------------------------------------

    def _energies(self, groups: set[Group]) -> dict[Group, tuple]:
        """Per group: reference key -> the model's energy document (newest evaluation wins),
        and the keys each evaluation (uuid, index) covers; one query for all groups."""
        docs: dict[Group, list] = defaultdict(list)
        criteria = EVALUATION_CLASS | {"output.set_name": {"$in": sorted({g[1] for g in groups})}}
        for doc in read_documents(
            self.outputs, criteria, properties=["uuid", "index", "completed_at", "output"]
        ):
            out = doc["output"]
            group = (out["model_id"], out["set_name"], out["mode"])
            if group in groups:
                stamp = (doc["completed_at"], doc["uuid"], doc.get("index", 1))
                docs[group].append((stamp, out["results"]))
                self.counts["evaluations"] += 1
        energies = {}
        for group, chunks in docs.items():
            by_key: dict[str, dict] = {}
            keys_of: dict[tuple[str, int], list[str]] = {}
            for (_, uuid, index), results in sorted(chunks, key=lambda c: c[0]):
                for result in results:
                    by_key[result["reference_key"]] = result
                keys_of[(uuid, index)] = [r["reference_key"] for r in results]
            energies[group] = (by_key, keys_of)
        return energies

    def get_items(self) -> Iterator[dict[str, Any]]:
        """Stale groups with the documents their new work needs.

        Whatever the number of groups and sets, a build reads each source twice: once
        projected (keys and time stamps: what changed) and once for the documents of the
        stale groups' new work (evaluations, then only the references that work needs);
        a set's split comes from the first read. ``total`` (read by maggma's runners) is set
        to the number of stale groups first.
        """
        self.counts.clear()
        if self._sources_unchanged():
            self._sources = None
            self.total = 0
            return
        self._sources = self._source_marks()
        if self._sources is not None:  # a build stopped part way leaves no record
            self.state.remove_docs({"state_id": SOURCES_STATE_ID})
        evaluations = self._evaluations()
        sets = sorted({set_name for _, set_name, _ in evaluations} | {self.elemental_set})
        refs, materials = self._reference_stamps(sets)
        plans = self._plans(evaluations, refs)
        self.total = len(plans)
        if not plans:
            return
        # the physics imports pymatgen (a second at every start): only when there is work
        from surfflows.core.benchmark import elemental_offsets

        elemental = self.elemental_set
        needs_elements = {(p.group[0], elemental, p.group[2]) for p in plans if p.elemental_stamps}
        energies = self._energies({p.group for p in plans} | needs_elements)
        work = [
            self._work(p, refs.get(p.group[1], {}), *energies.get(p.group, ({}, {}))) for p in plans
        ]
        needed = set().union(*(w["keys"] for w in work))
        read_sets = {p.group[1] for p in plans} | ({elemental} if needs_elements else set())
        references: dict[str, dict] = {}
        elemental_docs: list[dict] = []
        for doc in read_documents(
            self.references,
            {"set_name": {"$in": sorted(read_sets)}, "doc_type": {"$in": ["slab", "bulk"]}},
        ):
            if doc["key"] in needed:
                references[doc["key"]] = doc
            if needs_elements and doc["set_name"] == elemental and doc["doc_type"] == "bulk":
                elemental_docs.append(doc)
        self.counts["references"] = len(references)
        splits = {
            set_name: split_of_materials(set_name, materials[set_name], store=self.splits)
            for set_name in sorted({p.group[1] for p in plans})
        }
        for plan, item in zip(plans, work, strict=True):
            if item["bulks"] and not plan.full:
                self._align(plan, item, references, splits[plan.group[1]].assignments)
        # the stored documents this build replaces, found in one read of the target
        self._removal = prepare_removal(
            self.surface_errors, {p.group: w["replaced"] for p, w in zip(plans, work, strict=True)}
        )
        for plan, item in zip(plans, work, strict=True):
            model_id, set_name, mode = plan.group
            formation_offsets = None
            if plan.elemental_stamps:
                elemental_group = (model_id, elemental, mode)
                formation_offsets = elemental_offsets(
                    elemental_docs, energies.get(elemental_group, ({}, {}))[0]
                )
            self.logger.info(f"surface errors: {model_id} {set_name} {mode}")
            yield item | {
                "references": [references[k] for k in sorted(item.pop("keys")) if k in references],
                "assignments": splits[set_name].assignments,
                "formation_offsets": formation_offsets,
            }

    def _align(
        self, plan: _Plan, item: dict[str, Any], references: dict[str, dict], assignments: dict
    ) -> None:
        """Decide how a group's refitted bulks are aligned: with the stored offsets, writing
        only the added bulks, where bulks were only added and the offsets fitted on all of
        them moved by at most ``ALIGNMENT_TOLERANCE_EV``; else with the new fit, every bulk
        error replaced. Sets the item's ``bulk_offsets``, ``added_bulks`` and ``replaced``."""
        from surfflows.core.benchmark import (
            ALIGNMENT_TOLERANCE_EV,
            alignment_drift,
            alignment_offsets,
        )

        bulks = [
            references[k]
            for k in sorted(item["keys"])
            if k in references and references[k]["doc_type"] == "bulk"
        ]
        fitted = alignment_offsets(bulks, item["energies"], assignments)
        stored, added = item["bulk_offsets"], item["added_bulks"]
        drift = None if stored is None else alignment_drift(stored, fitted)
        if added is not None and drift is not None and drift <= ALIGNMENT_TOLERANCE_EV:
            self.counts["alignments kept"] += 1
            return
        model_id, set_name, mode = plan.group
        item["replaced"].append(
            {"model_id": model_id, "set_name": set_name, "mode": mode, "kind": "bulk"}
        )
        item.update(bulk_offsets=fitted, added_bulks=None)

    def _work(
        self,
        plan: _Plan,
        refs: dict[str, dict],
        energies: dict[str, dict],
        keys_of: dict[tuple[str, int], list[str]],
    ) -> dict[str, Any]:
        """The references (keys) a stale group's new work reads, and what it replaces."""
        model_id, set_name, mode = plan.group
        slabs = [k for k, r in refs.items() if r["doc_type"] == "slab"]
        bulks = [k for k, r in refs.items() if r["doc_type"] == "bulk"]
        item: dict[str, Any] = {
            "model_id": model_id,
            "set_name": set_name,
            "mode": mode,
            "source_completed_at": plan.completed,
            "references_updated_at": plan.refs_updated,
            "elemental_stamps": plan.elemental_stamps,
            "n_references": len(refs),
        }
        group = {"model_id": model_id, "set_name": set_name, "mode": mode}
        if plan.full:
            # a group rebuilt over documents of an earlier build (interrupted, or its
            # references changed) replaces all of them
            replaced = [group] if plan.state is not None else []
            return item | {
                "keys": set(refs),
                "energies": energies,
                "bulks": True,
                "replaced": replaced,
                "added_bulks": None,
                "bulk_offsets": None,
            }
        stamp = plan.state["references_updated_at"]
        new_refs = {k for k, r in refs.items() if r["ingested_at"] > stamp}
        evaluated = {k for uuid_index in plan.new_evaluations for k in keys_of.get(uuid_index, ())}
        changed = new_refs | evaluated
        slab_keys = {k for k in slabs if k in changed or refs[k].get("bulk_key") in changed}
        elemental_changed = plan.elemental_stamps != (
            plan.state.get("elemental_stamps") and tuple(plan.state["elemental_stamps"])
        )
        changed_bulks = changed & set(bulks)
        redo_bulks = bool(changed_bulks) or elemental_changed
        keys = slab_keys | {refs[k]["bulk_key"] for k in slab_keys if refs[k].get("bulk_key")}
        if redo_bulks:
            keys |= set(bulks)
        # documents written by an earlier build that are replaced now: re-evaluated slabs
        # (and every bulk where the bulks are refitted: added in get_items)
        evaluated_again = sorted(f"{model_id}|{mode}|{k}" for k in slab_keys if k not in new_refs)
        replaced = [{"error_id": {"$in": evaluated_again}}] if evaluated_again else []
        # Bulks only added (new, or evaluated for the first time), the elemental energies
        # as they were: the stored alignment may stay, and only the new bulks be written.
        old_evaluated = {
            k
            for uuid_index, covered in keys_of.items()
            if uuid_index not in plan.new_evaluations
            for k in covered
        }
        only_added = (
            redo_bulks
            and not elemental_changed
            and not changed_bulks & old_evaluated
            and plan.state.get("bulk_offsets") is not None
        )
        return item | {
            "keys": keys,
            "energies": {k: energies[k] for k in keys if k in energies},
            "bulks": redo_bulks,
            "slab_keys": slab_keys,
            "replaced": replaced,
            "added_bulks": changed_bulks if only_added else None,
            "bulk_offsets": plan.state.get("bulk_offsets"),
        }

    def process_item(self, item: dict[str, Any]) -> dict[str, Any]:
        """SurfaceErrorDocs of the group's new work: one per reference slab it changed and,
        where bulks changed, one per evaluated reference bulk."""
        from surfflows.core.benchmark import (
            alignment_offsets,
            bulk_energy_errors,
            chemistry_class,
            facet_family,
            slab_surface_error,
        )

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

        slab_keys = item.get("slab_keys")
        docs = []
        for ref in refs.values():
            if ref["doc_type"] != "slab" or (slab_keys is not None and ref["key"] not in slab_keys):
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
        offsets = item.get("bulk_offsets")
        if item["bulks"]:
            # Bulks the evaluation covered (a slab set's bulks and a bulk-only set's alike).
            bulks = [r for r in refs.values() if r["doc_type"] == "bulk" and r["key"] in energies]
            if offsets is None:
                offsets = alignment_offsets(bulks, energies, item["assignments"])
            added = item.get("added_bulks")
            if added is not None:  # the stored alignment kept: only the added bulks written
                bulks = [r for r in bulks if r["key"] in added]
            bulk_errors = bulk_energy_errors(
                bulks, energies, item["assignments"], item.get("formation_offsets"), offsets
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
        group = (item["model_id"], item["set_name"], item["mode"])
        state = {
            "model_id": item["model_id"],
            "set_name": item["set_name"],
            "mode": item["mode"],
            "state_id": state_id(STATE_TARGET, group),
            "target": STATE_TARGET,
            "evaluations_completed_at": item["source_completed_at"],
            "references_updated_at": item["references_updated_at"],
            "elemental_stamps": item["elemental_stamps"],
            "n_references": item["n_references"],
            # what the stored bulk errors are aligned with (part -> element -> eV/atom)
            "bulk_offsets": offsets,
        }
        return {
            "docs": docs,
            "state": state,
            "group": group,
        }

    def update_targets(self, items: list[dict[str, Any]]) -> None:
        """Write the new error documents of all groups of a chunk in bulk, state last.

        Each group's state is first marked incomplete: a build stopped (or failing, e.g.
        on a full disk) before its state is marked complete again leaves the group to be
        rebuilt whole by the next build, whatever it had written.
        """
        if not items:
            return
        self.state.update([{**item["state"], "complete": False} for item in items], key="state_id")
        replaced = remove_prepared(
            self.surface_errors,
            [self._removal[item["group"]] for item in items if item["group"] in self._removal],
        )
        docs = [d for item in items for d in item["docs"]]
        # plain already: SurfaceErrorDoc.model_dump
        insert_new_documents(self.surface_errors, docs, key="error_id", sanitize=False)
        self.counts.update(written=len(docs), replaced=replaced)
        written = now_iso()
        self.state.update(
            [{**item["state"], "complete": True, "written_at": written} for item in items],
            key="state_id",
        )
