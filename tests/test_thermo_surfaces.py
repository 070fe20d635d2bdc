"""Surface thermodynamics: gamma(delta mu_O), stable terminations and Wulff shapes.

One tiny rutile TiO2 campaign ((110) and (001), thin slabs, loose fmax, few steps) with real
CHGNet runs feeds most tests; it runs into its own embedded (MontyDB) JobStore.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from jobflow import Flow, JobStore, OutputReference, run_locally
from maggma.stores import MontyStore
from monty.json import MontyDecoder, jsanitize
from pymatgen.analysis.surface_analysis import SlabEntry
from pymatgen.core import Composition, Lattice, Structure
from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

from surfflows.analysis.wulff import compare_wulff
from surfflows.core.slabs import SlabSettings
from surfflows.core.thermo import (
    DELU_O,
    EV_PER_A2_TO_J_PER_M2,
    oxygen_chemical_potential_bounds,
    ranking_agreement,
    surface_energy,
    surface_energy_line,
    surface_energy_plotter,
)
from surfflows.flows.surface import SurfaceEnergyMaker
from surfflows.flows.thermo import ThermoMaker, thermo_flow
from surfflows.io.elements import dft_elemental_references
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_wulff
from surfflows.schemas.models import ModelSpec
from surfflows.schemas.thermo import SurfaceThermoDoc

TINY = SlabSettings(miller_indices=[(1, 1, 0), (0, 0, 1)], min_slab_size=5.0, min_vacuum_size=10.0)
MATERIAL = "TiO2-rutile"


def _rutile() -> Structure:
    return Structure.from_spacegroup(
        "P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"], [[0, 0, 0], [0.3048, 0.3048, 0]]
    )


def _outputs(store: JobStore, cls: str) -> list:
    """Every document of class ``cls`` in the store (list outputs flattened)."""
    decoded = []
    store.connect()
    for doc in store.query({"output.@class": cls}, load=True):
        output = MontyDecoder().process_decoded(doc["output"])
        decoded.extend(output if isinstance(output, list) else [output])
    return [d for d in decoded if type(d).__name__ == cls]


@pytest.fixture(scope="module")
def rutile_run(tmp_path_factory):
    """The ThermoMaker flow of a tiny rutile case, run with CHGNet into a fresh store."""
    folder = tmp_path_factory.mktemp("thermo")
    store = JobStore(
        MontyStore("outputs", database_path=str(folder)),
        additional_stores={"data": MontyStore("outputs_data", database_path=str(folder))},
    )
    plots = folder / "plots"
    surface_maker = SurfaceEnergyMaker.for_model(ModelSpec(), 0.2, 30, slab_settings=TINY)
    maker = ThermoMaker(surface_maker=surface_maker, plot_dir=str(plots))
    flow = maker.make(_rutile(), MATERIAL)
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    store.connect()
    doc = MontyDecoder().process_decoded(store.get_output(flow.output["thermo"].uuid, load=True))
    return {"maker": maker, "store": store, "doc": doc}


@pytest.mark.slow
def test_gamma_line_matches_surface_energy_and_slab_entry(rutile_run):
    store, doc = rutile_run["store"], rutile_run["doc"]
    (bulk,) = _outputs(store, "BulkRelaxDoc")
    slabs = {(s.miller_index, s.shift, s.termination): s for s in _outputs(store, "SlabRelaxDoc")}
    non_stoichiometric = [line for line in doc.lines if line.slope != 0]
    assert non_stoichiometric, "rutile (110) has O-rich and O-poor symmetric terminations"
    ucell = ComputedStructureEntry(bulk.structure, bulk.energy)
    o2 = ComputedEntry(Composition("O2"), doc.o2_energy)
    for line in non_stoichiometric:
        slab = slabs[(line.miller_index, line.shift, line.termination)]
        composition = slab.structure.composition
        pymatgen_gamma = SlabEntry(slab.structure, slab.energy, line.miller_index).surface_energy(
            ucell, [o2]
        )
        for delta_mu in (-3.0, -0.5):
            mu_o = doc.o2_energy / 2 + delta_mu
            expected = surface_energy(
                slab.energy,
                composition,
                bulk.energy,
                bulk.structure.composition,
                slab.area,
                mu={"O": mu_o},
            )
            assert line.gamma(delta_mu) == pytest.approx(expected * EV_PER_A2_TO_J_PER_M2)
            gamma_0, slopes = surface_energy_line(
                slab.energy,
                composition,
                bulk.energy,
                bulk.structure.composition,
                slab.area,
                {"O": doc.o2_energy / 2},
            )
            assert gamma_0 + slopes["O"] * delta_mu == pytest.approx(expected, rel=1e-10)
            assert float(pymatgen_gamma.subs(DELU_O, delta_mu)) == pytest.approx(expected)
        # slope = -n_O / 2A: an O-rich face gets cheaper as mu_O rises
        assert np.sign(line.slope) == -np.sign(line.excess["O"])


@pytest.mark.slow
def test_oxygen_bounds_ordered_and_negative(rutile_run):
    store, doc = rutile_run["store"], rutile_run["doc"]
    (bulk,) = _outputs(store, "BulkRelaxDoc")
    references = {r.element: r for r in _outputs(store, "ElementReferenceDoc")}
    assert set(references) == {"O", "Ti"}
    assert set(references["Ti"].candidates) == {"fcc", "bcc", "hcp"}
    assert references["Ti"].energy_per_atom == min(
        e for e in references["Ti"].candidates.values() if e is not None
    )
    assert references["O"].structure.get_distance(0, 1) == pytest.approx(1.2, abs=0.1)
    assert doc.o2_energy == references["O"].energy
    assert doc.formation_energy < 0
    assert doc.delta_mu_O_min < doc.delta_mu_O_max == 0.0
    assert doc.delta_mu_O_min == pytest.approx(doc.formation_energy / 2)
    assert (doc.delta_mu_O_min, doc.delta_mu_O_max) == pytest.approx(
        oxygen_chemical_potential_bounds(
            bulk.energy,
            bulk.structure.composition,
            references["O"].energy,
            {"Ti": references["Ti"].energy_per_atom},
        )
    )
    assert doc.delta_mu_O_range == (doc.delta_mu_O_min, 0.0)
    # several other elements: only the O-rich limit
    assert oxygen_chemical_potential_bounds(-40.0, Composition("SrTiO3"), -9.8, {}) == (None, 0.0)


@pytest.mark.slow
def test_stable_termination_table_follows_the_lines(rutile_run):
    doc = rutile_run["doc"]
    lo, hi = doc.delta_mu_O_range
    for hkl in {line.miller_index for line in doc.lines}:
        lines = {line.entry_id: line for line in doc.lines if line.miller_index == hkl}
        rows = [row for row in doc.stable if row.miller_index == hkl]
        # the rows tile the range without gaps
        assert rows[0].delta_mu_O_from == pytest.approx(lo)
        assert rows[-1].delta_mu_O_to == pytest.approx(hi)
        for before, after in itertools.pairwise(rows):
            assert before.delta_mu_O_to == pytest.approx(after.delta_mu_O_from)
            # at a switch the two terminations have the same gamma
            assert before.gamma_to == pytest.approx(after.gamma_from, abs=1e-6)
        # the stable row is the lowest line everywhere (switches exactly where lines cross)
        for delta_mu in np.linspace(lo, hi, 41):
            lowest = min(lines.values(), key=lambda line: line.gamma(delta_mu))
            row = next(
                r for r in rows if r.delta_mu_O_from - 1e-9 <= delta_mu <= r.delta_mu_O_to + 1e-9
            )
            assert lines[row.entry_id].gamma(delta_mu) == pytest.approx(
                lowest.gamma(delta_mu), abs=1e-9
            )
        envelope = [
            min(lines, key=lambda i: lines[i].gamma(x)) for x in np.linspace(lo, hi, 401)[1:-1]
        ]
        switches = sum(a != b for a, b in itertools.pairwise(envelope))
        assert len(rows) == switches + 1
    stoichiometric_001 = [row for row in doc.stable if row.miller_index == (0, 0, 1)]
    assert len(stoichiometric_001) == 1  # one termination: nothing to switch to


@pytest.mark.slow
def test_wulff_documents(rutile_run, tmp_path):
    store, doc = rutile_run["store"], rutile_run["doc"]
    assert Path(doc.diagram_png).is_file()
    (bulk,) = _outputs(store, "BulkRelaxDoc")
    entries = [
        SlabEntry(s.structure, s.energy, s.miller_index, entry_id=str(i))
        for i, s in enumerate(_outputs(store, "SlabRelaxDoc"))
    ]
    plotter = surface_energy_plotter(bulk.structure, bulk.energy, entries, doc.o2_energy)
    shapes = [w for w in doc.wulff_shapes if w.weighted_surface_energy is not None]
    assert [w.delta_mu_O for w in doc.wulff_shapes] == pytest.approx(
        [doc.delta_mu_O_min, doc.delta_mu_O_min / 2, 0.0]
    )
    assert shapes, [w.note for w in doc.wulff_shapes]
    for wulff in shapes:
        gammas = [s.surface_energy for s in wulff.surfaces]
        assert sum(s.area_fraction for s in wulff.surfaces) == pytest.approx(1.0)
        assert min(gammas) <= wulff.weighted_surface_energy <= max(gammas)
        assert wulff.mu_O == pytest.approx(doc.o2_energy / 2 + wulff.delta_mu_O)
        assert Path(wulff.wulff_png).is_file()
        reference = plotter.wulff_from_chempot(delu_dict={DELU_O: wulff.delta_mu_O})
        assert wulff.weighted_surface_energy_EV_PER_ANG2 == pytest.approx(
            reference.weighted_surface_energy
        )
        assert wulff.shape_factor == pytest.approx(reference.shape_factor)


@pytest.mark.slow
def test_reuse_runs_only_the_analysis(rutile_run):
    store, maker = rutile_run["store"], rutile_run["maker"]
    flow, reused = thermo_flow(maker, _rutile(), MATERIAL, store)
    assert [job.name for job in flow.jobs] == [f"surface thermodynamics {MATERIAL}"]
    assert len(reused) == 3  # surface energies, O2, Ti
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    store.connect()
    again = MontyDecoder().process_decoded(store.get_output(flow.output["thermo"].uuid, load=True))
    assert [r.entry_id for r in again.stable] == [r.entry_id for r in rutile_run["doc"].stable]


def test_dft_metal_references_from_mp_elemental_refs(rutile_run):
    """The DFT side of the Ti chemical potential is recorded beside the model's, not mixed."""
    assert ingest_path("mp_elemental_refs").inserted == 88
    dft = dft_elemental_references()
    assert dft["Cu"] == pytest.approx(-4.0992, abs=1e-4)  # README of mp_elemental_refs
    maker = dataclasses.replace(
        rutile_run["maker"], dft_elemental_references=dft, dft_elemental_set="mp_elemental_refs"
    )
    store = rutile_run["store"]
    flow, reused = thermo_flow(maker, _rutile(), MATERIAL, store)
    assert len(reused) == 3  # only the analysis runs again
    run_locally(flow, store=store, log=False, ensure_success=True, raise_immediately=True)
    store.connect()
    doc = MontyDecoder().process_decoded(store.get_output(flow.output["thermo"].uuid, load=True))
    assert doc.dft_metal_references == {"Ti": pytest.approx(dft["Ti"])}
    assert doc.dft_elemental_set == "mp_elemental_refs"
    # CHGNet's Ti (MP2020-compatible training energies) sits near MP's raw PBE Ti
    assert abs(doc.metal_references["Ti"] - dft["Ti"]) < 0.3
    assert doc.delta_mu_O_min == pytest.approx(rutile_run["doc"].delta_mu_O_min)


