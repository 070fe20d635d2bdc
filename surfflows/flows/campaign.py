"""Campaign configuration (YAML) and running it on the configured store.

A campaign file names a model, slab and relaxation settings, and the bulks::

    name: demo
    model: chgnet-0.3.0          # or chgnet-surf, the fine-tuned CHGNet shipped in the package
    slabs: {max_index: 1, min_slab_size: 8.0, min_vacuum_size: 12.0}
    relax: {fmax: 0.05, max_steps: 300, chunk_size: 64, optimizer: lbfgs}
    materials:
      - {id: Cu, structure: structures/Cu.cif}
      - {id: TiO2-rutile, structure: structures/TiO2_rutile.cif, slabs: {max_index: 1}}

Paths are relative to the YAML file. Everything is validated (file size and YAML alias
expansion, material ids, unknown keys, missing files, non-periodic, empty, disordered or
overlapping structures, elements CHGNet cannot handle, Miller indices, force and step
bounds, slabs estimated over ``max_atoms``, models that are not usable) before any job
runs, so a bad file costs nothing and stores nothing. Each structure file is read and
checked once, however many materials name it.

Every job of a material's flow carries the material's input hash (structure, slab and
relaxation settings, model) in its metadata: a rerun skips materials whose flow
completed with the same hash, and the run's summary reads only documents of this
campaign's hashes. The documents a killed run left of a material that did not finish
(its hash, no completed flow) are removed before the material runs again, so each job
name has one document.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobflow import Flow, JobStore, OutputReference, run_locally
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pymatgen.core import Structure
from pymatgen.core.surface import get_symmetrically_distinct_miller_indices
from rich.progress import Progress

from surfflows.core.slabs import SlabSettings, conventional_cell, estimated_slab_atoms
from surfflows.core.text import miller_text, validation_summary
from surfflows.core.validation import MaterialId, check_bulk
from surfflows.core.yaml_files import load_yaml
from surfflows.engine.models import check_model
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer, check_geometry
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.io.checkpoints import check_checkpoint
from surfflows.io.packaged import packaged_checkpoint, packaged_names
from surfflows.io.registry import checkpoint_reference, resolve_model
from surfflows.schemas.models import ModelSpec, names_a_file

if TYPE_CHECKING:
    from surfflows.flows.chemsys import ChemicalSystemConfig

#: Job metadata key holding a material's input hash.
INPUT_HASH_KEY = "surfflows_input_hash"
#: Most materials in one campaign file.
MAX_MATERIALS = 20_000


class RelaxSettings(BaseModel):
    """Relaxation settings shared by bulk and slabs."""

    model_config = ConfigDict(extra="forbid")

    fmax: float = Field(
        default=0.05, gt=0, le=1.0, allow_inf_nan=False, description="Force criterion, eV/Å."
    )
    max_steps: int = Field(default=500, ge=1, le=100_000, description="Step limit per relaxation.")
    chunk_size: int = Field(default=64, ge=1, description="Slabs per relaxation job.")
    optimizer: Optimizer = Field(
        default=DEFAULT_OPTIMIZER,
        description="Slab optimizer: lbfgs (ASE's L-BFGS, fewer force evaluations) or fire.",
    )

    def surface_maker(self, model: ModelSpec, slab_settings: SlabSettings) -> SurfaceEnergyMaker:
        """The SurfaceEnergyMaker of these settings (force criterion, step limit, slab
        optimizer, chunk size) for one model and slab settings: the one every campaign
        kind (plain, chemical system, thermo) builds its surface flows with."""
        return SurfaceEnergyMaker.for_model(
            model,
            self.fmax,
            self.max_steps,
            self.optimizer,
            slab_settings=slab_settings,
            chunk_size=self.chunk_size,
        )


class MaterialConfig(BaseModel):
    """One bulk of the campaign."""

    model_config = ConfigDict(extra="forbid")

    id: MaterialId = Field(
        description="Label stored as material_id (e.g. mp-30 or Cu): 1-64 ASCII letters, digits "
        "and - _ . + : (a letter or digit first), as it becomes job names on clusters."
    )
    structure: Path = Field(description="Structure file (CIF, POSCAR, JSON...), relative to YAML.")
    slabs: SlabSettings | None = Field(default=None, description="Overrides campaign slabs.")


class CampaignConfig(BaseModel):
    """A surface-energy campaign over several bulks with one model."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="Campaign name.")
    model: str | dict[str, Any] = Field(
        default="chgnet-0.3.0",
        description="Model name (chgnet-0.3.0, chgnet-surf, sevennet-0...), checkpoint path, "
        "sha256:<hex>, "
        "calculator import path, or a mapping {force_field_name, calculator_kwargs, name}.",
    )
    slabs: SlabSettings = Field(default_factory=SlabSettings, description="Slab settings.")
    relax: RelaxSettings = Field(default_factory=RelaxSettings, description="Relax settings.")
    materials: list[MaterialConfig] = Field(
        min_length=1, max_length=MAX_MATERIALS, description="Bulks to cut."
    )
    _structures: dict[str, Structure] | None = PrivateAttr(default=None)

    @field_validator("materials")
    @classmethod
    def _unique_ids(cls, materials: list[MaterialConfig]) -> list[MaterialConfig]:
        ids = [m.id for m in materials]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"material ids must be unique; repeated: {duplicates}")
        return materials

    @classmethod
    def from_yaml(
        cls, path: str | Path, progress: bool = False
    ) -> CampaignConfig | ChemicalSystemConfig:
        """Read and validate a campaign file; paths become absolute, structures are checked
        (``progress``: a bar while structure files are read and slab sizes estimated).

        A file naming ``chemical_system`` is a
        :class:`~surfflows.flows.chemsys.ChemicalSystemConfig`.
        """
        path = Path(path)
        raw = load_yaml(path, "campaign file")
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a campaign file is a mapping (name, model, materials...)")
        if "chemical_system" in raw:  # the phases of a chemical system (flows/chemsys.py)
            from surfflows.flows.chemsys import ChemicalSystemConfig

            return ChemicalSystemConfig.from_mapping(raw, path)
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{path}: invalid campaign: {validation_summary(exc)}") from None
        for material in config.materials:
            if not material.structure.is_absolute():
                material.structure = (path.parent / material.structure).resolve()
        config.model = check_model_name(config.model, path.parent, f"{path}: model")
        config.check_slab_sizes(config.load_structures(progress), progress)
        return config

    def model_spec(self, store: JobStore) -> tuple[ModelSpec, OutputReference | None]:
        """The campaign's model resolved (:func:`resolved_model`)."""
        return resolved_model(self.model, store)

    def check_slab_sizes(self, structures: dict[str, Structure], progress: bool = False) -> None:
        """Raise ValueError naming each facet whose slabs are estimated over ``max_atoms``.

        Estimated once per structure file and slab settings.
        """
        too_big = []
        estimates: dict[tuple[Path, str], list[tuple[tuple[int, ...], int]]] = {}
        for material in _progress(self.materials, progress, "estimating slab sizes"):
            settings = material.slabs or self.slabs
            key = (material.structure, settings.model_dump_json())
            if key not in estimates:
                bulk = structures[material.id]
                millers = settings.miller_indices or get_symmetrically_distinct_miller_indices(
                    conventional_cell(bulk), settings.max_index
                )
                estimates[key] = [
                    (tuple(hkl), estimated_slab_atoms(bulk, tuple(hkl), settings))
                    for hkl in millers
                ]
            too_big += [
                f"{material.id} {hkl}: about {n}"
                for hkl, n in estimates[key]
                if n > settings.max_atoms
            ]
        if too_big:
            raise ValueError(
                f"slabs over max_atoms ({'; '.join(too_big)} atoms): lower min_slab_size or "
                "min_in_plane_size, drop those facets, or raise slabs.max_atoms"
            )

    def load_structures(self, progress: bool = False) -> dict[str, Structure]:
        """Every bulk by material id, each file read and checked once (and once per config).

        Raises
        ------
        FileNotFoundError, ValueError
            Naming the material and file of a missing, unreadable or unusable structure.
        """
        if self._structures is not None:
            return self._structures
        by_file: dict[Path, Structure] = {}
        structures = {}
        for material in _progress(self.materials, progress, "reading structures"):
            if material.structure not in by_file:
                by_file[material.structure] = _read_bulk(material)
            structures[material.id] = by_file[material.structure].copy()
        self._structures = structures
        return structures

    def input_hashes(
        self, model: ModelSpec, structures: dict[str, Structure] | None = None
    ) -> dict[str, str]:
        """Material id -> sha256 of what determines its results.

        The structure (lattice, species, coordinates), the material id, its slab
        settings, fmax, max_steps, the slab optimizer, and the model (version or checkpoint
        sha256);
        ``chunk_size`` changes how jobs are cut, not results, and is left out.
        """
        structures = structures or self.load_structures()
        identity = model.model_dump(include={"kind", "version", "sha256"})
        hashes = {}
        for material in self.materials:
            structure = structures[material.id]
            content = {
                "material_id": material.id,
                "lattice": structure.lattice.matrix.round(8).tolist(),
                "species": [site.species_string for site in structure],
                "frac_coords": structure.frac_coords.round(8).tolist(),
                "slabs": (material.slabs or self.slabs).model_dump(mode="json"),
                "fmax": self.relax.fmax,
                "max_steps": self.relax.max_steps,
                "optimizer": self.relax.optimizer,
                "model": identity,
            }
            text = json.dumps(content, sort_keys=True)
            hashes[material.id] = hashlib.sha256(text.encode()).hexdigest()
        return hashes

    def flows(self, store: JobStore, structures: dict[str, Structure] | None = None) -> list[Flow]:
        """One SurfaceEnergyMaker flow per material, its jobs tagged with the input hash;
        ``store`` holds a fine-tuned checkpoint."""
        model, checkpoint = self.model_spec(store)
        structures = structures or self.load_structures()
        hashes = self.input_hashes(model, structures)
        return [
            self.material_flow(m, model, checkpoint, structures[m.id], hashes[m.id])
            for m in self.materials
        ]

    def material_flow(
        self,
        material: MaterialConfig,
        model: ModelSpec,
        checkpoint: OutputReference | None,
        structure: Structure,
        input_hash: str,
    ) -> Flow:
        """The SurfaceEnergyMaker flow of one material, its jobs tagged with ``input_hash``."""
        flow = self.surface_maker(material, model).make(structure, material.id, checkpoint)
        flow.update_metadata({INPUT_HASH_KEY: input_hash})
        return flow

    def surface_maker(self, material: MaterialConfig, model: ModelSpec) -> SurfaceEnergyMaker:
        """The SurfaceEnergyMaker of one material: the campaign's relaxation settings
        (:meth:`RelaxSettings.surface_maker`) and the material's slab settings."""
        return self.relax.surface_maker(model, material.slabs or self.slabs)


