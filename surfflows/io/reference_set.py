"""A reference set as read from its folder: its provenance and its documents."""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from surfflows.schemas.references import (
    ReferenceAdslabDoc,
    ReferenceBulkDoc,
    ReferenceDoc,
    ReferenceFrameDoc,
    ReferenceSlabDoc,
)


class ReferenceSetInfo(BaseModel):
    """Provenance of one reference set; every document of the set carries it."""

    name: str = Field(description="Set name (folder name); prefix of every document key.")
    level_of_theory: str = Field(
        description="DFT code and functional of all energies of the set, e.g. 'VASP PBE'."
    )
    source: str | None = Field(default=None, description="Where the data come from.")
    licence: str | None = Field(default=None, description="Licence of the data.")
    citation: str | None = Field(default=None, description="Reference to cite with the data.")


@dataclass
class ReferenceSet:
    """The documents of one reference set and the records that became none.

    Attributes
    ----------
    info
        Provenance and level of theory of the set.
    slabs, bulks, adslabs, frames
        Documents, in file order (frames: single points of relaxation trajectories).
    skipped
        Reason -> ids of records skipped (or, for ``bulk_missing`` / ``slab_missing``, kept
        without their link); see the module docstring for the reasons.
    """

    info: ReferenceSetInfo
    slabs: list[ReferenceSlabDoc] = field(default_factory=list)
    bulks: list[ReferenceBulkDoc] = field(default_factory=list)
    adslabs: list[ReferenceAdslabDoc] = field(default_factory=list)
    frames: list[ReferenceFrameDoc] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)

    @property
    def documents(self) -> list[ReferenceDoc]:
        """All documents: bulks, then slabs, then adslabs, then frames."""
        return [*self.bulks, *self.slabs, *self.adslabs, *self.frames]
