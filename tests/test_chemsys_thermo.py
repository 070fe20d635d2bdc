"""Surface phase diagrams over two chemical potentials: hull, region, gamma planes, maps.

A hand-made Sr-Ti-O hull (formation energies per formula unit chosen here, absolute elemental
energies so the referencing is exercised) has analytic vertices; slab energies are built
backwards from chosen gamma planes on real SrTiO3 slabs (pymatgen SlabGenerator), so the
termination map has a known crossing line. No model is run.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from monty.json import MontyDecoder, jsanitize
from pymatgen.analysis.chempot_diagram import ChemicalPotentialDiagram
from pymatgen.analysis.phase_diagram import PDEntry
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.core import Composition, Element, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from surfflows.analysis.chemsys import (
    chemical_system_thermo,
    compare_termination_maps,
    model_phase_diagram,
    no_region_reason,
    stability_region,
)
from surfflows.core.chempot import (
    default_independent,
    dependent_chemical_potential,
    surface_energy_plane,
)
from surfflows.core.slabs import SlabSettings, generate_slabs
from surfflows.core.text import miller_text
from surfflows.core.thermo import EV_PER_A2_TO_J_PER_M2
from surfflows.engine.relax import RelaxResult
from surfflows.reports.chemsys_plots import region_wulff_plot, termination_map_plot
from surfflows.schemas.chemsys import ChemicalSystemThermoDoc, PhaseEnergy
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.relax import BulkRelaxDoc, SlabRelaxDoc
from surfflows.schemas.surface import SurfaceEnergyDoc

#: Elemental reference energies, eV/atom (O: E(O2)/2), and formation energies per formula unit.
MU0 = {"Sr": -1.7, "Ti": -7.8, "O": -4.9}
FORMATION = {
    "SrO": -6.1,
    "TiO2": -9.8,
    "SrTiO3": -17.0,
    "Sr2TiO4": -23.2,
    "Ti2O3": -15.6,
    "TiO": -5.6,
}
#: SrTiO3's region in (Δμ_Sr, Δμ_O), worked out by hand from FORMATION: each vertex solves
#: the target's and two neighbours' equations sum_X x_X Δμ_X = ΔH_f.
ANALYTIC_VERTICES = {
    ("O2", "TiO2"): (-7.2, 0.0),
    ("O2", "Sr2TiO4"): (-6.2, 0.0),
    ("Ti2O3", "TiO2"): (-3.2, -4.0),
    ("Ti2O3", "TiO"): (-2.6, -4.4),
    ("Sr2TiO4", "TiO"): (-1.0, -5.2),
}
MODEL = "toy-model"
A_STO = 3.905


def phase(formula: str, formation: float, name: str | None = None) -> PhaseEnergy:
    composition = Composition(formula)
    energy = formation + sum(MU0[str(el)] * n for el, n in composition.items())
    return PhaseEnergy(
        name=name or formula,
        formula=composition.reduced_formula,
        composition=composition.get_el_amt_dict(),
        energy=energy,
        n_atoms=int(composition.num_atoms),
        model_id=MODEL,
    )


def phases(without: tuple[str, ...] = (), **changes: float) -> list[PhaseEnergy]:
    """The hand-made hull, some formation energies changed, some phases left out."""
    return [phase(f, changes.get(f, h)) for f, h in FORMATION.items() if f not in without]


def test_default_axes_for_abo3():
    assert default_independent(["O", "Ti", "Sr"]) == ["Sr", "O"]
    assert default_independent(["Ti", "O"]) == ["O"]
    with pytest.raises(ValueError, match="at most 4"):
        default_independent(["Sr", "Ti", "O", "La", "Mn"])


def test_region_matches_pymatgen_and_analytic_vertices():
    diagram = model_phase_diagram(phases(), MU0)
    region = stability_region(diagram, "SrTiO3")
    assert region.stable and region.e_above_hull == 0.0
    assert (region.independent, region.dependent) == (["Sr", "O"], "Ti")
    assert region.mu0 == pytest.approx(MU0)
    got = {tuple(p): tuple(v) for v, p in zip(region.vertices, region.vertex_phases, strict=True)}
    assert set(got) == set(ANALYTIC_VERTICES)
    for key, vertex in ANALYTIC_VERTICES.items():
        assert got[key] == pytest.approx(vertex, abs=1e-8)
    # Direct pymatgen, two ways: the SrTiO3 domain of a ChemicalPotentialDiagram with Ti
    # projected out, and the edges of PhaseDiagram.get_chempot_range_map over (Sr, O).
    entries = [PDEntry(Composition(el), e) for el, e in MU0.items()]
    entries += [PDEntry(Composition(p.composition), p.energy) for p in phases()]
    cpd = ChemicalPotentialDiagram(entries, formal_chempots=True)
    columns = [[str(el) for el in cpd.elements].index(el) for el in ("Sr", "O")]
    target = next(e for e in diagram.stable_entries if e.name == "SrTiO3")
    edges = diagram.get_chempot_range_map([Element("Sr"), Element("O")])[target]
    for direct in (
        cpd.domains["SrTiO3"][:, columns],
        np.vstack([edge.coords for edge in edges]),
    ):
        distance = np.linalg.norm(direct[:, None, :] - np.array(region.vertices)[None], axis=2)
        assert distance.min(axis=1).max() < 1e-8 and distance.min(axis=0).max() < 1e-8
    # The edge to Sr2TiO4 is the SrO line Δμ_Sr + Δμ_O = ΔH(Sr2TiO4) - ΔH(SrTiO3).
    edge = region.edge_phases.index(["Sr2TiO4"])
    a, b = region.vertices[edge], region.vertices[(edge + 1) % len(region.vertices)]
    assert sum(a) == pytest.approx(-6.2) and sum(b) == pytest.approx(-6.2)
    # Shoelace area of the analytic pentagon, and the bulk constraint at every vertex.
    x, y = np.array(region.vertices).T
    assert region.area == pytest.approx(
        abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2
    )
    for vertex in region.vertices:
        mu = dependent_chemical_potential(
            region.delta_mu(vertex), MU0, -41.2, Composition("SrTiO3")
        )
        assert sum(mu[el] * n for el, n in {"Sr": 1, "Ti": 1, "O": 3}.items()) == pytest.approx(
            -41.2
        )
        assert mu["Ti"] - MU0["Ti"] <= 1e-9


def test_binary_target_is_an_interval():
    region = stability_region(model_phase_diagram(phases(), MU0), "TiO2")
    assert region.independent == ["O"] and region.dependent == "Ti"
    assert np.array(region.vertices) == pytest.approx(np.array([[-4.0], [0.0]]))
    assert region.vertex_phases == [["Ti2O3"], ["O2"]]


def test_target_above_hull_gets_reason_and_closest_region():
    # Without Sr2TiO4, SrTiO3 0.1 eV per formula unit above SrO + TiO2: 0.02 eV/atom.
    entries = phases(without=("Sr2TiO4",), SrTiO3=-15.8)
    region = stability_region(model_phase_diagram(entries, MU0), "SrTiO3", margin=0.01)
    assert not region.stable
    assert region.e_above_hull == pytest.approx(0.02)
    assert set(region.decomposition) == {"SrO", "TiO2"}
    assert region.energy_shift == pytest.approx(0.03)
    assert "above the model's hull" in region.reason and "SrO + TiO2" in region.reason
    # The region hugs the SrO/TiO2 coexistence line Δμ_Sr + Δμ_O = ΔH(SrO), 5 * 0.01 eV wide.
    sums = np.array(region.vertices).sum(axis=1)
    assert sums.max() == pytest.approx(-6.1) and sums.min() == pytest.approx(-6.1 - 0.05)


def test_degenerate_region_names_the_target():
    entries = phases(without=("Sr2TiO4",), SrTiO3=-15.8)
    with pytest.raises(ValueError, match=r"SrTiO3.*degenerates to a (line|point)"):
        stability_region(model_phase_diagram(entries, MU0), "SrTiO3", margin=0.0)


def test_bad_hull_input():
    with pytest.raises(ValueError, match="no elemental reference for \\['Sr'\\]"):
        model_phase_diagram(phases(), {"Ti": -7.8, "O": -4.9})
    with pytest.raises(ValueError, match="duplicate phase names \\['SrO'\\]"):
        model_phase_diagram([*phases(), phase("SrO", -6.0)], MU0)
    diagram = model_phase_diagram(phases(), MU0)
    with pytest.raises(ValueError, match="target BaTiO3 is not among the phases"):
        stability_region(diagram, "BaTiO3")
    with pytest.raises(ValueError, match="an element: gamma does not depend on Δμ"):
        stability_region(diagram, "Sr (reference)")


def test_gamma_plane_by_hand_and_against_pymatgen():
    # Sr3Ti2O7 slab of SrTiO3 (two SrO faces): N_Sr - N_Ti = 1, N_O - 3 N_Ti = 1.
    e_bulk, e_slab, area = -41.2, -87.0, 15.25
    d_sr, d_o = -3.0, -2.0
    by_hand = (
        e_slab - 2 * e_bulk - (3 - 2) * (MU0["Sr"] + d_sr) - (7 - 3 * 2) * (MU0["O"] + d_o)
    ) / (2 * area)
    gamma_0, slopes, n_units, excess = surface_energy_plane(
        e_slab, Composition("Sr3Ti2O7"), e_bulk, Composition("SrTiO3"), area, MU0, ["Sr", "O"]
    )
    assert (n_units, excess) == (2.0, {"Sr": 1.0, "O": 1.0})
    assert gamma_0 + slopes["Sr"] * d_sr + slopes["O"] * d_o == pytest.approx(by_hand)
    # pymatgen's SlabEntry on a real (001) SrO-terminated slab, same references.
    bulk = srtio3()
    candidate = next(c for c in generate_slabs(bulk, SETTINGS) if c.termination.startswith("SrO_"))
    slab = candidate.structure
    composition = slab.composition
    energy = -700.0
    gamma_0, slopes, *_ = surface_energy_plane(
        energy, composition, e_bulk, bulk.composition, candidate.area, MU0, ["Sr", "O"]
    )
    refs = [ComputedEntry("Sr", MU0["Sr"]), ComputedEntry("O2", 2 * MU0["O"])]
    entry = SlabEntry(slab, energy, candidate.miller_index, label="SrO")
    expression = entry.surface_energy(ComputedStructureEntry(bulk, e_bulk), ref_entries=refs)
    values = {str(s): s for s in expression.free_symbols}
    point = {values["delu_Sr"]: d_sr, values["delu_O"]: d_o}
    assert float(expression.subs(point)) == pytest.approx(
        gamma_0 + slopes["Sr"] * d_sr + slopes["O"] * d_o
    )


SETTINGS = SlabSettings(max_index=1, min_slab_size=8.0, min_vacuum_size=10.0)


def srtio3() -> Structure:
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(A_STO), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5] * 3, [0.5, 0.5, 0]]
    )


def _result(structure: Structure, energy: float) -> RelaxResult:
    return RelaxResult(structure, energy, energy, 0.01, 5, True)


#: gamma (eV/Å²) of the (100) terminations where they cross, on Δμ_Sr + Δμ_O = CROSSING.
CROSSING, GAMMA_AT_CROSSING = -7.0, 0.07


def slab_documents(
    bulk: BulkRelaxDoc, settings: SlabSettings, independent: list[str], gamma_0_of
) -> list[SurfaceEnergyDoc]:
    """Surface-energy documents of real slabs of ``bulk`` with energies built backwards.

    ``gamma_0_of(candidate, slopes, index)`` gives each slab's gamma at Δμ = 0 (eV/Å²); the
    slab energy follows from the plane's definition (see surfflows.core.chempot).
    """
    surfaces = []
    for index, candidate in enumerate(generate_slabs(bulk.structure, settings)):
        _, slopes, n_units, excess = surface_energy_plane(
            0.0,
            candidate.structure.composition,
            bulk.energy,
            bulk.structure.composition,
            candidate.area,
            MU0,
            independent,
        )
        gamma_0 = gamma_0_of(candidate, slopes, index)
        energy = (
            2 * candidate.area * gamma_0
            + n_units * bulk.energy
            + sum(e * MU0[el] for el, e in excess.items())
        )
        slab = SlabRelaxDoc.from_result(
            _result(candidate.structure, energy), bulk.model, 0.05, bulk.material_id, candidate
        )
        slab.model_id = bulk.model_id
        surfaces.append(SurfaceEnergyDoc.from_relaxations(slab, bulk))
    return surfaces


def bulk_document(structure: Structure, name: str, model: str) -> BulkRelaxDoc:
    """A converged bulk relaxation of ``structure`` with the hand-made hull's energy."""
    spec = ModelSpec(kind="calculator", force_field_name="ase.calculators.emt.EMT")
    n_fu = structure.composition.get_reduced_composition_and_factor()[1]
    energy = phase(structure.composition.reduced_formula, FORMATION[name]).energy * n_fu
    bulk = BulkRelaxDoc.from_result(_result(structure, energy), spec, 0.05, name)
    bulk.model_id = model
    return bulk


