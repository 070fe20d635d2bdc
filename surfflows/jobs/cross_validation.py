"""Jobs and helpers of element-wise k-fold cross-validation of a fine-tuning recipe.

The flow is :class:`surfflows.flows.cross_validation.CrossValidationMaker`: it splits a
reference set into k folds by element (by material for compounds,
:mod:`surfflows.core.folds`; :func:`fold_inputs`) and, for each fold, fine-tunes the parent
on the other folds but one, keeps the epoch on that one (the next fold), and evaluates the
held-out fold in both modes. :func:`cross_validation_summary` gives each fold's held-out
gamma (MAE, mean signed error, MAPE, per element), the mean ± std over folds, and the epoch
count for a final model chosen from the folds' validation curves.

The stored seed-0 split of the set is not used: the folds are the split, and every slab
of the set is held out in exactly one fold.
"""

from __future__ import annotations

from typing import Any

from jobflow import job

from surfflows.core.folds import (
    aligned_assignments,
    choose_epochs,
    fold_groups,
    fold_parts,
    gamma_errors,
    gamma_statistics,
    kfold_assignments,
    mean_std,
)
from surfflows.schemas.cross_validation import (
    CrossValidationDoc,
    FoldDoc,
    FoldSummary,
    GammaFigures,
    MeanStd,
)
from surfflows.schemas.evaluate import EvaluationDoc
from surfflows.schemas.finetune import EpochRecord
from surfflows.schemas.references import ReferenceInputs

MODES = ("single_point", "relaxed")


def fold_inputs(references: ReferenceInputs, k: int, fold: int, seed: int) -> ReferenceInputs:
    """The set's documents with fold ``fold``'s split (held out: ``test``, selection:
    ``val``), named ``<set>:cv<k>seed<seed>:fold<fold>``."""
    folds = kfold_assignments(references.materials(), k, seed)
    return references.model_copy(
        update={
            "assignments": fold_parts(folds, fold, k),
            "split_id": f"{references.set_name}:cv{k}seed{seed}:fold{fold}",
        }
    )


def every_material(references: ReferenceInputs) -> ReferenceInputs:
    """The set with every material in ``train`` (``<set>:all``): the final model of a
    cross-validation trains on all folds, for the epoch count the folds chose."""
    return references.model_copy(
        update={
            "assignments": {d.material_id: "train" for d in references.docs},
            "split_id": f"{references.set_name}:all",
        }
    )


def aligned_replay(
    replay_sets: list[ReferenceInputs] | None, references: ReferenceInputs
) -> list[ReferenceInputs] | None:
    """Replay sets whose splits agree with ``references``' (a fold's or every material's):
    their materials shared with it (:func:`~surfflows.core.folds.aligned_assignments`) take
    its parts, so a held-out element stays out and a trained one is not dropped."""
    if not replay_sets:
        return replay_sets
    return [
        r.model_copy(
            update={
                "assignments": aligned_assignments(
                    r.materials(), r.assignments, references.materials(), references.assignments
                ),
                "split_id": f"{r.split_id}~{references.split_id}",
            }
        )
        for r in replay_sets
    ]


def _energies(evaluations: list[dict[str, Any]], mode: str) -> dict[str, dict[str, Any]]:
    """reference key -> energy document of one mode's evaluation documents."""
    out = {}
    for doc in evaluations:
        doc = doc.model_dump() if isinstance(doc, EvaluationDoc) else doc
        if doc["mode"] == mode:
            out.update({r["reference_key"]: r for r in doc["results"]})
    return out


def _figures(rows: list[dict[str, Any]]) -> GammaFigures:
    return GammaFigures(**gamma_statistics(rows))


def _summary(folds: list[dict[str, GammaFigures]], mode: str) -> FoldSummary:
    def over(name: str) -> MeanStd:
        return MeanStd(**mean_std(getattr(f[mode], name) for f in folds if mode in f))

    return FoldSummary(
        mae=over("mae"), mean_signed_error=over("mean_signed_error"), mape=over("mape")
    )


