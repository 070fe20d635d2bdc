"""Fine-tuning recipes compared on the same data: the recipe rows, a plan, and its runner.

A :class:`Recipe` is one row of a recipe table (training sets and
:class:`~surfflows.schemas.finetune.FineTuneSettings` overrides on :data:`BASE_SETTINGS`); a
:class:`Plan` names the recipes, seeds and subsets of one run; :class:`Runner` fine-tunes
every (recipe, seed) with :class:`~surfflows.jobs.finetune.FineTuneMaker`, evaluates each
checkpoint and the parent with :class:`~surfflows.flows.evaluate.EvaluateMaker` in both
modes, checks bulk forgetting (:func:`~surfflows.jobs.finetune.bulk_forgetting`), and
collects one row of figures per model from the builders' stores. Every step skips what the
stores hold, so a rerun resumes. ``benchmarks/finetune_recipes.py`` holds the recipe table
and the figures.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NamedTuple

from jobflow import JobStore, run_locally
from maggma.core import Store
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from surfflows.core.benchmark import gamma_stats, paired_gap, relative_change, step_stats
from surfflows.core.heads import head_for
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.inputs import reference_inputs, reference_items, require_ingested, slab_keys
from surfflows.io.registry import checkpoint_reference
from surfflows.jobs.finetune import (
    FineTuneMaker,
    bulk_forgetting,
    default_work_dir,
    training_sets_name,
)
from surfflows.schemas.finetune import FineTuneSettings
from surfflows.schemas.models import ModelSpec

#: Test sets: name -> split parts evaluated (None: every part, a set never trained on).
TEST_SETS: dict[str, tuple[str, ...] | None] = {
    "jarvis_surfaces": ("test",),
    "mp_elemental_surfaces": ("test",),
    "pbe_metal_surfaces": None,
}
#: Bulk set evaluated at single points (every part), reported on its test part.
WBM_SET = "wbm_bulks"
#: Bulk sets of :func:`bulk_forgetting` (energies aligned on the set itself, forces).
FORGETTING_SETS = ("bo2_bulk_eos",)
MODES = ("single_point", "relaxed")
#: FineTuneDoc fields read here (not the checkpoint bytes).
FINETUNE_FIELDS = (
    "model_id", "model", "set_name", "hyperparameters", "history", "best_epoch",
    "mean_epoch_seconds", "wall_seconds", "trainable_parameters", "n_train", "heads",
)  # fmt: skip
#: Settings every recipe shares. ``zero_force_labels`` makes every fine-tune record the val
#: force norm at DFT minima; without a force weight it changes no gradient.
BASE_SETTINGS: dict[str, Any] = {"depth": 4, "zero_force_labels": True}


class Recipe(BaseModel):
    """One row of the recipe table: what is trained on and how.

    ``settings`` are :class:`FineTuneSettings` overrides on top of :data:`BASE_SETTINGS`
    (``heads``, ``replay_sets`` and the like are settings too); ``sets`` the reference sets
    trained on (several: one head per level of theory, the default head evaluated), the
    first one giving the val part of the proxy. A recipe whose settings give ``epochs``
    runs at most that many, whatever the plan's epochs (the plan's when fewer).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sets: tuple[str, ...] = Field(default=("jarvis_surfaces",), min_length=1)
    settings: dict[str, Any] = Field(default_factory=dict)
    note: str = Field(default="", description="What the recipe is, for the JSON.")

    @field_validator("settings")
    @classmethod
    def _known_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        if "seed" in value:
            raise ValueError("a recipe may not set 'seed': seeds come from --seeds")
        unknown = sorted(set(value) - set(FineTuneSettings.model_fields))
        if unknown:
            raise ValueError(f"unknown FineTuneSettings fields {unknown}")
        FineTuneSettings(**{**BASE_SETTINGS, **value})  # every value valid
        return value

    def finetune_settings(self, seed: int, **overrides: Any) -> FineTuneSettings:
        """Base settings, the recipe's, ``overrides`` (e.g. ``epochs`` of ``--quick``), seed.

        The recipe's own ``epochs`` cap the overriding ones.
        """
        if "epochs" in self.settings and "epochs" in overrides:
            overrides = {**overrides, "epochs": min(overrides["epochs"], self.settings["epochs"])}
        return FineTuneSettings(**{**BASE_SETTINGS, **self.settings, **overrides, "seed": seed})


