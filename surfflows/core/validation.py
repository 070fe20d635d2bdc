"""Checks of inputs (structures, ids), each raising ValueError that names what is wrong."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator
from pymatgen.core import Composition, Structure

from surfflows.core.text import short_repr

#: Longest material id.
MAX_ID_LENGTH = 64
#: What a material id may hold: ASCII letters, digits and ``-_.+:``, a letter or digit first.
#: Ids become job names, file names and the ``#SBATCH --job-name`` of cluster jobs.
ID_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.+:-]{{0,{MAX_ID_LENGTH - 1}}}")

#: CHGNet's atom embedding covers atomic numbers 1..94 (H..Pu).
MAX_ATOMIC_NUMBER = 94


def check_elements(structure: Structure, where: str = "structure") -> None:
    """Raise ValueError if CHGNet cannot embed an element of ``structure``."""
    bad = sorted({el.symbol for el in structure.composition if el.Z > MAX_ATOMIC_NUMBER})
    if bad:
        raise ValueError(
            f"{where} ({structure.composition.reduced_formula}) contains {', '.join(bad)}: "
            f"CHGNet handles atomic numbers 1-{MAX_ATOMIC_NUMBER} only"
        )


def check_bulk(structure: Structure, where: str = "bulk") -> None:
    """Raise ValueError unless ``structure`` is a non-empty, ordered, 3D-periodic bulk CHGNet
    can embed."""
    if len(structure) == 0 or not structure.is_3d_periodic:
        raise ValueError(f"{where}: structure must be non-empty and 3D-periodic")
    if not structure.is_ordered:
        raise ValueError(
            f"{where}: structure is disordered (partial occupancies); CHGNet needs one species "
            "per site: order it first (e.g. pymatgen OrderDisorderedStructureTransformation)"
        )
    check_elements(structure, where)


def check_material_id(material_id: object) -> str:
    """``material_id`` if it matches :data:`ID_PATTERN`, else ValueError quoting its start.

    Examples
    --------
    >>> check_material_id("mp-2657:TiO2+rutile_1.0")
    'mp-2657:TiO2+rutile_1.0'
    >>> check_material_id("a\\n$(id)")
    Traceback (most recent call last):
    ...
    ValueError: material id 'a\\n$(id)': use 1-64 of A-Z a-z 0-9 - _ . + : (A-Z a-z 0-9 first)
    """
    if isinstance(material_id, str) and ID_PATTERN.fullmatch(material_id):
        return material_id
    raise ValueError(
        f"material id {short_repr(material_id)}: use 1-{MAX_ID_LENGTH} of A-Z a-z 0-9 - _ . + : "
        "(A-Z a-z 0-9 first)"
    )


def check_formula(formula: str) -> str:
    """The reduced formula of ``formula`` (how documents store it), else ValueError.

    Examples
    --------
    >>> check_formula("Ti2O4")
    'TiO2'
    """
    try:
        if not re.fullmatch(r"[A-Za-z0-9().]{1,64}", formula):
            raise ValueError
        return Composition(formula).reduced_formula
    except ValueError:
        raise ValueError(
            f"formula {short_repr(formula)}: not a chemical formula (e.g. TiO2)"
        ) from None


#: A material id field of a pydantic model, checked by :func:`check_material_id`.
MaterialId = Annotated[str, BeforeValidator(check_material_id)]