def resolved_model(
    model: str | dict[str, Any], store: JobStore
) -> tuple[ModelSpec, OutputReference | None]:
    """A campaign's model entry resolved, once per run, and, if fine-tuned, a reference to
    its checkpoint in ``store``.

    A checkpoint file or a packaged model is registered in ``store`` on the way (see
    :func:`surfflows.io.registry.resolve_model`); the pair is what every flow of the run
    is given.
    """
    spec = resolve_model(model, store)
    return spec, checkpoint_reference(spec, store)


def _read_bulk(material: MaterialConfig) -> Structure:
    """The structure of ``material``'s file, checked as a bulk CHGNet can relax."""
    where = f"material {material.id} ({material.structure})"
    if not names_a_file(material.structure):
        raise FileNotFoundError(f"{where}: structure file not found")
    try:
        structure = Structure.from_file(material.structure)
    except Exception as exc:
        raise ValueError(f"{where}: cannot read structure: {exc}") from exc
    check_bulk(structure, where)
    try:
        check_geometry(structure)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return structure


def _progress(items: list, show: bool, description: str):
    """``items``, with a transient progress bar over them when ``show`` and they are many."""
    if not show or len(items) < 200:
        yield from items
        return
    with Progress(transient=True) as bar:
        yield from bar.track(items, description=description)


