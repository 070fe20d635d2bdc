"""The surface-energy flow: bulk relax -> slabs -> slab relaxations -> gamma per slab.

Generated mode: slabs are cut from the bulk relaxed by the same model, so slab and
bulk share the model's lattice and both energies come from one model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jobflow import Flow, Maker, Response, job
from pymatgen.core import Structure

from surfflows.core.slabs import SlabSettings, generate_slabs
from surfflows.engine.models import ModelSpec, check_elements
from surfflows.jobs.relax import BulkRelaxMaker, SlabRelaxMaker
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc


@job(output_schema=SurfaceEnergyDoc)
def surface_energy(slab: SlabRelaxDoc, bulk: BulkRelaxDoc) -> SurfaceEnergyDoc:
    """Surface-energy document of one relaxed slab against its relaxed bulk."""
    return SurfaceEnergyDoc.from_relaxations(slab, bulk)


@job
def slab_relaxations(
    bulk: BulkRelaxDoc,
    slab_settings: SlabSettings,
    slab_relax_maker: SlabRelaxMaker,
    chunk_size: int,
) -> Response:
    """Cut slabs from the relaxed bulk and replace this job by their relaxations.

    The replacement flow relaxes the slabs in chunks of ``chunk_size`` and ends with one
    :func:`surface_energy` job per slab; its output (this job's output) is the list of
    surface-energy documents.
    """
    if bulk.error is not None:
        # Nothing sensible can be cut from a bulk whose relaxation raised; the bulk
        # document records why.
        return Response(output=[])
    candidates = generate_slabs(bulk.structure, slab_settings)
    jobs, outputs = [], []
    for start in range(0, len(candidates), chunk_size):
        chunk = candidates[start : start + chunk_size]
        relax = slab_relax_maker.make(chunk, bulk.material_id)
        relax.name = f"{slab_relax_maker.name} {bulk.material_id} {start // chunk_size}"
        jobs.append(relax)
        for i, candidate in enumerate(chunk):
            energy = surface_energy(relax.output[i], bulk)
            hkl = "".join(str(h) for h in candidate.miller_index)
            energy.name = f"surface energy {bulk.material_id} ({hkl}) {candidate.termination}"
            jobs.append(energy)
            outputs.append(energy.output)
    return Response(replace=Flow(jobs, output=outputs, name=f"slabs {bulk.material_id}"))


@dataclass
class SurfaceEnergyMaker(Maker):
    """Surface energies of every facet and termination of a bulk under one model.

    Parameters
    ----------
    name
        Flow name.
    model
        The CHGNet model for bulk and slabs.
    slab_settings
        How slabs are cut.
    fmax
        Force criterion for bulk and slabs, eV/Å.
    max_steps
        Step limit per relaxation.
    chunk_size
        Slabs per relaxation job.

    Examples
    --------
    >>> from jobflow import run_locally  # doctest: +SKIP
    >>> flow = SurfaceEnergyMaker().make(cu_bulk, material_id="Cu")  # doctest: +SKIP
    >>> run_locally(flow, store=get_job_store())  # doctest: +SKIP
    """

    name: str = "surface energies"
    model: ModelSpec = field(default_factory=ModelSpec)
    slab_settings: SlabSettings = field(default_factory=SlabSettings)
    fmax: float = 0.05
    max_steps: int = 500
    chunk_size: int = 64

    def make(self, structure: Structure, material_id: str) -> Flow:
        """Flow for one bulk: relax it, cut and relax slabs, one gamma document per slab."""
        if not structure.is_3d_periodic or len(structure) == 0:
            raise ValueError(f"bulk {material_id}: structure must be non-empty and 3D-periodic")
        check_elements(structure, f"bulk {material_id}")
        bulk = BulkRelaxMaker(
            name=f"bulk relax {material_id}",
            model=self.model,
            fmax=self.fmax,
            max_steps=self.max_steps,
        ).make(structure, material_id)
        slabs = slab_relaxations(
            bulk.output,
            self.slab_settings,
            SlabRelaxMaker(model=self.model, fmax=self.fmax, max_steps=self.max_steps),
            self.chunk_size,
        )
        slabs.name = f"slabs {material_id}"
        return Flow([bulk, slabs], output=slabs.output, name=f"{self.name} {material_id}")
