"""Text forms shared by tables, plots and job names."""

from __future__ import annotations

import math
from collections.abc import Sequence


def miller_text(miller_index: Sequence[int], *, compact: bool = False) -> str:
    """Miller index as ``(h k l)`` text, or ``hkl`` with ``compact`` (job names)."""
    if compact:
        return "".join(str(i) for i in miller_index)
    return "(" + " ".join(str(i) for i in miller_index) + ")"


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float if finite, else None (how documents store a missing number)."""
    return float(value) if value is not None and math.isfinite(value) else None
