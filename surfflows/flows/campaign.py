"""Campaign configuration (YAML) and running it on the configured store.

A campaign file names a model, slab and relaxation settings, and the bulks::

    name: demo
    model: chgnet-0.3.0
    slabs: {max_index: 1, min_slab_size: 8.0, min_vacuum_size: 12.0}
    relax: {fmax: 0.05, max_steps: 300, chunk_size: 64}
    materials:
      - {id: Cu, structure: structures/Cu.cif}
      - {id: TiO2-rutile, structure: structures/TiO2_rutile.cif, slabs: {max_index: 1}}

Paths are relative to the YAML file. Everything is validated (unknown keys, missing
files, non-periodic or empty structures, elements CHGNet cannot handle, Miller index
(0,0,0)) before any job runs, so a bad file costs nothing and stores nothing.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from jobflow import Flow, JobStore, OutputReference, run_locally
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pymatgen.core import Structure
from rich.progress import Progress

from surfflows.core.slabs import SlabSettings
from surfflows.core.validation import check_bulk
from surfflows.engine.models import ModelSpec
from surfflows.io.registry import checkpoint_reference, resolve_model
from surfflows.jobs.surface import SurfaceEnergyMaker


class RelaxSettings(BaseModel):
    """Relaxation settings shared by bulk and slabs."""

    model_config = ConfigDict(extra="forbid")

    fmax: float = Field(default=0.05, gt=0, description="Force criterion, eV/Å.")
    max_steps: int = Field(default=500, ge=1, description="Step limit per relaxation.")
    chunk_size: int = Field(default=64, ge=1, description="Slabs per relaxation job.")


class MaterialConfig(BaseModel):
    """One bulk of the campaign."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Label stored as material_id (e.g. mp-30 or Cu).")
    structure: Path = Field(description="Structure file (CIF, POSCAR, JSON...), relative to YAML.")
    slabs: SlabSettings | None = Field(default=None, description="Overrides campaign slabs.")


class CampaignConfig(BaseModel):
    """A surface-energy campaign over several bulks with one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Campaign name.")
    model: str = Field(default="chgnet-0.3.0", description="Model name, path or sha256:<hex>.")
    slabs: SlabSettings = Field(default_factory=SlabSettings, description="Slab settings.")
    relax: RelaxSettings = Field(default_factory=RelaxSettings, description="Relax settings.")
    materials: list[MaterialConfig] = Field(min_length=1, description="Bulks to cut.")

    @field_validator("materials")
    @classmethod
    def _unique_ids(cls, materials: list[MaterialConfig]) -> list[MaterialConfig]:
        ids = [m.id for m in materials]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"material ids must be unique; repeated: {duplicates}")
        return materials

    @classmethod
    def from_yaml(cls, path: str | Path) -> CampaignConfig:
        """Read and validate a campaign file; paths become absolute, structures are checked."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"campaign file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a campaign file is a mapping (name, model, materials...)")
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{path}: invalid campaign:\n{exc}") from exc
        for material in config.materials:
            if not material.structure.is_absolute():
                material.structure = (path.parent / material.structure).resolve()
        if not config.model.startswith(("chgnet-ft-", "sha256:")):
            ModelSpec.parse(config.model)  # unknown model names fail here, before any work
        config.load_structures()
        return config

    def model_spec(self, store: JobStore) -> tuple[ModelSpec, OutputReference | None]:
        """The campaign's model and, if fine-tuned, a reference to its checkpoint in ``store``.

        A checkpoint file is registered in ``store`` on the way (see
        :func:`surfflows.io.registry.resolve_model`).
        """
        spec = resolve_model(self.model, store)
        return spec, checkpoint_reference(spec, store)

    def load_structures(self) -> dict[str, Structure]:
        """Read every bulk; raise ValueError naming the material and file on a bad one."""
        structures = {}
        for material in self.materials:
            where = f"material {material.id} ({material.structure})"
            if not material.structure.is_file():
                raise FileNotFoundError(f"{where}: structure file not found")
            try:
                structure = Structure.from_file(material.structure)
            except Exception as exc:
                raise ValueError(f"{where}: cannot read structure: {exc}") from exc
            check_bulk(structure, where)
            structures[material.id] = structure
        return structures

    def flows(self, store: JobStore) -> list[Flow]:
        """One SurfaceEnergyMaker flow per material; ``store`` holds a fine-tuned checkpoint."""
        model, checkpoint = self.model_spec(store)
        structures = self.load_structures()
        return [
            SurfaceEnergyMaker.for_model(
                model,
                self.relax.fmax,
                self.relax.max_steps,
                slab_settings=material.slabs or self.slabs,
                chunk_size=self.relax.chunk_size,
            ).make(structures[material.id], material.id, checkpoint)
            for material in self.materials
        ]


def run_campaign(config: CampaignConfig, store: JobStore, progress: bool = True) -> list[str]:
    """Run every material's flow locally into ``store``; return the flow uuids.

    A material whose flow has a failing job does not stop the others; its failure is
    in the store (failed relaxations are documents, not exceptions).
    """
    uuids = []
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"campaign {config.name}", total=len(config.materials))
        for material, flow in zip(config.materials, config.flows(store), strict=True):
            bar.update(task, description=f"{config.name}: {material.id}")
            run_locally(
                flow, store=store, log=False, ensure_success=False, allow_external_references=True
            )
            uuids.append(flow.uuid)
            bar.advance(task)
    return uuids
