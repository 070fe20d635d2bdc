"""Surface thermodynamics flow: gamma(delta mu_O), stable terminations and Wulff shapes.

:class:`ThermoMaker` builds, for one bulk and one model,

* the :class:`~surfflows.jobs.surface.SurfaceEnergyMaker` flow (bulk relax, slabs of every
  facet and termination, slab relaxations, one surface-energy document per slab),
* the model's elemental references: the O2 molecule (fixed box) for an oxide and, for a
  binary oxide, the lowest of the metal's fcc / bcc / hcp prototypes (free cell),
* an analysis job whose :class:`~surfflows.schemas.SurfaceThermoDoc` holds gamma(delta mu_O)
  of every termination, the stable termination per facet over the delta mu_O range, the
  Wulff shapes (emmet-style :class:`~surfflows.schemas.SurfacePropertiesDoc`) and the PNGs,
* optionally a comparison with a DFT reference set (:class:`~surfflows.schemas.WulffComparisonDoc`).

:func:`thermo_flow` builds the same flow but reuses what a store already holds (surface
energies of the same material, model and slab cells; elemental references of the model).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jobflow import Flow, JobStore, Maker, OutputReference, job
from monty.json import MontyDecoder
from pymatgen.core import Composition, Structure

from surfflows.analysis.thermo import thermo_from_surface_energies
from surfflows.analysis.wulff import compare_wulff, surface_properties
from surfflows.core.slabs import SlabSettings, conventional_cell, generate_slabs
from surfflows.core.text import job_name
from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2, elemental_prototypes, oxygen_molecule
from surfflows.engine.models import load_model
from surfflows.engine.relax import relax_one
from surfflows.io.canonical import read_reference_set
from surfflows.io.registry import checkpoint_reference, decode_checkpoint
from surfflows.jobs.surface import SurfaceEnergyMaker
from surfflows.reports.plots import surface_phase_diagram_plot, wulff_comparison_plot, wulff_plot
from surfflows.reports.query import surface_energies
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import (
    ElementReferenceDoc,
    SurfaceEntryDoc,
    SurfacePropertiesDoc,
    SurfaceThermoDoc,
    WulffComparisonDoc,
)


def reference_elements(composition: Composition) -> list[str]:
    """Elemental references a bulk needs: none without O, O2 for an oxide, plus M for MxOy."""
    elements = sorted(composition.get_el_amt_dict())
    if "O" not in elements:
        return []
    metals = [el for el in elements if el != "O"]
    return ["O", *metals] if len(metals) == 1 else ["O"]


@job(output_schema=ElementReferenceDoc, data=[Structure])
def elemental_reference(
    element: str, model: ModelSpec, fmax: float, max_steps: int, checkpoint: str | None = None
) -> ElementReferenceDoc:
    """The model's reference energy of ``element``.

    Oxygen: an O2 molecule in a large, slightly non-cubic box, relaxed with a fixed cell.
    Any other element: its fcc, bcc and hcp prototypes relaxed with a free cell, the
    lowest energy per atom kept (see :func:`surfflows.core.thermo.elemental_prototypes`).
    ``checkpoint``: the model's checkpoint (base64) if it is fine-tuned.
    """
    load_model(model, decode_checkpoint(checkpoint))
    if element == "O":
        results = {
            "O2 molecule": relax_one(oxygen_molecule(), model, fmax=fmax, max_steps=max_steps)
        }
        return ElementReferenceDoc.from_results(element, results, model, fmax, relax_cell=False)
    results = {
        name: relax_one(structure, model, relax_cell=True, fmax=fmax, max_steps=max_steps)
        for name, structure in elemental_prototypes(element).items()
    }
    return ElementReferenceDoc.from_results(element, results, model, fmax, relax_cell=True)


def _plot_dir(plot_dir: str | None) -> Path:
    """Where a job writes its PNGs: ``plot_dir``, else the job's working directory."""
    return Path(plot_dir) if plot_dir else Path.cwd()


def _dmu_tag(delta_mu_o: float | None) -> str:
    return "" if delta_mu_o is None else f"_dmuO{delta_mu_o:+.2f}"


