"""Fine-tuning by depth X: freezing, the staged forward pass, the per-element fit, the force
term on a batch subset and parent-labelled replay (tiny real runs), a real one-epoch
fine-tune on a tiny metal set (registry, document, evaluation, resume), the sweep through
the command line, and the bulk-forgetting check."""

from __future__ import annotations

import copy
import hashlib
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.io import read, write
from chgnet.model.model import BatchedGraph
from jobflow import run_locally
from pymatgen.core import Lattice, Structure
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.core.benchmark import aligned_energy_mae
from surfflows.core.splits import SplitDoc, split_id
from surfflows.engine.finetune import (
    ReferenceData,
    build_batch,
    finetune,
    fit_atomref_shift,
    force_subset,
    freeze_to_depth,
    max_depth,
    predict_energies,
    predict_forces,
    reference_data,
    replay_structures,
    run_stages,
    with_replay,
)
from surfflows.engine.models import load_model
from surfflows.flows.evaluate import EvaluateMaker
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs, reference_items
from surfflows.io.registry import checkpoint_reference, decode_checkpoint, resolve_model
from surfflows.jobs.finetune import FineTuneMaker, bulk_forgetting
from surfflows.schemas.finetune import FineTuneDoc, FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

DATA = Path(__file__).parents[1] / "surfflows" / "data" / "references"
#: Material -> split part of the tiny set: Cu and Ni train, Pt val, Rh test.
PARTS = {"Cu": "train", "Ni": "train", "Pt": "val", "Rh": "test"}
SMALL = {"Cu": 8, "Ni": 4, "Pt": 4, "Rh": 4}


@pytest.fixture(scope="module")
def chgnet():
    return load_model(ModelSpec())


@pytest.fixture
def tiny_set(tmp_path) -> str:
    """Small PBE metal slabs and bulks (Cu, Ni train; Pt val; Rh test), a flagged Ni copy,
    a six-cell bulk set for the forgetting check, all ingested, with a stored split."""
    folder = tmp_path / "tiny_ft"
    folder.mkdir()
    slabs = [
        a
        for a in read(DATA / "pbe_metal_surfaces" / "slabs.extxyz", ":")
        if a.info["material_id"] in PARTS and len(a) <= SMALL[a.info["material_id"]]
    ]
    flagged = slabs[-1].copy()
    flagged.info.update(slab_id="flagged_copy", flags="gamma_outside_0-5")
    bulks = [
        a
        for a in read(DATA / "pbe_metal_surfaces" / "bulks.extxyz", ":")
        if a.info["material_id"] in PARTS
    ]
    write(folder / "slabs.extxyz", [*slabs, flagged])
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# tiny\nlevel_of_theory: VASP PBE\n")
    ingest_path(folder)
    eos = tmp_path / "tiny_eos"
    eos.mkdir()
    write(eos / "bulks.extxyz", read(DATA / "bo2_bulk_eos" / "bulks.extxyz", "::50"))
    (eos / "README.md").write_text("# tiny eos\nlevel_of_theory: VASP PBE\n")
    ingest_path(eos)
    with get_store("splits") as splits:
        doc = SplitDoc(
            split_id=split_id("tiny_ft", 0),
            set_name="tiny_ft",
            seed=0,
            fractions=(0.5, 0.25, 0.25),
            assignments=PARTS,
        )
        splits.update([doc.model_dump(mode="json")], key="split_id")
    return "tiny_ft"


@pytest.mark.slow
def test_freezing_by_depth(chgnet):
    model = copy.deepcopy(chgnet)
    assert max_depth(model) == 6
    zero = freeze_to_depth(model, 0)
    assert zero.trainable_modules == ["composition_model"]
    assert zero.trainable_parameters == 94 and zero.optimized_parameters == 0
    assert not any(p.requires_grad for p in model.parameters())
    readout = freeze_to_depth(model, 1)
    assert readout.trainable_modules == ["composition_model", "readout_norm", "mlp"]
    n_readout = sum(p.numel() for m in (model.readout_norm, model.mlp) for p in m.parameters())
    assert readout.optimized_parameters == n_readout
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_readout
    two = freeze_to_depth(model, 2)
    assert two.trainable_modules[-1] == "atom_conv_layers.3"
    assert "atom_conv_layers.2" in two.frozen_modules and "site_wise" in two.frozen_modules
    three = freeze_to_depth(model, 3)
    assert three.trainable_modules[-3:] == [
        "atom_conv_layers.2",
        "bond_conv_layers.2",
        "angle_layers.2",
    ]
    everything = freeze_to_depth(model, 6)
    assert everything.frozen_modules == ["site_wise"]
    assert everything.trainable_parameters == model.n_params - model.site_wise.weight.numel() - 1
    with pytest.raises(ValueError, match="out of range"):
        freeze_to_depth(model, 7)


