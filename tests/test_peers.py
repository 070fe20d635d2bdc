"""Any ASE calculator as a model; SevenNet-0 as the tested peer of CHGNet (real, tiny runs).

The generic path is tested with ASE's own EMT calculator (no extra install); the SevenNet
tests need the ``peers`` extra and skip cleanly without it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from ase.io import read, write
from jobflow import run_locally
from monty.json import MontyDecoder, MontyEncoder
from pymatgen.core import Lattice, Structure
from pymatgen.core.surface import SlabGenerator
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.engine.calculators import relax_fixed_cell, single_points
from surfflows.engine.models import check_model, get_calculator, load_model, preload
from surfflows.flows.campaign import CampaignConfig
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.jobs.relax import BulkRelaxMaker
from surfflows.reports.leaderboard import leaderboard
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

PBE = Path(__file__).parents[1] / "surfflows" / "data" / "references" / "pbe_metal_surfaces"
EMT = "ase.calculators.emt.EMT"


def _cu_slab(cu_bulk: Structure) -> Structure:
    conventional = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.615), ["Cu"], [[0, 0, 0]])
    slab = SlabGenerator(conventional, (1, 1, 1), 5.0, 8.0, center_slab=True).get_slab()
    slab.perturb(0.05, min_distance=0.01)
    return Structure.from_sites(slab)


def test_spec_names_and_round_trip():
    seven = ModelSpec.parse("sevennet-0")
    assert seven.kind == "calculator" and seven.model_id == "sevennet-0"
    assert seven.force_field_name == "sevenn.calculator.SevenNetCalculator"
    assert seven.package == "sevenn" and not seven.is_chgnet
    assert ModelSpec.parse("chgnet-0.3.0").package == "chgnet"

    emt = ModelSpec.parse(EMT)
    same = ModelSpec.parse(json.dumps({"force_field_name": EMT, "calculator_kwargs": {}}))
    atomate2_style = ModelSpec.calculator({"@module": "ase.calculators.emt", "@callable": "EMT"})
    assert emt.model_id == same.model_id == atomate2_style.model_id
    assert emt.model_id.startswith("emt-")
    other = ModelSpec.calculator(EMT, {"asap_cutoff": True})
    assert other.model_id != emt.model_id  # kwargs are part of the identity
    assert ModelSpec.parse({"force_field_name": EMT, "name": "my-emt"}).model_id == "my-emt"
    spelled_out = ModelSpec.calculator(seven.force_field_name, seven.calculator_kwargs)
    assert spelled_out.model_id == "sevennet-0"

    decoded = json.loads(json.dumps(seven.installed(), cls=MontyEncoder), cls=MontyDecoder)
    assert decoded == seven and decoded.package_version is not None  # a record, not identity
    maker = EvaluateMaker(model=seven)
    assert MontyDecoder().process_decoded(maker.as_dict()).model == seven


def test_bad_calculators_fail_before_work():
    with pytest.raises(ValueError, match="not of the form"):
        ModelSpec.calculator("EMT")
    with pytest.raises(ValueError, match="neither a pretrained CHGNet"):
        ModelSpec.parse("sevennet-7")
    with pytest.raises(ValueError, match="unknown keys"):
        ModelSpec.parse({"force_field_name": EMT, "kwargs": {}})
    with pytest.raises(ValueError, match=r"cannot import 'no_such_package\.calculators'"):
        check_model(ModelSpec.parse("no_such_package.calculators.Calc"))
    with pytest.raises(ValueError, match="has no 'Nope'"):
        check_model(ModelSpec.parse("ase.calculators.emt.Nope"))
    with pytest.raises(ValueError, match="not an ASE calculator"):
        check_model(ModelSpec.parse("pymatgen.core.Structure"))
    with pytest.raises(ValueError, match="raised TypeError"):  # its required calcs missing
        preload(ModelSpec.parse("ase.calculators.mixing.SumCalculator"))
    with pytest.raises(ValueError, match="returned a Atoms, not an ASE calculator"):
        preload(ModelSpec.calculator("ase.build.bulk", {"name": "Cu"}))
    with pytest.raises(ValueError, match="not a CHGNet"):
        load_model(ModelSpec.parse(EMT))
    with pytest.raises(ValueError, match="cannot import 'no_such_package'"):
        EvaluateMaker(model=ModelSpec.parse("no_such_package.X")).make("s", [("k", "slab", None)])


def test_cli_and_campaign_reject_a_bad_calculator(tmp_path, cu_bulk):
    result = CliRunner().invoke(
        app, ["evaluate", "--reference", "pbe_metal_surfaces", "--model", "pymatgen.core.Structure"]
    )
    assert result.exit_code == 2 and "not an ASE calculator" in result.output
    cu_bulk.to(filename=str(tmp_path / "Cu.cif"))
    config = tmp_path / "campaign.yaml"
    config.write_text(
        "name: t\nmodel: {force_field_name: no_such_package.Calc}\n"
        "materials: [{id: Cu, structure: Cu.cif}]\n"
    )
    with pytest.raises(ValueError, match=r"model: .*cannot import 'no_such_package'"):
        CampaignConfig.from_yaml(config)
    with get_store("outputs") as outputs:
        assert outputs.count() == 0  # nothing was written


def test_calculator_relaxes_one_at_a_time_and_records_failures(cu_bulk):
    """EMT: ASE's FIRE step for step; a structure it raises on is a recorded failure."""
    emt = ModelSpec.parse(EMT)
    slab = _cu_slab(cu_bulk)
    slab.add_site_property("selective_dynamics", [[i > 1] * 3 for i in range(len(slab))])
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0] * 3, [0.5] * 3])
    results = relax_fixed_cell(
        [slab, mgo, slab], emt, fmax=0.05, max_steps=200, progress=False, optimizer="fire"
    )
    assert [r.ok for r in results] == [True, False, True]
    assert "NotImplementedError" in results[1].error  # EMT has no parameters for Mg
    assert results[0].max_force < 0.05 and results[0].energy < results[0].initial_energy
    fixed = [
        i for i, flags in enumerate(slab.site_properties["selective_dynamics"]) if not any(flags)
    ]
    moved = results[0].structure.cart_coords - slab.cart_coords
    assert fixed and abs(moved[fixed]).max() < 1e-12  # FixAtoms from selective_dynamics
    assert results[0].structure.site_properties == slab.site_properties

    # One at a time through ASE gives what ASE's FIRE gives directly.
    from ase.constraints import FixAtoms
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(slab.copy(site_properties={}))
    atoms.set_constraint(FixAtoms(indices=fixed))
    atoms.calc = get_calculator(emt)
    optimizer = FIRE(atoms, logfile=None)
    optimizer.run(fmax=0.05, steps=200)
    assert results[0].n_steps == optimizer.nsteps
    assert results[0].energy == pytest.approx(atoms.get_potential_energy(), abs=1e-8)

    energies = single_points([slab, mgo], emt)
    assert math.isfinite(energies[0][0]) and energies[0][1:] == (None, None)
    assert math.isnan(energies[1][0]) and "NotImplementedError" in energies[1][2]
    (energy, forces, error), _ = single_points([slab, mgo], emt, task="ef")
    assert energy == energies[0][0] and error is None and len(forces) == len(slab)

    bulk = BulkRelaxMaker(model=emt, max_steps=100).make(cu_bulk, "Cu")
    responses = run_locally(bulk, store=get_job_store(), log=False, ensure_success=True)
    doc = responses[bulk.uuid][1].output
    assert doc.converged and doc.model_id == emt.model_id
    assert doc.model.package == "ase" and doc.model.package_version is not None


