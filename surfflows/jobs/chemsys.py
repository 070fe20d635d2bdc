"""The chemical-system campaign as jobflow jobs: bulks -> hull -> slabs -> thermodynamics.

:class:`ChemicalSystemMaker` builds, for one model, a Flow that relaxes every competing
phase (free cell) and the model's elemental references (O2 in a box, each metal's lowest
prototype: :func:`surfflows.jobs.thermo.elemental_reference`), cuts and relaxes the slabs of
the target phases in chunks (:meth:`surfflows.jobs.surface.SurfaceEnergyMaker.slabs`), and
ends with one :class:`~surfflows.schemas.chemsys.ChemicalSystemThermoDoc` per target: the
model's hull, the target's stability region, its termination maps and Wulff shapes, PNGs.
Without explicit targets a job picks the phases on the model's hull once the bulks are
relaxed and adds their slabs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobflow import Flow, Job, Maker, OutputReference, Response, job
from pymatgen.core import Structure

from surfflows.analysis.chemsys import (
    chemical_system_thermo as thermo_document,
)
from surfflows.analysis.chemsys import (
    elemental_potentials,
    model_phase_diagram,
)
from surfflows.core.slabs import SlabSettings
from surfflows.core.text import job_name
from surfflows.jobs.surface import SurfaceEnergyMaker
from surfflows.jobs.thermo import elemental_reference
from surfflows.reports.chemsys_plots import write_pngs
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc, PhaseEnergy
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import ElementReferenceDoc


def hull_energies(
    bulks: Mapping[str, BulkRelaxDoc], references: Sequence[ElementReferenceDoc]
) -> tuple[list[PhaseEnergy], dict[str, float], dict[str, str]]:
    """Hull entries of the converged bulks, the model's elemental potentials, and why each
    other bulk was left out (phase id -> reason)."""
    phases, left_out = [], {}
    for phase_id, bulk in bulks.items():
        try:
            phases.append(PhaseEnergy.from_bulk(bulk, phase_id))
        except ValueError as exc:
            left_out[phase_id] = str(exc)
    return phases, elemental_potentials(references), left_out


def energies_above_hull(
    bulks: Mapping[str, BulkRelaxDoc], references: Sequence[ElementReferenceDoc]
) -> dict[str, float | None]:
    """Phase id -> energy above the model's hull, eV/atom (None: its relaxation failed)."""
    phases, potentials, left_out = hull_energies(bulks, references)
    diagram = model_phase_diagram(phases, potentials)
    above = {e.name: float(diagram.get_e_above_hull(e)) for e in diagram.all_entries}
    return {phase_id: above.get(phase_id) for phase_id in bulks} | dict.fromkeys(left_out)


def hull_phases(
    bulks: Mapping[str, BulkRelaxDoc], references: Sequence[ElementReferenceDoc]
) -> list[str]:
    """Phase ids on the model's hull (energy above hull below 1 meV/atom), compounds and
    elements alike, in the order of ``bulks``."""
    above = energies_above_hull(bulks, references)
    return [phase_id for phase_id, e in above.items() if e is not None and e < 1e-3]


@job(output_schema=ChemicalSystemThermoDoc)
def chemical_system_thermo(
    target: str,
    bulks: dict[str, BulkRelaxDoc],
    references: list[ElementReferenceDoc],
    surfaces: list[SurfaceEnergyDoc],
    slab_settings: SlabSettings,
    chemical_system: list[str],
    plot_dir: str | None = None,
) -> ChemicalSystemThermoDoc:
    """Hull, stability region, termination maps and Wulff shapes of one target, with PNGs.

    See :func:`surfflows.analysis.chemsys.chemical_system_thermo`; every converged bulk is
    a hull entry, the target's bulk is the one its slabs were cut from. PNGs (termination
    maps, Wulff shapes at the vertices and centroid) go to ``plot_dir`` (default: the job's
    working directory); their paths are on the document.
    """
    phases, potentials, _ = hull_energies(bulks, references)
    doc = thermo_document(bulks[target], surfaces, phases, potentials)
    doc.chemical_system = list(chemical_system)
    return write_pngs(doc, plot_dir or Path.cwd())


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


@job
def surfaces_on_hull(
    maker: ChemicalSystemMaker,
    bulks: dict[str, BulkRelaxDoc],
    references: list[ElementReferenceDoc],
    checkpoint: str | None = None,
) -> Response:
    """Replace this job by the slabs and thermodynamics of every phase on the model's hull."""
    targets = hull_phases(bulks, references)
    references_by_element = {r.element: r for r in references}
    flow = maker.make({}, targets, checkpoint, bulks=bulks, references=references_by_element)
    return Response(replace=flow)