def campaign(
    model: str = MODEL, crossing: float = CROSSING
) -> tuple[BulkRelaxDoc, list[SurfaceEnergyDoc]]:
    """SrTiO3 bulk and slab documents whose gamma planes are chosen (see CROSSING)."""
    bulk = bulk_document(srtio3(), "SrTiO3", model)

    def gamma_0_of(candidate, slopes: dict[str, float], index: int) -> float:
        if tuple(candidate.miller_index) == (1, 0, 0):
            # gamma = GAMMA_AT_CROSSING - slope_sum * (crossing - (Δμ_Sr + Δμ_O)).
            return GAMMA_AT_CROSSING - slopes["Sr"] * crossing
        # Other facets: gamma at least 0.05 eV/Å² over the whole region, distinct per slab.
        lowest = min(slopes["Sr"] * x + slopes["O"] * y for x, y in ANALYTIC_VERTICES.values())
        return 0.05 + 0.01 * index - lowest

    return bulk, slab_documents(bulk, SETTINGS, ["Sr", "O"], gamma_0_of)


@pytest.fixture(scope="module")
def doc() -> ChemicalSystemThermoDoc:
    bulk, surfaces = campaign()
    return chemical_system_thermo(bulk, surfaces, phases(), MU0, n_grid=81)


def test_termination_map_area_fractions_follow_the_crossing_line(doc):
    (facet,) = [m for m in doc.maps if tuple(m.miller_index) == (1, 0, 0)]
    planes = {p.entry_id: p for p in doc.planes}
    sro = next(e for e in facet.entry_ids if planes[e].termination.startswith("SrO_"))
    tio2 = next(e for e in facet.entry_ids if planes[e].termination.startswith("TiO2_"))
    # SrO-terminated where Δμ_Sr + Δμ_O > -7: the quadrilateral cut by the line through vertex
    # (-2.6, -4.4) and (-7.0, 0) on the O-rich edge (see ANALYTIC_VERTICES).
    sro_cell = np.array([(-6.2, 0.0), (-7.0, 0.0), (-2.6, -4.4), (-1.0, -5.2)])
    x, y = sro_cell.T
    sro_area = abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2
    assert facet.area_fractions[sro] == pytest.approx(sro_area / doc.region.area, abs=1e-9)
    assert facet.area_fractions[tio2] == pytest.approx(1 - sro_area / doc.region.area, abs=1e-9)
    # The grid agrees with the exact fractions to its resolution.
    stable = np.array(facet.stable)
    inside = stable >= 0
    grid_sro = (stable[inside] == facet.entry_ids.index(sro)).mean()
    assert grid_sro == pytest.approx(facet.area_fractions[sro], abs=0.03)
    # Every facet's fractions sum to one; gamma at the crossing is the chosen value.
    for m in doc.maps:
        assert sum(m.area_fractions.values()) == pytest.approx(1.0)
    on_line = {"Sr": -3.0, "O": -4.0}
    expected = GAMMA_AT_CROSSING * EV_PER_A2_TO_J_PER_M2
    assert planes[sro].gamma(on_line) == pytest.approx(expected)
    assert planes[tio2].gamma(on_line) == pytest.approx(expected)


