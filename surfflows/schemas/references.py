"""DFT reference documents (bulk, slab, adslab, trajectory frame), and those of one set with
its split as handed to jobs.

The documents are validated when a set is ingested (:mod:`surfflows.io.canonical`), stored
as their JSON, and read back into the same types (:class:`ReferenceInputs`), so jobs read
typed fields, never string keys.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer
from pymatgen.core import Structure

from surfflows.core.timestamps import now_iso

#: A pymatgen Structure stored as its ``as_dict()`` (read back by monty's pydantic hook).
StructureField = Annotated[Structure, PlainSerializer(Structure.as_dict, return_type=dict)]


class _ReferenceDoc(BaseModel):
    """Fields shared by all reference documents."""

    key: str = Field(description="Unique key in the references store: '<set_name>:<id>'.")
    set_name: str = Field(description="Reference set the record belongs to.")
    level_of_theory: str = Field(description="Level of theory of ref_energy (the set's).")
    formula: str = Field(description="Reduced formula of the structure.")
    n_atoms: int = Field(description="Number of atoms.")
    structure: StructureField = Field(
        description="DFT geometry (relaxed for slabs and adslabs). Atoms fixed in the DFT run "
        "have selective_dynamics [False, False, False]; other per-atom arrays of the frame "
        "(e.g. OC22 tags) are site properties."
    )
    ref_energy: float = Field(allow_inf_nan=False, description="DFT total energy, eV.")
    ref_forces: list[list[float]] | None = Field(
        default=None, description="DFT forces per atom, eV/Å, where the set has them."
    )
    flags: list[str] = Field(
        default_factory=list, description="Known problems of the record (kept, not dropped)."
    )
    source: str | None = Field(default=None, description="Source of the set.")
    licence: str | None = Field(default=None, description="Licence of the set.")
    citation: str | None = Field(default=None, description="Citation of the set.")
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Set-specific info keys of the frame (e.g. OC22 sid, traj_id, nads).",
    )
    ingested_at: str = Field(default_factory=now_iso, description="ISO time the document was made.")


class ReferenceBulkDoc(_ReferenceDoc):
    """A DFT bulk reference cell."""

    doc_type: Literal["bulk"] = Field(default="bulk", description="Document kind.")
    bulk_id: str = Field(description="Id of the bulk cell in its set.")
    material_id: str = Field(description="Material the cell belongs to.")
    ref_energy_per_atom: float = Field(description="ref_energy / n_atoms, eV/atom.")


class ReferenceSlabDoc(_ReferenceDoc):
    """A clean DFT slab, with its surface energy where a bulk reference allows it."""

    doc_type: Literal["slab"] = Field(default="slab", description="Document kind.")
    slab_id: str = Field(description="Id of the slab in its set.")
    material_id: str = Field(description="Bulk material the slab was cut from.")
    bulk_id: str | None = Field(description="Id of the bulk reference cell, None if absent.")
    bulk_key: str | None = Field(description="Key of the bulk document, None if absent.")
    miller_index: tuple[int, int, int] | None = Field(
        description="Miller index (three-index; hexagonal four-index given as (h, k, l)), "
        "None where the set does not record it."
    )
    area: float = Field(description="|a x b| of the slab cell, Å².")
    initial_structure: StructureField | None = Field(
        default=None, description="Geometry before the DFT relaxation, where the set has it."
    )
    ref_energy: float | None = Field(
        allow_inf_nan=False,
        description="DFT total energy, eV; None for a gamma-only slab (published gamma, no "
        "total energy), which then enters gamma terms only: no energy error, no energy term "
        "in fine-tuning.",
    )
    published: list[str] = Field(
        description="Quantities the set publishes for this slab: 'ref_energy' and/or 'gamma_ref'."
    )
    gamma_ref: float | None = Field(default=None, description="Published surface energy, J/m².")
    gamma_ref_recomputed: float | None = Field(
        default=None,
        description="(E_slab - N_slab/N_bulk E_bulk) / 2A from the reference energies, J/m²; "
        "None without a bulk or for a non-stoichiometric slab.",
    )
    is_stoichiometric: bool | None = Field(
        default=None, description="Slab composition is whole bulk cells; None without a bulk."
    )
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


class ReferenceAdslabDoc(_ReferenceDoc):
    """A DFT slab with an adsorbate."""

    doc_type: Literal["adslab"] = Field(default="adslab", description="Document kind.")
    adslab_id: str = Field(description="Id of the adslab in its set.")
    slab_id: str = Field(description="Id of its clean slab.")
    slab_key: str | None = Field(description="Key of the clean-slab document, None if absent.")
    material_id: str | None = Field(
        description="Bulk material (the frame's, else its clean slab's); None if neither."
    )
    adsorbate: str = Field(description="Adsorbate formula, e.g. 'OH'.")
    initial_structure: StructureField | None = Field(
        default=None, description="Geometry before the DFT relaxation, where the set has it."
    )
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


class ReferenceFrameDoc(_ReferenceDoc):
    """One single-point frame of a DFT relaxation trajectory (e.g. OC22 S2EF), a training sample.

    Every frame of one relaxation shares ``parent_key`` (its clean slab or adslab) and
    ``traj_id``; ``material_id`` is the parent's bulk, so a split by material keeps all frames
    of a material on one side.
    """

    doc_type: Literal["frame"] = Field(default="frame", description="Document kind.")
    frame_id: str = Field(description="Id of the frame in its set, unique per frame.")
    parent_id: str = Field(description="Id of the relaxed slab or adslab the trajectory ends in.")
    parent_kind: Literal["slab", "adslab"] = Field(description="Kind of the parent record.")
    parent_key: str = Field(
        description="Key of the parent document (present once its relaxed record is ingested "
        "into the same set)."
    )
    slab_id: str | None = Field(
        description="Id of the clean slab (the parent itself for a slab; for an adslab its "
        "clean slab), None if unknown."
    )
    material_id: str = Field(description="Bulk material (split unit).")
    miller_index: tuple[int, int, int] | None = Field(description="Miller index, if recorded.")
    adsorbate: str | None = Field(default=None, description="Adsorbate of an adslab frame.")
    traj_id: str | None = Field(description="Trajectory id of the relaxation, if recorded.")
    frame_index: int | None = Field(description="Index of the frame in its trajectory (fid).")
    ref_forces: list[list[float]] = Field(description="DFT forces per atom, eV/Å (required).")
    fixed_indices: list[int] = Field(
        default_factory=list, description="Indices of atoms fixed in the DFT relaxation."
    )


#: Any reference document, told apart by ``doc_type``.
ReferenceDoc = Annotated[
    ReferenceSlabDoc | ReferenceBulkDoc | ReferenceAdslabDoc | ReferenceFrameDoc,
    Field(discriminator="doc_type"),
]


class ReferenceInputs(BaseModel):
    """The reference documents of one set and its stored split, as a job input.

    Jobs never open the ``references`` or ``splits`` stores (a jobflow-remote worker has
    neither): whoever builds the flow reads them where the stores are at hand
    (:func:`surfflows.io.inputs.reference_inputs`) and the flow carries them.
    """

    set_name: str = Field(description="Reference set.")
    split_id: str | None = Field(
        default=None, description="Stored split the assignments come from (None: no split)."
    )
    assignments: dict[str, str] = Field(
        default_factory=dict, description="material_id -> train / val / test."
    )
    docs: list[ReferenceDoc] = Field(description="Canonical reference documents of the set.")

    def of_type(self, *doc_types: str) -> list[ReferenceDoc]:
        """The documents of some types (``slab``, ``bulk``, ``adslab``, ``frame``)."""
        return [d for d in self.docs if d.doc_type in doc_types]

    def materials(self) -> list[tuple[str, str]]:
        """(material_id, formula) of every document, in order: what tells materials of
        different sets apart (:func:`surfflows.core.splits.material_identities`)."""
        return [(d.material_id, d.formula) for d in self.docs]
