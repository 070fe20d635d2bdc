"""PNG plots of benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from surfflows.analysis.wulff import wulff_shape
from surfflows.core.benchmark import summarize
from surfflows.core.text import miller_text

if TYPE_CHECKING:
    from surfflows.schemas.thermo import SurfacePropertiesDoc, SurfaceThermoDoc

CLASS_COLOURS = {"oxide": "tab:red", "metal": "tab:blue", "other": "tab:green"}


def parity_plot(
    errors: list[dict[str, Any]], path: str | Path, title: str, attribution: str = ""
) -> Path:
    """Model versus reference surface energy, one point per slab, coloured by chemistry.

    Parameters
    ----------
    errors
        Surface-error documents with ``status == "ok"`` (others are ignored).
    path
        PNG file to write.
    title
        Plot title (model, set, mode, split).
    attribution
        Source of the reference data, printed under the axes.
    """
    ok = [e for e in errors if e["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=120)
    for chem, colour in CLASS_COLOURS.items():
        rows = [e for e in ok if e["chemistry_class"] == chem]
        if rows:
            ax.scatter(
                [e["gamma_ref"] for e in rows],
                [e["gamma_model"] for e in rows],
                s=14,
                alpha=0.7,
                color=colour,
                label=f"{chem} ({len(rows)})",
            )
    values = [e["gamma_ref"] for e in ok] + [e["gamma_model"] for e in ok]
    hi = max(values, default=1.0) * 1.05
    lo = min(0.0, min(values, default=0.0))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    stats = summarize(e["gamma_error"] for e in ok)
    if stats["n"]:
        ax.text(
            0.04,
            0.96,
            f"N = {stats['n']}\nMAE = {stats['mae']:.3f} J/m²\n"
            f"mean signed = {stats['mean_signed_error']:+.3f} J/m²",
            transform=ax.transAxes,
            va="top",
        )
    ax.set_xlabel("reference γ (J/m²)")
    ax.set_ylabel("model γ (J/m²)")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=6, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path.resolve()


def facet_colours(miller_indices: Iterable[Sequence[int]]) -> dict[tuple[int, ...], tuple]:
    """One colour per facet (sorted Miller indices, tab10 then tab20), shared by all plots."""
    facets = sorted({tuple(hkl) for hkl in miller_indices})
    cmap = plt.get_cmap("tab10" if len(facets) <= 10 else "tab20")
    return {hkl: cmap(i % cmap.N) for i, hkl in enumerate(facets)}


def surface_phase_diagram_plot(doc: SurfaceThermoDoc, path: str | Path) -> Path:
    """gamma versus delta mu_O: one thin line per termination, the stable ones thick.

    Parameters
    ----------
    doc
        Surface-thermodynamics document with a delta mu_O range.
    path
        PNG file to write.

    Returns
    -------
    Path
        Absolute path of the PNG.
    """
    lo, hi = doc.delta_mu_O_range
    x = np.array([lo, hi])
    colours = facet_colours(line.miller_index for line in doc.lines)
    styles = ["--", ":", "-.", (0, (5, 1, 1, 1)), (0, (1, 3))]
    seen: dict[tuple[int, ...], int] = {}
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for line in doc.lines:
        hkl = tuple(line.miller_index)
        style = styles[seen.get(hkl, 0) % len(styles)]
        seen[hkl] = seen.get(hkl, 0) + 1
        ax.plot(
            x,
            line.gamma_0 + line.slope * x,
            color=colours[hkl],
            lw=1.1,
            ls=style,
            alpha=0.8,
            label=f"{miller_text(hkl)} {line.termination} {line.slab_formula}",
        )
    for row in doc.stable:
        ax.plot(
            [row.delta_mu_O_from, row.delta_mu_O_to],
            [row.gamma_from, row.gamma_to],
            color=colours[tuple(row.miller_index)],
            lw=4,
            solid_capstyle="butt",
        )
    ax.axhline(0, color="k", lw=0.6)
    for limit, text in ((doc.delta_mu_O_min, "O-poor"), (doc.delta_mu_O_max, "O-rich")):
        if limit is not None and lo <= limit <= hi:
            ax.axvline(limit, color="0.4", lw=0.8, ls="--")
            ax.annotate(
                text,
                (limit, 1.0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    ax.set_xlim(lo, hi)
    ax.set_xlabel("Δμ_O (eV),  μ_O = E(O₂)/2 + Δμ_O")
    ax.set_ylabel("γ (J/m²)")
    ax.set_title(
        f"{doc.formula} ({doc.material_id}), {doc.model_id}: thick = stable termination",
        fontsize=9,
        pad=14,
    )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def _wulff_figure(
    doc: SurfacePropertiesDoc, colours: dict[tuple[int, ...], tuple] | None = None
) -> plt.Figure:
    """pymatgen's WulffShape matplotlib plot of a document (facets coloured by Miller index)."""
    colours = colours or facet_colours(s.miller_index for s in doc.surfaces)
    ax = wulff_shape(doc).get_plot(
        direction=(1, 1, 1),  # oblique view: three facet families visible
        bar_on=False,
        legend_on=True,
        aspect_ratio=(6, 6),
        custom_colors=colours,
    )
    fig = ax.get_figure()
    fig.set_dpi(100)
    return fig


