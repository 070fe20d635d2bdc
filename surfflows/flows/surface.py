"""The surface-energy flow: bulk relax -> slabs -> slab relaxations -> gamma per slab.

Generated mode: slabs are cut from the bulk relaxed by the same model, so slab and
bulk share the model's lattice and both energies come from one model. The jobs are in
:mod:`surfflows.jobs.surface` and :mod:`surfflows.jobs.relax`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from jobflow import Flow, Job, Maker, OutputReference
from pymatgen.core import Structure

from surfflows.core.slabs import SlabSettings
from surfflows.core.text import job_name
from surfflows.core.validation import check_bulk
from surfflows.engine.models import check_model
from surfflows.engine.relax import DEFAULT_OPTIMIZER, Optimizer
from surfflows.jobs.relax import BulkRelaxMaker, SlabRelaxMaker
from surfflows.jobs.surface import slab_relaxations
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc


@dataclass
class SurfaceEnergyMaker(Maker):
    """Surface energies of every facet and termination of a bulk under one model.

    Parameters
    ----------
    name
        Flow name.
    bulk_relax_maker
        Relaxes the bulk (free cell); its model (CHGNet or any ASE calculator) relaxes the
        slabs too.
    slab_relax_maker
        Relaxes the slabs cut from the relaxed bulk (fixed cell), ``chunk_size`` per job.
    slab_settings
        How slabs are cut.
    chunk_size
        Slabs per relaxation job.

    Examples
    --------
    >>> from jobflow import run_locally  # doctest: +SKIP
    >>> flow = SurfaceEnergyMaker().make(cu_bulk, material_id="Cu")  # doctest: +SKIP
    >>> run_locally(flow, store=get_job_store())  # doctest: +SKIP
    """

    name: str = "surface energies"
    bulk_relax_maker: BulkRelaxMaker = field(default_factory=BulkRelaxMaker)
    slab_relax_maker: SlabRelaxMaker = field(default_factory=SlabRelaxMaker)
    slab_settings: SlabSettings = field(default_factory=SlabSettings)
    chunk_size: int = 64

    @classmethod
    def for_model(
        cls,
        model: ModelSpec,
        fmax: float = 0.05,
        max_steps: int = 500,
        optimizer: Optimizer = DEFAULT_OPTIMIZER,
        **kwargs,
    ) -> SurfaceEnergyMaker:
        """Bulk and slab relax makers with one model, force criterion and step limit;
        ``optimizer`` for the slabs (the bulk relaxes with FIRE)."""
        relax = {"model": model, "fmax": fmax, "max_steps": max_steps}
        return cls(
            bulk_relax_maker=BulkRelaxMaker(**relax),
            slab_relax_maker=SlabRelaxMaker(**relax, optimizer=optimizer),
            **kwargs,
        )

    @property
    def model(self) -> ModelSpec:
        """The model of the bulk (and the slabs)."""
        return self.bulk_relax_maker.model

    def make(
        self,
        structure: Structure,
        material_id: str,
        checkpoint: str | OutputReference | None = None,
    ) -> Flow:
        """Flow for one bulk: relax it, cut and relax slabs, one gamma document per slab.

        ``checkpoint``: the model's checkpoint bytes (base64, or a reference to them:
        :func:`surfflows.io.registry.checkpoint_reference`) if it is fine-tuned.

        Returns
        -------
        Flow
            Its output: ``bulk`` (the :class:`BulkRelaxDoc`) and ``surfaces`` (one
            :class:`SurfaceEnergyDoc` per slab).
        """
        check_bulk(structure, f"bulk {material_id}")
        check_model(self.model)
        if self.slab_relax_maker.model != self.model:
            raise ValueError(
                f"slabs ({self.slab_relax_maker.model.model_id}) and bulk "
                f"({self.model.model_id}) need the same model"
            )
        bulk_maker = replace(
            self.bulk_relax_maker, name=job_name(self.bulk_relax_maker.name, material_id)
        )
        bulk = bulk_maker.make(structure, material_id, checkpoint)
        slabs = self.slabs(bulk.output, material_id, checkpoint)
        output = {"bulk": bulk.output, "surfaces": slabs.output}
        return Flow([bulk, slabs], output=output, name=job_name(self.name, material_id))

    def slabs(
        self,
        bulk: BulkRelaxDoc | OutputReference,
        material_id: str,
        checkpoint: str | OutputReference | None = None,
        relaxed: list[SlabRelaxDoc] | None = None,
    ) -> Job:
        """The slab part of :meth:`make` for a bulk relaxed already (by this maker's model).

        ``relaxed``: slabs of this bulk relaxed already (see :func:`slab_relaxations`).

        Returns
        -------
        Job
            ``slabs <material_id>``: cuts the slabs and is replaced by their relaxations;
            its output is the list of :class:`SurfaceEnergyDoc`.
        """
        # By keyword: jobflow looks up a method of a first positional argument, which for a
        # reference with an output schema builds its JSON schema (50 ms per material).
        slabs = slab_relaxations(
            bulk=bulk,
            slab_settings=self.slab_settings,
            slab_relax_maker=self.slab_relax_maker,
            chunk_size=self.chunk_size,
            checkpoint=checkpoint,
            relaxed=relaxed,
        )
        slabs.name = job_name("slabs", material_id)
        return slabs