@pytest.fixture
def tiny_pbe_set(tmp_path) -> Path:
    """Two 4-atom slabs (Ni(100), Pt(111)) and their bulks from the PBE set."""
    folder = tmp_path / "tiny_peers"
    folder.mkdir()
    slabs = [a for a in read(PBE / "slabs.extxyz", ":") if len(a) == 4]
    slabs = [a for a in slabs if a.info["formula"] in ("Ni", "Pt")][:2]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    write(folder / "slabs.extxyz", slabs)
    write(
        folder / "bulks.extxyz",
        [a for a in read(PBE / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids],
    )
    (folder / "README.md").write_text("# tiny peers\nlevel_of_theory: VASP PBE\n")
    return folder


@pytest.mark.slow
def test_sevennet_evaluation_and_leaderboard(tiny_pbe_set):
    """A real SevenNet-0 evaluation (both modes) next to CHGNet, through builders and report."""
    pytest.importorskip("sevenn")
    ingest_path(tiny_pbe_set)
    with get_store("references") as references, get_store("splits") as splits:
        items = reference_items(reference_inputs("tiny_peers", references, splits))
    seven = ModelSpec.parse("sevennet-0")
    for model in (seven, ModelSpec()):
        flow = EvaluateMaker(model=model, max_steps=60).make("tiny_peers", items)
        run_locally(flow, store=get_job_store(), log=False, ensure_success=True)
    store = get_job_store()
    with store:
        docs = [
            d["output"]
            for d in store.query(
                {"output.@class": "EvaluationDoc", "output.model_id": "sevennet-0"}
            )
        ]
    assert {d["mode"] for d in docs} == {"single_point", "relaxed"}
    for doc in docs:
        assert doc["model"]["package"] == "sevenn" and doc["model"]["package_version"]
        assert doc["wall_seconds"] > 0
        assert all(r["energy"] is not None and r["error"] is None for r in doc["results"])
    relaxed = next(d for d in docs if d["mode"] == "relaxed")
    assert all(r["converged"] for r in relaxed["results"])

    result = CliRunner().invoke(app, ["build"])
    assert result.exit_code == 0, result.output
    with get_store("benchmarks") as benchmarks, store:
        rows = leaderboard(benchmarks, store, split="all")
    assert {(r["model_id"], r["mode"]) for r in rows} == {
        (m, mode) for m in ("sevennet-0", "chgnet-0.3.0") for mode in ("single_point", "relaxed")
    }
    for row in rows:
        assert row["n"] == 2 and row["mae"] is not None and row["seconds_per_structure"] > 0
    assert next(r for r in rows if r["model_id"] == "sevennet-0")["package"].startswith("sevenn ")