def _wulff_title(name: str, doc: SurfacePropertiesDoc) -> str:
    mu = "" if doc.delta_mu_O is None else f", Δμ_O = {doc.delta_mu_O:+.2f} eV"
    return (
        f"{name}{mu}\nγ_w = {doc.weighted_surface_energy:.3f} J/m², "
        f"shape factor {doc.shape_factor:.2f}, anisotropy {doc.surface_anisotropy:.3f}"
    )


def wulff_plot(doc: SurfacePropertiesDoc, path: str | Path) -> Path | None:
    """PNG of the Wulff shape of a document; None if it has none (see ``doc.note``)."""
    if doc.weighted_surface_energy is None:
        return None
    fig = _wulff_figure(doc)
    fig.suptitle(_wulff_title(f"{doc.pretty_formula} ({doc.material_id}), {doc.model_id}", doc))
    return _save(fig, path)


def _trim(image: np.ndarray, margin: int = 10) -> np.ndarray:
    """Crop the white border of an RGB(A) image array, keeping ``margin`` pixels."""
    ink = np.argwhere(image[..., :3].min(axis=-1) < 0.98)
    if len(ink) == 0:
        return image
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0)
    return image[
        max(top - margin, 0) : bottom + margin + 1, max(left - margin, 0) : right + margin + 1
    ]


def wulff_comparison_plot(
    docs: Sequence[tuple[str, SurfacePropertiesDoc]], path: str | Path, caption: str = ""
) -> Path:
    """Wulff shapes side by side (e.g. DFT reference and models), facets in shared colours.

    Parameters
    ----------
    docs
        ``(panel title, Wulff document)`` pairs; documents without a shape show their note.
    path
        PNG file to write.
    caption
        Text under the panels (e.g. the reference data's citation).
    """
    colours = facet_colours(s.miller_index for _, doc in docs for s in doc.surfaces)
    fig, axes = plt.subplots(
        1, len(docs), figsize=(5 * len(docs), 5.6), dpi=120, squeeze=False, layout="constrained"
    )
    for ax, (name, doc) in zip(axes[0], docs, strict=True):
        ax.set_axis_off()
        if doc.weighted_surface_energy is None:
            ax.text(0.5, 0.5, f"{name}\n{doc.note}", ha="center", va="center", wrap=True)
            continue
        panel = _wulff_figure(doc, colours)
        buffer = io.BytesIO()
        panel.savefig(buffer, format="png")
        plt.close(panel)
        buffer.seek(0)
        ax.imshow(_trim(plt.imread(buffer)))
        ax.set_title(_wulff_title(name, doc), fontsize=9)
    if caption:
        fig.supxlabel(caption, fontsize=7, color="0.3")
    return _save(fig, path)


