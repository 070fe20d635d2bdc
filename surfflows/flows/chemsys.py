"""Campaigns over a chemical system: the model's hull, then the surfaces of its phases.

:class:`ChemicalSystemMaker` is the campaign of one model as one Flow: it relaxes every
competing phase (free cell) and the model's elemental references, cuts and relaxes the
slabs of the target phases in chunks (:meth:`SurfaceEnergyMaker.slabs`), and ends with one
:class:`~surfflows.schemas.chemsys.ChemicalSystemThermoDoc` per target (the jobs are in
:mod:`surfflows.jobs.chemsys`). :class:`ChemicalSystemConfig` reads the campaign file and
:func:`run_chemical_system` runs it stage by stage, reusing what the store holds.

A campaign file names the elements, every competing phase, and the phases whose surfaces
are wanted::

    name: sr-ti-o
    chemical_system: [Sr, Ti, O]          # 2 to 4 elements
    phases: ../surfflows/data/phases/Sr-Ti-O   # a folder of structure files, or a list
    targets: [SrTiO3]                     # default: every phase on the model's hull
    models: [chgnet-0.3.0, chgnet-surf]   # or model: one name
    slabs: {max_index: 1, min_slab_size: 8.0, min_vacuum_size: 12.0}
    relax: {fmax: 0.05, max_steps: 300, chunk_size: 32}

A phase's id is its file name without the suffix (``TiO2-rutile.cif`` -> ``TiO2-rutile``).
:meth:`surfflows.flows.campaign.CampaignConfig.from_yaml` hands a file with
``chemical_system`` to :meth:`ChemicalSystemConfig.from_mapping`, so ``surfflows run`` takes
both kinds. Everything is checked before any relaxation: the elements (at most 4, each in
some phase), each phase (readable, inside the system, no two the same structure, the checks
of a plain campaign), the targets (among the phases) and every model.

Reuse. A phase's slabs are exactly a plain campaign's: the slab job of a target carries the
input hash a plain campaign of the same structure file, slab and relaxation settings and
model would have (:meth:`CampaignConfig.input_hashes`), so either run reuses the other's.
Each bulk relaxation carries a hash of its structure, relaxation settings and model
(:data:`BULK_HASH_KEY`); elemental references are the model's, as ``surfflows thermo``
stores them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobflow import Flow, Job, JobStore, Maker, OutputReference, run_locally
from monty.json import MontyDecoder
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pymatgen.core import Composition, Element, Structure
from rich.progress import Progress

from surfflows.analysis.chemsys import no_region_reason
from surfflows.core.chempot import MAX_ELEMENTS
from surfflows.core.slabs import SlabSettings
from surfflows.core.text import job_name
from surfflows.flows.campaign import (
    INPUT_HASH_KEY,
    CampaignConfig,
    MaterialConfig,
    RelaxSettings,
    check_model_name,
    completed_hashes,
    validation_summary,
)
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.io.phases import duplicate_structures
from surfflows.io.registry import checkpoint_reference, resolve_model
from surfflows.jobs.chemsys import chemical_system_thermo, hull_phases, surfaces_on_hull
from surfflows.jobs.thermo import elemental_reference
from surfflows.reports.chemsys_plots import write_pngs
from surfflows.reports.query import stored_reference, surface_energies
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc, TerminationMapComparisonDoc
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import ElementReferenceDoc

#: File suffixes read as structures in a folder of phases (POSCAR/CONTCAR names too).
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json", ".xyz", ".extxyz")
#: Job metadata key holding a bulk relaxation's hash (structure, relaxation settings, model).
BULK_HASH_KEY = "surfflows_bulk_hash"
#: Job metadata key holding a thermo document's hash (:func:`thermo_hash`).
THERMO_HASH_KEY = "surfflows_thermo_hash"


@dataclass
class ChemicalSystemMaker(Maker):
    """Bulks -> the model's hull -> slabs of the targets in chunks -> thermodynamics.

    Parameters
    ----------
    name
        Flow name.
    surface_maker
        Relaxes the phases (its bulk relax maker: free cell) and the targets' slabs (its slab
        relax maker, slab settings and chunk size); its model relaxes everything, the
        elemental references included.
    chemical_system
        The campaign's elements.
    plot_dir
        Folder of the PNGs; default: each thermo job's working directory.

    Examples
    --------
    >>> maker = ChemicalSystemMaker(  # doctest: +SKIP
    ...     surface_maker=SurfaceEnergyMaker.for_model(ModelSpec()),
    ...     chemical_system=["Sr", "Ti", "O"],
    ... )
    >>> flow = maker.make(phases, targets=["SrTiO3"])  # doctest: +SKIP
    >>> run_locally(flow, store=get_job_store())  # doctest: +SKIP
    """

    name: str = "chemical system"
    surface_maker: SurfaceEnergyMaker = field(default_factory=SurfaceEnergyMaker)
    chemical_system: list[str] = field(default_factory=list)
    plot_dir: str | None = None

    @property
    def model(self) -> ModelSpec:
        """The model of every relaxation."""
        return self.surface_maker.model

    def bulk_job(
        self, phase_id: str, structure: Structure, checkpoint: str | OutputReference | None
    ) -> Job:
        """Relaxation of one phase (free cell), named ``bulk relax <phase_id>``."""
        maker = self.surface_maker.bulk_relax_maker
        return replace(maker, name=job_name(maker.name, phase_id)).make(
            structure, phase_id, checkpoint
        )

    def reference_job(self, element: str, checkpoint: str | OutputReference | None) -> Job:
        """The model's elemental reference of ``element`` (O2 in a box, a metal's prototypes)."""
        bulk = self.surface_maker.bulk_relax_maker
        reference = elemental_reference(element, self.model, bulk.fmax, bulk.max_steps, checkpoint)
        reference.name = job_name(element, "reference", self.model.model_id)
        return reference

    def thermo_job(
        self,
        target: str,
        bulks: Mapping[str, BulkRelaxDoc | OutputReference],
        references: Sequence[ElementReferenceDoc | OutputReference],
        surfaces: Sequence[SurfaceEnergyDoc] | OutputReference,
    ) -> Job:
        """The :class:`ChemicalSystemThermoDoc` of one target, with its PNGs."""
        thermo = chemical_system_thermo(
            target,
            dict(bulks),
            list(references),
            surfaces,
            self.surface_maker.slab_settings,
            self.chemical_system,
            self.plot_dir,
        )
        thermo.name = job_name("chemical-system thermo", target, self.model.model_id)
        return thermo

    def make(
        self,
        phases: Mapping[str, Structure],
        targets: Sequence[str] | None = None,
        checkpoint: str | OutputReference | None = None,
        *,
        bulks: Mapping[str, BulkRelaxDoc] | None = None,
        references: Mapping[str, ElementReferenceDoc] | None = None,
        surfaces: Mapping[str, Sequence[SurfaceEnergyDoc]] | None = None,
    ) -> Flow:
        """The whole campaign of one model as one Flow; results at hand are not recomputed.

        Parameters
        ----------
        phases
            Phase id -> structure of every competing phase.
        targets
            Phases whose surfaces are wanted; None: every phase on the model's hull (a job
            finds them once the bulks are relaxed and adds their slabs and thermodynamics).
        checkpoint
            The model's checkpoint (base64, or a reference) if it is fine-tuned.
        bulks, references, surfaces
            Finished bulk relaxations (phase id ->), elemental references (element ->) and
            surface-energy documents (target ->) of this model.

        Returns
        -------
        Flow
            Its output: ``thermo``, target -> :class:`ChemicalSystemThermoDoc` (with explicit
            targets), or the hull job's output (target -> document) otherwise.
        """
        jobs: list[Job | Flow] = []
        bulk_outputs: dict[str, BulkRelaxDoc | OutputReference] = dict(bulks or {})
        for phase_id, structure in phases.items():
            if phase_id not in bulk_outputs:
                job = self.bulk_job(phase_id, structure, checkpoint)
                jobs.append(job)
                bulk_outputs[phase_id] = job.output
        reference_outputs = []
        for element in self.chemical_system:
            if references and element in references:
                reference_outputs.append(references[element])
            else:
                job = self.reference_job(element, checkpoint)
                jobs.append(job)
                reference_outputs.append(job.output)
        if targets is None:
            hull = surfaces_on_hull(self, bulk_outputs, reference_outputs, checkpoint)
            hull.name = job_name("hull", "-".join(self.chemical_system), self.model.model_id)
            jobs.append(hull)
            return Flow(jobs, output={"thermo": hull.output}, name=job_name(self.name))
        thermo = {}
        for target in targets:
            target_surfaces = (surfaces or {}).get(target)
            if target_surfaces is None:
                slabs = self.surface_maker.slabs(bulk_outputs[target], target, checkpoint)
                jobs.append(slabs)
                target_surfaces = slabs.output
            job = self.thermo_job(target, bulk_outputs, reference_outputs, target_surfaces)
            jobs.append(job)
            thermo[target] = job.output
        return Flow(jobs, output={"thermo": thermo}, name=job_name(self.name))


class ChemicalSystemConfig(BaseModel):
    """A campaign over the phases of a chemical system, with one or several models."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Campaign name.")
    chemical_system: list[str] = Field(
        min_length=2, description=f"Element symbols, 2 to {MAX_ELEMENTS} (e.g. [Sr, Ti, O])."
    )
    phases: Path | list[Path] = Field(
        description="A folder of structure files, or a list of files: every competing phase "
        "(relative to the YAML file)."
    )
    targets: list[str] | None = Field(
        default=None,
        description="Phase ids whose surfaces are computed; default: every phase on the "
        "model's hull.",
    )
    model: str | dict[str, Any] | None = Field(
        default=None, description="One model (as in a plain campaign); or give models."
    )
    models: list[str | dict[str, Any]] | None = Field(
        default=None, min_length=1, description="Several models: each runs the whole campaign."
    )
    slabs: SlabSettings = Field(default_factory=SlabSettings, description="Slab settings.")
    relax: RelaxSettings = Field(default_factory=RelaxSettings, description="Relax settings.")
    plot_dir: Path | None = Field(
        default=None,
        description="Folder of the PNGs (relative to the YAML file); default: "
        "chemsys-plots/<name> in the working directory.",
    )

    @field_validator("chemical_system")
    @classmethod
    def _elements(cls, symbols: list[str]) -> list[str]:
        if len(symbols) > MAX_ELEMENTS:
            raise ValueError(
                f"at most {MAX_ELEMENTS} elements (got {len(symbols)}: {', '.join(symbols)})"
            )
        for symbol in symbols:
            if not Element.is_valid_symbol(symbol):
                raise ValueError(f"{symbol!r} is not an element symbol")
        repeated = sorted({s for s in symbols if symbols.count(s) > 1})
        if repeated:
            raise ValueError(f"elements repeated: {repeated}")
        return symbols

    @classmethod
    def from_mapping(cls, raw: dict, path: Path) -> ChemicalSystemConfig:
        """Validate the parsed campaign file ``path``; paths become absolute, structures,
        phases, targets and models are checked (each error one line naming file and field).
        """
        try:
            config = cls.model_validate(raw)
        except ValidationError as exc:
            raise ValueError(f"{path}: invalid campaign: {validation_summary(exc)}") from None
        if config.model is not None and config.models is not None:
            raise ValueError(f"{path}: give model or models, not both")
        folder = path.parent
        phases = config.phases if isinstance(config.phases, list) else [config.phases]
        phases = [p if p.is_absolute() else (folder / p).resolve() for p in phases]
        config.phases = phases if isinstance(config.phases, list) else phases[0]
        if config.plot_dir is not None and not config.plot_dir.is_absolute():
            config.plot_dir = (folder / config.plot_dir).resolve()
        config.models = [
            check_model_name(model, folder, f"{path}: models") for model in config.model_list
        ]
        config.model = None
        config.check_phases(path)
        return config

    def with_models(self, models: Sequence[str], path: Path) -> ChemicalSystemConfig:
        """A copy run with ``models`` instead (``surfflows run --model``), each checked."""
        checked = [check_model_name(m, path.parent, "--model") for m in models]
        return self.model_copy(update={"models": checked, "model": None})

    @property
    def model_list(self) -> list[str | dict[str, Any]]:
        """The campaign's models (``models``, else ``[model]``, else the default CHGNet)."""
        if self.models:
            return list(self.models)
        return [self.model if self.model is not None else "chgnet-0.3.0"]

    def phase_files(self) -> dict[str, Path]:
        """Phase id -> structure file, from the folder or the list."""
        if isinstance(self.phases, list):
            files = self.phases
        else:
            if not self.phases.is_dir():
                raise FileNotFoundError(f"folder {self.phases} does not exist")
            files = sorted(
                p
                for p in self.phases.iterdir()
                if p.is_file()
                and (
                    p.suffix.lower() in STRUCTURE_SUFFIXES
                    or p.name.upper().startswith(("POSCAR", "CONTCAR"))
                )
            )
            if not files:
                raise ValueError(f"no structure file in {self.phases}")
        ids: dict[str, Path] = {}
        for file in files:
            phase_id = file.stem if file.suffix else file.name
            if phase_id in ids:
                raise ValueError(f"{ids[phase_id]} and {file} have the same id {phase_id}")
            ids[phase_id] = file
        return ids

    def phase_campaign(
        self, model: str | dict[str, Any], phase_ids: list[str] | None = None
    ) -> CampaignConfig:
        """The plain campaign of these phases (all, or ``phase_ids``) with one model: its
        structure checks, slab-size checks and input hashes are the chemical system's."""
        files = self.phase_files()
        return CampaignConfig(
            name=self.name,
            model=model,
            slabs=self.slabs,
            relax=self.relax,
            materials=[
                MaterialConfig(id=phase_id, structure=files[phase_id])
                for phase_id in (phase_ids or list(files))
            ],
        )

    def load_phases(self) -> dict[str, Structure]:
        """Phase id -> structure, each checked as a plain campaign checks its bulks."""
        return self.phase_campaign(self.model_list[0]).load_structures()

    def check_phases(self, path: Path) -> dict[str, Structure]:
        """Raise ValueError (naming ``path`` and the field) on a phase outside the system, an
        element in no phase, two phases of the same structure, or a target not a phase;
        slabs of the targets estimated over ``max_atoms`` fail as in a plain campaign."""
        try:
            files = self.phase_files()
            structures = self.load_phases()
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"{path}: phases: {exc}") from None
        system = set(self.chemical_system)
        seen: set[str] = set()
        for phase_id, structure in structures.items():
            elements = {el.symbol for el in structure.composition}
            outside = sorted(elements - system)
            if outside:
                raise ValueError(
                    f"{path}: phases: {files[phase_id]} ({structure.composition.reduced_formula}) "
                    f"has {', '.join(outside)}, outside chemical_system {self.chemical_system}"
                )
            seen |= elements
        missing = [el for el in self.chemical_system if el not in seen]
        if missing:
            raise ValueError(
                f"{path}: chemical_system: {', '.join(missing)} is in no phase of {self.phases}"
            )
        for first, second in duplicate_structures(structures):
            raise ValueError(
                f"{path}: phases: {files[first]} and {files[second]} are the same structure"
            )
        unknown = [t for t in self.targets or [] if t not in structures]
        if unknown:
            raise ValueError(
                f"{path}: targets: {', '.join(unknown)} not among the phases ({sorted(structures)})"
            )
        if self.targets:
            targets = self.phase_campaign(self.model_list[0], self.targets)
            try:
                targets.check_slab_sizes({t: structures[t] for t in self.targets})
            except ValueError as exc:
                raise ValueError(f"{path}: slabs: {exc}") from None
        return structures

    def bulk_hashes(self, model: ModelSpec, structures: dict[str, Structure]) -> dict[str, str]:
        """Phase id -> sha256 of its bulk relaxation's inputs (structure, fmax, max_steps,
        model)."""
        identity = model.model_dump(include={"kind", "version", "sha256"})
        hashes = {}
        for phase_id, structure in structures.items():
            content = {
                "phase_id": phase_id,
                "lattice": structure.lattice.matrix.round(8).tolist(),
                "species": [site.species_string for site in structure],
                "frac_coords": structure.frac_coords.round(8).tolist(),
                "fmax": self.relax.fmax,
                "max_steps": self.relax.max_steps,
                "model": identity,
            }
            text = json.dumps(content, sort_keys=True)
            hashes[phase_id] = hashlib.sha256(text.encode()).hexdigest()
        return hashes

    def flows(self, store: JobStore, structures: dict[str, Structure] | None = None) -> list[Flow]:
        """One :class:`ChemicalSystemMaker` Flow per model (for jobflow-remote; ``surfflows
        run`` runs the same jobs stage by stage). Bulk and slab jobs carry the hashes a local
        run gives them, so either reuses the other's results; ``store`` holds a fine-tuned
        checkpoint."""
        structures = structures or self.load_phases()
        flows = []
        for model in self.model_list:
            spec = resolve_model(model, store)
            bulk_hashes = self.bulk_hashes(spec, structures)
            slab_hashes = self.phase_campaign(model).input_hashes(spec, structures)
            flow = self.maker(spec, self.plot_dir).make(
                structures, self.targets, checkpoint_reference(spec, store)
            )
            for job in flow.jobs:
                phase_id = job.name.partition(" ")[2].removeprefix("relax ")
                if job.name.startswith("bulk relax "):
                    job.update_metadata({BULK_HASH_KEY: bulk_hashes[phase_id]})
                elif job.name.startswith("slabs "):
                    job.update_metadata({INPUT_HASH_KEY: slab_hashes[phase_id]})
            flows.append(flow)
        return flows

    def maker(self, model: ModelSpec, plot_dir: Path | None) -> ChemicalSystemMaker:
        """The campaign's Maker for one model."""
        return ChemicalSystemMaker(
            surface_maker=self.relax.surface_maker(model, self.slabs),
            chemical_system=self.chemical_system,
            plot_dir=None if plot_dir is None else str(plot_dir),
        )


