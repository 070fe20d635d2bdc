"""Checks of input structures, each raising ValueError that names the structure."""

from __future__ import annotations

from pymatgen.core import Structure

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