@pytest.mark.slow
def test_staged_forward_matches_chgnet(chgnet, cu_bulk, rutile_bulk):
    """The cached-prefix path is CHGNet's own energy for every cut (guards chgnet upgrades)."""
    graphs = [chgnet.graph_converter(s) for s in (cu_bulk, rutile_bulk)]
    reference = predict_energies(chgnet, graphs)
    with torch.no_grad():
        batch = BatchedGraph.from_graphs(
            graphs, chgnet.bond_basis_expansion, chgnet.angle_basis_expansion
        )
        composition = chgnet.composition_model(graphs)
        for cut in range(chgnet.n_conv + 2):
            frozen = run_stages(chgnet, batch, {}, 0, cut)
            energy = run_stages(chgnet, batch, frozen, cut, chgnet.n_conv + 2)["energy"]
            torch.testing.assert_close(energy + composition, reference)


@pytest.mark.slow
def test_atomref_fit_recovers_a_per_element_shift(chgnet, cu_bulk):
    rocksalt = [[0, 0, 0], [0.5, 0.5, 0.5]]
    structures = [
        cu_bulk,
        Structure(
            Lattice.cubic(3.52),
            ["Ni"] * 4,
            [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]],
        ),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.18), ["Ni", "O"], rocksalt),
        Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], rocksalt),
    ]
    shift = {"Cu": -0.7, "Ni": 0.3, "O": 1.1, "Mg": -2.0}
    model = copy.deepcopy(chgnet)
    graphs = [model.graph_converter(s) for s in structures]
    before = predict_energies(model, graphs)
    labels = [
        float(e)
        + sum(shift[el.symbol] * x for el, x in s.composition.fractional_composition.items())
        for e, s in zip(before, structures, strict=True)
    ]
    fitted = fit_atomref_shift(model, graphs, labels)
    assert fitted == pytest.approx(shift, abs=1e-4)
    torch.testing.assert_close(
        predict_energies(model, graphs), torch.tensor(labels), atol=1e-4, rtol=0
    )


def test_aligned_energy_mae():
    comps = [{"Ti": 1, "O": 2}, {"Sn": 2, "O": 4}, {"Ti": 2, "O": 4}, {"Sn": 1, "O": 2}]
    offsets = {"Ti": 0.5, "Sn": -1.0, "O": 0.2}
    residuals = [sum(offsets[e] * n for e, n in c.items()) / sum(c.values()) for c in comps]
    mae, n, n_elements = aligned_energy_mae(comps, residuals, comps, residuals)
    assert mae == pytest.approx(0, abs=1e-9) and (n, n_elements) == (4, 3)
    noisy = [r + d for r, d in zip(residuals, (0.01, -0.01, -0.01, 0.01), strict=True)]
    assert aligned_energy_mae(comps, noisy, comps, noisy)[0] == pytest.approx(0.01)
    # a cell with an element without an offset is left out
    assert aligned_energy_mae(comps, residuals, [*comps, {"V": 1}], [*residuals, 9.0])[1] == 4


@pytest.mark.slow
def test_reference_data_screens_and_splits(tiny_set, chgnet):
    with get_store("references") as refs:
        docs = reference_inputs(tiny_set, refs, None).docs
    train = reference_data(docs, PARTS, ("train",), chgnet.graph_converter)
    assert {s.material_id for s in train.samples} == {"Cu", "Ni"}
    assert train.dropped == {"flagged:gamma_outside_0-5": ["tiny_ft:flagged_copy"]}
    assert train.counts()["gamma_pairs"] == train.counts()["slabs"] == 5
    one = reference_data(
        docs, PARTS, ("train",), chgnet.graph_converter, slab_keys={"tiny_ft:Ni_100"}
    )
    assert one.keys == ["tiny_ft:bulk:5", "tiny_ft:Ni_100"]
    assert one.dropped["bulk_without_slab"] == ["tiny_ft:bulk:399"]
    # a bulk-only set (wbm_bulks, here six bo2 cells) trains its bulks' energies
    with get_store("references") as refs:
        eos = reference_inputs("tiny_eos", refs, None, ("bulk",)).docs
    bulks = reference_data(
        eos, {d.material_id: "train" for d in eos}, ("train",), chgnet.graph_converter
    )
    assert bulks.counts()["bulks"] == 6 and not bulks.pairs and not bulks.dropped


@pytest.mark.slow
def test_anchor_weight_keeps_weights_near_the_parent(tiny_set, chgnet, tmp_path):
    with get_store("references") as refs:
        docs = reference_inputs(tiny_set, refs, None).docs
    train = reference_data(docs, PARTS, ("train",), chgnet.graph_converter)
    val = reference_data(docs, PARTS, ("val",), chgnet.graph_converter)
    parent = dict(chgnet.named_parameters())

    def distance_from_parent(anchor_weight: float) -> float:
        """Squared distance of the readout from the parent's after the last epoch."""
        settings = FineTuneSettings(
            depth=1, epochs=6, learning_rate=1e-2, anchor_weight=anchor_weight, patience=None
        )
        work = tmp_path / f"anchor_{anchor_weight}"
        finetune(chgnet, train, val, settings, work)
        last = torch.load(work / "last.pth.tar", weights_only=False)["model"]["state_dict"]
        return sum(
            float(((last[n] - p) ** 2).sum())
            for n, p in parent.items()
            if n.startswith(("mlp", "readout_norm"))
        )

    free, anchored = distance_from_parent(0.0), distance_from_parent(1e4)
    assert free > 0
    assert anchored < 0.5 * free, (anchored, free)