def test_points_and_wulff_shapes(doc):
    assert [p.label for p in doc.points][-1] == "centroid"
    assert len(doc.points) == len(doc.region.vertices) + 1
    assert doc.n_facets == 3 and doc.n_slabs == 6 and not doc.excluded
    for point in doc.points:
        for facet, entry in point.stable.items():
            same_facet = [p for p in doc.planes if miller_text(p.miller_index) == facet]
            assert point.gamma[entry] == min(point.gamma[p.entry_id] for p in same_facet)
        assert point.wulff.weighted_surface_energy is not None
        mu = point.mu
        assert mu["Sr"] + mu["Ti"] + 3 * mu["O"] == pytest.approx(doc.phases[0].energy)
    # At the O-rich, Sr-poor vertex (TiO2 / O2) the (100) surface is TiO2-terminated.
    vertex = next(p for p in doc.points if "O2, TiO2" in p.label)
    assert doc.planes[
        [p.entry_id for p in doc.planes].index(vertex.stable["(1 0 0)"])
    ].termination.startswith("TiO2_")


def test_document_round_trip_and_plots(doc, tmp_path):
    text = json.dumps(jsanitize(doc.model_dump(), strict=True, enum_values=True))
    again = ChemicalSystemThermoDoc.model_validate(json.loads(text, cls=MontyDecoder))
    assert again.region == doc.region and again.maps == doc.maps and again.planes == doc.planes
    assert again.points[-1].wulff.surfaces == doc.points[-1].wulff.surfaces
    assert termination_map_plot(doc, tmp_path / "map.png").stat().st_size > 10_000
    assert region_wulff_plot(doc, tmp_path / "wulff.png").stat().st_size > 10_000


