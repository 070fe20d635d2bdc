"""Jobs of the chemical-system campaign: the model's hull and each target's thermodynamics.

:func:`chemical_system_thermo` gives one
:class:`~surfflows.schemas.chemsys.ChemicalSystemThermoDoc` per target: the model's hull,
the target's stability region, its termination maps and Wulff shapes, PNGs.
:func:`surfaces_on_hull` picks the phases on the model's hull once the bulks are relaxed and
is replaced by their slabs and thermodynamics. The flow is
:class:`surfflows.flows.chemsys.ChemicalSystemMaker`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from jobflow import Response, job

if TYPE_CHECKING:
    from surfflows.flows.chemsys import ChemicalSystemMaker

from surfflows.analysis.chemsys import (
    chemical_system_thermo as thermo_document,
)
from surfflows.analysis.chemsys import (
    elemental_potentials,
    model_phase_diagram,
)
from surfflows.core.slabs import SlabSettings
from surfflows.reports.chemsys_plots import write_pngs
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc, PhaseEnergy
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
