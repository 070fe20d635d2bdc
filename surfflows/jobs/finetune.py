"""Fine-tuning jobs: one checkpoint (:class:`FineTuneMaker`) and the bulk forgetting check.

``FineTuneMaker`` trains one checkpoint on the train part of a reference set (selection on
the val part), registers it by sha256 and returns a :class:`FineTuneDoc`.
:func:`bulk_forgetting` gives the bulk energy errors of a checkpoint and its parent on bulks
the checkpoint never saw (:class:`ForgettingDoc`). The sweep over depth X and seeds is
:class:`surfflows.flows.finetune.FineTuneSweepMaker`; its summaries and plots are in
:mod:`surfflows.reports.finetune`.

Splits are the stored seed-0 splits that the builders report by.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from jobflow import Job, Maker, OutputReference, job
from pymatgen.core import Structure

from surfflows.core.benchmark import aligned_energy_mae
from surfflows.core.heads import head_name
from surfflows.core.splits import held_out_identities, leaking_materials
from surfflows.core.text import job_name
from surfflows.engine.chgnet_trainer import chgnet_trainer_finetune, energy_labelled
from surfflows.engine.finetune import (
    RESUME_IGNORED,
    Head,
    ReferenceData,
    finetune,
    merge_data,
    reference_data,
)
from surfflows.engine.models import load_model
from surfflows.io.registry import decode_checkpoint, encode_checkpoint
from surfflows.schemas.finetune import (
    CHECKPOINT_FIELD,
    LATER_SETTINGS,
    BulkSetErrors,
    FineTuneDoc,
    FineTuneSettings,
    ForgettingDoc,
    HeadDoc,
)
from surfflows.schemas.models import ModelSpec, file_sha256
from surfflows.schemas.references import ReferenceBulkDoc, ReferenceInputs

logger = logging.getLogger(__name__)


def default_work_dir(
    set_name: str,
    parent: ModelSpec,
    settings: FineTuneSettings,
    slab_keys: list[str] | None = None,
) -> Path:
    """``./finetune/<set>_X<depth>_seed<seed>_<hash>``: one folder per run.

    The hash covers parent, settings and slab selection but not ``epochs`` and
    ``patience``, so a longer rerun resumes in the same folder (nor settings added later
    while at their defaults, so older folders keep their names).
    """
    later = {k for k, v in LATER_SETTINGS.items() if getattr(settings, k) == v}
    fingerprint = settings.model_dump_json(exclude=RESUME_IGNORED | later) + parent.model_id
    fingerprint += ",".join(sorted(slab_keys or []))
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:8]
    return Path.cwd() / "finetune" / f"{set_name}_X{settings.depth}_seed{settings.seed}_{digest}"


def training_sets_name(references: ReferenceInputs | list[ReferenceInputs]) -> str:
    """Name of what a fine-tune trains on: the set, or several sets joined by '+'."""
    if isinstance(references, ReferenceInputs):
        return references.set_name
    return "+".join(r.set_name for r in references)


def _heads(sets: list[ReferenceInputs], mode: str) -> list[Head]:
    """One head per level of theory (in the sets' order), or one for all sets."""
    levels = {r.set_name: r.docs[0].level_of_theory for r in sets}
    if mode == "single":
        names = [head_name(level) for level in dict.fromkeys(levels.values())]
        return [
            Head(
                "+".join(dict.fromkeys(names)),
                " + ".join(dict.fromkeys(levels.values())),
                tuple(levels),
            )
        ]
    by_head: dict[str, list[str]] = {}
    for set_name, level in levels.items():
        by_head.setdefault(head_name(level), []).append(set_name)
    return [Head(name, levels[names[0]], tuple(names)) for name, names in by_head.items()]


def _replay_bulks(
    replay_sets: list[ReferenceInputs],
    held_out: dict[str, set[str]],
    dropped: dict[str, list[str]],
) -> list[Structure]:
    """Unflagged train-part bulks of the replay sets, less materials held out elsewhere
    (counted in ``dropped`` as ``held_out:<set>:<part>``)."""
    bulks = []
    for inputs in replay_sets:
        docs = [d for d in inputs.of_type("bulk") if not d.flags]
        leaking = leaking_materials(
            inputs.set_name, [(d.material_id, d.formula) for d in docs], held_out
        )
        for doc in docs:
            if inputs.assignments.get(doc.material_id) != "train":
                continue
            if doc.material_id in leaking:
                dropped.setdefault(f"held_out:{leaking[doc.material_id]}", []).append(doc.key)
            else:
                bulks.append(doc.structure.copy())
    return bulks


def _relaxed_text(record: Any) -> str:
    """The relaxed-mode part of an epoch's log line (empty when it was not computed)."""
    if record.val_relaxed_slabs is None:
        return ""
    mae = record.val_relaxed_gamma_mae
    by_set = "".join(
        f", {k} {v:.3f}" for k, v in record.val_relaxed_gamma_mae_by_set.items() if v is not None
    )
    return (
        f"  relaxed {'-' if mae is None else f'{mae:.3f}'} J/m²{by_set} "
        f"({record.val_relaxed_slabs} slabs, {record.val_relaxed_failures} failed, "
        f"median {record.val_relaxed_steps_median:g} steps, {record.val_relaxed_seconds:.1f} s)"
    )


@job(output_schema=FineTuneDoc, data=CHECKPOINT_FIELD)
def finetune_checkpoint(
    references: ReferenceInputs | list[ReferenceInputs],
    parent: ModelSpec,
    settings: FineTuneSettings,
    work_dir: str | None = None,
    sweep: str | None = None,
    slab_keys: list[str] | None = None,
    parent_checkpoint: str | None = None,
    replay_sets: list[ReferenceInputs] | None = None,
) -> FineTuneDoc:
    """Fine-tune ``parent`` on the train part of one or several reference sets; return the
    best checkpoint.

    The :class:`FineTuneDoc` carries the checkpoint's bytes (``checkpoint_b64``, saved in
    the JobStore's ``data`` store), which registers it (:mod:`surfflows.io.registry`). See
    :func:`surfflows.engine.finetune.finetune` for the training; ``slab_keys`` restricts
    the training slabs to a selection of the train part; ``parent_checkpoint`` is the
    parent's checkpoint (base64) if it is itself fine-tuned. With several sets, a material
    held out (val or test) in one set is never trained on through another (same
    ``material_id``, or the same element for elemental materials); ``replay_sets`` are the
    documents and splits of ``settings.replay_sets``, whose train-part bulks join the
    replay pool under the same rule.
    """
    sets = [references] if isinstance(references, ReferenceInputs) else list(references)
    replay_sets = replay_sets or []
    if [r.set_name for r in replay_sets] != settings.replay_sets:
        raise ValueError(
            f"replay set inputs {[r.set_name for r in replay_sets]} are not the settings' "
            f"replay_sets {settings.replay_sets}"
        )
    set_name = training_sets_name(sets)
    parent_model = load_model(parent, decode_checkpoint(parent_checkpoint))
    held_out = held_out_identities(
        (r.set_name, r.materials(), r.assignments) for r in [*sets, *replay_sets]
    )
    per_set: dict[str, dict[str, ReferenceData]] = {}
    for inputs in sets:
        leaking = leaking_materials(inputs.set_name, inputs.materials(), held_out)
        per_set[inputs.set_name] = {
            part: reference_data(
                inputs.docs,
                inputs.assignments,
                (part,),
                parent_model.graph_converter,
                zero_force_labels=settings.zero_force_labels,
                slab_keys=slab_keys if part == "train" else None,
                held_out=leaking if part == "train" else None,
            )
            for part in ("train", "val")
        }
    data = {
        part: merge_data([parts[part] for parts in per_set.values()]) for part in ("train", "val")
    }
    dropped: dict[str, list[str]] = {}
    replay_bulks = _replay_bulks(replay_sets, held_out, dropped) if settings.replay_weight else []
    heads = _heads(sets, settings.heads)
    if settings.recipe == "chgnet_trainer":  # the peer baseline fits energy-labelled data only
        data = {part: energy_labelled(part_data) for part, part_data in data.items()}
    folder = Path(work_dir) if work_dir else default_work_dir(set_name, parent, settings, slab_keys)
    logger.info(
        "fine-tuning %s on %s X=%d seed=%d in %s: train %s, val %s, heads %s",
        parent.model_id, set_name, settings.depth, settings.seed, folder,
        data["train"].counts(), data["val"].counts(), [h.name for h in heads],
    )  # fmt: skip

    def progress(r: Any) -> None:
        logger.info(
            "epoch %3d  loss %.4f  train E %.4f eV/atom  val E %.4f eV/atom  val gamma MAE "
            "%s J/m²%s%s  val F %s eV/Å  (%.1f s)",
            r.epoch, r.train_loss, r.train_energy_mae, r.val_energy_mae,
            "-" if r.val_gamma_mae is None else f"{r.val_gamma_mae:.3f}",
            "".join(
                f", {k} {v:.3f}" for k, v in r.val_gamma_mae_by_set.items() if v is not None
            ),
            _relaxed_text(r), "-" if r.val_force_mae is None else f"{r.val_force_mae:.3f}",
            r.seconds,
        )  # fmt: skip

    if settings.recipe == "chgnet_trainer":  # the peer baseline: chgnet's Trainer, one readout
        result = chgnet_trainer_finetune(
            parent_model, data["train"], data["val"], settings, folder, progress=progress
        )
    else:
        result = finetune(
            parent_model,
            data["train"],
            data["val"],
            settings,
            folder,
            progress=progress,
            heads=heads,
            replay_bulks=replay_bulks,
        )
    spec = ModelSpec(
        kind="checkpoint",
        sha256=file_sha256(result.best_checkpoint),
        head=result.default_head,
    )
    best = result.history[result.best_epoch]
    for part in data.values():
        for reason, keys in part.dropped.items():
            dropped.setdefault(reason, []).extend(keys)
    trained = result.history[1:]
    doc = FineTuneDoc(
        model_id=spec.model_id,
        model=spec.installed(),
        sha256=spec.sha256,
        parent_model_id=parent.model_id,
        parent=parent.installed(),
        set_name=set_name,
        set_names=[r.set_name for r in sets],
        level_of_theory=" + ".join(dict.fromkeys(r.docs[0].level_of_theory for r in sets)),
        split_id="+".join(str(r.split_id) for r in sets),
        heads={
            h.name: HeadDoc(
                level_of_theory=h.level_of_theory,
                sets=list(h.sets),
                atomref_shift=result.head_shifts[h.name],
            )
            for h in heads
        }
        if result.default_head
        else {},
        default_head=result.default_head,
        sweep=sweep,
        depth=settings.depth,
        trainable_modules=result.freeze.trainable_modules,
        frozen_modules=result.freeze.frozen_modules,
        trainable_parameters=result.freeze.trainable_parameters,
        atomref_shift=result.atomref_shift,
        hyperparameters=settings,
        n_train=data["train"].counts(),
        n_val=data["val"].counts(),
        n_train_by_set={n: parts["train"].counts() for n, parts in per_set.items()}
        if len(sets) > 1
        else {},
        n_val_by_set={n: parts["val"].counts() for n, parts in per_set.items()}
        if len(sets) > 1
        else {},
        replay_pool=result.replay_pool,
        train_keys=data["train"].keys,
        val_keys=data["val"].keys,
        dropped=dropped,
        n_dropped=len({key for keys in dropped.values() for key in keys}),
        history=result.history,
        best_epoch=result.best_epoch,
        best_val_gamma_mae=best.val_gamma_mae,
        best_val_relaxed_gamma_mae=best.val_relaxed_gamma_mae,
        best_val_energy_mae=best.val_energy_mae,
        stopped_early=result.stopped_early,
        resumed_from_epoch=result.resumed_from_epoch,
        setup_seconds=result.setup_seconds,
        mean_epoch_seconds=float(np.mean([r.seconds for r in trained])) if trained else None,
        wall_seconds=result.wall_seconds,
        checkpoint_b64=encode_checkpoint(result.best_checkpoint),
    )
    logger.info(
        "fine-tuned %s: best epoch %d, val gamma MAE %s J/m²%s",
        spec.model_id, result.best_epoch, best.val_gamma_mae,
        "" if best.val_relaxed_gamma_mae is None
        else f", relaxed {best.val_relaxed_gamma_mae:.3f} J/m² (selection {settings.selection})",
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
    """

    name: str = "finetune"
    parent: ModelSpec = field(default_factory=ModelSpec)
    settings: FineTuneSettings = field(default_factory=FineTuneSettings)
    work_dir: str | None = None
    sweep: str | None = None

    def make(
        self,
        references: ReferenceInputs | list[ReferenceInputs],
        slab_keys: list[str] | OutputReference | None = None,
        parent_checkpoint: str | OutputReference | None = None,
        replay_sets: list[ReferenceInputs] | None = None,
    ) -> Job:
        """The fine-tune job; its output is the :class:`FineTuneDoc`.

        Parameters
        ----------
        references
            The set's documents and split (:func:`surfflows.io.inputs.reference_inputs`),
            or several sets' (one head per level of theory, ``settings.heads``).
        slab_keys
            Train only on these slabs of the train part (a selection's reference keys,
            or a reference to them) and their bulks; None: the whole train part.
        parent_checkpoint
            The parent's checkpoint bytes (base64 or a reference) if it is fine-tuned.
        replay_sets
            Documents and splits of ``settings.replay_sets``
            (:func:`surfflows.io.inputs.reference_inputs`).
        """
        new = finetune_checkpoint(
            references,
            self.parent,
            self.settings,
            self.work_dir,
            self.sweep,
            slab_keys,
            parent_checkpoint,
            replay_sets or None,
        )
        depth, seed = f"X={self.settings.depth}", f"seed={self.settings.seed}"
        new.name = job_name(self.name, training_sets_name(references), depth, seed)
        return new


#: Bulk energies (and forces) per (model_id, reference keys): a sweep computes its parent's once.
_BULK_PREDICTIONS: dict[tuple[str, tuple[str, ...]], tuple[np.ndarray, np.ndarray | None]] = {}


def _bulk_predictions(
    spec: ModelSpec, docs: list[ReferenceBulkDoc]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Energies per atom and, if every cell has reference forces, forces of some bulks.

    Cached per model and process. The model must be loaded (:func:`load_model`) already.
    """
    cache_key = (spec.model_id, tuple(d.key for d in docs))
    if cache_key not in _BULK_PREDICTIONS:
        structures = [d.structure.copy() for d in docs]
        with_forces = all(d.ref_forces is not None for d in docs)
        predictions = load_model(spec).predict_structure(
            structures, task="ef" if with_forces else "e", batch_size=16
        )
        if len(structures) == 1:
            predictions = [predictions]
        energies = np.array([float(p["e"]) for p in predictions])
        forces = np.concatenate([p["f"] for p in predictions]) if with_forces else None
        _BULK_PREDICTIONS[cache_key] = (energies, forces)
    return _BULK_PREDICTIONS[cache_key]


def bulk_set_errors(
    name: str,
    eval_docs: list[ReferenceBulkDoc],
    fit_docs: list[ReferenceBulkDoc],
    model: ModelSpec,
    parent: ModelSpec,
    alignment: str,
) -> BulkSetErrors:
    """Aligned energy errors (and force errors where labelled) of a model and its parent.

    Per-element offsets are fitted for each model on ``fit_docs`` and the residual MAE per
    atom is taken over ``eval_docs`` (see :func:`~surfflows.core.benchmark.aligned_energy_mae`).
    """
    same = [d.key for d in fit_docs] == [d.key for d in eval_docs]
    ref = np.array([d.ref_energy / d.n_atoms for d in eval_docs])
    fit_ref = np.array([d.ref_energy / d.n_atoms for d in fit_docs])
    comps = [d.structure.composition.as_dict() for d in eval_docs]
    fit_comps = [d.structure.composition.as_dict() for d in fit_docs]
    out: dict[str, Any] = {}
    for who, spec in (("model", model), ("parent", parent)):
        energies, forces = _bulk_predictions(spec, eval_docs)
        fit_energies = energies if same else _bulk_predictions(spec, fit_docs)[0]
        mae, n_used, n_elements = aligned_energy_mae(
            fit_comps, fit_ref - fit_energies, comps, ref - energies
        )
        out[who] = mae
        if forces is not None:
            ref_forces = np.concatenate([d.ref_forces for d in eval_docs])
            out[f"{who}_force"] = float(np.abs(forces - ref_forces).mean())
    return BulkSetErrors(
        name=name,
        level_of_theory=eval_docs[0].level_of_theory,
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
    references: ReferenceInputs | list[ReferenceInputs],
    bulk_sets: list[ReferenceInputs],
    checkpoint: str | None = None,
    parent_checkpoint: str | None = None,
) -> ForgettingDoc:
    """Bulk energy errors of ``model`` and ``parent`` on bulks ``model`` never saw.

    * each set of ``bulk_sets`` (all its unflagged bulk cells): per-element offsets fitted
      on the set itself, per model;
    * ``<set>:test``: the bulk cells of the test materials of each training set of
      ``references`` (one or several). Fitting offsets on them is underdetermined
      (JARVIS: 47 cells, 50 elements), so the offsets are fitted on the set's train-part
      bulks and cells with other elements are left out.

    ``checkpoint`` and ``parent_checkpoint``: base64 checkpoints of fine-tuned models.
    """
    load_model(model, decode_checkpoint(checkpoint))
    load_model(parent, decode_checkpoint(parent_checkpoint))
    sets = []
    for bulk_set in bulk_sets:
        docs = [d for d in bulk_set.of_type("bulk") if not d.flags]
        sets.append(
            bulk_set_errors(bulk_set.set_name, docs, docs, model, parent, bulk_set.set_name)
        )
    for training in [references] if isinstance(references, ReferenceInputs) else references:
        set_name = training.set_name
        bulks = [d for d in training.of_type("bulk") if not d.flags]
        parts = {
            part: [d for d in bulks if training.assignments.get(d.material_id) == part]
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
        model=model.installed(),
        parent_model_id=parent.model_id,
        sets=sets,
        max_relative_change=max(
            (s.relative_change for s in sets if s.relative_change is not None), default=None
        ),
    )