def validate_recipes(recipes: dict[str, Any]) -> dict[str, Recipe]:
    """A recipe table (name -> Recipe or its mapping), each validated, errors naming the recipe."""
    out = {}
    for name, recipe in recipes.items():
        try:
            out[name] = recipe if isinstance(recipe, Recipe) else Recipe.model_validate(recipe)
        except ValueError as exc:
            raise ValueError(f"recipe {name!r}: {exc}") from exc
    return out


class Plan(BaseModel):
    """What one run trains and evaluates (stored in the JSON)."""

    recipes: dict[str, Recipe]
    seeds: list[int]
    epochs: int | None = Field(description="Epochs of every fine-tune (None: the settings').")
    max_train_slabs: int | None = Field(description="Training slabs per fine-tune (None: all).")
    max_relaxed_slabs: int | None = Field(description="Relaxed slabs per set and part.")
    test_sets: dict[str, tuple[str, ...] | None] = Field(default_factory=lambda: dict(TEST_SETS))
    wbm_set: str | None = WBM_SET
    forgetting_sets: tuple[str, ...] = FORGETTING_SETS
    sweep: str = Field(default="finetune_recipes", description="Prefix of the sweep names.")

    @model_validator(mode="after")
    def _forgetting_sets_unseen(self) -> Plan:
        trained = {n for r in self.recipes.values() for n in r.sets}
        trained |= {n for r in self.recipes.values() for n in r.settings.get("replay_sets", [])}
        seen = sorted(trained & set(self.forgetting_sets))
        if seen:
            raise ValueError(f"forgetting sets {seen} are trained on by a recipe")
        return self

    def overrides(self) -> dict[str, Any]:
        return {} if self.epochs is None else {"epochs": self.epochs}

    @property
    def proxy_sets(self) -> list[str]:
        """Training sets whose val part is evaluated for the proxy."""
        return sorted({r.sets[0] for r in self.recipes.values()})


class Model(NamedTuple):
    """A model as evaluated here: a label, its ModelSpec (a multi-head checkpoint's default
    head) and the heads of a multi-head checkpoint (else empty)."""

    label: str
    spec: Any
    heads: tuple[str, ...] = ()


def evaluation_spec(model: Model, level_of_theory: str) -> Any:
    """The spec a set of this level of theory is evaluated with: a multi-head checkpoint's
    head of it (:func:`~surfflows.core.heads.head_for`, else its default head); any other
    model as it is."""
    if not model.heads:
        return model.spec
    head = head_for(level_of_theory, model.heads, model.spec.head)
    return model.spec.model_copy(update={"head": head})


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


