"""Text forms shared by tables, plots, job names and error messages."""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError

#: A Miller index (h, k, l) of a facet, in the conventional bulk cell.
MillerIndex = tuple[int, int, int]

#: Longest job name; longer names are cut.
MAX_JOB_NAME = 128
#: Characters a job name may not hold: all but ASCII letters, digits, space and ``_.+:=@,-``.
_NOT_IN_JOB_NAMES = re.compile(r"[^A-Za-z0-9 _.+:=@,-]")


def miller_text(miller_index: Sequence[int], *, compact: bool = False) -> str:
    """Miller index as ``(h k l)`` text, or ``hkl`` with ``compact`` (job names)."""
    if compact:
        return "".join(str(i) for i in miller_index)
    return "(" + " ".join(str(i) for i in miller_index) + ")"


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float if finite, else None (how documents store a missing number)."""
    return float(value) if value is not None and math.isfinite(value) else None


def job_name(*parts: object) -> str:
    """A job or flow name from ``parts`` joined by spaces, safe in a batch script.

    jobflow-remote writes the name into ``#SBATCH --job-name=`` (spaces become ``_``), so
    every character but ASCII letters, digits, space and ``_.+:=@,-`` becomes ``_``
    (no newline leaves the comment, no shell syntax reaches the script) and the name is cut
    to :data:`MAX_JOB_NAME` characters.

    Examples
    --------
    >>> job_name("bulk relax", "a\\n$(id)")
    'bulk relax a___id_'
    >>> job_name("select", "direct", 10, "seed=0")
    'select direct 10 seed=0'
    """
    text = " ".join(str(part) for part in parts)
    return _NOT_IN_JOB_NAMES.sub("_", text)[:MAX_JOB_NAME]


#: Characters of a value quoted in an error message.
QUOTE_CHARS = 60

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 3


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to about :data:`QUOTE_CHARS` characters, in bounded time.

    Examples
    --------
    >>> short_repr("x" * 1000)[:12], len(short_repr("x" * 1000)) <= QUOTE_CHARS + 5
    ("'xxxxxxxxxxx", True)
    >>> short_repr([[1, 2, 3, 4, 5, 6]] * 10)
    '[[1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], [1, 2, 3, 4, ...], ...]'
    """
    text = _REPR.repr(value)
    return text if len(text) <= 2 * QUOTE_CHARS else text[: 2 * QUOTE_CHARS] + "..."


def validation_summary(exc: ValidationError, labels: dict[str, str] | None = None) -> str:
    """A pydantic error on one line: ``field.path: message (got <short value>)`` per error
    (the value left out where the model's own validator wrote the message); ``labels``
    rename top-level fields (e.g. to the command-line options that set them)."""
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error["loc"]]
        if loc and labels and loc[0] in labels:
            loc[0] = labels[loc[0]]
        where = ".".join(loc)
        message = error["msg"].removeprefix("Value error, ")
        quoted = error["type"] in ("missing", "value_error")  # a validator's message says it
        got = "" if quoted else f" (got {short_repr(error.get('input'))})"
        parts.append(f"{where}: {message}{got}" if where else f"{message}{got}")
    return "; ".join(parts)
