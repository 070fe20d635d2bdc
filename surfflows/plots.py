"""PNG plots of benchmark results (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from surfflows.benchmark import summarize

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