@job(output_schema=SurfaceThermoDoc, data=[Structure])
def surface_thermodynamics(
    bulk: BulkRelaxDoc,
    surfaces: list[SurfaceEnergyDoc],
    references: list[ElementReferenceDoc],
    slab_settings: SlabSettings,
    delta_mu_o_range: tuple[float, float] | None = None,
    delta_mu_o: list[float] | None = None,
    plot_dir: str | None = None,
    dft_elemental_references: dict[str, float] | None = None,
    dft_elemental_set: str | None = None,
) -> SurfaceThermoDoc:
    """gamma(delta mu_O), stable terminations and Wulff shapes, with their PNGs.

    See :func:`surfflows.analysis.thermo.thermo_from_surface_energies`. PNGs (the
    gamma-versus-delta-mu_O diagram for an oxide, one Wulff shape per delta mu_O) go to
    ``plot_dir`` (default: the job's working directory); their paths are on the document.
    """
    doc = thermo_from_surface_energies(
        bulk,
        surfaces,
        references,
        slab_settings,
        delta_mu_o_range,
        delta_mu_o,
        dft_elemental_references,
        dft_elemental_set,
    )
    folder = _plot_dir(plot_dir)
    stem = f"{doc.material_id}_{doc.model_id}"
    if doc.reservoir is not None:
        doc.diagram_png = str(surface_phase_diagram_plot(doc, folder / f"{stem}_gamma_dmuO.png"))
    for wulff in doc.wulff_shapes:
        path = wulff_plot(wulff, folder / f"{stem}_wulff{_dmu_tag(wulff.delta_mu_O)}.png")
        wulff.wulff_png = None if path is None else str(path)
    return doc


def reference_wulff(set_name: str, material: str) -> tuple[SurfacePropertiesDoc, dict]:
    """Wulff document of a DFT reference set's surface energies for one material.

    The lowest reference gamma per facet (``gamma_ref``, else ``gamma_ref_recomputed``) on the
    conventional cell of the set's bulk of that material. Flagged slabs are left out; where
    the material's slabs were cut from several bulk polymorphs (``mp_elemental_surfaces``),
    only those of the polymorph with the most slabs are used, so facets of different
    crystals are never mixed.

    Returns
    -------
    tuple[SurfacePropertiesDoc, dict]
        The document (``model_id`` = ``"<set> (<level of theory>)"``) and the set's
        provenance (``level_of_theory``, ``citation``).
    """
    refset = read_reference_set(set_name)
    slabs = [
        s for s in refset.slabs if s.material_id == material and s.miller_index and not s.flags
    ]
    polymorphs = Counter(s.bulk_key for s in slabs if s.bulk_key)
    if len(polymorphs) > 1:
        main = polymorphs.most_common(1)[0][0]
        slabs = [s for s in slabs if s.bulk_key == main]
    gammas: dict[tuple[int, ...], float] = {}
    for slab in slabs:
        gamma = slab.gamma_ref if slab.gamma_ref is not None else slab.gamma_ref_recomputed
        if gamma is not None:
            hkl = tuple(slab.miller_index)
            gammas[hkl] = min(gamma, gammas.get(hkl, gamma))
    if not gammas:
        known = sorted({s.material_id for s in refset.slabs})
        raise ValueError(f"{set_name} has no surface energies of {material!r}; it has {known}")
    bulk_keys = {s.bulk_key for s in slabs if s.bulk_key}
    bulk = next(b for b in refset.bulks if b.key in bulk_keys)
    info = refset.info
    doc = surface_properties(
        conventional_cell(bulk.structure),
        [
            SurfaceEntryDoc(
                miller_index=list(hkl),
                surface_energy=gamma,
                surface_energy_EV_PER_ANG2=gamma / EV_PER_A2_TO_J_PER_M2,
            )
            for hkl, gamma in sorted(gammas.items())
        ],
        material_id=material,
        pretty_formula=bulk.formula,
        model_id=f"{info.name} ({info.level_of_theory})",
    )
    return doc, {"level_of_theory": info.level_of_theory, "citation": info.citation}


