"""Jobs of the surface-energy flow: cut and relax the slabs of a relaxed bulk, gamma per slab.

Generated mode: slabs are cut from the bulk relaxed by the same model, so slab and
bulk share the model's lattice and both energies come from one model. The flow is
:class:`surfflows.flows.surface.SurfaceEnergyMaker`.
"""

from __future__ import annotations

from jobflow import Flow, Response, job

from surfflows.core.slabs import SlabCandidate, SlabSettings, generate_slabs
from surfflows.core.text import job_name, miller_text
from surfflows.jobs.relax import SlabRelaxMaker
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc


@job(output_schema=SurfaceEnergyDoc)
def surface_energy(slab: SlabRelaxDoc, bulk: BulkRelaxDoc) -> SurfaceEnergyDoc:
    """Surface-energy document of one relaxed slab against its relaxed bulk."""
    return SurfaceEnergyDoc.from_relaxations(slab, bulk)


def _slab_key(slab: SlabCandidate | SlabRelaxDoc) -> tuple:
    """What identifies one cut slab: facet, shift, termination, composition and area."""
    formula = slab.structure.composition.formula
    return (
        tuple(slab.miller_index),
        round(slab.shift, 6),
        slab.termination,
        formula,
        round(slab.area, 6),
    )


@job
def slab_relaxations(
    bulk: BulkRelaxDoc,
    slab_settings: SlabSettings,
    slab_relax_maker: SlabRelaxMaker,
    chunk_size: int,
    checkpoint: str | None = None,
    relaxed: list[SlabRelaxDoc] | None = None,
) -> Response:
    """Cut slabs from the relaxed bulk and replace this job by their relaxations.

    The replacement flow relaxes the slabs in chunks of ``chunk_size`` and ends with one
    :func:`surface_energy` job per slab; its output (this job's output) is the list of
    surface-energy documents. ``relaxed``: relaxations of slabs of this bulk done already
    (by an interrupted run of the same inputs): a slab with the same facet, shift,
    termination, composition and area is not relaxed again.
    """
    if bulk.error is not None:
        # Nothing sensible can be cut from a bulk whose relaxation raised; the bulk
        # document records why.
        return Response(output=[])
    candidates = generate_slabs(bulk.structure, slab_settings)
    done = {_slab_key(d): d for d in relaxed or []}
    keys = [_slab_key(c) for c in candidates]
    todo = [c for c, key in zip(candidates, keys, strict=True) if key not in done]
    jobs, slabs = [], dict(done)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        relax = slab_relax_maker.make(chunk, bulk.material_id, checkpoint)
        relax.name = job_name(slab_relax_maker.name, bulk.material_id, start // chunk_size)
        jobs.append(relax)
        for i, candidate in enumerate(chunk):
            slabs[_slab_key(candidate)] = relax.output[i]
    outputs = []
    for candidate, key in zip(candidates, keys, strict=True):
        energy = surface_energy(slabs[key], bulk)
        hkl = miller_text(candidate.miller_index, compact=True)
        energy.name = job_name("surface energy", bulk.material_id, hkl, candidate.termination)
        jobs.append(energy)
        outputs.append(energy.output)
    return Response(replace=Flow(jobs, output=outputs, name=job_name("slabs", bulk.material_id)))
