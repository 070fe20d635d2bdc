"""Reference documents of one set with its split, as handed to jobs."""

from __future__ import annotations

from typing import Any

from monty.json import jsanitize
from pydantic import BaseModel, Field, field_validator


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
    docs: list[dict[str, Any]] = Field(description="Canonical reference documents (as stored).")

    @field_validator("docs", mode="before")
    @classmethod
    def _as_stored(cls, docs: Any) -> Any:
        """Documents as stored (plain JSON): a job's inputs arrive with objects decoded."""
        return jsanitize(docs, strict=True, enum_values=True)

    def of_type(self, *doc_types: str) -> list[dict[str, Any]]:
        """The documents of some types (``slab``, ``bulk``, ``adslab``)."""
        return [d for d in self.docs if d["doc_type"] in doc_types]

    def in_parts(self, *parts: str) -> list[dict[str, Any]]:
        """The documents of the materials of some split parts."""
        return [d for d in self.docs if self.assignments.get(d["material_id"]) in parts]