def _tagged(flow_or_job: Flow | Job, key: str, value: str) -> Flow:
    """``flow_or_job`` in a Flow whose jobs (and the jobs they create) carry ``key: value``."""
    flow = flow_or_job if isinstance(flow_or_job, Flow) else Flow([flow_or_job])
    flow.update_metadata({key: value})
    return flow


class ModelRun(BaseModel):
    """What one model's pass over a chemical-system campaign did."""

    model_id: str = Field(description="Model id.")
    label: str = Field(description="What people read (a packaged model's name, its id).")
    targets: list[str] = Field(default_factory=list, description="Targets of this model.")
    computed: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Stage (bulks, references, slabs, thermo) -> what was computed.",
    )
    reused: dict[str, list[str]] = Field(
        default_factory=dict, description="Stage -> what was already stored and reused."
    )
    errors: dict[str, str] = Field(
        default_factory=dict, description="'<stage> <id>' -> error of a job that raised."
    )
    no_thermo: dict[str, str] = Field(
        default_factory=dict,
        description="Target -> why it has no chemical-potential document (its slabs and "
        "gamma are stored): an element, or a target of four elements.",
    )
    seconds: dict[str, float] = Field(
        default_factory=dict, description="Stage -> wall time of this run, s."
    )
    thermo: dict[str, ChemicalSystemThermoDoc] = Field(
        default_factory=dict, description="Target -> its document (computed or stored)."
    )
    slab_hashes: dict[str, str] = Field(
        default_factory=dict, description="Target -> input hash of its slabs (plain campaign)."
    )


