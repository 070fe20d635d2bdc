"""Model specs, identities and the checkpoint registry."""

from __future__ import annotations

import shutil
from pathlib import Path

import chgnet
import pytest
from pydantic import ValidationError
from pymatgen.core import Lattice, Structure

from surfflows.engine.models import ModelSpec, check_elements, file_sha256, load_model
from surfflows.io.registry import checkpoint_path, register_checkpoint

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


def test_checkpoint_registered_and_fetched_on_a_clean_cache(tmp_path):
    local = tmp_path / "ft.pth.tar"
    shutil.copyfile(PRETRAINED_030, local)
    spec = register_checkpoint(local, {"note": "copy of 0.3.0 for the test"})
    assert spec.sha256 == file_sha256(local)
    assert spec.model_id == f"chgnet-ft-{spec.sha256[:12]}"
    # a worker without the file or the cache gets the bytes from the database
    cached = checkpoint_path(spec.sha256)
    cached.unlink()
    local.unlink()
    assert ModelSpec.parse(f"sha256:{spec.sha256[:10]}") == ModelSpec(
        kind="checkpoint", sha256=spec.sha256
    )
    model = load_model(ModelSpec(kind="checkpoint", sha256=spec.sha256))
    assert checkpoint_path(spec.sha256).is_file()
    assert sum(p.numel() for p in model.parameters()) > 100_000
