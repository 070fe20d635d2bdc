"""Deterministic train / validation / test split of a reference set by material.

Slabs of one material share its bulk, so a split by slab would leak test materials into
training: every split here is by ``material_id``. A material's part depends only on
``sha256(f"{seed}:{material_id}")`` (not on Python's salted ``hash``, nor on the other
materials), so the split is reproducible anywhere and adding materials never moves
existing ones. The fractions are met in expectation, not exactly.

A split is stored in the ``splits`` store under ``split_id = "<set_name>:seed<seed>"`` and
reused by every later step; materials ingested later are added to it by the same rule,
never reassigning stored ones. The test part is never used for training, early stopping or
model selection.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
from collections import Counter
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field, computed_field, field_validator

from surfflows.core.timestamps import now_iso

SplitPart = Literal["train", "val", "test"]
PARTS: tuple[SplitPart, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def assign_part(material_id: str, seed: int, fractions: tuple[float, float, float]) -> SplitPart:
    """Part of one material: ``sha256(f"{seed}:{material_id}")`` mapped to [0, 1) and binned.

    Examples
    --------
    >>> assign_part("mp-30", 0, (1.0, 0.0, 0.0))
    'train'
    """
    digest = hashlib.sha256(f"{seed}:{material_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return PARTS[bisect.bisect_right(list(itertools.accumulate(fractions[:2])), position)]


def split_id(set_name: str, seed: int) -> str:
    """Key of a stored split: ``"<set_name>:seed<seed>"``."""
    return f"{set_name}:seed{seed}"


class SplitDoc(BaseModel):
    """Assignment of every material of a reference set to train, val or test."""

    split_id: str = Field(description="Key in the splits store: '<set_name>:seed<seed>'.")
    set_name: str = Field(description="Reference set split.")
    seed: int = Field(description="Seed hashed with each material id.")
    fractions: tuple[float, float, float] = Field(
        description="Expected train, val, test fractions (sum 1)."
    )
    assignments: dict[str, SplitPart] = Field(description="material_id -> part.")
    created_at: str = Field(default_factory=now_iso, description="ISO time the split was made.")
    updated_at: str = Field(
        default_factory=now_iso, description="ISO time materials were last added."
    )

    @field_validator("fractions")
    @classmethod
    def _check_fractions(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if min(value) < 0 or abs(sum(value) - 1) > 1e-9:
            raise ValueError(f"fractions must be non-negative and sum to 1, got {value}")
        return value

    @computed_field(description="Number of materials per part.")
    @property
    def counts(self) -> dict[str, int]:
        """Number of materials in each part."""
        counts = Counter(self.assignments.values())
        return {part: counts[part] for part in PARTS}

    def with_materials(self, material_ids: Iterable[str]) -> SplitDoc:
        """This split plus new materials, assigned by the same rule; existing ones never move.

        Returns ``self`` if every material is already assigned.
        """
        new = {
            material_id: assign_part(material_id, self.seed, self.fractions)
            for material_id in sorted(set(material_ids) - self.assignments.keys())
        }
        if not new:
            return self
        return self.model_copy(
            update={"assignments": {**self.assignments, **new}, "updated_at": now_iso()}
        )


def make_split(
    set_name: str,
    material_ids: Iterable[str],
    *,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> SplitDoc:
    """Split materials into train / val / test by a stable hash of (seed, material id).

    Parameters
    ----------
    set_name
        Reference set the materials belong to.
    material_ids
        Material ids (duplicates are ignored).
    fractions
        Expected train, val, test fractions.
    seed
        Seed; another seed gives an independent split.

    Returns
    -------
    SplitDoc
        The split (not stored; see :func:`get_or_create_split`).
    """
    return SplitDoc(
        split_id=split_id(set_name, seed),
        set_name=set_name,
        seed=seed,
        fractions=fractions,
        assignments={},
    ).with_materials(material_ids)


def material_identities(materials: Iterable[tuple[str, str]]) -> dict[str, set[str]]:
    """What makes two materials of different sets the same: material_id -> identities.

    ``materials``: (material_id, formula) of each document of a set
    (:meth:`surfflows.schemas.references.ReferenceInputs.materials`). Every material is its
    ``material_id`` (Materials Project ids are shared by ``mp_elemental_surfaces`` and
    ``mp_elemental_refs``); an elemental material (every document's formula has one
    element) is also ``element:<symbol>``, so that polymorphs of one element count as one
    material across sets (``mp-30`` and JARVIS's Cu).

    Examples
    --------
    >>> material_identities([("mp-30", "Cu4")])
    {'mp-30': {'mp-30', 'element:Cu'}}
    """
    from pymatgen.core import Composition

    elements: dict[str, set[str]] = {}
    for material_id, formula in materials:
        symbols = {e.symbol for e in Composition(formula).elements}
        elements.setdefault(material_id, set()).update(symbols)
    return {
        material: {material, *(f"element:{e}" for e in symbols if len(symbols) == 1)}
        for material, symbols in elements.items()
    }


def held_out_identities(
    sets: Iterable[tuple[str, Iterable[tuple[str, str]], dict[str, str]]],
) -> dict[str, set[str]]:
    """Identities (:func:`material_identities`) of every val and test material, by set.

    Parameters
    ----------
    sets
        (set name, (material_id, formula) of its documents, its split's assignments) of
        each set.

    Returns
    -------
    dict
        identity -> ``"<set>:<part>"`` of every set and part holding it out.
    """
    out: dict[str, set[str]] = {}
    for set_name, materials, assignments in sets:
        for material, identities in material_identities(materials).items():
            part = assignments.get(material)
            if part in ("val", "test"):
                for identity in identities:
                    out.setdefault(identity, set()).add(f"{set_name}:{part}")
    return out


def leaking_materials(
    set_name: str, materials: Iterable[tuple[str, str]], held_out: dict[str, set[str]]
) -> dict[str, str]:
    """Materials of ``set_name`` held out in another set: material_id -> the first
    ``"<set>:<part>"`` holding it out (sorted), the reason it may not be trained on."""
    out = {}
    for material, identities in material_identities(materials).items():
        where = sorted(
            w for i in identities for w in held_out.get(i, ()) if not w.startswith(f"{set_name}:")
        )
        if where:
            out[material] = where[0]
    return out