def test_replay_pool_and_its_spread_over_batches(cu_bulk, rutile_bulk):
    rng = np.random.default_rng(0)
    pool = replay_structures([cu_bulk, rutile_bulk], 7, rattle=0.05, strain=0.03, rng=rng)
    assert len(pool) == 7 and pool[:2] == [cu_bulk, rutile_bulk]
    for i, copy_ in enumerate(pool[2:]):
        bulk = (cu_bulk, rutile_bulk)[i % 2]
        assert copy_.species == bulk.species
        strain = np.linalg.solve(bulk.lattice.matrix, copy_.lattice.matrix) - np.eye(3)
        assert 0 < np.abs(strain).max() <= 0.03
        assert np.allclose(strain, strain.T)
        moved = copy_.cart_coords - bulk.frac_coords @ copy_.lattice.matrix
        assert 0 < np.abs(moved).max() < 0.5
    own = ([0, 1], [2], [3, 4, 5])
    batches = with_replay(list(own), first=6, n_replay=4, rng=rng)
    assert all(b[: len(o)] == o for b, o in zip(batches, own, strict=True))
    replayed = [i for b in batches for i in b if i >= 6]
    assert all(any(i >= 6 for i in b) for b in batches)  # replay in every batch
    assert set(replayed) == {6, 7, 8, 9} and len(replayed) == 6  # 2 each, pool cycled
    with pytest.raises(ValueError, match="no"):
        replay_structures([], 4, 0.05, 0.03, rng)


def _tiny_data(tiny_set, chgnet, zero_force_labels: bool = False):
    with get_store("references") as refs:
        docs = reference_inputs(tiny_set, refs, None).docs
    return [
        reference_data(
            docs, PARTS, (part,), chgnet.graph_converter, zero_force_labels=zero_force_labels
        )
        for part in ("train", "val")
    ]


def _last_model(chgnet, work: Path):
    model = copy.deepcopy(chgnet)
    model.load_state_dict(
        torch.load(work / "last.pth.tar", weights_only=False)["model"]["state_dict"]
    )
    return model


@pytest.mark.slow
def test_force_term_on_a_batch_subset_lowers_forces_at_dft_minima(tiny_set, chgnet, tmp_path):
    """Zero-force labels at DFT-relaxed frames, on half of each batch: the trained model's
    forces there are smaller than those of the same run without the force term."""
    train, val = _tiny_data(tiny_set, chgnet, zero_force_labels=True)
    assert train.counts()["force_labelled"] == len(train.samples)
    torch.manual_seed(0)
    batch = build_batch(chgnet, train, list(range(len(train.samples))), None)
    half = force_subset(batch, 0.5)
    assert len(half) == math.ceil(0.5 * len(train.samples)) and half == sorted(set(half))
    graphs = [s.graph for s in train.samples]

    def force_norm(force_weight: float) -> float:
        settings = FineTuneSettings(
            depth=2,
            epochs=4,
            learning_rate=1e-2,
            patience=None,
            zero_force_labels=True,
            force_weight=force_weight,
            force_fraction=0.5,
            batch_size=8,
        )
        work = tmp_path / f"forces_{force_weight}"
        result = finetune(chgnet, train, val, settings, work)
        assert all(r.val_force_mae is not None for r in result.history)
        forces = predict_forces(_last_model(chgnet, work), graphs)["f"]
        return float(torch.cat(forces).detach().abs().mean())

    parent = float(torch.cat(predict_forces(chgnet, graphs)["f"]).detach().abs().mean())
    without, with_forces = force_norm(0.0), force_norm(100.0)
    assert with_forces < min(0.8 * without, parent), (with_forces, without, parent)


@pytest.mark.slow
def test_replay_keeps_parent_bulk_energies(tiny_set, chgnet, tmp_path):
    """Parent-labelled replay of the training bulks and copies: after training, bulk
    energies of new strained copies stay closer to the parent's than without replay."""
    train, val = _tiny_data(tiny_set, chgnet)
    bulks = [s.structure for s in train.samples if s.doc_type == "bulk"]
    probes = replay_structures(bulks, 3 * len(bulks), 0.05, 0.03, np.random.default_rng(7))
    probes = probes[len(bulks) :]
    graphs = [chgnet.graph_converter(s) for s in probes]
    parent_energy = predict_energies(chgnet, graphs)

    def drift(replay_weight: float) -> float:
        """Mean |E_model - E_parent| per atom on the probes, the per-element shift aside."""
        settings = FineTuneSettings(
            depth=2,
            epochs=4,
            learning_rate=2e-3,
            patience=None,
            replay_weight=replay_weight,
            replay_pool_size=12,
            batch_size=8,
        )
        work = tmp_path / f"replay_{replay_weight}"
        result = finetune(chgnet, train, val, settings, work)
        model = _last_model(chgnet, work)
        with torch.no_grad():
            shift = model.composition_model(graphs) - chgnet.composition_model(graphs)
        assert result.history[-1].train_energy_mae >= 0
        return float((predict_energies(model, graphs) - shift - parent_energy).abs().mean())

    without, with_replay_ = drift(0.0), drift(100.0)
    assert without > 0
    assert with_replay_ < 0.7 * without, (with_replay_, without)


