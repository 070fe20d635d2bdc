"""Fine-tuning flows: one checkpoint, a sweep over depth X and seeds, and their checks.

``FineTuneMaker`` trains one checkpoint on the train part of a reference set (selection on
the val part), registers it by sha256 and returns a :class:`FineTuneDoc`.
``FineTuneSweepMaker`` runs it for every X and seed and, for each checkpoint (and the
parent), evaluates the val and test parts with :class:`EvaluateMaker` (the error and
benchmark builders then give one benchmark row per model, split part and mode) and checks
bulk forgetting (:class:`ForgettingDoc`). :func:`sweep_summary` joins the three.

Splits are the stored seed-0 splits that the builders report by.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Flow, Job, Maker, Response, job
from pydantic import BaseModel, ConfigDict, Field
from pymatgen.core import Structure

from surfflows.core.splits import get_or_create_split
from surfflows.engine.finetune import RESUME_IGNORED, aligned_energy_mae, finetune, reference_data
from surfflows.engine.models import ModelSpec, load_model
from surfflows.io.registry import register_checkpoint
from surfflows.jobs.evaluate import EvaluateMaker, reference_items
from surfflows.schemas.finetune import BulkSetErrors, FineTuneDoc, FineTuneSettings, ForgettingDoc
from surfflows.stores import get_store, using_store

logger = logging.getLogger(__name__)


def _split(set_name: str) -> tuple[str, dict[str, str]]:
    """The stored (seed-0) split of a set: its id and material -> part."""
    with using_store(None, "splits") as splits:
        split = get_or_create_split(set_name, store=splits)
    return split.split_id, split.assignments


def _reference_docs(set_name: str, doc_type: str | tuple[str, ...]) -> list[dict[str, Any]]:
    kinds = [doc_type] if isinstance(doc_type, str) else list(doc_type)
    with using_store(None, "references") as references:
        docs = list(references.query({"set_name": set_name, "doc_type": {"$in": kinds}}))
    if not docs:
        raise ValueError(f"the references store has no {kinds} documents of set {set_name!r}")
    return docs


def default_work_dir(
    set_name: str,
    parent: ModelSpec,
    settings: FineTuneSettings,
    slab_keys: list[str] | None = None,
) -> Path:
    """``./finetune/<set>_X<depth>_seed<seed>_<hash>``: one folder per run.

    The hash covers parent, settings and slab selection but not ``epochs`` and
    ``patience``, so a longer rerun resumes in the same folder.
    """
    fingerprint = settings.model_dump_json(exclude=RESUME_IGNORED) + parent.model_id
    fingerprint += ",".join(sorted(slab_keys or []))
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:8]
    return Path.cwd() / "finetune" / f"{set_name}_X{settings.depth}_seed{settings.seed}_{digest}"


@job(output_schema=FineTuneDoc)
def finetune_checkpoint(
    set_name: str,
    parent: ModelSpec,
    settings: FineTuneSettings,
    work_dir: str | None = None,
    sweep: str | None = None,
    slab_keys: list[str] | None = None,
) -> FineTuneDoc:
    """Fine-tune ``parent`` on the train part of ``set_name``, register the best checkpoint.

    Returns the :class:`FineTuneDoc`, which is also the checkpoint's metadata in the
    ``models`` store. See :func:`surfflows.engine.finetune.finetune` for the training;
    ``slab_keys`` restricts the training slabs to a selection of the train part.
    """
    split_id, assignments = _split(set_name)
    docs = _reference_docs(set_name, ("slab", "bulk"))
    parent_model = load_model(parent)
    data = {
        part: reference_data(
            docs,
            assignments,
            (part,),
            parent_model.graph_converter,
            zero_force_labels=settings.zero_force_labels,
            slab_keys=slab_keys if part == "train" else None,
        )
        for part in ("train", "val")
    }
    folder = Path(work_dir) if work_dir else default_work_dir(set_name, parent, settings, slab_keys)
    logger.info(
        "fine-tuning %s on %s X=%d seed=%d in %s: train %s, val %s",
        parent.model_id, set_name, settings.depth, settings.seed, folder,
        data["train"].counts(), data["val"].counts(),
    )  # fmt: skip

    def progress(r: Any) -> None:
        logger.info(
            "epoch %3d  loss %.4f  train E %.4f eV/atom  val E %.4f eV/atom  val gamma MAE "
            "%s J/m²  (%.1f s)",
            r.epoch, r.train_loss, r.train_energy_mae, r.val_energy_mae,
            "-" if r.val_gamma_mae is None else f"{r.val_gamma_mae:.3f}", r.seconds,
        )  # fmt: skip

    result = finetune(parent_model, data["train"], data["val"], settings, folder, progress=progress)
    spec = ModelSpec.from_checkpoint(result.best_checkpoint)
    best = result.history[result.best_epoch]
    dropped: dict[str, list[str]] = {}
    for part in data.values():
        for reason, keys in part.dropped.items():
            dropped.setdefault(reason, []).extend(keys)
    trained = result.history[1:]
    doc = FineTuneDoc(
        model_id=spec.model_id,
        model=spec,
        sha256=spec.sha256,
        parent_model_id=parent.model_id,
        parent=parent,
        set_name=set_name,
        level_of_theory=docs[0]["level_of_theory"],
        split_id=split_id,
        sweep=sweep,
        depth=settings.depth,
        trainable_modules=result.freeze.trainable_modules,
        frozen_modules=result.freeze.frozen_modules,
        trainable_parameters=result.freeze.trainable_parameters,
        atomref_shift=result.atomref_shift,
        hyperparameters=settings,
        n_train=data["train"].counts(),
        n_val=data["val"].counts(),
        train_keys=data["train"].keys,
        val_keys=data["val"].keys,
        dropped=dropped,
        n_dropped=len({key for keys in dropped.values() for key in keys}),
        history=result.history,
        best_epoch=result.best_epoch,
        best_val_gamma_mae=best.val_gamma_mae,
        best_val_energy_mae=best.val_energy_mae,
        stopped_early=result.stopped_early,
        resumed_from_epoch=result.resumed_from_epoch,
        setup_seconds=result.setup_seconds,
        mean_epoch_seconds=float(np.mean([r.seconds for r in trained])) if trained else None,
        wall_seconds=result.wall_seconds,
        checkpoint_path=str(result.best_checkpoint.resolve()),
    )
    register_checkpoint(result.best_checkpoint, metadata=doc.model_dump(mode="json"))
    logger.info(
        "registered %s: best epoch %d, val gamma MAE %s J/m²",
        spec.model_id, result.best_epoch, best.val_gamma_mae,
    )  # fmt: skip
    return doc


@dataclass
class FineTuneMaker(Maker):
    """Fine-tune the last X units of a CHGNet on a reference set's train part.

    Parameters
    ----------
    name
        Job name prefix.
    parent
        Model to fine-tune.
    settings
        Hyperparameters (``depth`` is X).
    work_dir
        Folder for the checkpoints (default :func:`default_work_dir`); a run finding its
        ``last.pth.tar`` there resumes.
    sweep
        Name of the sweep the run belongs to (recorded on the document).
    slab_keys
        Train only on these slabs of the train part (a DIRECT or random selection's
        reference keys) and their bulks; None: the whole train part.
    """

    name: str = "finetune"
    parent: ModelSpec = field(default_factory=ModelSpec)
    settings: FineTuneSettings = field(default_factory=FineTuneSettings)
    work_dir: str | None = None
    sweep: str | None = None
    slab_keys: list[str] | None = None

    def make(self, set_name: str) -> Job:
        """The fine-tune job; its output is the :class:`FineTuneDoc`."""
        new = finetune_checkpoint(
            set_name, self.parent, self.settings, self.work_dir, self.sweep, self.slab_keys
        )
        new.name = f"{self.name} {set_name} X={self.settings.depth} seed={self.settings.seed}"
        return new


@job
def evaluate_parts(
    model: ModelSpec,
    set_name: str,
    parts: tuple[str, ...] = ("val", "test"),
    modes: tuple[str, ...] = ("single_point",),
    chunk_size: int = 128,
) -> Response:
    """Replace this job by an :class:`EvaluateMaker` flow on some split parts of a set.

    A job rather than a flow because a checkpoint's spec is known only once its
    fine-tune job has run.
    """
    _, assignments = _split(set_name)
    items = reference_items(set_name, get_store("references"), assignments, parts)
    return Response(
        replace=EvaluateMaker(model=model, modes=modes, chunk_size=chunk_size).make(set_name, items)
    )


@functools.lru_cache(maxsize=16)
def _bulk_predictions(
    kind: str, version: str | None, sha256: str | None, keys: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Energies per atom and, if every cell has reference forces, forces of some bulks.

    Cached per model and process: a sweep computes its parent's once.
    """
    with using_store(None, "references") as references:
        docs = {d["key"]: d for d in references.query({"key": {"$in": list(keys)}})}
    structures = [Structure.from_dict(docs[k]["structure"]) for k in keys]
    with_forces = all(docs[k].get("ref_forces") is not None for k in keys)
    model = load_model(ModelSpec(kind=kind, version=version, sha256=sha256))
    predictions = model.predict_structure(
        structures, task="ef" if with_forces else "e", batch_size=16
    )
    if len(structures) == 1:
        predictions = [predictions]
    energies = np.array([float(p["e"]) for p in predictions])
    forces = np.concatenate([p["f"] for p in predictions]) if with_forces else None
    return energies, forces