def finetune_depth_plot(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str, attribution: str = ""
) -> Path:
    """Gamma MAE versus fine-tuning depth X beside the zero-shot parent.

    Parameters
    ----------
    rows
        Sweep rows (:func:`surfflows.reports.finetune.sweep_summary`): ``depth`` (None for the
        parent), ``val_mae``, ``test_mae`` (J/m²); one point per checkpoint (seed), a line
        through the mean per X.
    path
        PNG file to write.
    title
        Plot title (set and mode).
    attribution
        Source of the reference data, printed under the axes.
    """
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    tuned = [r for r in rows if r["depth"] is not None]
    for part, colour in (("test", "tab:red"), ("val", "tab:blue")):
        points = [(r["depth"], r[f"{part}_mae"]) for r in tuned if r[f"{part}_mae"] is not None]
        if points:
            depths = sorted({d for d, _ in points})
            means = [np.mean([m for d, m in points if d == depth]) for depth in depths]
            ax.scatter(*zip(*points, strict=True), color=colour, s=16, alpha=0.6)
            ax.plot(depths, means, "-o", color=colour, label=f"fine-tuned, {part}")
        for r in rows:
            if r["depth"] is None and r[f"{part}_mae"] is not None:
                ax.axhline(
                    r[f"{part}_mae"],
                    color=colour,
                    ls="--",
                    lw=1,
                    label=f"zero-shot {r['model_id']}, {part}",
                )
    ax.set_xlabel("X (trainable units from the readout backwards)")
    ax.set_ylabel("γ MAE (J/m²)")
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=6, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def finetune_curves_plot(docs: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Training loss and validation gamma MAE per epoch of fine-tuned checkpoints.

    Runs that computed relaxed-mode validation gamma (``selection`` relaxed) get it as a
    dashed line beside the single-point one; the dot marks the kept epoch on the curve
    that selected it.

    Parameters
    ----------
    docs
        FineTuneDoc dictionaries (``depth``, ``history``, ``best_epoch``, ``hyperparameters``).
    path
        PNG file to write.
    title
        Plot title.
    """
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=120)
    depths = sorted({d["depth"] for d in docs})
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(len(depths), 1)))
    for doc in sorted(docs, key=lambda d: (d["depth"], d["hyperparameters"]["seed"])):
        colour = colours[depths.index(doc["depth"])]
        label = f"X={doc['depth']} seed {doc['hyperparameters']['seed']}"
        epochs = [r["epoch"] for r in doc["history"]]
        loss_ax.plot(epochs, [r["train_loss"] for r in doc["history"]], color=colour, label=label)
        val = [np.nan if r["val_gamma_mae"] is None else r["val_gamma_mae"] for r in doc["history"]]
        val_ax.plot(epochs, val, color=colour, label=label)
        relaxed = [r.get("val_relaxed_gamma_mae") for r in doc["history"]]
        if any(v is not None for v in relaxed):
            relaxed = [np.nan if v is None else v for v in relaxed]
            val_ax.plot(
                epochs, relaxed, "--", color=colour, label=f"{label}, relaxed (selection slabs)"
            )
        if doc["hyperparameters"].get("selection") == "relaxed":
            val = [np.nan if v is None else v for v in relaxed]
        val_ax.plot([doc["best_epoch"]], [val[doc["best_epoch"]]], "o", color=colour)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("training loss")
    val_ax.set_xlabel("epoch (dot: selected)")
    val_ax.set_ylabel("validation γ MAE (J/m²)")
    val_ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def learning_curve_plot(summary: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    """Test gamma MAE versus training budget, mean ± standard deviation over seeds."""
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for method, colour in (("direct", "tab:red"), ("random", "tab:blue")):
        rows = sorted((r for r in summary if r["method"] == method), key=lambda r: r["budget"])
        if rows:
            ax.errorbar(
                [r["budget"] for r in rows],
                [r["test_mae_mean"] for r in rows],
                yerr=[r["test_mae_std"] for r in rows],
                marker="o",
                capsize=3,
                color=colour,
                label=f"{method} ({rows[0]['n_seeds']} seeds)",
            )
    ax.set_xscale("log")
    ax.set_xlabel("training slabs (with their bulks)")
    ax.set_ylabel("test γ MAE (J/m²)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    return _save(fig, path)


def coverage_plot(
    pca_features: np.ndarray, selections: dict[str, Sequence[int]], path: str | Path, title: str
) -> Path:
    """The pool in its first two weighted principal components, with selected slabs marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    ax.scatter(pca_features[:, 0], pca_features[:, 1], s=10, color="0.75", label="pool")
    for (label, indexes), style in zip(
        selections.items(), (("tab:red", "o"), ("tab:blue", "x")), strict=False
    ):
        ax.scatter(
            pca_features[indexes, 0],
            pca_features[indexes, 1],
            s=28,
            color=style[0],
            marker=style[1],
            label=label,
        )
    ax.set_xlabel("PC1 (weighted)")
    ax.set_ylabel("PC2 (weighted)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return _save(fig, path)


def leaderboard_plot(
    rows: Sequence[dict[str, Any]], path: str | Path, title: str, attribution: str = ""
) -> Path:
    """Grouped bars per reference set: gamma MAE (top) and seconds per structure (bottom).

    Parameters
    ----------
    rows
        Leaderboard rows (:func:`surfflows.reports.leaderboard.leaderboard`).
    path
        PNG file to write.
    title
        Figure title (split part, machine).
    attribution
        Source of the reference data, printed under the axes.
    """
    sets = sorted({r["set_name"] for r in rows})
    models = sorted({r["model_id"] for r in rows})
    modes = ("single_point", "relaxed")
    fig, axes = plt.subplots(
        2, len(sets), figsize=(4.5 * len(sets) + 1, 6.5), squeeze=False, sharex="col"
    )
    width = 0.8 / max(len(models), 1)
    colours = plt.get_cmap("tab10")
    for col, set_name in enumerate(sets):
        for i, model in enumerate(models):
            found = {
                r["mode"]: r for r in rows if r["set_name"] == set_name and r["model_id"] == model
            }
            x = np.arange(len(modes)) + (i - (len(models) - 1) / 2) * width
            mae, mse, cost = (
                [np.nan if (v := (found.get(m) or {}).get(key)) is None else v for m in modes]
                for key in ("mae", "mean_signed_error", "seconds_per_structure")
            )
            name = next((r.get("model", model) for r in found.values()), model)
            label = model if name == model else f"{name}\n({model})"
            axes[0, col].bar(x, mae, width, color=colours(i), label=label)
            axes[0, col].scatter(x, mse, color="k", marker="_", s=120, zorder=3)
            axes[1, col].bar(x, cost, width, color=colours(i))
        n = max((r["n"] for r in rows if r["set_name"] == set_name), default=0)
        axes[0, col].set_title(f"{set_name} (N = {n} slabs)")
        axes[0, col].axhline(0.0, color="0.5", lw=0.8)
        axes[1, col].set_yscale("log")
        axes[1, col].set_xticks(np.arange(len(modes)), ["single point", "relaxed"])
    axes[0, 0].set_ylabel("γ MAE (bars), mean signed error (—), J/m²")
    axes[1, 0].set_ylabel("seconds per structure")
    axes[0, -1].legend(fontsize=8)
    fig.suptitle(title)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=7, color="0.4")
    return _save(fig, path)


def _mean_std(node: dict[str, Any] | None) -> tuple[float, float]:
    """(mean, std) of a ``{"mean", "std"}`` node; NaN where missing, std 0 for one seed."""
    if not node or node.get("mean") is None:
        return np.nan, 0.0
    return node["mean"], node.get("std") or 0.0


def recipes_plot(
    summary: dict[str, dict[str, Any]],
    sets: Sequence[str],
    path: str | Path,
    title: str,
    attribution: str = "",
) -> Path:
    """Fine-tuning recipes side by side: test gamma MAE, forgetting, relaxation steps.

    Parameters
    ----------
    summary
        Recipe (and ``parent``) -> means ± std over seeds (``benchmarks/finetune_recipes.py``):
        ``test.<set>.<mode>.mae``, ``forgetting.<bulk set>.relative_change`` and
        ``force_relative_change``, ``steps.test_all.median`` / ``mean``, each a
        ``{"mean", "std"}`` node.
    sets
        Test sets, in the order shown.
    path
        PNG file to write.
    title
        Plot title.
    attribution
        Source of the reference data, printed under the axes.
    """
    names = list(summary)
    colours = plt.cm.tab10(np.arange(len(names)) % 10)
    modes = ("single_point", "relaxed")
    fig, (gamma_ax, forget_ax, steps_ax) = plt.subplots(
        1, 3, figsize=(15, 4.6), dpi=120, gridspec_kw={"width_ratios": [3, 2, 1]}
    )
    width = 0.8 / max(len(names), 1)
    groups = [(s, m) for s in sets for m in modes]
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        test = summary[name].get("test", {})
        values = [_mean_std(test.get(s, {}).get(m, {}).get("mae")) for s, m in groups]
        x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        gamma_ax.bar(
            x, [v for v, _ in values], width, yerr=[e for _, e in values], color=colour,
            label=name, capsize=2,
        )  # fmt: skip
    gamma_ax.set_xticks(np.arange(len(groups)))
    gamma_ax.set_xticklabels(
        [
            f"{s.replace('_surfaces', '')}\n{'single point' if m == 'single_point' else 'relaxed'}"
            for s, m in groups
        ],
        fontsize=7,
    )
    gamma_ax.set_ylabel("test γ MAE (J/m²)")
    gamma_ax.legend(fontsize=7)

    bulk_sets = sorted({b for n in names for b in summary[n].get("forgetting", {})})
    quantities = [(b, "relative_change", b) for b in bulk_sets]
    quantities += [
        (b, "force_relative_change", f"{b} forces")
        for b in bulk_sets
        if any(
            "force_relative_change" in summary[n].get("forgetting", {}).get(b, {}) for n in names
        )
    ]
    tuned = [n for n in names if n != "parent"]
    width_f = 0.8 / max(len(tuned), 1)
    for i, name in enumerate(tuned):
        forgetting = summary[name].get("forgetting", {})
        values = [_mean_std(forgetting.get(b, {}).get(q)) for b, q, _ in quantities]
        x = np.arange(len(quantities)) + (i - (len(tuned) - 1) / 2) * width_f
        forget_ax.bar(
            x,
            [100 * v for v, _ in values],
            width_f,
            yerr=[100 * e for _, e in values],
            color=colours[names.index(name)],
            capsize=2,
        )
    forget_ax.axhline(0, color="k", lw=0.8)
    forget_ax.axhline(5, color="0.4", ls="--", lw=0.8, label="+5 % target")
    forget_ax.set_xticks(np.arange(len(quantities)))
    forget_ax.set_xticklabels([label for _, _, label in quantities], fontsize=7, rotation=20)
    forget_ax.set_ylabel("bulk MAE change vs parent (%)")
    forget_ax.legend(fontsize=7)

    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        steps = summary[name].get("steps", {}).get("test_all", {})
        for j, stat in enumerate(("median", "mean")):
            value, error = _mean_std(steps.get(stat))
            x = j + (i - (len(names) - 1) / 2) * width
            steps_ax.bar(x, value, width, yerr=error, color=colour, capsize=2)
    steps_ax.set_xticks([0, 1])
    steps_ax.set_xticklabels(["median", "mean"])
    steps_ax.set_ylabel("relaxation steps per test slab")
    fig.suptitle(title, fontsize=9)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=6, color="0.3")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    return _save(fig, path)


