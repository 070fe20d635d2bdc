"""Jobs of surface thermodynamics: elemental references, gamma(delta mu_O), Wulff comparison.

* :func:`elemental_reference`: the model's O2 molecule (fixed box) or a metal's lowest
  fcc / bcc / hcp prototype (free cell),
* :func:`surface_thermodynamics`: a :class:`~surfflows.schemas.SurfaceThermoDoc` with
  gamma(delta mu_O) of every termination, the stable termination per facet over the
  delta mu_O range, the Wulff shapes (emmet-style
  :class:`~surfflows.schemas.SurfacePropertiesDoc`) and the PNGs,
* :func:`wulff_comparison`: the model's Wulff shape against a DFT reference set's
  (:class:`~surfflows.schemas.WulffComparisonDoc`).

The flow composing them is :class:`surfflows.flows.thermo.ThermoMaker`.
"""

from __future__ import annotations

from pathlib import Path

from jobflow import job
from pymatgen.core import Composition, Structure

from surfflows.analysis.thermo import thermo_from_surface_energies
from surfflows.analysis.wulff import compare_wulff
from surfflows.core.slabs import SlabSettings
from surfflows.core.thermo import elemental_prototypes, oxygen_molecule
from surfflows.engine.models import load_model
from surfflows.engine.relax import relax_one
from surfflows.io.registry import decode_checkpoint
from surfflows.reports.plots import surface_phase_diagram_plot, wulff_comparison_plot, wulff_plot
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc
from surfflows.schemas.thermo import (
    ElementReferenceDoc,
    ReferenceWulffDoc,
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


@job(output_schema=WulffComparisonDoc, data=[Structure])
def wulff_comparison(
    thermo: SurfaceThermoDoc, reference: ReferenceWulffDoc, plot_dir: str | None = None
) -> WulffComparisonDoc:
    """The model's Wulff shape (its first delta mu_O) against a DFT reference set's.

    Facet ranking agreement (Kendall tau, Spearman rho), area-fraction differences and a PNG
    of the two Wulff shapes side by side, on the facets both have. ``reference``: see
    :func:`surfflows.io.inputs.reference_wulff`.
    """
    name = reference.reference_set
    doc = compare_wulff(
        reference.wulff, thermo.wulff_shapes[0], name, reference.level_of_theory, reference.citation
    )
    path = _plot_dir(plot_dir) / f"{thermo.material_id}_{thermo.model_id}_vs_{name}.png"
    doc.comparison_png = str(
        wulff_comparison_plot(
            [(doc.reference.model_id, doc.reference), (doc.model_id, doc.model)],
            path,
            caption=f"Reference data: {reference.citation or name}",
        )
    )
    return doc