def bulk_set_errors(
    name: str,
    eval_docs: list[dict[str, Any]],
    fit_docs: list[dict[str, Any]],
    model: ModelSpec,
    parent: ModelSpec,
    alignment: str,
) -> BulkSetErrors:
    """Aligned energy errors (and force errors where labelled) of a model and its parent.

    Per-element offsets are fitted for each model on ``fit_docs`` and the residual MAE per
    atom is taken over ``eval_docs`` (see :func:`~surfflows.engine.finetune.aligned_energy_mae`).
    """
    keys = tuple(d["key"] for d in eval_docs)
    fit_keys = tuple(d["key"] for d in fit_docs)
    ref = np.array([d["ref_energy"] / d["n_atoms"] for d in eval_docs])
    fit_ref = np.array([d["ref_energy"] / d["n_atoms"] for d in fit_docs])
    comps = [Structure.from_dict(d["structure"]).composition.as_dict() for d in eval_docs]
    fit_comps = [Structure.from_dict(d["structure"]).composition.as_dict() for d in fit_docs]
    out: dict[str, Any] = {}
    for who, spec in (("model", model), ("parent", parent)):
        energies, forces = _bulk_predictions(spec.kind, spec.version, spec.sha256, keys)
        fit_energies = (
            energies
            if fit_keys == keys
            else _bulk_predictions(spec.kind, spec.version, spec.sha256, fit_keys)[0]
        )
        mae, n_used, n_elements = aligned_energy_mae(
            fit_comps, fit_ref - fit_energies, comps, ref - energies
        )
        out[who] = mae
        if forces is not None:
            ref_forces = np.concatenate([d["ref_forces"] for d in eval_docs])
            out[f"{who}_force"] = float(np.abs(forces - ref_forces).mean())
    return BulkSetErrors(
        name=name,
        level_of_theory=eval_docs[0]["level_of_theory"],
        alignment=alignment,
        n_structures=n_used,
        n_excluded=len(eval_docs) - n_used,
        n_elements=n_elements,
        mae_per_atom=out["model"],
        parent_mae_per_atom=out["parent"],
        relative_change=None if out["model"] is None else out["model"] / out["parent"] - 1,
        force_mae=out.get("model_force"),
        parent_force_mae=out.get("parent_force"),
    )