def recipes_proxy_plot(
    points: Sequence[dict[str, Any]],
    correlations: dict[str, dict[str, Any]],
    path: str | Path,
    training_set: str,
) -> Path:
    """Validation force norm at DFT minima against the relaxed - single point gamma gap.

    Parameters
    ----------
    points
        One per model: ``recipe``, ``val_force_norm`` (eV/Å), ``val_gap`` and ``test_gap``
        (relaxed minus single-point gamma MAE, J/m²).
    correlations
        ``val_gap`` / ``test_gap`` -> ``n``, ``pearson``, ``spearman``.
    path
        PNG file to write.
    training_set
        Set whose val and test parts the gaps are of.
    """
    recipes = list(dict.fromkeys(p["recipe"] for p in points))
    colours = dict(zip(recipes, plt.cm.tab10(np.arange(len(recipes)) % 10), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), dpi=120)
    for ax, target in zip(axes, ("val_gap", "test_gap"), strict=True):
        for recipe in recipes:
            xy = [
                (p["val_force_norm"], p[target])
                for p in points
                if p["recipe"] == recipe and None not in (p["val_force_norm"], p[target])
            ]
            if xy:
                ax.scatter(*zip(*xy, strict=True), color=colours[recipe], label=recipe, s=25)
        c = correlations.get(target, {})
        text = f"N={c.get('n', 0)}"
        for key in ("pearson", "spearman"):
            if c.get(key) is not None:
                text += f", {key} {c[key]:+.2f}"
        ax.set_title(f"{training_set} {target.split('_')[0]}: {text}", fontsize=8)
        ax.set_xlabel("val force norm at DFT minima (eV/Å)")
        ax.set_ylabel("relaxed − single point γ MAE (J/m²)")
        ax.axhline(0, color="0.5", lw=0.8)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def cross_validation_plot(
    recipes: dict[str, dict[str, Any]], path: str | Path, attribution: str = ""
) -> Path:
    """Recipes compared by element-wise k-fold cross-validation.

    Left: held-out gamma MAE per fold (dots) and mean ± std over folds (bars) in both
    modes, the parent's mean as a dashed line. Right: held-out mean signed error per
    element (relaxed mode), one row of bars per recipe.

    Parameters
    ----------
    recipes
        recipe name -> its CrossValidationDoc (as JSON).
    path
        PNG file to write.
    attribution
        Source of the reference data, printed under the axes.
    """
    names = list(recipes)
    modes = ("single_point", "relaxed")
    fig, (left, right) = plt.subplots(1, 2, figsize=(15, 5), gridspec_kw={"width_ratios": [1, 2.4]})
    colours = plt.get_cmap("tab10")
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        doc = recipes[name]
        x = np.arange(len(modes)) + (i - (len(names) - 1) / 2) * width
        means = [_mean_std((doc["summary"].get(m) or {}).get("mae")) for m in modes]
        left.bar(
            x, [m for m, _ in means], width, yerr=[s for _, s in means], capsize=3,
            color=colours(i), alpha=0.6, label=f"{name} ({len(doc['folds'])} folds)",
        )  # fmt: skip
        for j, mode in enumerate(modes):
            values = [f["figures"][mode]["mae"] for f in doc["folds"] if mode in f["figures"]]
            left.scatter([x[j]] * len(values), values, color="k", s=10, zorder=3)
    parent = next((d["parent_summary"] for d in recipes.values() if d["parent_summary"]), {})
    for j, mode in enumerate(modes):
        value = _mean_std((parent.get(mode) or {}).get("mae"))[0]
        left.hlines(value, j - 0.45, j + 0.45, colors="0.3", linestyles="--")
    left.set_xticks(np.arange(len(modes)), ["single point", "relaxed"])
    left.set_ylabel("held-out γ MAE, J/m² (dashed: zero-shot parent)")
    left.legend(fontsize=8)
    elements = sorted({g for d in recipes.values() for g in d["by_group"].get("relaxed", {})})
    ex = np.arange(len(elements))
    for i, name in enumerate(names):
        groups = recipes[name]["by_group"].get("relaxed", {})
        values = [  # NaN: not held out by this recipe's folds, or no slab with a gamma error
            np.nan if (groups.get(e) or {}).get("mean_signed_error") is None
            else groups[e]["mean_signed_error"]
            for e in elements
        ]  # fmt: skip
        right.bar(ex + (i - (len(names) - 1) / 2) * width, values, width, color=colours(i))
    right.axhline(0.0, color="0.5", lw=0.8)
    right.set_xticks(ex, elements, fontsize=8)
    right.set_ylabel("held-out mean signed γ error (relaxed), J/m²")
    fig.suptitle("element-wise cross-validation: every element held out once")
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=7, color="0.4")
    return _save(fig, path)