class CampaignRun(BaseModel):
    """What one run of a campaign did: per material, run, reused or failed."""

    model: ModelSpec = Field(description="The campaign's model, resolved once for the run.")
    input_hashes: dict[str, str] = Field(description="Material id -> input hash.")
    ran: list[str] = Field(default_factory=list, description="Materials computed in this run.")
    skipped: list[str] = Field(
        default_factory=list, description="Materials already stored with the same input hash."
    )
    errors: dict[str, str] = Field(
        default_factory=dict, description="Material id -> error of a job that raised."
    )


def completed_hashes(store: JobStore, hashes: list[str]) -> set[str]:
    """Input hashes whose flow finished in ``store``.

    A flow is finished when its slab job stored its final output: the replacing flow's
    output list (``store_inputs``), or an empty list when the bulk relaxation failed.
    """
    with store:
        docs = store.query(
            {f"metadata.{INPUT_HASH_KEY}": {"$in": hashes}},
            properties=["name", "output", f"metadata.{INPUT_HASH_KEY}"],
        )
        return {
            d["metadata"][INPUT_HASH_KEY]
            for d in docs
            if isinstance(d.get("output"), list)
            and (d["name"] == "store_inputs" or d["name"].startswith("slabs "))
        }


def remove_unfinished(store: JobStore, input_hash: str) -> int:
    """Remove what an interrupted run stored of a material's flow; return how many documents.

    Called for an input hash whose flow did not complete (:func:`completed_hashes`): its
    job documents (a bulk relaxation, some slab chunks, with their ``data`` store parts)
    are orphans that the rerun would store again under new job ids. Do not run a campaign
    locally while jobflow-remote still runs the same one: its unfinished jobs would go.
    """
    criteria = {f"metadata.{INPUT_HASH_KEY}": input_hash}
    with store:
        n = store.count(criteria)
        if n:
            store.remove_docs(criteria)
    return n