@job(output_schema=ForgettingDoc)
def bulk_forgetting(
    model: ModelSpec,
    parent: ModelSpec,
    set_name: str,
    bulk_sets: tuple[str, ...] = ("bo2_bulk_eos",),
) -> ForgettingDoc:
    """Bulk energy errors of ``model`` and ``parent`` on bulks ``model`` never saw.

    * each set of ``bulk_sets`` (all its bulk cells): per-element offsets fitted on the
      set itself, per model;
    * ``<set_name>:test``: the bulk cells of the test materials of ``set_name``. Fitting
      offsets on them is underdetermined (JARVIS: 47 cells, 50 elements), so the offsets
      are fitted on the set's train-part bulks and cells with other elements are left out.
    """
    sets = []
    for name in bulk_sets:
        docs = [d for d in _reference_docs(name, "bulk") if not d.get("flags")]
        sets.append(bulk_set_errors(name, docs, docs, model, parent, alignment=name))
    _, assignments = _split(set_name)
    bulks = [d for d in _reference_docs(set_name, "bulk") if not d.get("flags")]
    parts = {
        part: [d for d in bulks if assignments.get(d["material_id"]) == part]
        for part in ("train", "test")
    }
    sets.append(
        bulk_set_errors(
            f"{set_name}:test",
            parts["test"],
            parts["train"],
            model,
            parent,
            alignment=f"{set_name}:train",
        )
    )
    return ForgettingDoc(
        model_id=model.model_id,
        model=model,
        parent_model_id=parent.model_id,
        sets=sets,
        max_relative_change=max(
            (s.relative_change for s in sets if s.relative_change is not None), default=None
        ),
    )