def element_learning_curve_plot(
    curve: dict[str, Any],
    path: str | Path,
    parent: dict[str, Any] | None = None,
    title: str = "",
    attribution: str = "",
) -> Path:
    """Held-out gamma MAE and MAPE against the number of training elements (one point per
    fold count, error bars: std over folds), the power-law fits extended to their targets
    (dotted), the targets (dashed) and the zero-shot parent (grey).

    Parameters
    ----------
    curve
        :func:`surfflows.reports.finetune.element_learning_curve`'s result.
    path
        PNG file to write.
    parent
        mode -> the parent's fold summary (``parent_summary`` of a CrossValidationDoc).
    title, attribution
        Figure title; source of the reference data, printed under the axes.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"single_point": ("C0", "single point"), "relaxed": ("C3", "relaxed")}
    x = np.array([p["n_train_groups"] for p in curve["points"]])
    for ax, figure, scale, unit in (
        (axes[0], "mae", 1.0, "J/m²"),
        (axes[1], "mape", 100.0, "%"),
    ):
        for mode, (colour, label) in styles.items():
            stats = [_mean_std(p["figures"].get(mode, {}).get(figure)) for p in curve["points"]]
            means = np.array([m for m, _ in stats]) * scale
            ax.errorbar(x, means, yerr=[s * scale for _, s in stats], fmt="o-", color=colour,
                        capsize=3, label=label)  # fmt: skip
            fit = curve["fits"].get(mode, {}).get(figure)
            if fit:
                end = fit["n_at_target"] if fit["n_at_target"] else x.max()
                grid = np.geomspace(x.min(), min(max(end, x.max()), 50 * x.max()), 50)
                ax.plot(grid, fit["prefactor"] * grid ** fit["slope"] * scale, ":", color=colour)
            if parent and mode in parent:
                value = _mean_std(parent[mode].get(figure))[0] * scale
                ax.axhline(value, color=colour, lw=0.8, alpha=0.4)
        if figure in curve["targets"]:
            ax.axhline(curve["targets"][figure] * scale, color="k", ls="--", lw=0.8, label="target")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(x, [f"{n:g}" for n in x])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("training elements")
        ax.set_ylabel(f"held-out γ {figure.upper()}, {unit}")
        ax.legend(fontsize=8)
    fig.suptitle(title or "learning curve over the number of training elements", fontsize=10)
    if attribution:
        fig.text(0.01, 0.005, attribution, fontsize=7, color="0.4")
    return _save(fig, path)