@job(output_schema=WulffComparisonDoc, data=[Structure])
def wulff_comparison(
    thermo: SurfaceThermoDoc,
    reference_set: str,
    reference_material: str,
    plot_dir: str | None = None,
) -> WulffComparisonDoc:
    """The model's Wulff shape (its first delta mu_O) against a DFT reference set's.

    Facet ranking agreement (Kendall tau, Spearman rho), area-fraction differences and a PNG
    of the two Wulff shapes side by side, on the facets both have.
    """
    reference, provenance = reference_wulff(reference_set, reference_material)
    doc = compare_wulff(reference, thermo.wulff_shapes[0], reference_set, **provenance)
    path = _plot_dir(plot_dir) / f"{thermo.material_id}_{thermo.model_id}_vs_{reference_set}.png"
    doc.comparison_png = str(
        wulff_comparison_plot(
            [(doc.reference.model_id, doc.reference), (doc.model_id, doc.model)],
            path,
            caption=f"Reference data: {provenance['citation'] or reference_set}",
        )
    )
    return doc


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
    reference_set
        A DFT reference set (e.g. ``pbe_metal_surfaces``) to compare the Wulff shape with.
    reference_material
        The material's id in that set (default: the material id given to :meth:`make`).
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
    reference_set: str | None = None
    reference_material: str | None = None
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
        if self.reference_set:
            comparison = wulff_comparison(
                analysis.output,
                self.reference_set,
                self.reference_material or material_id,
                self.plot_dir,
            )
            comparison.name = job_name("wulff comparison", material_id, self.reference_set)
            jobs.append(comparison)
            output["comparison"] = comparison.output
        return Flow(jobs, output=output, name=job_name(self.name, material_id))


def _decoded(doc: dict | None):
    return None if doc is None else MontyDecoder().process_decoded(doc["output"])


def stored_reference(store: JobStore, element: str, model_id: str) -> ElementReferenceDoc | None:
    """Newest converged elemental reference of ``element`` by ``model_id`` in ``store``."""
    with store:
        return _decoded(
            store.query_one(
                {
                    "output.@class": "ElementReferenceDoc",
                    "output.element": element,
                    "output.model_id": model_id,
                    "output.converged": True,
                },
                sort={"completed_at": -1},
                load=True,
            )
        )


def stored_surface_energies(
    store: JobStore, material_id: str, maker: ThermoMaker
) -> tuple[BulkRelaxDoc, list[SurfaceEnergyDoc]] | None:
    """The newest complete surface-energy campaign of a material that ``maker`` can reuse.

    Complete: the newest bulk relaxation of ``material_id`` by the maker's model, converged
    at an ``fmax`` no looser than the maker's, with a surface-energy document (computed
    against that bulk energy) for every slab the maker's slab settings cut from it, with the
    same cell and composition. None if anything is missing.
    """
    model_id = maker.model.model_id
    with store:
        bulk = _decoded(
            store.query_one(
                {
                    "output.@class": "BulkRelaxDoc",
                    "output.material_id": material_id,
                    "output.model_id": model_id,
                },
                sort={"completed_at": -1},
                load=True,
            )
        )
    if bulk is None or not bulk.converged or bulk.fmax > maker.fmax:
        return None
    docs = {
        (tuple(d["miller_index"]), d["shift"], d["termination"]): d
        for d in surface_energies(store, material_id=material_id, model_id=model_id)
        if d["bulk_energy"] == bulk.energy
    }
    surfaces = []
    for candidate in generate_slabs(bulk.structure, maker.slab_settings):
        doc = docs.get((candidate.miller_index, candidate.shift, candidate.termination))
        if doc is None or abs(doc["area"] - candidate.area) > 1e-6:
            return None
        if Composition(doc["slab_formula"]) != candidate.structure.composition:
            return None
        surfaces.append(SurfaceEnergyDoc.model_validate(doc))
    return bulk, surfaces


def thermo_flow(
    maker: ThermoMaker, structure: Structure, material_id: str, store: JobStore
) -> tuple[Flow, list[str]]:
    """:meth:`ThermoMaker.make`, reusing what ``store`` already holds.

    A fine-tuned model's checkpoint is taken from ``store`` by reference (it must be
    registered there, see :func:`surfflows.io.registry.checkpoint_reference`).

    Returns
    -------
    tuple[Flow, list[str]]
        The flow, and what was reused (for the user).
    """
    reused = []
    campaign = stored_surface_energies(store, material_id, maker)
    if campaign is not None:
        reused.append(f"surface energies of {len(campaign[1])} slabs of {material_id}")
    references = {}
    for element in reference_elements(structure.composition):
        doc = stored_reference(store, element, maker.model.model_id)
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
        checkpoint=checkpoint_reference(maker.model, store),
    )
    return flow, reused