def test_compare_termination_maps():
    bulk, surfaces = campaign(model="other", crossing=-6.7)
    other = chemical_system_thermo(
        bulk, surfaces, [p.model_copy(update={"model_id": "other"}) for p in phases()], MU0
    )
    bulk, surfaces = campaign()
    same = chemical_system_thermo(bulk, surfaces, phases(), MU0)
    comparison = compare_termination_maps(same, other)
    assert comparison.region_overlap == pytest.approx(1.0)
    by_facet = {tuple(f.miller_index): f for f in comparison.facets}
    assert by_facet[(1, 1, 0)].agreement == pytest.approx(1.0)
    # The (100) crossing moved from Δμ_Sr + Δμ_O = -7.0 to -6.7: they disagree on the strip
    # between the two lines, cut from the pentagon at (-6.7, 0), (-7, 0), vertex (-2.6, -4.4)
    # and (-2.0, -4.7) on the TiO edge.
    strip = shoelace([(-6.7, 0.0), (-7.0, 0.0), (-2.6, -4.4), (-2.0, -4.7)])
    expected = 1 - strip / same.region.area
    assert by_facet[(1, 0, 0)].agreement == pytest.approx(expected, abs=1e-9)
    assert by_facet[(1, 0, 0)].agreement_on_a == pytest.approx(expected, abs=1e-9)
    assert comparison.wulff_at_centroid.n_facets == 3
    identical = compare_termination_maps(same, same)
    assert all(f.agreement == pytest.approx(1.0) for f in identical.facets)
    assert identical.wulff_at_centroid.kendall_tau == pytest.approx(1.0)