class Runner:
    """Runs a :class:`Plan` on the stores given; every step skips what is stored.

    Parameters
    ----------
    plan
        What is trained and evaluated.
    runs_dir
        Folder of the fine-tunes' work folders.
    parent
        The model every recipe fine-tunes.
    store
        The JobStore (fine-tune, evaluation and forgetting documents).
    references, splits
        The stores of the reference documents and their splits (read once, here).
    surface_errors, benchmarks
        The builders' output stores (read by :meth:`model_row`; run the builders first).
    """

    def __init__(
        self,
        plan: Plan,
        runs_dir: Path,
        parent: ModelSpec,
        store: JobStore,
        references: Store,
        splits: Store,
        surface_errors: Store,
        benchmarks: Store,
    ):
        self.plan = plan
        self.runs_dir = runs_dir
        self.parent = parent
        self.store = store
        self.surface_errors = surface_errors
        self.benchmarks = benchmarks
        self.inputs: dict[str, Any] = {}
        self.replay_inputs: dict[str, Any] = {}
        training = {n for r in plan.recipes.values() for n in r.sets}
        replay = {n for r in plan.recipes.values() for n in r.settings.get("replay_sets", [])}
        evaluated = {*plan.test_sets, *training} | ({plan.wbm_set} if plan.wbm_set else set())
        names = evaluated | replay | set(plan.forgetting_sets)
        with references, splits:
            require_ingested(sorted(names), references)
            for name in sorted(evaluated):
                types = ("slab", "bulk", "frame") if name in training else ("slab", "bulk")
                self.inputs[name] = reference_inputs(name, references, splits, types)
            for name in sorted(replay):
                self.replay_inputs[name] = reference_inputs(name, references, splits, ("bulk",))
            for name in plan.forgetting_sets:
                self.inputs[name] = reference_inputs(name, references, None, ("bulk",))
        self.levels = {n: i.docs[0].level_of_theory for n, i in self.inputs.items()}

    def spec_for(self, model: Model, set_name: str) -> Any:
        """The spec a set is evaluated with (:func:`evaluation_spec`)."""
        return evaluation_spec(model, self.levels[set_name])

    # -- fine-tunes

    def sweep_name(self, recipe: str) -> str:
        return f"{self.plan.sweep}/{recipe}"

    def training_inputs(self, recipe: Recipe) -> Any:
        """The recipe's training set inputs: one ReferenceInputs, or a list of several."""
        inputs = [self.inputs[n] for n in recipe.sets]
        return inputs[0] if len(inputs) == 1 else inputs

    def train_slab_keys(self, recipe: Recipe) -> list[str] | None:
        """At most ``max_train_slabs`` train slabs of each training set (None: all)."""
        if self.plan.max_train_slabs is None:
            return None
        return [
            key
            for name in recipe.sets
            for key in slab_keys(self.inputs[name], ("train",), self.plan.max_train_slabs)
        ]

    def stored_finetune(self, name: str, settings: FineTuneSettings) -> dict | None:
        """The newest stored fine-tune document of this recipe with exactly these settings."""
        criteria = {"output.@class": "FineTuneDoc", "output.sweep": self.sweep_name(name)}
        properties = [f"output.{k}" for k in FINETUNE_FIELDS] + ["completed_at"]
        with self.store:
            docs = sorted(
                self.store.docs_store.query(criteria, properties=properties),
                key=lambda d: d["completed_at"],
            )
        for doc in reversed(docs):
            if FineTuneSettings.model_validate(doc["output"]["hyperparameters"]) == settings:
                return doc["output"]
        return None

    def train(self) -> list[dict]:
        """Every (recipe, seed) fine-tune, trained where not stored; their documents."""
        docs = []
        jobs = [(n, r, s) for n, r in self.plan.recipes.items() for s in self.plan.seeds]
        for k, (name, recipe, seed) in enumerate(jobs, 1):
            settings = recipe.finetune_settings(seed, **self.plan.overrides())
            doc = self.stored_finetune(name, settings)
            if doc is None:
                inputs = self.training_inputs(recipe)
                keys = self.train_slab_keys(recipe)
                name_of_sets = training_sets_name(inputs)
                folder = default_work_dir(name_of_sets, self.parent, settings, keys).name
                work_dir = self.runs_dir / f"{name.replace('+', '_')}_{folder}"
                _log(f"[train {k}/{len(jobs)}] {name} seed {seed} in {work_dir}")
                maker = FineTuneMaker(
                    parent=self.parent,
                    settings=settings,
                    work_dir=str(work_dir),
                    sweep=self.sweep_name(name),
                )
                replay = [self.replay_inputs[n] for n in settings.replay_sets]
                run_locally(
                    maker.make(inputs, slab_keys=keys, replay_sets=replay),
                    store=self.store,
                    log=False,
                    ensure_success=True,
                )
                doc = self.stored_finetune(name, settings)
            else:
                _log(f"[train {k}/{len(jobs)}] {name} seed {seed}: stored {doc['model_id']}")
            docs.append({"recipe": name, "seed": seed, **doc})
        return docs

    def stored_finetunes(self) -> list[dict]:
        """The stored fine-tune documents of every (recipe, seed) of the plan (collect only)."""
        docs = []
        for name, recipe in self.plan.recipes.items():
            for seed in self.plan.seeds:
                settings = recipe.finetune_settings(seed, **self.plan.overrides())
                doc = self.stored_finetune(name, settings)
                if doc is not None:
                    docs.append({"recipe": name, "seed": seed, **doc})
        return docs

    # -- evaluations

    def tasks(self) -> list[tuple[str, str, tuple[str, ...] | None, list[str] | None]]:
        """(set, mode, parts, slab keys or None for every structure of the parts)."""
        out = []
        for mode in MODES:
            sets = [*((n, p) for n, p in self.plan.test_sets.items())]
            sets += [(n, ("val",)) for n in self.plan.proxy_sets]
            for name, parts in sets:
                keys = None
                if mode == "relaxed":
                    keys = slab_keys(self.inputs[name], parts, self.plan.max_relaxed_slabs)
                out.append((name, mode, parts, keys))
            if mode == "single_point" and self.plan.wbm_set:
                out.append((self.plan.wbm_set, mode, None, None))
        return out

    def evaluated(self, model_id: str, set_name: str, mode: str) -> set[str]:
        """Reference keys with a stored result of this model and mode (failures included)."""
        criteria = {
            "output.@class": "EvaluationDoc",
            "output.model_id": model_id,
            "output.set_name": set_name,
            "output.mode": mode,
        }
        with self.store:
            docs = self.store.docs_store.query(criteria, properties=["output.results"])
            return {r["reference_key"] for d in docs for r in d["output"]["results"]}

    def evaluate(self, models: list[Model]) -> None:
        """Every task for every model (single points first), missing structures only."""
        tasks = [(t, m) for t in self.tasks() for m in models]
        for k, ((name, mode, parts, keys), model) in enumerate(tasks, 1):
            spec = self.spec_for(model, name)
            label = model.label + (f" @{spec.head}" if model.heads else "")
            items = reference_items(self.inputs[name], parts, keys)
            done = self.evaluated(spec.model_id, name, mode)
            items = [i for i in items if i[0] not in done]
            head = (
                f"[evaluate {k}/{len(tasks)}] {label} {name} {'/'.join(parts or ('all',))} {mode}"
            )
            if not items:
                _log(f"{head}: stored")
                continue
            _log(f"{head}: {len(items)} structures")
            maker = EvaluateMaker(
                model=spec, modes=(mode,), chunk_size=128 if mode == "single_point" else 24
            )
            flow = maker.make(name, items, checkpoint_reference(spec, self.store))
            start = time.perf_counter()
            run_locally(
                flow,
                store=self.store,
                log=False,
                ensure_success=True,
                allow_external_references=True,
            )
            _log(f"{head}: done in {time.perf_counter() - start:.0f} s")

    def forgetting(self, models: list[Model], recipes: dict[str, str]) -> None:
        """:func:`bulk_forgetting` of every checkpoint (``recipes``: model id -> recipe) not
        yet checked against the parent."""
        bulk_sets = [self.inputs[n] for n in self.plan.forgetting_sets]
        for k, (label, spec, _) in enumerate(models, 1):
            if spec.model_id == self.parent.model_id or not bulk_sets:
                continue
            head = f"[forgetting {k}/{len(models)}] {label}"
            if self.forgetting_doc(spec.model_id) is not None:
                _log(f"{head}: stored")
                continue
            _log(head)
            references = self.training_inputs(self.plan.recipes[recipes[spec.model_id]])
            check = bulk_forgetting(
                spec, self.parent, references, bulk_sets, checkpoint_reference(spec, self.store)
            )
            run_locally(
                check,
                store=self.store,
                log=False,
                ensure_success=True,
                allow_external_references=True,
            )

    def forgetting_doc(self, model_id: str) -> dict | None:
        with self.store:
            doc = self.store.docs_store.query_one(
                {
                    "output.@class": "ForgettingDoc",
                    "output.model_id": model_id,
                    "output.parent_model_id": self.parent.model_id,
                },
                sort={"completed_at": -1},
            )
        if doc is None:
            return None
        names = {s["name"] for s in doc["output"]["sets"]}
        return doc["output"] if set(self.plan.forgetting_sets) <= names else None

    # -- collection

    def model_row(self, model: Model, finetune: dict | None) -> dict[str, Any]:
        """Every figure of one model (``finetune``: its FineTuneDoc; None for the parent),
        each set's from the spec it is evaluated with (:meth:`spec_for`)."""
        model_id = model.spec.model_id
        ids = {name: self.spec_for(model, name).model_id for name in self.inputs}
        criteria = {"model_id": {"$in": sorted(set(ids.values()))}}
        errors: dict[tuple[str, str], list[dict]] = {}
        with self.surface_errors as surface_errors:
            for e in surface_errors.query(criteria):
                if e.get("kind", "slab") == "slab" and e["model_id"] == ids.get(e["set_name"]):
                    errors.setdefault((e["set_name"], e["mode"]), []).append(e)
        # newest relaxed result per slab: steps and whether it converged
        steps: dict[str, dict[str, int | None]] = {}
        converged: dict[str, dict[str, bool]] = {}
        criteria = {
            "output.@class": "EvaluationDoc",
            "output.model_id": {"$in": sorted(set(ids.values()))},
            "output.mode": "relaxed",
        }
        properties = ["output.set_name", "output.model_id", "output.results", "completed_at"]
        with self.store:
            evaluations = list(self.store.docs_store.query(criteria, properties=properties))
        for doc in sorted(evaluations, key=lambda d: d["completed_at"]):
            name = doc["output"]["set_name"]
            if doc["output"]["model_id"] != ids.get(name):
                continue
            for r in doc["output"]["results"]:
                steps.setdefault(name, {})[r["reference_key"]] = r.get("n_steps")
                converged.setdefault(name, {})[r["reference_key"]] = r["converged"]
        row: dict[str, Any] = {"model_id": model_id}
        for section in ("test", "val", "gap", "steps", "unconverged"):
            row[section] = {} if section in ("test", "val") else {"test": {}, "val": {}}
        test_steps: list[int | None] = []
        for name, mode, parts, keys in self.tasks():
            if name == self.plan.wbm_set:
                continue
            group = "val" if parts == ("val",) else "test"
            planned = slab_keys(self.inputs[name], parts) if keys is None else keys
            stats = gamma_stats(errors.get((name, mode), []), planned)
            row[group].setdefault(name, {})[mode] = stats
            if mode != "relaxed":
                continue
            sp, rx = (errors.get((name, m), []) for m in MODES)
            row["gap"][group][name] = paired_gap(sp, rx, keys)
            slab_steps = [steps.get(name, {}).get(k) for k in keys]
            row["steps"][group][name] = step_stats(slab_steps)
            status = converged.get(name, {})
            row["unconverged"][group][name] = sum(status.get(k) is False for k in keys)
            test_steps += slab_steps if group == "test" else []
        row["steps"]["test_all"] = step_stats(test_steps)
        row["forgetting"] = self.forgetting_row(model_id, ids.get(self.plan.wbm_set))
        if finetune is not None:
            history = finetune["history"]
            best = history[finetune["best_epoch"]]
            row["training"] = {
                "best_epoch": finetune["best_epoch"],
                "epochs_run": len(history) - 1,
                "epoch_s": finetune["mean_epoch_seconds"],
                "wall_s": finetune["wall_seconds"],
                "val_gamma_mae": best["val_gamma_mae"],
                "val_force_mae": best["val_force_mae"],
                "trainable_parameters": finetune["trainable_parameters"],
            }
        return row

    def forgetting_row(self, model_id: str, wbm_model_id: str | None) -> dict[str, Any]:
        """wbm test part (benchmark rows of ``wbm_model_id``, the spec wbm is evaluated with)
        and the ForgettingDoc sets (checkpoints only: the parent's figures are on each
        checkpoint's), eV/atom and eV/Å."""
        out: dict[str, Any] = {}
        if self.plan.wbm_set:
            criteria = {
                "set_name": self.plan.wbm_set,
                "mode": "single_point",
                "split": "test",
                "quantity": "bulk_energy",
            }
            with self.benchmarks as benchmarks:
                mine, parent = (
                    benchmarks.query_one({**criteria, "model_id": m}) or {}
                    for m in (wbm_model_id, self.parent.model_id)
                )
            if mine:
                out[f"{self.plan.wbm_set}:test"] = {
                    "n": mine["n"],
                    "mae": mine["mae"],
                    "parent_mae": parent.get("mae"),
                    "relative_change": relative_change(mine["mae"], parent.get("mae")),
                }
        doc = None if model_id == self.parent.model_id else self.forgetting_doc(model_id)
        for s in doc["sets"] if doc else []:
            out[s["name"]] = {
                "n": s["n_structures"],
                "mae": s["mae_per_atom"],
                "parent_mae": s["parent_mae_per_atom"],
                "relative_change": s["relative_change"],
                "force_mae": s["force_mae"],
                "parent_force_mae": s["parent_force_mae"],
                "force_relative_change": relative_change(s["force_mae"], s["parent_force_mae"]),
            }
        return out