def run_campaign(config: CampaignConfig, store: JobStore, progress: bool = True) -> CampaignRun:
    """Run every material's flow locally into ``store``, skipping finished ones.

    A material whose flow completed before with the same input hash (see
    :meth:`CampaignConfig.input_hashes`) is skipped; one that did not complete (an
    interrupted run) has its earlier documents removed (:func:`remove_unfinished`) and
    runs again. A job that raises stops only its material, and its error is returned
    (failed relaxations are documents, not exceptions).
    """
    structures = config.load_structures()
    model, checkpoint = config.model_spec(store)
    hashes = config.input_hashes(model, structures)
    done = completed_hashes(store, list(hashes.values()))
    run = CampaignRun(model=model, input_hashes=hashes)
    with Progress(disable=not progress, transient=False) as bar:
        task = bar.add_task(f"campaign {config.name}", total=len(config.materials))
        for material in config.materials:
            bar.update(task, description=f"{config.name}: {material.id}")
            start = time.perf_counter()
            input_hash = hashes[material.id]
            if input_hash in done:
                run.skipped.append(material.id)
                outcome = "skipped (already stored with the same inputs)"
            else:
                run.ran.append(material.id)
                removed = remove_unfinished(store, input_hash)
                flow = config.material_flow(
                    material, model, checkpoint, structures[material.id], input_hash
                )
                try:
                    run_locally(
                        flow,
                        store=store,
                        log=False,
                        raise_immediately=True,
                        allow_external_references=True,
                    )
                    outcome = f"computed in {time.perf_counter() - start:.0f} s"
                except Exception as exc:  # one material's crash does not stop the others
                    run.errors[material.id] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    outcome = f"error: {run.errors[material.id]}"
                if removed:
                    outcome += f" (replaced {removed} documents of an unfinished earlier run)"
            if progress:  # one line per material, also in a log file
                bar.console.print(f"{material.id}: {outcome}", highlight=False, soft_wrap=True)
            bar.advance(task)
    return run


def campaign_results(store: JobStore, run: CampaignRun) -> tuple[list[dict], dict[str, Any]]:
    """Surface-energy documents of this run's hashes, and each failure with its reason.

    Returns
    -------
    tuple of (list of dict, dict)
        The newest surface-energy document per slab among the campaign's input hashes
        (produced by this run or reused), and ``"<material> [facet termination]" ->
        reason`` for every bulk or slab that failed, job errors and materials that gave
        no slab.
    """
    from surfflows.reports.query import surface_energies

    hashes = list(run.input_hashes.values())
    docs = surface_energies(store, criteria={f"metadata.{INPUT_HASH_KEY}": {"$in": hashes}})
    failures: dict[str, Any] = dict(run.errors)
    with store:
        bulks = store.query(
            {"output.@class": "BulkRelaxDoc", f"metadata.{INPUT_HASH_KEY}": {"$in": hashes}},
            properties=["output.material_id", "output.converged", "output.error"],
        )
        for doc in bulks:
            bulk = doc["output"]
            if not bulk["converged"]:
                reason = (bulk.get("error") or "not converged").splitlines()[0]
                failures[bulk["material_id"]] = f"bulk relaxation: {reason}"
    with_slabs = {d["material_id"] for d in docs}
    for material_id in run.input_hashes:
        if material_id not in with_slabs and material_id not in failures:
            failures[material_id] = "no slab was cut (none symmetric, or all over slabs.max_atoms)"
    for doc in docs:
        if doc["status"] == "failed" and doc["material_id"] not in run.errors:
            where = f"{doc['material_id']} {miller_text(doc['miller_index'])} {doc['termination']}"
            failures[where] = doc["reason"]
    return docs, failures


def check_model_name(model: str | dict[str, Any], folder: Path, where: str) -> str | dict:
    """A campaign's model entry, checked before anything runs or is registered: a checkpoint
    file next to the YAML becomes its absolute path; packaged models, pretrained versions and
    calculators are checked; registered names (``chgnet-ft-``, ``sha256:``) are resolved
    when the campaign runs."""
    if isinstance(model, str) and names_a_file(folder / model):
        model = str((folder / model).resolve())  # a checkpoint next to the YAML
    if isinstance(model, str) and model.startswith(("chgnet-ft-", "sha256:")):
        return model
    try:
        if isinstance(model, str) and model.partition("@")[0] in packaged_names():
            packaged_checkpoint(model.partition("@")[0])
            return model
        spec = ModelSpec.parse(model)
        check_model(spec)
        if spec.checkpoint:
            check_checkpoint(spec.checkpoint)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return model
