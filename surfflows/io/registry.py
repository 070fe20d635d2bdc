"""Registry of fine-tuned CHGNet checkpoints, keyed by sha256.

Metadata live in the ``models`` store; the checkpoint bytes live in the JobStore's
data store (``outputs_data``) so that a jobflow-remote worker on another machine can
fetch them. Each machine caches the file locally under ``settings.model_cache_dir``
as ``<sha256>.pth.tar``.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surfflows.engine.models import ModelSpec, file_sha256
from surfflows.settings import get_settings
from surfflows.stores import get_store


def _cache_file(sha256: str) -> Path:
    return get_settings().model_cache_dir / f"{sha256}.pth.tar"


def cache_checkpoint(path: str | Path, sha256: str) -> Path:
    """Copy a checkpoint into the local cache after checking its hash; return the cached path."""
    target = _cache_file(sha256)
    if target.is_file():
        return target
    actual = file_sha256(path)
    if actual != sha256:
        raise ValueError(f"checkpoint {path} has sha256 {actual}, expected {sha256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    shutil.copyfile(path, tmp)
    tmp.replace(target)
    return target


def register_checkpoint(path: str | Path, metadata: dict[str, Any] | None = None) -> ModelSpec:
    """Store a checkpoint's bytes and metadata in the database; return its ModelSpec.

    Registering the same file twice changes nothing but ``metadata`` (upsert by sha256).
    """
    spec = ModelSpec.from_checkpoint(path)
    data = Path(path).read_bytes()
    blobs = get_store("outputs_data")
    models = get_store("models")
    with blobs, models:
        blobs.update(
            [{"model_sha256": spec.sha256, "checkpoint": data, "n_bytes": len(data)}],
            key="model_sha256",
        )
        models.update(
            [
                {
                    "sha256": spec.sha256,
                    "model_id": spec.model_id,
                    "n_bytes": len(data),
                    "registered_at": datetime.now(UTC).isoformat(),
                    "metadata": metadata or {},
                }
            ],
            key="sha256",
        )
    cache_checkpoint(path, spec.sha256)
    return spec


def checkpoint_path(sha256: str) -> Path:
    """Local path of a registered checkpoint, fetched from the database if not cached."""
    target = _cache_file(sha256)
    if target.is_file():
        return target
    blobs = get_store("outputs_data")
    with blobs:
        doc = blobs.query_one({"model_sha256": sha256})
    if doc is None:
        raise FileNotFoundError(
            f"no checkpoint with sha256 {sha256} in the local cache or the model registry"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".partial")
    tmp.write_bytes(bytes(doc["checkpoint"]))
    if file_sha256(tmp) != sha256:
        tmp.unlink()
        raise ValueError(f"registry bytes for {sha256} do not match their sha256")
    tmp.replace(target)
    return target


def find_model(sha_prefix: str) -> ModelSpec:
    """The registered ModelSpec whose sha256 starts with ``sha_prefix`` (unique match)."""
    models = get_store("models")
    with models:
        hits = [
            d["sha256"]
            for d in models.query({}, properties=["sha256"])
            if d["sha256"].startswith(sha_prefix)
        ]
    if len(hits) != 1:
        found = "no" if not hits else f"{len(hits)}"
        raise ValueError(f"{found} registered models match sha256 prefix {sha_prefix!r}")
    return ModelSpec(kind="checkpoint", sha256=hits[0])