@pytest.mark.slow
def test_same_seed_same_history_and_weights(tiny_set, chgnet, tmp_path):
    """Every random draw of a run (batches, their order, replay pool, force subset) comes
    from the seed: the same seed gives the same history and weights, another seed not."""
    train, val = _tiny_data(tiny_set, chgnet, zero_force_labels=True)

    def run(seed: int, name: str):
        settings = FineTuneSettings(
            depth=2, epochs=2, batch_size=4, seed=seed, replay_weight=1.0, replay_pool_size=6,
            force_weight=1.0, force_fraction=0.5,
        )  # fmt: skip
        result = finetune(chgnet, train, val, settings, tmp_path / name)
        history = [r.model_dump(exclude={"seconds"}) for r in result.history]
        return history, result.model.state_dict()

    (first, weights), (again, weights_again), (other, _) = run(0, "a"), run(0, "b"), run(1, "c")
    assert first == again
    assert all(torch.equal(value, weights_again[name]) for name, value in weights.items())
    assert [r["train_loss"] for r in other] != [r["train_loss"] for r in first]


@pytest.mark.slow
def test_without_validation_data_the_last_epoch_is_kept(tiny_set, chgnet, tmp_path):
    """A final model trained on every material: no validation errors, the last epoch kept;
    relaxed-mode selection without validation data is refused."""
    train, _ = _tiny_data(tiny_set, chgnet)
    settings = FineTuneSettings(depth=2, epochs=2, batch_size=4, seed=0)
    result = finetune(chgnet, train, ReferenceData(), settings, tmp_path / "final")
    assert [r.epoch for r in result.history] == [0, 1, 2]
    assert all(r.val_gamma_mae is None for r in result.history)
    assert result.best_epoch == 2
    with pytest.raises(ValueError, match="needs validation structures"):
        finetune(
            chgnet,
            train,
            ReferenceData(),
            FineTuneSettings(depth=2, epochs=1, selection="relaxed"),
            tmp_path / "relaxed",
        )


def _inputs(set_name: str, doc_types=("slab", "bulk"), split: bool = True):
    with get_store("references") as references, get_store("splits") as splits:
        return reference_inputs(set_name, references, splits if split else None, doc_types)


@pytest.mark.slow
def test_finetune_registers_evaluates_and_resumes(tiny_set, tmp_path):
    store = get_job_store()
    settings = FineTuneSettings(depth=2, epochs=1, batch_size=8)
    work = tmp_path / "run"
    maker = FineTuneMaker(settings=settings, work_dir=str(work))
    inputs = _inputs(tiny_set)
    train = maker.make(inputs)
    run_locally(train, store=store, log=False, ensure_success=True)
    with store:
        doc: FineTuneDoc = train.output.resolve(store)

    # training used every unflagged Cu and Ni record, and nothing of Pt (val) or Rh (test)
    with get_store("references") as refs:
        by_material = {
            m: {d["key"] for d in refs.query({"set_name": tiny_set, "material_id": m})}
            for m in PARTS
        }
    assert set(doc.train_keys) == (by_material["Cu"] | by_material["Ni"]) - {"tiny_ft:flagged_copy"}
    assert set(doc.val_keys) == by_material["Pt"]
    assert not set(doc.train_keys + doc.val_keys) & by_material["Rh"]
    assert doc.n_train["materials"] == 2 and doc.n_val["slabs"] == 1
    assert doc.dropped == {"flagged:gamma_outside_0-5": ["tiny_ft:flagged_copy"]}

    # the document: depth, modules, curves; the checkpoint: registered by being in the
    # JobStore (bytes in its data store), under its sha256
    assert doc.depth == 2 and doc.trainable_modules[-1] == "atom_conv_layers.3"
    assert [r.epoch for r in doc.history] == [0, 1] and doc.history[1].val_gamma_mae > 0
    best = decode_checkpoint(doc.checkpoint_b64)
    assert hashlib.sha256(best).hexdigest() == doc.sha256 == doc.model.sha256
    assert (work / "best.pth.tar").read_bytes() == best
    with store:
        raw = store.docs_store.query_one({"output.sha256": doc.sha256})
    assert "blob_uuid" in raw["output"]["checkpoint_b64"]  # kept in the data store
    spec = resolve_model(doc.model_id, store)
    assert spec == doc.model

    # the checkpoint is a ModelSpec for every flow: evaluate it on the test part, its
    # bytes an input resolved from the JobStore
    checkpoint = checkpoint_reference(spec, store)
    items = reference_items(inputs, ("test",))
    flow = EvaluateMaker(model=spec, modes=("single_point",)).make(tiny_set, items, checkpoint)
    run_locally(flow, store=store, log=False, ensure_success=True, allow_external_references=True)
    with store:
        evaluation = store.query_one(
            {"output.@class": "EvaluationDoc", "output.model_id": doc.model_id}
        )["output"]
    assert {r["reference_key"] for r in evaluation["results"]} == {
        "tiny_ft:Rh_100",
        "tiny_ft:bulk:265",
    }
    assert all(r["converged"] for r in evaluation["results"])

    # bulk forgetting beside the parent
    forgetting = run_locally(
        bulk_forgetting(
            spec, ModelSpec(), inputs, [_inputs("tiny_eos", ("bulk",), False)], checkpoint
        ),
        store=store,
        log=False,
        ensure_success=True,
        raise_immediately=True,
        allow_external_references=True,
    )
    sets = next(iter(forgetting.values()))[1].output.sets
    assert sets[0].name == "tiny_eos" and sets[0].n_structures == 6
    assert sets[0].force_mae is not None and np.isfinite(sets[0].relative_change)

    # resume from last.pth.tar: the epoch count continues
    longer = FineTuneMaker(settings=settings.model_copy(update={"epochs": 2}), work_dir=str(work))
    again = longer.make(inputs)
    run_locally(again, store=store, log=False, ensure_success=True)
    with store:
        resumed: FineTuneDoc = again.output.resolve(store)
    assert resumed.resumed_from_epoch == 1
    assert [r.epoch for r in resumed.history] == [0, 1, 2]
    assert resumed.history[1] == doc.history[1]


