"""The packaged model chgnet-surf: card, registration by sha256, use by name."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from ase.io import read, write
from typer.testing import CliRunner

from surfflows.cli import app
from surfflows.flows.campaign import CampaignConfig
from surfflows.io import packaged
from surfflows.io.packaged import model_card, packaged_checkpoint, packaged_names
from surfflows.io.registry import checkpoint_reference, decode_checkpoint, resolve_model
from surfflows.schemas.models import file_sha256
from surfflows.stores import get_job_store

ROOT = Path(__file__).parents[1]
PBE = ROOT / "surfflows" / "data" / "references" / "pbe_metal_surfaces"


@pytest.fixture
def broken_copy(tmp_path, monkeypatch) -> Path:
    """A copy of the packaged models whose chgnet-surf file has one byte changed."""
    models = tmp_path / "models"
    shutil.copytree(packaged.MODELS_DIR, models)
    card = model_card("chgnet-surf")
    path = models / "chgnet-surf" / card.file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    monkeypatch.setattr(packaged, "MODELS_DIR", models)
    return path


def test_card_names_the_packaged_file():
    assert "chgnet-surf" in packaged_names()
    path, card = packaged_checkpoint("chgnet-surf")
    assert file_sha256(path) == card.sha256
    assert card.model_id == f"chgnet-ft-{card.sha256[:12]}"
    assert path.stat().st_size == card.n_bytes
    assert card.recipe[card.recipe.index("--reference") + 1] in card.data
    assert card.command.startswith("python benchmarks/train_chgnet_surf.py")
    assert card.heads and card.figures["single_point"]["test"].n > 0
    # the wheel takes the folder as package data
    text = (ROOT / "pyproject.toml").read_text()
    assert '"data/models/*/*"' in text


def test_resolve_registers_the_packaged_file_once():
    store = get_job_store()
    path, card = packaged_checkpoint("chgnet-surf")
    spec = resolve_model("chgnet-surf", store)
    assert (spec.kind, spec.sha256) == ("checkpoint", card.sha256)
    assert spec.model_id == card.default_model_id
    assert spec.name == "chgnet-surf" and spec.label == f"chgnet-surf ({card.default_model_id})"
    with store:
        n_docs = store.count()
        assert store.count({"output.sha256": card.sha256}) == 1
    assert resolve_model("chgnet-surf", store) == spec
    with store:
        assert store.count() == n_docs  # nothing new the second time
        text = checkpoint_reference(spec, store).resolve(store)
        doc = store.query_one({"output.sha256": card.sha256})
    assert decode_checkpoint(text) == path.read_bytes()  # jobs get the packaged bytes
    assert doc["output"]["metadata"]["packaged_model"] == "chgnet-surf"
    # the registered name finds the same checkpoint
    assert resolve_model(card.model_id, store).sha256 == card.sha256


def test_unknown_head_is_named():
    card = model_card("chgnet-surf")
    heads = [h.name for h in card.heads if h.name]
    message = "no head 'nohead'" if heads else "single head .* drop '@nohead'"
    with pytest.raises(ValueError, match=message):
        resolve_model("chgnet-surf@nohead", get_job_store())
    for head in heads:  # a multi-head chgnet-surf: each head by name, its own model_id
        spec = resolve_model(f"chgnet-surf@{head}", get_job_store())
        assert (spec.head, spec.name) == (head, "chgnet-surf")
        assert spec.model_id == f"{card.model_id}@{head}"


def test_corrupted_packaged_file_is_refused(broken_copy):
    store = get_job_store()
    with pytest.raises(ValueError, match=r"chgnet-surf: .* has sha256 .* but its card"):
        resolve_model("chgnet-surf", store)
    with store:
        assert store.count() == 0  # nothing registered


def write_campaign(tmp_path: Path) -> Path:
    config = {
        "name": "cu-surf",
        "model": "chgnet-surf",
        "slabs": {"max_index": 1, "min_slab_size": 6.0, "min_vacuum_size": 10.0},
        "materials": [{"id": "Cu", "structure": str(ROOT / "configs" / "structures" / "Cu.cif")}],
    }
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_campaign_with_the_packaged_model_validates(tmp_path):
    config = CampaignConfig.from_yaml(write_campaign(tmp_path))
    spec, reference = config.model_spec(get_job_store())
    assert spec.model_id == model_card("chgnet-surf").default_model_id
    assert reference is not None


def test_campaign_with_a_corrupted_packaged_file_fails_validation(tmp_path, broken_copy):
    with pytest.raises(ValueError, match="model: packaged model chgnet-surf"):
        CampaignConfig.from_yaml(write_campaign(tmp_path))


@pytest.mark.slow
def test_evaluate_and_info_by_name_from_the_cli(tmp_path):
    """Real CHGNet: ``surfflows evaluate --model chgnet-surf`` on three 4-atom metal slabs."""
    folder = tmp_path / "tiny_metals"
    folder.mkdir()
    slabs = [a for a in read(PBE / "slabs.extxyz", ":") if len(a) == 4][:3]
    bulk_ids = {a.info["bulk_id"] for a in slabs}
    write(folder / "slabs.extxyz", slabs)
    write(
        folder / "bulks.extxyz",
        [b for b in read(PBE / "bulks.extxyz", ":") if b.info["bulk_id"] in bulk_ids],
    )
    (folder / "README.md").write_text("# tiny metals\nlevel_of_theory: VASP PBE\n")
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["evaluate", "--reference", str(folder), "--model", "chgnet-surf", "--max-steps", "100"],
    )
    assert result.exit_code == 0, result.output
    card = model_card("chgnet-surf")
    assert f"evaluating chgnet-surf ({card.default_model_id})" in result.output
    store = get_job_store()
    with store:
        docs = list(store.query({"output.@class": "EvaluationDoc"}, properties=["output"]))
    assert {d["output"]["model_id"] for d in docs} == {card.default_model_id}
    assert {d["output"]["mode"] for d in docs} == {"single_point", "relaxed"}
    assert {d["output"]["model"]["name"] for d in docs} == {"chgnet-surf"}
    info = runner.invoke(app, ["info"])
    assert info.exit_code == 0, info.output
    assert f"packaged model chgnet-surf = {card.model_id}" in info.output


@pytest.mark.slow
def test_thermo_by_name_from_the_cli(tmp_path):
    """Real CHGNet: ``surfflows thermo Cu --model chgnet-surf``, one thin Cu(111) slab.

    The checkpoint's bytes are an output of the registration job, an external reference
    for the thermo flow.
    """
    args = ["thermo", str(ROOT / "configs" / "structures" / "Cu.cif"), "--model", "chgnet-surf"]
    args += ["--miller", "111", "--min-slab-size", "4", "--min-vacuum-size", "8"]
    args += ["--max-steps", "30", "--config", str(tmp_path / "none.yaml")]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "thermo")])
    assert result.exit_code == 0, result.output
    card = model_card("chgnet-surf")
    model_id = card.default_model_id
    doc = yaml.safe_load((tmp_path / "thermo" / f"Cu_{model_id}_thermo.json").read_text())
    assert doc["model_id"] == model_id
    assert [tuple(row["miller_index"]) for row in doc["stable"]] == [(1, 1, 1)]
    assert f"Cu (chgnet-surf ({model_id}))" in result.output


def test_train_script_reuses_only_a_fine_tune_of_its_recipe():
    """benchmarks/train_chgnet_surf.py finds a stored fine-tune to reuse only if its depth,
    epochs and replay are the recipe's (a 1-epoch model is not the 6-epoch recipe's)."""
    import sys

    from jobflow import JobStore
    from maggma.stores import MemoryStore

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_chgnet_surf

    recipe = train_chgnet_surf.RECIPE
    wanted = train_chgnet_surf._recipe_settings(recipe)
    assert wanted["replay_sets"] == ["wbm_bulks", "mp_elemental_refs"]
    store = JobStore(MemoryStore())
    with store:
        for i, epochs in enumerate((wanted["epochs"], wanted["epochs"] + 1)):
            settings = {**wanted, "epochs": epochs, "seed": 0}
            store.update(
                {
                    "uuid": f"u{i}",
                    "index": 1,
                    "completed_at": f"2026-12-0{i + 1}",
                    "output": {
                        "@class": "FineTuneDoc",
                        "set_name": "mp_elemental_surfaces",
                        "model_id": f"m{i}",
                        "hyperparameters": settings,
                        "checkpoint_b64": "xx",
                    },
                },
                key=["uuid", "index"],
            )
    doc = train_chgnet_surf._finetune_doc(store, "mp_elemental_surfaces", recipe)
    assert doc["model_id"] == "m0" and "checkpoint_b64" not in doc  # not the newer m1
    assert train_chgnet_surf._finetune_doc(store, "jarvis_surfaces", recipe) is None