@dataclass
class FineTuneSweepMaker(Maker):
    """Fine-tune for every depth X and seed; evaluate and check every checkpoint.

    Parameters
    ----------
    name
        Sweep name, recorded on every :class:`FineTuneDoc`.
    parent
        Model fine-tuned (evaluated too, as the zero-shot row, if ``include_parent``).
    depths, seeds
        X values and seeds (each pair one checkpoint).
    settings
        Other hyperparameters (``depth`` and ``seed`` are replaced per run).
    parts, modes
        Split parts and evaluation modes of the evaluation flows.
    bulk_sets
        Bulk sets of the forgetting check (besides the set's test bulks).
    include_parent
        Evaluate the parent and check it too.
    work_dir
        Parent folder of the runs' work folders (default: the current directory).
    """

    name: str = "finetune sweep"
    parent: ModelSpec = field(default_factory=ModelSpec)
    depths: tuple[int, ...] = (0, 1, 2, 3)
    seeds: tuple[int, ...] = (0,)
    settings: FineTuneSettings = field(default_factory=FineTuneSettings)
    parts: tuple[str, ...] = ("val", "test")
    modes: tuple[str, ...] = ("single_point",)
    bulk_sets: tuple[str, ...] = ("bo2_bulk_eos",)
    include_parent: bool = True
    work_dir: str | None = None

    def make(self, set_name: str) -> Flow:
        """Per checkpoint: fine-tune -> evaluation flow and forgetting check."""
        jobs, outputs = [], []
        models = [self.parent] if self.include_parent else []
        for depth in self.depths:
            for seed in self.seeds:
                settings = self.settings.model_copy(update={"depth": depth, "seed": seed})
                work_dir = None
                if self.work_dir:
                    folder = default_work_dir(set_name, self.parent, settings).name
                    work_dir = str(Path(self.work_dir) / folder)
                train = FineTuneMaker(
                    parent=self.parent, settings=settings, work_dir=work_dir, sweep=self.name
                ).make(set_name)
                jobs.append(train)
                outputs.append(train.output)
                models.append(train.output.model)
        for model in models:
            evaluate = evaluate_parts(model, set_name, self.parts, self.modes)
            evaluate.name = f"evaluate {set_name} {'/'.join(self.parts)}"
            forgetting = bulk_forgetting(model, self.parent, set_name, self.bulk_sets)
            forgetting.name = "bulk forgetting"
            jobs += [evaluate, forgetting]
        return Flow(jobs, output=outputs, name=f"{self.name} on {set_name}")