def test_gamma_only_wulff_of_one_polymorph():
    reference = reference_wulff("mp_elemental_surfaces", "mp-30")  # Cu
    lowest = min(reference.wulff.surfaces, key=lambda s: s.surface_energy)
    assert tuple(lowest.miller_index) == (1, 1, 1)
    assert lowest.surface_energy == pytest.approx(1.339, abs=1e-3)
    assert reference.level_of_theory == "VASP PBE"


def test_cu_dft_wulff_ranks_111_lowest():
    reference = reference_wulff("pbe_metal_surfaces", "Cu")
    dft = reference.wulff
    assert len(dft.surfaces) == 13
    lowest = min(dft.surfaces, key=lambda s: s.surface_energy)
    assert tuple(lowest.miller_index) == (1, 1, 1)
    assert max(dft.surfaces, key=lambda s: s.area_fraction) is lowest
    assert sum(s.area_fraction for s in dft.surfaces) == pytest.approx(1.0)
    assert 1.3188 <= dft.weighted_surface_energy <= 1.6361
    assert reference.level_of_theory == "VASP PBE"
    # a model that swaps (100) and (110) keeps (111) first and loses rank agreement
    swapped = {
        tuple(s.miller_index): s.surface_energy for s in dft.surfaces if max(s.miller_index) == 1
    }
    swapped[(1, 0, 0)], swapped[(1, 1, 0)] = swapped[(1, 1, 0)], swapped[(1, 0, 0)]
    agreement = ranking_agreement(
        {tuple(s.miller_index): s.surface_energy for s in dft.surfaces}, swapped
    )
    assert agreement["n_facets"] == 3
    assert agreement["kendall_tau"] == pytest.approx(1 / 3)
    same = compare_wulff(dft, dft, "pbe_metal_surfaces", "VASP PBE")
    assert same.kendall_tau == pytest.approx(1.0)
    assert same.max_abs_area_fraction_difference == pytest.approx(0.0, abs=1e-12)


