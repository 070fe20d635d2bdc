"""The peer baseline: chgnet's own Trainer on a tiny real set (CHGNet 0.3.0, one epoch), its
settings, and its errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from ase.io import read, write
from chgnet.model import CHGNet
from pydantic import ValidationError
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.core.splits import SplitDoc, split_id
from surfflows.engine.chgnet_trainer import (
    chgnet_trainer_finetune,
    energy_labelled,
    structure_data,
)
from surfflows.engine.finetune import reference_data
from surfflows.engine.models import load_model
from surfflows.io.ingest import ingest_path
from surfflows.io.inputs import reference_inputs
from surfflows.io.registry import decode_checkpoint, resolve_model
from surfflows.schemas.finetune import FineTuneDoc, FineTuneSettings
from surfflows.schemas.models import ModelSpec
from surfflows.stores import get_job_store, get_store

DATA = Path(__file__).parents[1] / "surfflows" / "data" / "references"
#: Material -> split part: Cu and Ni train, Pt val, Rh test.
PARTS = {"Cu": "train", "Ni": "train", "Pt": "val", "Rh": "test"}
GAMMA_ONLY = "tiny_trainer:Cu100_gamma_only"
#: Parameters the peer baseline trains (CHGNet's fine-tuning example, AtomRef included).
TRAINED = ("atom_conv_layers.3", "mlp", "readout_norm", "bond_weights", "composition_model")


@pytest.fixture
def tiny_set(tmp_path) -> str:
    """4-8 atom PBE metal slabs with their bulks, and a gamma-only copy of a Cu slab (its
    published gamma, no total energy) in the train part, ingested with a stored split."""
    folder = tmp_path / "tiny_trainer"
    folder.mkdir()
    slabs = [
        a
        for a in read(DATA / "pbe_metal_surfaces" / "slabs.extxyz", ":")
        if a.info["material_id"] in PARTS and len(a) <= 8
    ]
    gamma_only = next(a for a in slabs if a.info["slab_id"].endswith("_100_shift0")).copy()
    del gamma_only.info["ref_energy"]
    gamma_only.info["slab_id"] = GAMMA_ONLY.split(":")[1]
    bulks = [
        a
        for a in read(DATA / "pbe_metal_surfaces" / "bulks.extxyz", ":")
        if a.info["material_id"] in PARTS
    ]
    write(folder / "slabs.extxyz", [*slabs, gamma_only])
    write(folder / "bulks.extxyz", bulks)
    (folder / "README.md").write_text("# tiny\nlevel_of_theory: VASP PBE\n")
    ingest_path(folder)
    with get_store("splits") as splits:
        doc = SplitDoc(
            split_id=split_id("tiny_trainer", 0),
            set_name="tiny_trainer",
            seed=0,
            fractions=(0.5, 0.25, 0.25),
            assignments=PARTS,
        )
        splits.update([doc.model_dump(mode="json")], key="split_id")
    return "tiny_trainer"


def _inputs(set_name: str):
    with get_store("references") as references, get_store("splits") as splits:
        return reference_inputs(set_name, references, splits)


def test_recipe_settings_defaults_and_errors():
    surfflows = FineTuneSettings()
    assert surfflows.recipe == "surfflows" and surfflows.learning_rate == 1e-3
    peer = FineTuneSettings(recipe="chgnet_trainer", epochs=3)
    assert (peer.depth, peer.learning_rate, peer.force_weight, peer.gamma_weight) == (
        2,
        1e-2,
        1.0,
        0.0,
    )
    assert peer.zero_force_labels and peer.patience is None and peer.epochs == 3
    assert FineTuneSettings.model_validate(peer.model_dump()) == peer  # jobflow round trip
    assert FineTuneSettings(recipe="chgnet_trainer", learning_rate=3e-3).learning_rate == 3e-3
    with pytest.raises(ValidationError, match=r"depth=4 .*gamma_weight=1\.0 .*patience=8"):
        FineTuneSettings(recipe="chgnet_trainer", depth=4, gamma_weight=1.0, patience=8)
    with pytest.raises(ValidationError, match="heads='per_level_of_theory'"):
        FineTuneSettings(recipe="chgnet_trainer", heads="per_level_of_theory")
    assert peer.heads == "single"
    with pytest.raises(ValidationError, match=r"force_weight=0\.0"):
        FineTuneSettings(recipe="chgnet_trainer", force_weight=0)
    with pytest.raises(ValidationError, match="recipe"):
        FineTuneSettings(recipe="trainer")


def test_finetune_command_rejects_bad_recipe_settings(tiny_set):
    runner = CliRunner()
    base = ["finetune", "--reference", tiny_set, "--no-evaluate"]
    result = runner.invoke(app, [*base, "--recipe", "chgnet-trainer", "--replay-weight", "1"])
    assert result.exit_code != 0 and "replay_weight=1.0" in result.output
    result = runner.invoke(app, [*base, "--recipe", "chgnet"])
    assert result.exit_code != 0 and "recipe" in result.output


@pytest.mark.slow
def test_gamma_only_dropped_labels_checked_and_runs_repeat(tiny_set, tmp_path):
    docs = _inputs(tiny_set)
    parent = load_model(ModelSpec())
    data = {
        part: reference_data(
            docs.docs,
            docs.assignments,
            (part,),
            parent.graph_converter,
            zero_force_labels=True,
        )
        for part in ("train", "val")
    }
    assert GAMMA_ONLY in data["train"].keys
    kept = energy_labelled(data["train"])
    assert kept.dropped["gamma_only"] == [GAMMA_ONLY] and GAMMA_ONLY not in kept.keys
    assert len(kept.pairs) == len(data["train"].pairs) - 1
    assert all(kept.samples[p.slab].doc_type == "slab" for p in kept.pairs)
    with pytest.raises(ValueError, match="needs an energy and forces for every structure"):
        structure_data(data["train"], parent)
    without_forces = reference_data(docs.docs, docs.assignments, ("train",), parent.graph_converter)
    with pytest.raises(ValueError, match="needs an energy and forces for every structure"):
        structure_data(energy_labelled(without_forces), parent)

    # seeded: the same settings give the same model and curves
    settings = FineTuneSettings(recipe="chgnet_trainer", epochs=1, batch_size=2)
    val = energy_labelled(data["val"])
    runs = [
        chgnet_trainer_finetune(parent, kept, val, settings, tmp_path / f"run{i}") for i in range(2)
    ]
    assert runs[0].history == [
        r.model_copy(update={"seconds": r0.seconds})
        for r, r0 in zip(runs[1].history, runs[0].history, strict=True)
    ]
    first, second = (dict(r.model.named_parameters()) for r in runs)
    assert all(torch.equal(value, second[name]) for name, value in first.items())
    with pytest.raises(ValueError, match="not 'chgnet_trainer'"):
        chgnet_trainer_finetune(parent, kept, val, FineTuneSettings(), tmp_path / "x")


@pytest.mark.slow
def test_chgnet_trainer_job_registers_a_loadable_checkpoint(tiny_set, tmp_path):
    work = tmp_path / "peer"
    result = CliRunner().invoke(
        app,
        ["finetune", "--reference", tiny_set, "--recipe", "chgnet-trainer", "--epochs", "1",
         "--batch-size", "4", "--no-evaluate", "--work-dir", str(work)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "epoch   1" in result.output  # progress gets past the Trainer's silenced prints
    assert "Begin Training" not in result.output
    store = get_job_store()
    with store:
        raw = store.query_one({"output.@class": "FineTuneDoc"}, load=True)
    doc = FineTuneDoc.model_validate(raw["output"])

    # data: the gamma-only slab is dropped with its reason, val is Pt, test never enters
    assert doc.dropped == {"gamma_only": [GAMMA_ONLY]} and doc.n_dropped == 1
    assert GAMMA_ONLY not in doc.train_keys
    assert doc.n_train["materials"] == 2 and doc.n_train["gamma_only"] == 0
    assert {k.split(":")[1][:2] for k in doc.val_keys} <= {"Pt", "bu"}
    assert not any("Rh" in k for k in doc.train_keys + doc.val_keys)

    # freezing as CHGNet's fine-tuning example
    assert doc.depth == 2 and doc.hyperparameters.recipe == "chgnet_trainer"
    for name in ("atom_conv_layers.3", "mlp", "bond_weights_ag", "composition_model"):
        assert name in doc.trainable_modules
    for name in ("atom_embedding", "atom_conv_layers.2", "bond_conv_layers.0", "site_wise"):
        assert name in doc.frozen_modules

    # chgnet's own files; its bestE file is the registered checkpoint
    names = sorted(p.name for p in work.iterdir())
    assert [n.split("_")[0] for n in names] == ["bestE", "bestF", "epoch0"]
    best_file = work / names[0]
    best = decode_checkpoint(doc.checkpoint_b64)
    assert best == best_file.read_bytes()
    assert hashlib.sha256(best).hexdigest() == doc.sha256 == doc.model.sha256
    assert resolve_model(doc.model_id, store) == doc.model
    model = load_model(doc.model, best)  # loads weights only, as every command does
    loaded = CHGNet.from_file(str(best_file))
    parent = load_model(ModelSpec())
    tuned = dict(loaded.named_parameters())
    for name, value in parent.named_parameters():
        moved = not torch.equal(value, tuned[name])
        assert moved == name.startswith(TRAINED), name
    assert all(
        torch.equal(a, b) for a, b in zip(model.parameters(), loaded.parameters(), strict=True)
    )

    # history: epoch 0 is the parent, then what chgnet reports and surfflows' val gamma
    assert [r.epoch for r in doc.history] == [0, 1] and doc.best_epoch == 1
    assert doc.history[0].learning_rate == 0 and doc.history[1].learning_rate == 1e-2
    for record in doc.history:
        assert record.val_gamma_mae > 0 and record.val_force_mae > 0
        assert record.train_loss > 0 and record.train_energy_mae > 0
    assert doc.best_val_gamma_mae == doc.history[1].val_gamma_mae
    assert set(doc.atomref_shift) == {"Cu", "Ni"}
