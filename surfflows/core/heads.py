"""Names of readout heads: one head per level of theory (see :mod:`surfflows.engine.finetune`).

A multi-set fine-tune keeps one readout and one AtomRef per level of theory on a shared
backbone; a head is named by a short slug of its sets' ``level_of_theory`` text, which is
what a model spec chooses (``chgnet-ft-<sha12>@<head>``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: DFT codes named in ``level_of_theory`` texts; they do not name the functional.
DFT_CODES = ("vasp", "quantum espresso", "qe", "cp2k", "gpaw", "fhi-aims", "abinit", "castep")

#: Head a checkpoint uses when a model spec names none, if it has it.
PREFERRED_DEFAULT_HEAD = "pbe"


def head_name(level_of_theory: str) -> str:
    """Short slug of a level of theory: the head of the sets computed with it.

    Parenthetical remarks and the DFT code are dropped, the rest is lower-cased, words
    joined by ``-``.

    Examples
    --------
    >>> head_name("VASP PBE")
    'pbe'
    >>> head_name("VASP OptB88vdW")
    'optb88vdw'
    >>> head_name("VASP PBE+U (Materials Project U values)")
    'pbe+u'
    >>> head_name("Quantum ESPRESSO r2SCAN D4")
    'r2scan-d4'

    Raises
    ------
    ValueError
        If nothing is left of the text (e.g. an empty one).
    """
    text = re.sub(r"\([^)]*\)", " ", level_of_theory).lower()
    for code in DFT_CODES:
        text = re.sub(rf"(^|\s){re.escape(code)}(\s|$)", " ", text)
    slug = "-".join(text.split())
    if not slug:
        raise ValueError(f"level of theory {level_of_theory!r} names no functional")
    return slug


def default_head(heads: Sequence[str]) -> str:
    """The head a spec without ``@<head>`` gets: ``pbe`` if present, else the first one.

    Examples
    --------
    >>> default_head(["optb88vdw", "pbe"])
    'pbe'
    >>> default_head(["optb88vdw", "pbe+u"])
    'optb88vdw'
    """
    if not heads:
        raise ValueError("no heads")
    return PREFERRED_DEFAULT_HEAD if PREFERRED_DEFAULT_HEAD in heads else heads[0]


def head_for(level_of_theory: str, heads: Sequence[str], default: str) -> str:
    """The head of a level of theory among a checkpoint's heads, else ``default``.

    How a set is evaluated with a multi-head checkpoint: JARVIS (OptB88vdW) slabs with the
    ``optb88vdw`` head if the checkpoint has one, a PBE set with ``pbe``, a set whose level
    of theory no head was trained on with the default head.

    Examples
    --------
    >>> head_for("VASP OptB88vdW", ["pbe", "optb88vdw"], "pbe")
    'optb88vdw'
    >>> head_for("VASP r2SCAN", ["pbe", "optb88vdw"], "pbe")
    'pbe'
    """
    name = head_name(level_of_theory)
    return name if name in heads else default