def test_thermo_flow_json_round_trip():
    maker = ThermoMaker(
        surface_maker=SurfaceEnergyMaker(slab_settings=TINY),
        delta_mu_o=[-2.0, 0.0],
        reference=reference_wulff("pbe_metal_surfaces", "Cu"),
    )
    flow = maker.make(_rutile(), MATERIAL)
    names = [job.name for job in flow.jobs]
    assert names[1:] == [
        "O reference chgnet-0.3.0",
        "Ti reference chgnet-0.3.0",
        f"surface thermodynamics {MATERIAL}",
        f"wulff comparison {MATERIAL} pbe_metal_surfaces",
    ]
    restored = json.loads(
        json.dumps(jsanitize(flow, strict=True, enum_values=True)), cls=MontyDecoder
    )
    assert isinstance(restored, Flow)
    assert [job.name for job in restored.jobs] == names
    analysis = restored.jobs[3]
    assert analysis.function_args[3] == TINY
    assert analysis.function_args[5] == [-2.0, 0.0]
    assert SurfaceThermoDoc.model_json_schema()["title"] == "SurfaceThermoDoc"


def test_thermo_flow_hands_a_checkpoint_to_every_job_that_loads_the_model():
    spec = ModelSpec(kind="checkpoint", sha256="ab" * 32)
    checkpoint = OutputReference("registered-checkpoint-uuid", attributes=(("a", "checkpoint"),))
    maker = ThermoMaker(surface_maker=SurfaceEnergyMaker.for_model(spec, slab_settings=TINY))
    flow = maker.make(_rutile(), MATERIAL, checkpoint=checkpoint)
    surface, oxygen, titanium = flow.jobs[:3]
    bulk, slabs = surface.jobs
    assert bulk.function_args[2] == checkpoint
    assert slabs.function_kwargs["checkpoint"] == checkpoint
    assert oxygen.function_args == ("O", spec, maker.fmax, maker.max_steps, checkpoint)
    assert titanium.function_args[0] == "Ti" and titanium.function_args[4] == checkpoint
