"""Fine-tuning recipes compared: test gamma in both modes, forgetting, steps, epoch time.

Every recipe of :data:`RECIPES` is trained for every seed through the package's own
:class:`~surfflows.jobs.finetune.FineTuneMaker`. Each checkpoint and the parent (CHGNet
0.3.0) are then evaluated by :class:`~surfflows.flows.evaluate.EvaluateMaker` and the
builders, all in one scratch embedded database:

* gamma of the test part of ``jarvis_surfaces`` and ``mp_elemental_surfaces`` and of all of
  ``pbe_metal_surfaces`` (never trained on), single point and relaxed (ions relaxed by the
  model in the DFT cell); a multi-head checkpoint evaluates each set with the head of
  the set's level of theory (its default head where it has none), so the ``heads`` recipe's
  jarvis figures are its OptB88vdW head's and the others its PBE head's;
* forgetting on unseen bulks: ``wbm_bulks`` test part (single points of every part; the
  builders align the test part on the other parts, per model) and ``bo2_bulk_eos``
  (:func:`~surfflows.jobs.finetune.bulk_forgetting`: energies aligned on the set itself,
  forces), next to the parent's;
* relaxation steps per slab (median, mean) next to the parent's on the same slabs;
* from the fine-tune document: mean epoch time, best epoch, val gamma and val force MAE at
  the kept epoch;
* the relaxed-mode proxy: the val part of the training set, single point and relaxed. The
  fine-tune keeps the epoch with the lowest single-point val gamma MAE; the val force norm
  at DFT minima (``val_force_mae`` with ``zero_force_labels``, recorded by every recipe) is
  the candidate cheap proxy for relaxed-mode gamma. Over all checkpoints and the parent,
  its Pearson and Spearman correlation with (relaxed - single point) val and test gamma
  MAE is reported with N.

Everything is resumable: a rerun (same ``--db-dir``) skips fine-tunes whose document is
stored with the same settings, and evaluates only structures without a stored result;
an interrupted fine-tune resumes from its ``last.pth.tar``. Outputs:

* ``results/finetune_recipes.json`` (``finetune_recipes_quick.json`` with ``--quick``):
  per recipe and seed, mean ± std over seeds, the proxy correlations, the run's settings;
* ``results/finetune_recipes.png``: test MAE per set and mode per recipe (error bars: std
  over seeds), forgetting, relaxation steps;
* ``results/finetune_recipes_proxy.png``: val force norm against the relaxed - single point
  gamma gap, one point per checkpoint.

Examples
--------
::

    python benchmarks/finetune_recipes.py                     # 3 seeds, every recipe
    python benchmarks/finetune_recipes.py --quick             # 1 seed, 2 epochs, subsets
    python benchmarks/finetune_recipes.py --recipes default replay --seeds 0 1
    python benchmarks/finetune_recipes.py --collect-only      # tables and plots again
    python benchmarks/finetune_recipes.py --cv-folds 5 --recipes pbe pbe+bulk_replay --epochs 6

With ``--cv-folds K`` the recipes (one training set each) are compared by element-wise
K-fold cross-validation instead (:class:`~surfflows.flows.cross_validation.CrossValidationMaker`,
the same as ``surfflows finetune --cv-folds K``): per fold the held-out gamma in both modes,
the mean ± std over folds, per element, and the epoch count chosen from the folds, in
``results/finetune_recipes_cv.json`` (entries of recipes not in this run are kept, so
recipes may run in separate databases) and ``finetune_recipes_cv.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's surfflows

from surfflows.core.benchmark import (  # noqa: E402
    aggregate,
    correlation,
    gamma_stats,
    paired_gap,
    relative_change,
    step_stats,
)
from surfflows.core.heads import head_for  # noqa: E402
from surfflows.io.inputs import slab_keys  # noqa: E402
from surfflows.schemas.finetune import FineTuneSettings  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PARENT = "chgnet-0.3.0"
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
#: What ``--quick`` changes (stated in the JSON).
QUICK = {"seeds": [0], "epochs": 2, "max_train_slabs": 60, "max_relaxed_slabs": 4}
ATTRIBUTION = (
    "Reference data: JARVIS-DFT surfaces (K. Choudhary et al., CC BY 4.0); MP elemental "
    "surfaces (R. Tran et al., Sci. Data 2016, CC BY 4.0, via SE-CGCNN, MIT); PBE metal "
    "surfaces (pymatgen test files, MIT); WBM (H.-C. Wang et al., CC BY 4.0, via matcalc); "
    "BO2 EOS (Mehta et al. 2014, via FAIR Chemistry, MIT)"
)


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


#: The recipes compared (name -> Recipe). A new one is one line.
RECIPES: dict[str, Recipe] = {
    "default": Recipe(note="current default: jarvis_surfaces, X=4, energy + gamma"),
    "forces": Recipe(
        settings={"force_weight": 1.0, "force_fraction": 0.1},
        note="+ zero forces at DFT minima on 10 % of each batch",
    ),
    "replay": Recipe(settings={"replay_weight": 10.0}, note="+ parent-labelled bulk replay"),
    "forces+replay": Recipe(
        settings={"force_weight": 1.0, "force_fraction": 0.1, "replay_weight": 10.0},
        note="+ forces and replay",
    ),
    "pbe": Recipe(
        sets=("mp_elemental_surfaces",),
        note="PBE data only: mp_elemental_surfaces (the chgnet-surf recipe), X=4, gamma",
    ),
    "heads": Recipe(
        sets=("mp_elemental_surfaces", "jarvis_surfaces"),
        note="PBE + OptB88vdW data, one head per level of theory (each set evaluated with "
        "its own head), against pbe's single PBE head",
    ),
    "pbe+forces+replay": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={
            "force_weight": 1.0,
            "force_fraction": 0.1,
            "replay_weight": 10.0,
            "replay_sets": ["wbm_bulks", "mp_elemental_refs"],
        },
        note="pbe + zero forces on 10 % of each batch + parent-labelled replay (energy, "
        "forces, stress) of its bulks and the train parts of wbm_bulks and mp_elemental_refs",
    ),
    "pbe+bulk_replay": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={"replay_weight": 10.0, "replay_sets": ["wbm_bulks", "mp_elemental_refs"]},
        note="pbe + parent-labelled replay (energies) of its bulks and the train parts of "
        "wbm_bulks and mp_elemental_refs, no forces",
    ),
    "pbe+relaxed_selection": Recipe(
        sets=("mp_elemental_surfaces",),
        settings={"selection": "relaxed"},
        note="pbe, the epoch kept on relaxed-mode val gamma of 24 val slabs",
    ),
    "default+relaxed_selection": Recipe(
        settings={"selection": "relaxed", "selection_slabs": 12},
        note="default, the epoch kept on relaxed-mode val gamma of 12 val slabs",
    ),
    "chgnet_trainer": Recipe(
        settings={"recipe": "chgnet_trainer", "depth": 2, "epochs": 3},
        note="peer baseline: chgnet's Trainer, its fine-tuning example's frozen layers, E + F; "
        "at most 3 epochs (each costs about 4 surfflows epochs: every step is a full forward "
        "and backward pass with forces)",
    ),
}


def validate_recipes(recipes: dict[str, Any]) -> dict[str, Recipe]:
    """A recipe table (name -> Recipe or its mapping), each validated, errors naming the recipe."""
    out = {}
    for name, recipe in recipes.items():
        try:
            out[name] = recipe if isinstance(recipe, Recipe) else Recipe.model_validate(recipe)
        except ValueError as exc:
            raise ValueError(f"recipe {name!r}: {exc}") from exc
    return out


# ---------------------------------------------------------------------- orchestration


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
    """Runs a :class:`Plan` in the configured database; every step skips what is stored."""

    def __init__(self, plan: Plan, runs_dir: Path):
        from surfflows.schemas.models import ModelSpec
        from surfflows.stores import get_job_store, get_store

        self.plan = plan
        self.runs_dir = runs_dir
        self.parent = ModelSpec.parse(PARENT)
        self.store = get_job_store()
        self.inputs: dict[str, Any] = {}
        self.replay_inputs: dict[str, Any] = {}
        self.trained_on: dict[str, tuple[str, ...]] = {}  # model id -> training sets
        training = {n for r in plan.recipes.values() for n in r.sets}
        replay = {n for r in plan.recipes.values() for n in r.settings.get("replay_sets", [])}
        evaluated = {*plan.test_sets, *training} | ({plan.wbm_set} if plan.wbm_set else set())
        names = evaluated | replay | set(plan.forgetting_sets)
        from surfflows.io.inputs import reference_inputs, require_ingested

        with get_store("references") as references, get_store("splits") as splits:
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
        from jobflow import run_locally

        from surfflows.jobs.finetune import FineTuneMaker, default_work_dir, training_sets_name

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
        from jobflow import run_locally

        from surfflows.flows.evaluate import EvaluateMaker
        from surfflows.io.inputs import reference_items
        from surfflows.io.registry import checkpoint_reference

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
        from jobflow import run_locally

        from surfflows.io.registry import checkpoint_reference
        from surfflows.jobs.finetune import bulk_forgetting

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
        from surfflows.stores import get_store

        model_id = model.spec.model_id
        ids = {name: self.spec_for(model, name).model_id for name in self.inputs}
        criteria = {"model_id": {"$in": sorted(set(ids.values()))}}
        errors: dict[tuple[str, str], list[dict]] = {}
        with get_store("surface_errors") as surface_errors:
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
        from surfflows.stores import get_store

        out: dict[str, Any] = {}
        if self.plan.wbm_set:
            criteria = {
                "set_name": self.plan.wbm_set,
                "mode": "single_point",
                "split": "test",
                "quantity": "bulk_energy",
            }
            with get_store("benchmarks") as benchmarks:
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


def steps_vs_parent(row: dict[str, Any], parent: dict[str, Any]) -> dict[str, Any]:
    """Relative change of the median and mean test relaxation steps against the parent's."""
    mine, theirs = row["steps"]["test_all"], parent["steps"]["test_all"]
    return {k: relative_change(mine[k], theirs[k]) for k in ("median", "mean")}