class ChemicalSystemRun(BaseModel):
    """One run of a chemical-system campaign: per model, and the models compared."""

    runs: list[ModelRun] = Field(default_factory=list, description="One per model, in order.")
    comparisons: list[TerminationMapComparisonDoc] = Field(
        default_factory=list,
        description="Per target and pair (first model, each other model).",
    )

    @property
    def errors(self) -> dict[str, str]:
        """Every error, prefixed with its model."""
        return {f"{r.label}: {k}": v for r in self.runs for k, v in r.errors.items()}


def _decode(doc: dict | None):
    return None if doc is None else MontyDecoder().process_decoded(doc["output"])


def stored_bulk(store: JobStore, bulk_hash: str, slab_hash: str | None) -> BulkRelaxDoc | None:
    """The newest bulk relaxation with this bulk hash, or of a plain campaign with this slab
    input hash."""
    queries = [{f"metadata.{BULK_HASH_KEY}": bulk_hash}]
    if slab_hash:
        queries.append({f"metadata.{INPUT_HASH_KEY}": slab_hash})
    with store:
        for query in queries:
            doc = store.query_one(
                {"output.@class": "BulkRelaxDoc", **query}, sort={"completed_at": -1}, load=True
            )
            if doc is not None:
                return _decode(doc)
    return None


