"""Campaigns over a chemical system: the model's hull, then the surfaces of its phases.

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
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Element, Structure

from surfflows.core.slabs import SlabSettings
from surfflows.engine.models import check_model
from surfflows.flows.campaign import (
    CampaignConfig,
    MaterialConfig,
    RelaxSettings,
    validation_summary,
)
from surfflows.io.packaged import packaged_checkpoint, packaged_names
from surfflows.schemas.models import ModelSpec

#: Largest number of elements of a chemical system (the phase diagram's dimension).
MAX_ELEMENTS = 4
#: File suffixes read as structures in a folder of phases (POSCAR/CONTCAR names too).
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".json", ".xyz", ".extxyz")
#: Job metadata key holding a bulk relaxation's hash (structure, relaxation settings, model).
BULK_HASH_KEY = "surfflows_bulk_hash"


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
                raise FileNotFoundError(f"phases: folder {self.phases} does not exist")
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
                raise ValueError(f"phases: no structure file in {self.phases}")
        ids: dict[str, Path] = {}
        for file in files:
            phase_id = file.stem if file.suffix else file.name
            if phase_id in ids:
                raise ValueError(f"phases: {ids[phase_id]} and {file} have the same id {phase_id}")
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
        files = self.phase_files()
        try:
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


def duplicate_structures(structures: dict[str, Structure]) -> list[tuple[str, str]]:
    """Pairs of ids whose structures pymatgen's StructureMatcher finds the same (same
    composition, lattice and sites up to its default tolerances)."""
    matcher = StructureMatcher()
    ids = list(structures)
    pairs = []
    for i, first in enumerate(ids):
        for second in ids[i + 1 :]:
            a, b = structures[first], structures[second]
            if a.composition.reduced_composition != b.composition.reduced_composition:
                continue
            if matcher.fit(a, b):
                pairs.append((first, second))
    return pairs


def check_model_name(model: str | dict[str, Any], folder: Path, where: str) -> str | dict:
    """A campaign's model entry checked as a plain campaign checks ``model:``: a checkpoint
    file next to the YAML becomes its absolute path; packaged models, pretrained versions and
    calculators are checked; registered names (``chgnet-ft-``, ``sha256:``) are resolved
    when the campaign runs."""
    from surfflows.io.checkpoints import check_checkpoint

    if isinstance(model, str) and (folder / model).is_file():
        model = str((folder / model).resolve())
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


def _tagged(flow_or_job: Flow | Job, key: str, value: str) -> Flow:
    """``flow_or_job`` in a Flow whose jobs (and the jobs they create) carry ``key: value``."""
    flow = flow_or_job if isinstance(flow_or_job, Flow) else Flow([flow_or_job])
    flow.update_metadata({key: value})
    return flow