@job(output_schema=CrossValidationDoc)
def cross_validation_summary(
    references: ReferenceInputs,
    k: int,
    seed: int,
    parent_model_id: str,
    settings: Any,
    replay_sets: list[str],
    finetunes: list[dict[str, Any]],
    evaluations: list[list[dict[str, Any]]],
    parent_evaluations: list[dict[str, Any]],
) -> CrossValidationDoc:
    """Each fold's held-out figures, their mean ± std, the final model's epoch count.

    Parameters
    ----------
    references
        The set's documents.
    k, seed
        Folds and fold seed.
    parent_model_id, settings, replay_sets
        What was fine-tuned and how (recorded).
    finetunes
        Per fold: ``model_id``, ``best_epoch``, ``history``, ``n_train``, ``wall_seconds``
        of its :class:`~surfflows.schemas.finetune.FineTuneDoc`.
    evaluations
        Per fold: the fold model's evaluation documents of its held-out fold.
    parent_evaluations
        The parent's evaluation documents covering the set's slabs (empty: no parent rows).
    """
    folds = kfold_assignments(references.materials(), k, seed)
    groups = fold_groups(references.materials())
    docs = []
    all_rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    parent_figures: list[dict[str, GammaFigures]] = []
    for i, (tuned, evaluation) in enumerate(zip(finetunes, evaluations, strict=True)):
        parts = fold_parts(folds, i, k)
        held = [  # as stored: the builders' gamma errors (core.benchmark) read stored JSON
            d.model_dump(mode="json") for d in references.docs if parts.get(d.material_id) == "test"
        ]
        in_part = {
            p: sorted({groups[m] for m, q in parts.items() if q == p}) for p in parts.values()
        }
        figures, by_group, excluded, parent = {}, {}, {}, {}
        for mode in MODES:
            energies = _energies(evaluation, mode)
            if not energies:
                continue
            rows = gamma_errors(held, energies, groups)
            all_rows[mode].extend(rows)
            figures[mode] = _figures(rows)
            by_group[mode] = {
                g: _figures([r for r in rows if r["group"] == g])
                for g in sorted({r["group"] for r in rows})
            }
            excluded[mode] = sum(r["gamma_error"] is None for r in rows)
            parent_energies = _energies(parent_evaluations, mode)
            if parent_energies:
                parent[mode] = _figures(gamma_errors(held, parent_energies, groups))
        parent_figures.append(parent)
        docs.append(
            FoldDoc(
                fold=i,
                held_out=[g.removeprefix("element:") for g in in_part.get("test", [])],
                val=[g.removeprefix("element:") for g in in_part.get("val", [])],
                n_train_groups=len(in_part.get("train", [])),
                model_id=tuned["model_id"],
                n_train=tuned["n_train"],
                best_epoch=tuned["best_epoch"],
                val_gamma_mae_per_epoch=[
                    EpochRecord.model_validate(r).val_gamma_mae for r in tuned["history"]
                ],
                wall_seconds=tuned["wall_seconds"],
                figures=figures,
                parent_figures=parent,
                by_group=by_group,
                n_excluded=excluded,
            )
        )
    fold_figures = [d.figures for d in docs]
    modes = [m for m in MODES if any(m in f for f in fold_figures)]
    gap = None
    if set(modes) == set(MODES):
        gap = MeanStd(
            **mean_std(
                f["relaxed"].mae - f["single_point"].mae
                for f in fold_figures
                if f["relaxed"].mae is not None and f["single_point"].mae is not None
            )
        )
    curves = [d.val_gamma_mae_per_epoch for d in docs]
    n_epochs = max(len(c) for c in curves)
    mean_curve = [mean_std(c[e] for c in curves if e < len(c))["mean"] for e in range(n_epochs)]
    return CrossValidationDoc(
        set_name=references.set_name,
        k=k,
        fold_seed=seed,
        parent_model_id=parent_model_id,
        settings=settings,
        replay_sets=replay_sets,
        folds=docs,
        summary={m: _summary(fold_figures, m) for m in modes},
        parent_summary={
            m: _summary(parent_figures, m) for m in modes if any(m in p for p in parent_figures)
        },
        pooled={m: _figures(all_rows[m]) for m in modes},
        by_group={
            m: {
                g: _figures([r for r in all_rows[m] if r["group"] == g])
                for g in sorted({r["group"] for r in all_rows[m]})
            }
            for m in modes
        },
        relaxed_minus_single_point=gap,
        mean_val_curve=mean_curve,
        chosen_epochs=choose_epochs(curves),
    )