def proxy_points(rows: Sequence[dict[str, Any]], training_set: str) -> list[dict[str, Any]]:
    """One point per model: val force norm at DFT minima and the relaxed - single point gaps."""
    points = []
    for r in rows:
        force = r.get("val_force_norm")
        points.append(
            {
                "model_id": r["model_id"],
                "recipe": r["recipe"],
                "seed": r["seed"],
                "val_force_norm": force,
                "val_gap": r["gap"].get("val", {}).get(training_set, {}).get("gap"),
                "test_gap": r["gap"].get("test", {}).get(training_set, {}).get("gap"),
                "val_relaxed_mae": r.get("val", {})
                .get(training_set, {})
                .get("relaxed", {})
                .get("mae"),
            }
        )
    return points


def proxy_summary(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Correlation of the val force norm with each relaxed-mode quantity over the points."""
    force = [p["val_force_norm"] for p in points]
    return {
        target: correlation(force, [p[target] for p in points])
        for target in ("val_gap", "test_gap", "val_relaxed_mae")
    }


def table(summary: dict[str, Any], sets: Sequence[str], training_set: str):
    """Rich table of the per-recipe means ± std (over seeds)."""
    from rich.table import Table

    def fmt(node: dict | None, digits: int = 3, percent: bool = False) -> str:
        if not node or node.get("mean") is None:
            return "-"
        mean, std = node["mean"], node.get("std")
        if percent:
            return f"{mean:+.1%}" + (f"±{std:.1%}" if std is not None else "")
        return f"{mean:.{digits}f}" + (f"±{std:.{digits}f}" if std is not None else "")

    out = Table(title="test γ MAE (J/m²; sp single point, rx relaxed), mean ± std over seeds")
    columns = ["recipe", "seeds"]
    columns += [f"{s.removesuffix('_surfaces')} {m}" for s in sets for m in ("sp", "rx")]
    columns += ["val gap", "test gap", "wbm Δ", "bo2 Δ", "bo2 F Δ", "steps med/mean"]
    columns += ["epoch s", "best ep", "val γ", "val F"]
    for column in columns:
        out.add_column(column, overflow="fold", no_wrap=column == "recipe")
    for name, row in summary.items():
        test, forget, gap = row.get("test", {}), row.get("forgetting", {}), row.get("gap", {})
        bo2 = forget.get(FORGETTING_SETS[0], {})
        steps = row.get("steps", {}).get("test_all", {})
        training = row.get("training", {})
        out.add_row(
            name,
            str(row["n_seeds"]),
            *(fmt(test.get(n, {}).get(m, {}).get("mae")) for n in sets for m in MODES),
            fmt(gap.get("val", {}).get(training_set, {}).get("gap")),
            fmt(gap.get("test", {}).get(training_set, {}).get("gap")),
            fmt(forget.get(f"{WBM_SET}:test", {}).get("relative_change"), percent=True),
            fmt(bo2.get("relative_change"), percent=True),
            fmt(bo2.get("force_relative_change"), percent=True),
            f"{fmt(steps.get('median'), 1)}/{fmt(steps.get('mean'), 1)}",
            fmt(training.get("epoch_s"), 1),
            fmt(training.get("best_epoch"), 1),
            fmt(training.get("val_gamma_mae")),
            fmt(row.get("val_force_norm")),
        )
    return out


# -- element-wise cross-validation (--cv-folds)


def cv_settings(recipe: Recipe, plan: Plan) -> FineTuneSettings:
    """A recipe's settings in a cross-validation: seed 0, without zero-force labels (the
    proxy they feed is not computed here; without a force weight they change no gradient)."""
    return recipe.finetune_settings(0, **plan.overrides(), zero_force_labels=False)


def cv_document(
    store: Any, set_name: str, settings: FineTuneSettings, k: int, parent_store: Any = None
) -> dict | None:
    """The cross-validation of these settings in the JobStore: its stored
    CrossValidationDoc, else a summary of the folds finished so far (``partial``), else None.

    Folds run one after the other, so the finished ones are folds 0..n-1; the parent's
    figures are included where its evaluation is stored (in ``parent_store`` if given).
    """
    from surfflows.io.inputs import reference_inputs
    from surfflows.jobs.cross_validation import cross_validation_summary
    from surfflows.stores import get_store

    wanted = settings.model_dump(mode="json")
    with store:
        for doc in store.query(
            {"output.@class": "CrossValidationDoc", "output.set_name": set_name} | {"output.k": k},
            properties=["output"],
            sort={"completed_at": -1},
        ):
            if doc["output"]["settings"] == wanted:
                return {**doc["output"], "partial": False}
        finetunes, evaluations = [], []
        for fold in range(k):
            found = next(
                (
                    d["output"]
                    for d in store.query(
                        {"output.@class": "FineTuneDoc"}
                        | {"output.split_id": f"{set_name}:cv{k}seed0:fold{fold}"},
                        properties=[f"output.{f}" for f in ("model_id", "best_epoch", "history",
                                    "n_train", "wall_seconds", "hyperparameters")],
                    )
                    if d["output"]["hyperparameters"] == wanted
                ),
                None,
            )  # fmt: skip
            if found is None:
                break
            evaluated = [
                d["output"]
                for d in store.query(
                    {"output.@class": "EvaluationDoc", "output.model_id": found["model_id"]},
                    properties=["output"],
                )
            ]
            if {e["mode"] for e in evaluated} != set(MODES):
                break
            finetunes.append(found)
            evaluations.append(evaluated)
    if not finetunes:
        return None
    with get_store("references") as references, get_store("splits") as splits:
        inputs = reference_inputs(set_name, references, splits)
    with parent_store or store as source:  # what the parent has so far (slabs not
        parent = [  # evaluated in a mode are left out of its figures in that mode)
            d["output"]
            for d in source.query(
                {"output.@class": "EvaluationDoc", "output.model_id": PARENT}
                | {"output.set_name": set_name},
                properties=["output"],
            )
        ]
    doc = cross_validation_summary.original(
        inputs, k, 0, PARENT, settings, list(settings.replay_sets), finetunes, evaluations, parent
    )
    return {**doc.model_dump(mode="json"), "partial": len(finetunes) < k}


def cross_validate(
    plan: Plan,
    k: int,
    runs_dir: Path,
    output: Path,
    collect_only: bool,
    parent_db_dir: Path | None = None,
) -> int:
    """Run (unless ``collect_only``) and collect the k-fold cross-validation of every
    recipe of the plan; merge the figures into ``output`` (JSON) and plot them.

    ``parent_db_dir``: a database holding the parent's evaluations of the set (both modes,
    every slab), read for the parent's figures of unfinished cross-validations.
    """
    from surfflows.flows.cross_validation import CrossValidationMaker, run_cross_validation
    from surfflows.io.inputs import reference_inputs
    from surfflows.jobs.finetune import FineTuneMaker
    from surfflows.reports.plots import cross_validation_plot
    from surfflows.schemas.models import ModelSpec
    from surfflows.stores import get_job_store, get_store

    store = get_job_store()
    parent_store = None
    if parent_db_dir is not None:
        from surfflows.settings import SurfflowsSettings

        parent_store = get_job_store(SurfflowsSettings(db_dir=parent_db_dir, mongodb_uri=None))
    parent = ModelSpec.parse(PARENT)
    result = json.loads(output.read_text()) if output.is_file() else {"recipes": {}}
    for name, recipe in plan.recipes.items():
        if len(recipe.sets) != 1:
            print(f"{name}: cross-validation needs one training set, skipped")
            continue
        settings = cv_settings(recipe, plan)
        set_name = recipe.sets[0]
        done = cv_document(store, set_name, settings, k)
        if not collect_only and (done is None or done["partial"]):
            with get_store("references") as references, get_store("splits") as splits:
                inputs = reference_inputs(set_name, references, splits, ("slab", "bulk", "frame"))
                replay = [
                    reference_inputs(n, references, splits, ("bulk",)) for n in settings.replay_sets
                ]
            maker = CrossValidationMaker(
                finetune_maker=FineTuneMaker(parent=parent, settings=settings),
                k=k,
                work_dir=str(runs_dir / "cv" / name),
            )
            run_cross_validation(maker, inputs, store, replay_sets=replay)
        doc = cv_document(store, set_name, settings, k, parent_store)
        if doc is None:
            print(f"{name}: no finished fold in this database")
            continue
        result["recipes"][name] = {"note": recipe.note, **doc}
        s = doc["summary"]
        print(
            f"{name}: {len(doc['folds'])} of {k} folds"
            + "".join(
                f"; {m} MAE {s[m]['mae']['mean']:.3f} ± {s[m]['mae']['std'] or 0:.3f}, signed "
                f"{s[m]['mean_signed_error']['mean']:+.3f}, MAPE {s[m]['mape']['mean']:.1%}"
                for m in s
            )
            + f"; epochs chosen {doc['chosen_epochs']}"
        )
    result |= {
        "k": k,
        "set": "folds by element (material-wise for compounds), fold seed 0",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "notes": [
            "fold i: held out fold i, epoch selected on fold i+1, trained on the other k-2",
            "std: sample standard deviation over folds (ddof 1)",
            "mape: mean of |gamma error| / gamma_ref",
        ],
        "attribution": ATTRIBUTION,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    png = cross_validation_plot(result["recipes"], output.with_suffix(".png"), ATTRIBUTION)
    print(f"wrote {output} and {png}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"Fast end-to-end run: {QUICK}.")
    parser.add_argument("--recipes", nargs="+", default=None, help=f"Of {list(RECIPES)}.")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="Default 0 1 2.")
    parser.add_argument("--epochs", type=int, default=None, help="Epochs of every fine-tune.")
    parser.add_argument("--max-relaxed-slabs", type=int, default=None, help="Per set and part.")
    parser.add_argument("--max-train-slabs", type=int, default=None, help="Per fine-tune.")
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument(
        "--db-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "finetune_recipes" / "db",
        help="Scratch database (a rerun there resumes); fine-tunes go next to it, in runs/.",
    )
    parser.add_argument("--collect-only", action="store_true", help="Only build and report.")
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=None,
        help="Compare the recipes by k-fold cross-validation by element instead (seed 0; "
        "results/finetune_recipes_cv.json, merged over runs).",
    )
    parser.add_argument(
        "--parent-db-dir",
        type=Path,
        default=None,
        help="--cv-folds: database with the parent's evaluations of the set, for the parent's "
        "figures of unfinished cross-validations.",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON file.")
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}

    def given(option: str) -> Any:
        value = getattr(args, option)
        return quick.get(option) if value is None else value

    names = args.recipes or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    plan = Plan(
        recipes={n: RECIPES[n] for n in names},
        seeds=given("seeds") or [0, 1, 2],
        epochs=given("epochs"),
        max_train_slabs=given("max_train_slabs"),
        max_relaxed_slabs=given("max_relaxed_slabs"),
        sweep="finetune_recipes_quick" if args.quick else "finetune_recipes",
    )
    output = args.output or RESULTS_DIR / (
        "finetune_recipes_quick.json" if args.quick else "finetune_recipes.json"
    )
    args.db_dir.mkdir(parents=True, exist_ok=True)
    os.environ["SURFFLOWS_DB_DIR"] = str(args.db_dir)
    os.environ["SURFFLOWS_TORCH_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("surfflows.jobs.finetune").setLevel(logging.INFO)
    if args.cv_folds is not None:
        output = args.output or RESULTS_DIR / "finetune_recipes_cv.json"
        return cross_validate(
            plan,
            args.cv_folds,
            args.db_dir.parent / "runs",
            output,
            args.collect_only,
            args.parent_db_dir,
        )
    return run(plan, args.db_dir.parent / "runs", output, args.threads, args.collect_only)


def run(plan: Plan, runs_dir: Path, output: Path, threads: int, collect_only: bool) -> int:
    """Train, evaluate, build, collect; write the JSON and PNGs. Returns the exit code."""
    import torch
    from rich.console import Console

    from surfflows.cli.benchmark import build
    from surfflows.engine.finetune.selection import selection_agreement
    from surfflows.reports.plots import recipes_plot, recipes_proxy_plot
    from surfflows.schemas.models import ModelSpec

    start = time.perf_counter()
    runner = Runner(plan, runs_dir)
    parent_id = runner.parent.model_id
    finetunes = runner.stored_finetunes() if collect_only else runner.train()
    parent_model = Model("parent", runner.parent)
    models = [
        Model(
            f"{d['recipe']} seed {d['seed']}",
            ModelSpec.model_validate(d["model"]),
            tuple(d.get("heads") or ()),
        )
        for d in finetunes
    ]
    if not collect_only:
        runner.evaluate([parent_model, *models])
        recipe_of = {m.spec.model_id: d["recipe"] for m, d in zip(models, finetunes, strict=True)}
        runner.forgetting(models, recipe_of)
    build()
    wall = time.perf_counter() - start

    parent = {"recipe": "parent", "seed": None, **runner.model_row(parent_model, None)}
    # The proxy: the parent and the checkpoints trained on the first recipe's set alone (a
    # multi-set checkpoint's val force norm covers other sets' val parts too).
    training_set = next(iter(plan.recipes.values())).sets[0]
    alone = {n for n, r in plan.recipes.items() if r.sets == (training_set,)}
    first = next((d for d in finetunes if d["recipe"] in alone), None)
    if first is not None:  # the parent's val force norm: epoch 0 of such a fine-tune
        parent["val_force_norm"] = first["history"][0]["val_force_mae"]
    rows = []
    for model, doc in zip(models, finetunes, strict=True):
        row = {"recipe": doc["recipe"], "seed": doc["seed"], **runner.model_row(model, doc)}
        row["heads"] = list(model.heads)
        row["val_force_norm"] = row["training"]["val_force_mae"]
        agreement = selection_agreement(doc["history"])
        if agreement is not None:
            row["selection_agreement"] = agreement
        row["steps_vs_parent"] = steps_vs_parent(row, parent)
        rows.append(row)
    summary = {"parent": {"n_seeds": 1, **aggregate([parent])}}
    for name in plan.recipes:
        group = [r for r in rows if r["recipe"] == name]
        if group:
            summary[name] = {"n_seeds": len(group), **aggregate(group)}
    points = proxy_points([parent, *(r for r in rows if r["recipe"] in alone)], training_set)
    proxy = {"training_set": training_set, "points": points, **proxy_summary(points)}
    proxy["checkpoints_only"] = proxy_summary([p for p in points if p["recipe"] != "parent"])
    failures = {
        r["recipe"] + ("" if r["seed"] is None else f" seed {r['seed']}"): r["unconverged"]
        for r in [parent, *rows]
        if any(n for g in r.get("unconverged", {}).values() for n in g.values())
    }
    result = {
        "plan": plan.model_dump(mode="json"),
        "base_settings": BASE_SETTINGS,
        "quick": plan.sweep.endswith("quick"),
        "parent": parent_id,
        "units": "gamma J/m²; bulk energy eV/atom (aligned per element); forces eV/Å; time s",
        "notes": [
            "test: per set and mode over the planned slabs (relaxed: max_relaxed_slabs of "
            "the unflagged ones, drawn with a fixed seed; single point: every unflagged slab)",
            "gap: relaxed minus single-point MAE on the slabs ok in both modes",
            "std: sample standard deviation over seeds (ddof 1)",
            "relative_mae: mean of |gamma error| / gamma_ref",
            f"wbm test part aligned per model on its other parts; {', '.join(plan.forgetting_sets)}"
            " aligned on itself (bulk_forgetting)",
            "every recipe has zero_force_labels so val_force_mae (the force norm at DFT minima) "
            "is recorded; without force_weight it changes no gradient",
        ],
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "wall_seconds": wall,
        "collect_only": collect_only,
        "summary": summary,
        "rows": [parent, *rows],
        "proxy": proxy,
        "unconverged_or_failed": failures,
        "attribution": ATTRIBUTION,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2))
    stem = output.with_suffix("")
    title = f"{parent_id} fine-tuning recipes, {len(plan.seeds)} seed(s)"
    if result["quick"]:
        title += " (quick subset)"
    png = recipes_plot(summary, list(plan.test_sets), stem.with_suffix(".png"), title, ATTRIBUTION)
    proxy_png = recipes_proxy_plot(points, proxy, f"{stem}_proxy.png", training_set)
    Console(width=200).print(table(summary, list(plan.test_sets), training_set))
    for scope, correlations in (("all", proxy), ("checkpoints", proxy["checkpoints_only"])):
        for target in ("val_gap", "test_gap", "val_relaxed_mae"):
            c = correlations[target]
            print(
                f"proxy ({scope}): val force norm vs {target}: N={c['n']}, Pearson "
                f"{c['pearson'] if c['pearson'] is None else round(c['pearson'], 3)}, Spearman "
                f"{c['spearman'] if c['spearman'] is None else round(c['spearman'], 3)}"
            )
    for row in rows:
        if "selection_agreement" in row:
            a = row["selection_agreement"]
            print(
                f"{row['recipe']} seed {row['seed']}: epoch kept on single point "
                f"{a['single_point_epoch']}, on relaxed {a['relaxed_epoch']}, regret "
                f"{a['regret']} J/m², Spearman over epochs {a['spearman_all_val_slabs']} "
                f"(same slabs {a['spearman_same_slabs']})"
            )
    print(f"total {wall:.0f} s; wrote {output}, {png}, {proxy_png}")
    if failures:
        print(f"relaxations failed or not converged: {failures}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