@pytest.mark.slow
def test_sweep_command_and_report(tiny_set, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "reference": tiny_set,
                "depths": [0, 1],
                "bulk_sets": ["tiny_eos"],
                "hyperparameters": {"epochs": 1, "batch_size": 8},
                "work_dir": str(tmp_path / "runs"),
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["sweep", str(config), "--out", str(tmp_path / "sweep.json")])
    assert result.exit_code == 0, result.output
    rows = yaml.safe_load((tmp_path / "sweep.json").read_text())["single_point"]
    assert [r["depth"] for r in rows] == [None, 0, 1]
    parent, zero, _ = rows
    assert parent["model_id"] == "chgnet-0.3.0" and parent["n_test"] == 1
    # X=0 only shifts per-element energies: gamma of a stoichiometric slab is unchanged
    assert zero["test_mae"] == pytest.approx(parent["test_mae"], abs=1e-4)
    assert set(zero["forgetting"]) == {"tiny_eos", "tiny_ft:test"}
    result = runner.invoke(app, ["report", "--out", str(tmp_path / "reports")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "reports" / "finetune_depth_tiny_ft_single_point.png").is_file()
    assert (tmp_path / "reports" / "finetune_curves_tiny_ft.png").is_file()


# ------------------------------------------------------------- several sets, one head each

JARVIS = DATA / "jarvis_surfaces"
#: The tiny OptB88vdW set: Cr trains, CdSe validates, Rh would train but Rh is a test
#: element of tiny_ft (so it must not be trained on through this set).
VDW_PARTS = {"JVASP-861": "train", "JVASP-984": "train", "JVASP-7671": "val"}


def test_head_names_and_cross_set_leakage():
    from surfflows.core.heads import default_head, head_name
    from surfflows.core.splits import held_out_identities, leaking_materials

    assert head_name("VASP PBE") == "pbe"
    assert head_name("VASP OptB88vdW") == "optb88vdw"
    assert head_name("VASP PBE+U (Materials Project U values)") == "pbe+u"
    assert default_head(["optb88vdw", "pbe"]) == "pbe"
    assert default_head(["optb88vdw", "pbe+u"]) == "optb88vdw"
    # mp_elemental_surfaces and mp_elemental_refs share Materials Project ids; JARVIS shares
    # elements: a held-out material of one set is held out in all, by id or by element
    surfaces = [("mp-30", "Cu4"), ("mp-2", "Pd")]
    refs = [("mp-30", "Cu"), ("mp-13", "Fe2"), ("mp-19", "TiO2")]
    jarvis = [("JVASP-816", "Pd4"), ("JVASP-1", "Fe")]
    held = held_out_identities(
        [
            ("surf", surfaces, {"mp-30": "test", "mp-2": "val"}),
            ("refs", refs, {"mp-30": "test", "mp-13": "train", "mp-19": "val"}),
            ("jv", jarvis, {"JVASP-816": "train", "JVASP-1": "train"}),
        ]
    )
    assert leaking_materials("refs", refs, held) == {"mp-30": "surf:test"}
    assert leaking_materials("jv", jarvis, held) == {"JVASP-816": "surf:val"}
    assert leaking_materials("surf", surfaces, held) == {"mp-30": "refs:test"}


@pytest.fixture
def vdw_set(tiny_set, tmp_path) -> str:
    """A tiny JARVIS (OptB88vdW) set beside tiny_ft, a stored split for it and for tiny_eos
    (all but one cell train: the replay set)."""
    folder = tmp_path / "tiny_vdw"
    folder.mkdir()
    slabs = [
        a
        for a in read(JARVIS / "slabs.extxyz", ":")
        if a.info["material_id"] in VDW_PARTS and not a.info.get("flags") and a.info.get("bulk_id")
    ]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    bulks = [a for a in read(JARVIS / "bulks.extxyz", ":") if a.info["bulk_id"] in bulk_ids]
    write(folder / "slabs.extxyz", slabs)
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# tiny vdw\nlevel_of_theory: VASP OptB88vdW\n")
    ingest_path(folder)
    with get_store("references") as refs:
        eos = sorted(refs.distinct("material_id", {"set_name": "tiny_eos"}))
    with get_store("splits") as splits:
        for name, parts in (
            ("tiny_vdw", VDW_PARTS),
            ("tiny_eos", {m: "val" if i == 0 else "train" for i, m in enumerate(eos)}),
        ):
            doc = SplitDoc(
                split_id=split_id(name, 0),
                set_name=name,
                seed=0,
                fractions=(0.5, 0.25, 0.25),
                assignments=parts,
            )
            splits.update([doc.model_dump(mode="json")], key="split_id")
    return "tiny_vdw"


@pytest.mark.slow
def test_two_sets_two_heads_replay_sets_and_head_specs(tiny_set, vdw_set, tmp_path, chgnet):
    """tiny_ft (PBE) and tiny_vdw (OptB88vdW) train one backbone with two heads; the Rh of
    tiny_vdw is dropped (Rh is a test element of tiny_ft); tiny_eos's train cells join the
    replay pool; the epoch is selected on relaxed val gamma of one slab per set; the
    checkpoint loads with CHGNet.from_file (default head pbe) and each head is a model
    spec."""
    from chgnet.model import CHGNet

    store = get_job_store()
    settings = FineTuneSettings(
        depth=2,
        epochs=1,
        batch_size=8,
        replay_weight=1.0,
        replay_pool_size=8,
        replay_sets=["tiny_eos"],
        selection="relaxed",
        selection_slabs=2,
    )
    sets = [_inputs(tiny_set, ("slab", "bulk", "frame")), _inputs(vdw_set, ("slab", "bulk"))]
    replay = [_inputs("tiny_eos", ("bulk",))]
    job = FineTuneMaker(settings=settings, work_dir=str(tmp_path / "two")).make(
        sets, replay_sets=replay
    )
    run_locally(job, store=store, log=False, ensure_success=True)
    with store:
        doc: FineTuneDoc = job.output.resolve(store)

    assert doc.set_name == "tiny_ft+tiny_vdw" and doc.set_names == ["tiny_ft", "tiny_vdw"]
    assert set(doc.heads) == {"pbe", "optb88vdw"} and doc.default_head == "pbe"
    assert doc.heads["optb88vdw"].sets == ["tiny_vdw"]
    assert doc.heads["pbe"].atomref_shift != doc.heads["optb88vdw"].atomref_shift
    assert doc.model.head == "pbe" and doc.model_id.endswith("@pbe")
    rh = [k for k in doc.dropped.get("held_out:tiny_ft:test", []) if "JVASP-984" in k]
    assert rh and not [k for k in doc.train_keys if "JVASP-984" in k]
    assert doc.n_train_by_set["tiny_vdw"]["materials"] == 1  # Cr only
    assert doc.n_val_by_set["tiny_vdw"]["gamma_pairs"] > 0
    record = doc.history[1]
    assert set(record.val_gamma_mae_by_set) == {"tiny_ft", "tiny_vdw"}
    assert record.val_gamma_mae_by_set["tiny_vdw"] > 0
    # relaxed selection: one slab of each set, each relaxed with its set's head
    for r in doc.history:
        assert set(r.val_relaxed_gamma_mae_by_set) == {"tiny_ft", "tiny_vdw"}
        assert (r.val_relaxed_slabs, r.val_relaxed_failures) == (2, 0)
    # replay: tiny_eos train cells in the pool, never its val cell
    assert doc.replay_pool["replay_set_bulks"] > 0
    assert sum(doc.replay_pool.values()) == 8

    # the file: CHGNet.from_file gives the default head; each head is a spec
    path = tmp_path / "two" / "best.pth.tar"
    plain = CHGNet.from_file(str(path))
    bare = doc.model_id.split("@")[0]
    assert resolve_model(bare, store) == doc.model  # the default head, explicitly
    vdw = resolve_model(f"{bare}@optb88vdw", store)
    assert vdw.model_id == f"{bare}@optb88vdw"
    with pytest.raises(ValueError, match="optb88vdw"):
        resolve_model(f"{bare}@r2scan", store)
    data = decode_checkpoint(doc.checkpoint_b64)
    cr = Structure(Lattice.cubic(2.88), ["Cr", "Cr"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    energies = {
        head: float(load_model(spec, data).predict_structure(cr)["e"])
        for head, spec in (("pbe", doc.model), ("optb88vdw", vdw))
    }
    assert energies["pbe"] == pytest.approx(float(plain.predict_structure(cr)["e"]), abs=1e-5)
    assert abs(energies["pbe"] - energies["optb88vdw"]) > 1e-3
    with pytest.raises(ValueError, match=r"heads \['optb88vdw', 'pbe'\]"):
        load_model(vdw.model_copy(update={"head": "nope"}), data)

    # a head is a model for the evaluation flow
    checkpoint = checkpoint_reference(vdw, store)
    items = reference_items(sets[1], ("val",))
    flow = EvaluateMaker(model=vdw, modes=("single_point",)).make(vdw_set, items, checkpoint)
    run_locally(flow, store=store, log=False, ensure_success=True, allow_external_references=True)
    with store:
        evaluation = store.query_one(
            {"output.@class": "EvaluationDoc", "output.model_id": vdw.model_id}
        )
    assert evaluation is not None


# ------------------------------------------------------------ relaxed-mode epoch selection


def test_relaxed_selection_settings():
    """Defaults, bounds, the chgnet_trainer refusal, and unchanged work folders."""
    from pydantic import ValidationError

    from surfflows.jobs.finetune import default_work_dir

    default = FineTuneSettings()
    assert (default.selection, default.selection_slabs) == ("single_point", 24)
    assert FineTuneSettings(selection="relaxed", selection_slabs=None).selection_slabs is None
    with pytest.raises(ValidationError, match="selection_slabs"):
        FineTuneSettings(selection="relaxed", selection_slabs=0)
    with pytest.raises(ValidationError, match="selection"):
        FineTuneSettings(selection="relaxed_mode")
    with pytest.raises(ValidationError, match="only applies to selection='relaxed'"):
        FineTuneSettings(selection_slabs=5)
    with pytest.raises(ValidationError, match="chgnet_trainer does not support selection="):
        FineTuneSettings(recipe="chgnet_trainer", selection="relaxed")
    relaxed = FineTuneSettings(selection="relaxed", selection_slabs=3)
    assert FineTuneSettings.model_validate(relaxed.model_dump()) == relaxed
    # at their defaults the new settings leave work folders as they were (names from the
    # code before them); relaxed selection trains in a folder of its own
    assert default_work_dir("tiny_ft", ModelSpec(), default).name == "tiny_ft_X1_seed0_68be9347"
    pbe = FineTuneSettings(depth=4, epochs=6)
    name = "mp_elemental_surfaces_X4_seed0_414e1ed8"
    assert default_work_dir("mp_elemental_surfaces", ModelSpec(), pbe).name == name
    other = pbe.model_copy(update={"selection": "relaxed"})
    assert default_work_dir("mp_elemental_surfaces", ModelSpec(), other).name != name


def test_selection_key_and_selection_slabs():
    """selection_key reads the relaxed value when asked (mean over sets; inf without one);
    the selection slabs are drawn once from the sorted keys, spread over the sets."""
    from surfflows.engine.finetune import (
        ReferenceData,
        Sample,
        SurfacePair,
        selection_key,
        selection_pairs,
    )
    from surfflows.schemas.finetune import EpochRecord

    def record(sp: float, rx: float | None, **fields) -> EpochRecord:
        return EpochRecord(
            epoch=0, train_loss=0, train_energy_mae=0, train_gamma_mae=None,
            val_energy_mae=0.1, val_gamma_mae=sp, val_gamma_mean_signed_error=None,
            learning_rate=0, seconds=0, val_relaxed_gamma_mae=rx, **fields,
        )  # fmt: skip

    history = [record(0.10, 0.30), record(0.08, 0.25), record(0.05, 0.27)]
    assert min(history, key=selection_key) is history[2]
    assert min(history, key=lambda r: selection_key(r, "relaxed")) is history[1]
    assert selection_key(record(0.1, None), "relaxed") == math.inf
    two_sets = record(0.1, 0.2, val_relaxed_gamma_mae_by_set={"a": 0.1, "b": 0.4, "c": None})
    assert selection_key(two_sets, "relaxed") == pytest.approx(0.25)

    def data(sizes: dict[str, int]) -> ReferenceData:
        samples, pairs = [], []
        for name, n in sizes.items():
            bulk = len(samples)
            samples.append(Sample(f"{name}:bulk", "bulk", name, None, 1, 1.0, set_name=name))
            for i in range(n):
                pairs.append(SurfacePair(len(samples), bulk, 1.0, 1.0, 1.0))
                samples.append(
                    Sample(f"{name}:s{i:02d}", "slab", name, None, 2, None, set_name=name)
                )
        return ReferenceData(samples, pairs)

    val = data({"b": 3, "a": 10})
    picked = selection_pairs(val, 6, seed=0)
    keys = [val.samples[val.pairs[i].slab].key for i in picked]
    assert keys == sorted(keys) and len(set(keys)) == 6
    assert sum(k.startswith("b:") for k in keys) == 3  # spread: 3 of each set
    assert selection_pairs(val, 6, seed=0) == picked
    assert selection_pairs(val, 6, seed=1) != picked
    assert len(selection_pairs(val, None, seed=0)) == len(selection_pairs(val, 99, 0)) == 13
    # the draw depends on the keys, not on the order of the data
    flipped = data({"a": 10, "b": 3})
    flipped_keys = [
        flipped.samples[flipped.pairs[i].slab].key for i in selection_pairs(flipped, 6, 0)
    ]
    assert flipped_keys == keys


@pytest.mark.slow
def test_relaxed_selection_keeps_the_lowest_relaxed_val_gamma(tiny_set, chgnet, tmp_path):
    """A tiny fine-tune selecting on relaxed val gamma: every epoch, the parent's included,
    records it; the kept checkpoint is the epoch with the lowest one and relaxes to it;
    training itself is that of the single-point run."""
    from chgnet.model import CHGNet

    from surfflows.engine.finetune import relaxed_gamma

    train, val = _tiny_data(tiny_set, chgnet)
    common = {"depth": 2, "epochs": 2, "learning_rate": 1e-2, "batch_size": 8, "patience": None}
    relaxed = finetune(
        chgnet, train, val, FineTuneSettings(**common, selection="relaxed"), tmp_path / "rx"
    )
    plain = finetune(chgnet, train, val, FineTuneSettings(**common), tmp_path / "sp")
    history = relaxed.history
    assert [r.epoch for r in history] == [0, 1, 2]
    for r in history:
        assert r.val_relaxed_gamma_mae is not None, r
        assert (r.val_relaxed_slabs, r.val_relaxed_failures) == (len(val.pairs), 0)
        assert r.val_relaxed_steps_median >= 0 and 0 < r.val_relaxed_seconds < r.seconds
        # the relaxations start at the DFT geometries: their first energies are single points
        assert r.val_relaxed_single_point_gamma_mae == pytest.approx(r.val_gamma_mae, abs=2e-3)
    assert [r.val_gamma_mae for r in history] == [r.val_gamma_mae for r in plain.history]
    assert all(r.val_relaxed_gamma_mae is None for r in plain.history)
    values = [r.val_relaxed_gamma_mae for r in history]
    assert relaxed.best_epoch == int(np.argmin(values))
    pairs = list(range(len(val.pairs)))
    # epoch 0 is the parent (its per-element fit leaves gamma and forces as they were)
    parent = relaxed_gamma(chgnet, val, pairs, progress=False)["val_relaxed_gamma_mae"]
    assert values[0] == pytest.approx(parent, abs=1e-4)
    kept = CHGNet.from_file(str(relaxed.best_checkpoint)).eval()
    again = relaxed_gamma(kept, val, pairs, progress=False)
    assert again["val_relaxed_gamma_mae"] == pytest.approx(values[relaxed.best_epoch], abs=1e-4)


@pytest.mark.slow
def test_relaxed_gamma_heads_and_failures(tiny_set, chgnet):
    """Each slab relaxes with its set's head and the model's own head is put back; a slab
    whose relaxation fails is counted and left out, nothing raises."""
    from surfflows.engine.finetune import head_modules, relaxed_gamma, use_head

    _, val = _tiny_data(tiny_set, chgnet)
    pairs = list(range(len(val.pairs)))
    model = copy.deepcopy(chgnet)
    own = head_modules(model)
    other = copy.deepcopy(own)
    with torch.no_grad():
        for parameter in other["mlp"].parameters():
            parameter.mul_(1.05)
    heads = {"own": own, "other": other}
    by_head = relaxed_gamma(model, val, pairs, heads, lambda sample: "other", progress=False)
    assert all(getattr(model, name) is module for name, module in own.items())
    swapped = copy.deepcopy(model)
    use_head(swapped, copy.deepcopy(other))
    direct = relaxed_gamma(swapped, val, pairs, progress=False)
    plain = relaxed_gamma(model, val, pairs, progress=False)
    assert by_head["val_relaxed_gamma_mae"] == pytest.approx(direct["val_relaxed_gamma_mae"])
    assert abs(by_head["val_relaxed_gamma_mae"] - plain["val_relaxed_gamma_mae"]) > 1e-3

    broken = copy.deepcopy(val)
    slab = broken.samples[broken.pairs[0].slab]
    slab.structure.translate_sites([1], slab.structure[0].coords - slab.structure[1].coords, False)
    failed = relaxed_gamma(model, broken, pairs, progress=False)
    assert (failed["val_relaxed_failures"], failed["val_relaxed_slabs"]) == (1, 0)
    assert failed["val_relaxed_gamma_mae"] is None


@pytest.mark.slow
def test_finetune_command_selects_on_relaxed(tiny_set, tmp_path):
    """--select-on relaxed --selection-slabs N reach the settings; the document and the
    summary line carry the relaxed val gamma; a wrong value is a clear error."""
    runner = CliRunner()
    bad = runner.invoke(app, ["finetune", "--reference", tiny_set, "--select-on", "relaxd"])
    assert bad.exit_code != 0 and "selection" in bad.output
    args = ["finetune", "--reference", tiny_set, "--layers", "1", "--epochs", "1"]
    args += ["--select-on", "relaxed", "--selection-slabs", "3", "--no-evaluate"]
    result = runner.invoke(app, [*args, "--work-dir", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "(relaxed, selection slabs: " in result.output
    with get_job_store() as store:
        doc = store.query_one({"output.@class": "FineTuneDoc"})["output"]
    settings = doc["hyperparameters"]
    assert (settings["selection"], settings["selection_slabs"]) == ("relaxed", 3)
    best = doc["history"][doc["best_epoch"]]
    assert doc["best_val_relaxed_gamma_mae"] == best["val_relaxed_gamma_mae"] is not None
    assert all(r["val_relaxed_slabs"] == 1 for r in doc["history"])  # one val slab in tiny_ft