def stored_slab_relaxations(store: JobStore, slab_hash: str) -> list[SlabRelaxDoc]:
    """Slab relaxations stored under this slab input hash (the chunks an interrupted run
    finished)."""
    with store:
        docs = store.query({f"metadata.{INPUT_HASH_KEY}": slab_hash}, properties=["name", "uuid"])
        uuids = [d["uuid"] for d in docs if d["name"].startswith("slab relax ")]
    relaxed = []
    for uuid in uuids:
        with store:
            relaxed.extend(_decode(store.query_one({"uuid": uuid}, load=True)))
    return relaxed


def stored_thermo(store: JobStore, key: str) -> ChemicalSystemThermoDoc | None:
    """The newest chemical-system thermo document with this :func:`thermo_hash`, or None."""
    with store:
        doc = store.query_one(
            {"output.@class": "ChemicalSystemThermoDoc", f"metadata.{THERMO_HASH_KEY}": key},
            sort={"completed_at": -1},
            load=True,
        )
    return _decode(doc)


def _run(flow: Flow, store: JobStore) -> dict:
    """Run ``flow`` locally into ``store``; its jobs' outputs by uuid."""
    responses = run_locally(
        flow, store=store, log=False, raise_immediately=True, allow_external_references=True
    )
    return {uuid: next(iter(r.values())).output for uuid, r in responses.items()}