def test_target_energy_must_match_its_bulk():
    bulk, surfaces = campaign()
    with pytest.raises(ValueError, match=r"phase SrTiO3: energy .* differs"):
        chemical_system_thermo(bulk, surfaces, phases(SrTiO3=-16.0), MU0)


def test_binary_target_maps_an_interval(tmp_path):
    rutile = Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3048, 0.3048, 0]]
    )
    bulk = bulk_document(rutile, "TiO2", MODEL)
    settings = SlabSettings(miller_indices=[(1, 1, 0), (0, 0, 1)], min_slab_size=5.0)
    # gamma = 0.06 eV/Å² at Δμ_O = -2 (the middle of TiO2's interval [-4, 0]) for every slab.
    surfaces = slab_documents(bulk, settings, ["O"], lambda c, s, i: 0.06 + 2 * s["O"] + 0.001 * i)
    doc = chemical_system_thermo(bulk, surfaces, phases(), MU0, n_grid=41)
    assert doc.region.independent == ["O"] and doc.grid_axes[0][0] == pytest.approx(-4.0)
    for facet in doc.maps:
        assert sum(facet.area_fractions.values()) == pytest.approx(1.0)
        assert all(len(cell) == 2 for cell in facet.cells.values())
    centroid = doc.centroid
    assert centroid.delta_mu == pytest.approx({"O": -2.0})
    assert mu_sum(centroid.mu, rutile) == pytest.approx(bulk.energy)
    assert termination_map_plot(doc, tmp_path / "map.png").stat().st_size > 5_000


def shoelace(vertices: list[tuple[float, float]]) -> float:
    """Area of a polygon from its vertices in order."""
    x, y = np.array(vertices).T
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def mu_sum(mu: dict[str, float], structure: Structure) -> float:
    """sum_X n_X mu_X over the atoms of ``structure``."""
    return sum(mu[el] * n for el, n in structure.composition.get_el_amt_dict().items())


def test_targets_without_a_two_potential_region_say_why():
    assert no_region_reason(Composition("SrTiO3")) is None
    assert no_region_reason(Composition("SrO")) is None
    assert "gamma does not depend on Δμ" in no_region_reason(Composition("Sr"))
    assert "polyhedron" in no_region_reason(Composition("SrTiAlO5"))
