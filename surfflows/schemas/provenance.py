"""The software versions every output document carries (atomate2's ``forcefield_version``)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from surfflows.core.provenance import package_versions


class Provenance(BaseModel):
    """Versions of surfflows, chgnet, torch, pymatgen and jobflow where a document was made."""

    surfflows: str | None = Field(description="surfflows version.")
    chgnet: str | None = Field(description="chgnet version (the force field).")
    torch: str | None = Field(description="torch version.")
    pymatgen: str | None = Field(description="pymatgen version.")
    jobflow: str | None = Field(description="jobflow version.")

    @classmethod
    def here(cls) -> Provenance:
        """The versions in this environment."""
        return cls(**package_versions())


class OutputDoc(BaseModel):
    """Base of every surfflows output document: records the software that made it."""

    provenance: Provenance = Field(
        default_factory=Provenance.here, description="Software versions that made the document."
    )
