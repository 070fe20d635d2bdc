"""Model specs, identities and the checkpoint registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import chgnet
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from surfflows.core.validation import check_elements
from surfflows.engine.models import load_model
from surfflows.io.registry import (
    checkpoint_reference,
    decode_checkpoint,
    register_checkpoint,
    resolve_model,
)
from surfflows.schemas.models import ModelSpec, file_sha256
from surfflows.stores import get_job_store

PRETRAINED_030 = next((Path(chgnet.__file__).parent / "pretrained" / "0.3.0").glob("*.pth.tar"))


def test_pretrained_specs():
    assert ModelSpec().model_id == "chgnet-0.3.0"
    assert ModelSpec.parse("chgnet-0.2.0").model_id == "chgnet-0.2.0"
    assert ModelSpec.parse("r2scan").version == "r2scan"
    with pytest.raises(ValidationError, match="unknown pretrained"):
        ModelSpec(version="9.9")
    with pytest.raises(ValueError, match="neither a pretrained"):
        ModelSpec.parse("not-a-model")


def test_spec_json_round_trip():
    spec = ModelSpec.parse("0.3.0")
    assert ModelSpec.model_validate_json(spec.model_dump_json()) == spec


def test_unsupported_element():
    am = Structure(Lattice.cubic(3.5), ["Am"], [[0, 0, 0]])
    with pytest.raises(ValueError, match="Am"):
        check_elements(am)


@pytest.mark.slow
def test_checkpoint_registered_in_the_jobstore_and_loaded_from_its_bytes(tmp_path):
    store = get_job_store()
    local = tmp_path / "ft.pth.tar"
    shutil.copyfile(PRETRAINED_030, local)
    spec = register_checkpoint(local, store, {"note": "copy of 0.3.0 for the test"})
    assert spec == ModelSpec(kind="checkpoint", sha256=file_sha256(local))
    assert spec.checkpoint is None  # identity is the sha256, never a local path
    assert spec.model_id == f"chgnet-ft-{spec.sha256[:12]}"
    assert register_checkpoint(local, store) == spec  # once per sha256
    with store:
        assert store.count({"output.sha256": spec.sha256}) == 1
    # parse is pure; a prefix is found in the JobStore
    with pytest.raises(ValueError, match="registered model"):
        ModelSpec.parse(f"chgnet-ft-{spec.sha256[:10]}")
    assert resolve_model(f"chgnet-ft-{spec.sha256[:10]}", store) == spec
    assert ModelSpec.parse(f"sha256:{spec.sha256}") == spec
    # a worker without the file gets the bytes as a resolved input
    local.unlink()
    reference = checkpoint_reference(spec, store)
    with store:
        text = reference.resolve(store)
    model = load_model(spec, decode_checkpoint(text))
    assert sum(p.numel() for p in model.parameters()) > 100_000
    with pytest.raises(ValueError, match="expected"):
        load_model(ModelSpec(kind="checkpoint", sha256="0" * 64), decode_checkpoint(text))


def test_unregistered_checkpoint_is_named():
    spec = ModelSpec(kind="checkpoint", sha256="1" * 64)
    with pytest.raises(ValueError, match="not registered"):
        checkpoint_reference(spec, get_job_store())
    with pytest.raises(FileNotFoundError, match="not loaded"):
        load_model(spec)
