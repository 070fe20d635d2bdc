"""Surface thermodynamics flow: gamma(delta mu_O), stable terminations and Wulff shapes.

:class:`ThermoMaker` builds, for one bulk and one model,

* the :class:`~surfflows.flows.surface.SurfaceEnergyMaker` flow (bulk relax, slabs of every
  facet and termination, slab relaxations, one surface-energy document per slab),
* the model's elemental references (:func:`surfflows.jobs.thermo.elemental_reference`): the
  O2 molecule for an oxide and, for a binary oxide, the metal's lowest prototype,
* the analysis job :func:`surfflows.jobs.thermo.surface_thermodynamics` (gamma(delta mu_O),
  stable terminations, Wulff shapes, PNGs),
* optionally a comparison with a DFT reference set's Wulff shape
  (:func:`surfflows.jobs.thermo.wulff_comparison`).

:func:`thermo_flow` builds the same flow but reuses what a store already holds (surface
energies of the same material, model and slab cells; elemental references of the model:
:func:`surfflows.reports.query.stored_surface_energies`,
:func:`surfflows.reports.query.stored_reference`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jobflow import Flow, JobStore, Maker, OutputReference
from pymatgen.core import Structure

from surfflows.core.slabs import SlabSettings
from surfflows.core.text import job_name
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.jobs.thermo import (
    elemental_reference,
    reference_elements,
    surface_thermodynamics,
    wulff_comparison,
)
from surfflows.reports.query import stored_reference, stored_surface_energies
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import ElementReferenceDoc, ReferenceWulffDoc


@dataclass
class ThermoMaker(Maker):
    """Surface phase diagram and Wulff shapes of a bulk under one model.

    Parameters
    ----------
    name
        Flow name.
    model
        The model of bulk, slabs and elemental references (pretrained or fine-tuned).
    surface_maker
        The surface-energy flow of the bulk (its model, slab settings, and relaxation
        settings; every termination of every facet is kept). The elemental references
        relax with its bulk relax maker's model, force criterion and step limit.
    delta_mu_o_range
        delta mu_O range (eV) of the stability table and diagram; default: the model's
        bounds (binary oxides), else :data:`surfflows.schemas.thermo.DEFAULT_DELTA_MU_O_RANGE`.
    delta_mu_o
        delta mu_O values (eV) of the Wulff shapes; default: both ends and the middle.
    plot_dir
        Folder of the PNGs; default: each job's working directory.
    reference
        A DFT reference set's Wulff shape of the material (e.g. of ``pbe_metal_surfaces``:
        :func:`surfflows.io.inputs.reference_wulff`) to compare the model's with.
    dft_elemental_references, dft_elemental_set
        Element -> DFT ground-state energy per atom (e.g. from ``mp_elemental_refs`` via
        :func:`surfflows.io.elements.dft_elemental_references`) and the set's name: recorded
        on the document as the DFT side of the metal chemical potentials.

    Examples
    --------
    >>> maker = ThermoMaker(surface_maker=SurfaceEnergyMaker.for_model(ModelSpec()))
    >>> flow = maker.make(rutile, material_id="TiO2-rutile")  # doctest: +SKIP
    >>> run_locally(flow, store=get_job_store())  # doctest: +SKIP
    """

    name: str = "surface thermodynamics"
    surface_maker: SurfaceEnergyMaker = field(default_factory=SurfaceEnergyMaker)
    delta_mu_o_range: tuple[float, float] | None = None
    delta_mu_o: list[float] | None = None
    plot_dir: str | None = None
    reference: ReferenceWulffDoc | None = None
    dft_elemental_references: dict[str, float] | None = None
    dft_elemental_set: str | None = None

    @property
    def model(self) -> ModelSpec:
        """The model of every relaxation."""
        return self.surface_maker.model

    @property
    def slab_settings(self) -> SlabSettings:
        """How slabs are cut."""
        return self.surface_maker.slab_settings

    @property
    def fmax(self) -> float:
        """Force criterion of the bulk and elemental relaxations, eV/Å."""
        return self.surface_maker.bulk_relax_maker.fmax

    @property
    def max_steps(self) -> int:
        """Step limit of the bulk and elemental relaxations."""
        return self.surface_maker.bulk_relax_maker.max_steps

    def make(
        self,
        structure: Structure,
        material_id: str,
        *,
        bulk: BulkRelaxDoc | None = None,
        surfaces: Sequence[SurfaceEnergyDoc] | None = None,
        references: Mapping[str, ElementReferenceDoc] | None = None,
        checkpoint: str | OutputReference | None = None,
    ) -> Flow:
        """Flow for one bulk; results already at hand are passed in and not recomputed.

        Parameters
        ----------
        structure
            The bulk (relaxed by the model inside the flow).
        material_id
            Label stored on every document.
        bulk, surfaces
            A finished surface-energy campaign of this material and model (both or neither).
        references
            Element -> finished elemental reference of this model.
        checkpoint
            The model's checkpoint bytes (base64, or a reference to them:
            :func:`surfflows.io.registry.checkpoint_reference`) if it is fine-tuned; the
            surface and elemental-reference jobs load it, so the flow runs on a worker.
        """
        jobs = []
        if bulk is None or surfaces is None:
            surface_flow = self.surface_maker.make(structure, material_id, checkpoint)
            jobs.append(surface_flow)
            bulk = surface_flow.output["bulk"]
            surfaces = surface_flow.output["surfaces"]
        reference_outputs: list[ElementReferenceDoc | OutputReference] = []
        for element in reference_elements(structure.composition):
            if references and element in references:
                reference_outputs.append(references[element])
                continue
            reference = elemental_reference(
                element, self.model, self.fmax, self.max_steps, checkpoint
            )
            reference.name = job_name(element, "reference", self.model.model_id)
            jobs.append(reference)
            reference_outputs.append(reference.output)
        analysis = surface_thermodynamics(
            bulk,
            surfaces,
            reference_outputs,
            self.slab_settings,
            self.delta_mu_o_range,
            self.delta_mu_o,
            self.plot_dir,
            self.dft_elemental_references,
            self.dft_elemental_set,
        )
        analysis.name = job_name("surface thermodynamics", material_id)
        jobs.append(analysis)
        output = {"thermo": analysis.output, "comparison": None}
        if self.reference is not None:
            comparison = wulff_comparison(analysis.output, self.reference, self.plot_dir)
            comparison.name = job_name(
                "wulff comparison", material_id, self.reference.reference_set
            )
            jobs.append(comparison)
            output["comparison"] = comparison.output
        return Flow(jobs, output=output, name=job_name(self.name, material_id))


def thermo_flow(
    maker: ThermoMaker,
    structure: Structure,
    material_id: str,
    store: JobStore,
    checkpoint: OutputReference | None = None,
) -> tuple[Flow, list[str]]:
    """:meth:`ThermoMaker.make`, reusing what ``store`` already holds.

    ``checkpoint``: a reference to a fine-tuned model's checkpoint in ``store``
    (:func:`surfflows.io.registry.checkpoint_reference`, given with the resolved model by
    :meth:`surfflows.flows.campaign.CampaignConfig.model_spec`); None for a pretrained model.

    Returns
    -------
    tuple[Flow, list[str]]
        The flow, and what was reused (for the user).
    """
    reused = []
    model_id = maker.model.model_id
    campaign = stored_surface_energies(
        store, material_id, model_id, maker.fmax, maker.slab_settings
    )
    if campaign is not None:
        reused.append(f"surface energies of {len(campaign[1])} slabs of {material_id}")
    references = {}
    for element in reference_elements(structure.composition):
        doc = stored_reference(store, element, model_id)
        if doc is not None:
            references[element] = doc
            reused.append(f"{element} reference ({doc.prototype})")
    bulk, surfaces = campaign or (None, None)
    flow = maker.make(
        structure,
        material_id,
        bulk=bulk,
        surfaces=surfaces,
        references=references,
        checkpoint=checkpoint,
    )
    return flow, reused