def run_chemical_system(
    config: ChemicalSystemConfig, store: JobStore, progress: bool = True
) -> ChemicalSystemRun:
    """Run the campaign locally into ``store``, model after model, reusing what is stored.

    Stages per model: bulks (every phase, then the elemental references), the hull (which
    picks the targets when none are given), slabs per target (skipped when a chemical-system
    or plain campaign stored them with the same input hash), and one thermo document per
    target (skipped when stored with the same inputs). A job that raises stops its item
    only; its error is returned. Several models: each target's termination maps are then
    compared, first model against each other one.
    """
    from surfflows.analysis.chemsys import compare_termination_maps

    structures = config.load_phases()
    specs = [resolve_model(m, store) for m in config.model_list]  # bad names fail here
    result = ChemicalSystemRun()
    with Progress(disable=not progress, transient=False) as bar:
        for model, spec in zip(config.model_list, specs, strict=True):
            result.runs.append(_run_model(config, model, spec, structures, store, bar, progress))
    first, *others = result.runs
    for other in others:
        for target, doc in first.thermo.items():
            if target in other.thermo:
                result.comparisons.append(compare_termination_maps(doc, other.thermo[target]))
    return result


def _say(bar: Progress, progress: bool, text: str) -> None:
    if progress:  # one line per item, also in a log file
        bar.console.print(text, highlight=False, soft_wrap=True)