class SweepConfig(BaseModel):
    """A fine-tune sweep from YAML (``configs/finetune_sweep.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Sweep name (recorded on every fine-tune document).")
    reference: str = Field(description="Reference set in the store.")
    parent: str = Field(default="chgnet-0.3.0", description="Model to fine-tune.")
    depths: list[int] = Field(description="X values.")
    seeds: list[int] = Field(default=[0], description="Seeds per X.")
    modes: list[str] = Field(default=["single_point"], description="Evaluation modes.")
    parts: list[str] = Field(default=["val", "test"], description="Split parts evaluated.")
    bulk_sets: list[str] = Field(
        default=["bo2_bulk_eos"], description="Bulk sets of the forgetting check."
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="FineTuneSettings fields other than depth and seed."
    )
    default_depth: int | None = Field(
        default=None, description="X chosen on the validation split (documentation)."
    )
    work_dir: str | None = Field(default=None, description="Parent folder of the runs.")

    @classmethod
    def from_yaml(cls, path: str | Path) -> SweepConfig:
        """Read and validate a sweep file."""
        import yaml

        return cls.model_validate(yaml.safe_load(Path(path).read_text()))

    def maker(self) -> FineTuneSweepMaker:
        """The sweep Maker of this configuration."""
        bad = {"depth", "seed"} & self.hyperparameters.keys()
        if bad:
            raise ValueError(f"hyperparameters may not set {sorted(bad)}: use depths / seeds")
        return FineTuneSweepMaker(
            name=self.name,
            parent=ModelSpec.parse(self.parent),
            depths=tuple(self.depths),
            seeds=tuple(self.seeds),
            settings=FineTuneSettings(**self.hyperparameters),
            parts=tuple(self.parts),
            modes=tuple(self.modes),
            bulk_sets=tuple(self.bulk_sets),
            work_dir=self.work_dir,
        )


def sweep_summary(
    set_name: str, sweep: str | None = None, mode: str = "single_point"
) -> list[dict[str, Any]]:
    """One row per model: the parent (zero-shot) and each checkpoint of a sweep.

    Joins the ``models`` store (fine-tune documents), the ``benchmarks`` store (val and test
    rows; run the builders first) and the newest :class:`ForgettingDoc` of each model.

    Returns
    -------
    list of dict
        ``model_id``, ``depth`` (None for the parent), ``seed``, ``val_mae``, ``val_mse``,
        ``test_mae``, ``test_mse``, ``n_test`` (J/m², mean signed error as ``*_mse``),
        ``forgetting`` (bulk set -> relative change), ``bulk_mae`` (bulk set -> eV/atom),
        ``best_epoch``, ``epoch_s``, ``wall_s``, ``trainable_parameters``.
    """
    criteria: dict[str, Any] = {"metadata.set_name": set_name}
    if sweep is not None:
        criteria["metadata.sweep"] = sweep
    with using_store(None, "models") as models:
        finetuned = [d["metadata"] for d in models.query(criteria)]
    parents = sorted({d["parent_model_id"] for d in finetuned})
    rows = [{"model_id": p, "depth": None, "seed": None} for p in parents]
    rows += [
        {
            "model_id": d["model_id"],
            "depth": d["depth"],
            "seed": d["hyperparameters"]["seed"],
            "best_epoch": d["best_epoch"],
            "epoch_s": d["mean_epoch_seconds"],
            "wall_s": d["wall_seconds"],
            "trainable_parameters": d["trainable_parameters"],
        }
        for d in sorted(finetuned, key=lambda d: (d["depth"], d["hyperparameters"]["seed"]))
    ]
    with using_store(None, "benchmarks") as benchmarks, using_store(None, "outputs") as outputs:
        for row in rows:
            for part in ("val", "test"):
                bench = benchmarks.query_one(
                    {"model_id": row["model_id"], "set_name": set_name, "mode": mode, "split": part}
                )
                row[f"{part}_mae"] = bench["mae"] if bench else None
                row[f"{part}_mse"] = bench["mean_signed_error"] if bench else None
                row[f"n_{part}"] = bench["n"] if bench else 0
            forgetting = outputs.query_one(
                {"output.@class": "ForgettingDoc", "output.model_id": row["model_id"]},
                sort={"completed_at": -1},
            )
            sets = forgetting["output"]["sets"] if forgetting else []
            row["forgetting"] = {s["name"]: s["relative_change"] for s in sets}
            row["bulk_mae"] = {s["name"]: s["mae_per_atom"] for s in sets}
    return rows


def finetune_report_plots(out: str | Path, set_name: str | None = None) -> list[Path]:
    """PNGs of every set with fine-tuned models: gamma MAE versus X per mode, loss curves.

    Reads the ``models`` and ``benchmarks`` stores (run the builders first); writes
    ``finetune_depth_<set>_<mode>.png`` and ``finetune_curves_<set>.png`` into ``out``.
    """
    from surfflows.reports.plots import finetune_curves_plot, finetune_depth_plot

    criteria = {"metadata.depth": {"$exists": True}}
    if set_name:
        criteria["metadata.set_name"] = set_name
    with using_store(None, "models") as models:
        docs = [d["metadata"] for d in models.query(criteria)]
    with using_store(None, "benchmarks") as benchmarks:
        modes = benchmarks.distinct("mode")
    paths = []
    for name in sorted({d["set_name"] for d in docs}):
        for mode in sorted(modes):
            rows = sweep_summary(name, mode=mode)
            if any(r["test_mae"] is not None for r in rows if r["depth"] is not None):
                title = f"fine-tuned CHGNet on {name}, {mode}"
                paths.append(
                    finetune_depth_plot(
                        rows, Path(out) / f"finetune_depth_{name}_{mode}.png", title
                    )
                )
        curves = [d for d in docs if d["set_name"] == name]
        paths.append(finetune_curves_plot(curves, Path(out) / f"finetune_curves_{name}.png", name))
    return paths