def thermo_hash(
    slab_hash: str, bulk_hashes: Mapping[str, str], references: Sequence[ElementReferenceDoc]
) -> str:
    """sha256 of what a target's thermo document depends on: its slabs' input hash, every
    phase's bulk hash, and the elemental references' energies."""
    content = {
        "slabs": slab_hash,
        "bulks": dict(sorted(bulk_hashes.items())),
        "references": sorted((r.element, r.energy) for r in references),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def _run_model(
    config: ChemicalSystemConfig,
    model: str | dict[str, Any],
    spec: ModelSpec,
    structures: dict[str, Structure],
    store: JobStore,
    bar: Progress,
    progress: bool,
) -> ModelRun:
    """One model's pass: bulks -> hull -> slabs -> thermo, each item skipped when stored."""
    run = ModelRun(model_id=spec.model_id, label=spec.label)
    checkpoint = checkpoint_reference(spec, store)
    slab_hashes = config.phase_campaign(model).input_hashes(spec, structures)
    bulk_hashes = config.bulk_hashes(spec, structures)
    plot_dir = config.plot_dir or Path.cwd() / "chemsys-plots" / config.name
    plot_dir.mkdir(parents=True, exist_ok=True)
    maker = config.maker(spec, plot_dir)

    def stage(name: str, item: str, outcome: str, computed: bool) -> None:
        (run.computed if computed else run.reused).setdefault(name, []).append(item)
        _say(bar, progress, f"{spec.label} {name} {item}: {outcome}")

    def attempt(name: str, item: str, flow: Flow) -> dict | None:
        start = time.perf_counter()
        try:
            outputs = _run(flow, store)
        except Exception as exc:  # one item's crash does not stop the others
            run.errors[f"{name} {item}"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            _say(
                bar,
                progress,
                f"{spec.label} {name} {item}: error: {run.errors[f'{name} {item}']}",
            )
            return None
        stage(name, item, f"computed in {time.perf_counter() - start:.0f} s", True)
        return outputs

    # 1. bulks: every phase, then the elemental references
    start = time.perf_counter()
    task = bar.add_task(f"{spec.label}: bulks", total=len(structures) + len(config.chemical_system))
    bulks: dict[str, BulkRelaxDoc] = {}
    for phase_id, structure in structures.items():
        doc = stored_bulk(store, bulk_hashes[phase_id], slab_hashes[phase_id])
        if doc is not None:
            stage("bulk", phase_id, "stored", False)
        else:
            job = maker.bulk_job(phase_id, structure, checkpoint)
            outputs = attempt("bulk", phase_id, _tagged(job, BULK_HASH_KEY, bulk_hashes[phase_id]))
            doc = None if outputs is None else outputs[job.uuid]
        if doc is not None:
            bulks[phase_id] = doc
            if not doc.converged:
                run.errors[f"bulk {phase_id}"] = f"not converged: {doc.error or 'step limit'}"
        bar.advance(task)
    references: list[ElementReferenceDoc] = []
    for element in config.chemical_system:
        doc = stored_reference(store, element, spec.model_id)
        if doc is not None:
            stage("reference", element, f"stored ({doc.prototype})", False)
        else:
            job = maker.reference_job(element, checkpoint)
            outputs = attempt("reference", element, Flow([job]))
            doc = None if outputs is None else outputs[job.uuid]
        if doc is not None:
            references.append(doc)
        bar.advance(task)
    run.seconds["bulks"] = time.perf_counter() - start
    if len(references) < len(config.chemical_system):
        return run  # no hull without every elemental reference: the errors say why

    # 2. the model's hull picks the targets
    start = time.perf_counter()
    try:
        targets = config.targets or hull_phases(bulks, references)
    except ValueError as exc:
        run.errors["hull"] = str(exc)
        return run
    run.targets = [t for t in targets if t in bulks and bulks[t].converged]
    for target in sorted(set(targets) - set(run.targets)):
        run.errors.setdefault(f"bulk {target}", "no converged bulk relaxation")
    run.seconds["hull"] = time.perf_counter() - start
    _say(bar, progress, f"{spec.label} targets: {', '.join(run.targets)}")

    # 3. slabs of each target, in chunks
    start = time.perf_counter()
    run.slab_hashes = {t: slab_hashes[t] for t in run.targets}
    done = completed_hashes(store, list(run.slab_hashes.values()))
    task = bar.add_task(f"{spec.label}: slabs", total=len(run.targets))
    surfaces: dict[str, list[SurfaceEnergyDoc]] = {}
    for target in run.targets:
        bar.update(task, description=f"{spec.label}: slabs {target}")
        if slab_hashes[target] in done:
            stage("slabs", target, "stored with the same inputs", False)
        else:
            relaxed = stored_slab_relaxations(store, slab_hashes[target])
            slabs = maker.surface_maker.slabs(bulks[target], target, checkpoint, relaxed)
            if (
                attempt("slabs", target, _tagged(slabs, INPUT_HASH_KEY, slab_hashes[target]))
                is None
            ):
                bar.advance(task)
                continue
        criteria = {f"metadata.{INPUT_HASH_KEY}": slab_hashes[target]}
        surfaces[target] = [
            SurfaceEnergyDoc.model_validate(d) for d in surface_energies(store, criteria=criteria)
        ]
        bar.advance(task)
    run.seconds["slabs"] = time.perf_counter() - start

    # 4. one thermo document per target
    start = time.perf_counter()
    for target, target_surfaces in surfaces.items():
        reason = no_region_reason(Composition(bulks[target].formula))
        if reason is not None:
            run.no_thermo[target] = reason
            _say(bar, progress, f"{spec.label} thermo {target}: none ({reason})")
            continue
        key = thermo_hash(slab_hashes[target], bulk_hashes, references)
        stored = stored_thermo(store, key)
        if stored is not None:
            pngs = [stored.map_png, stored.wulff_png]
            if not all(png and Path(png).is_file() for png in pngs):  # another folder, deleted
                write_pngs(stored, plot_dir)
            stage("thermo", target, "stored with the same inputs", False)
            run.thermo[target] = stored
            continue
        job = maker.thermo_job(target, bulks, references, target_surfaces)
        outputs = attempt("thermo", target, _tagged(job, THERMO_HASH_KEY, key))
        if outputs is not None:
            run.thermo[target] = outputs[job.uuid]
    run.seconds["thermo"] = time.perf_counter() - start
    return run
