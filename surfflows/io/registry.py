"""Registry of fine-tuned CHGNet checkpoints: job outputs in the JobStore, keyed by sha256.

A checkpoint is registered when a document holding its bytes is a job output in the
JobStore: every fine-tune job's :class:`~surfflows.schemas.finetune.FineTuneDoc` carries
them, and :func:`register_checkpoint` writes a
:class:`~surfflows.schemas.finetune.CheckpointDoc` for a file trained elsewhere. The bytes
(base64 text, field :data:`CHECKPOINT_FIELD`) live in the JobStore's ``data`` additional
store. Its identity is the sha256 of the file; no local path is stored as identity.

A job that needs the bytes gets them as an input: :func:`checkpoint_reference` is a jobflow
``OutputReference`` to that output, which jobflow (``run_locally``) or the jobflow-remote
runner resolves from the JobStore before the job runs, so a worker needs no database
settings of its own.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any
from uuid import uuid4

from jobflow import JobStore, OutputReference
from monty.json import jsanitize

from surfflows.core.text import short_repr
from surfflows.core.timestamps import now_iso
from surfflows.io.checkpoints import check_checkpoint, checkpoint_heads
from surfflows.io.packaged import packaged_checkpoint, packaged_names
from surfflows.schemas.finetune import CHECKPOINT_FIELD, CheckpointDoc
from surfflows.schemas.models import ModelSpec, file_sha256, names_a_file


def encode_checkpoint(path: str | Path) -> str:
    """A checkpoint file as base64 text (how job documents carry it)."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def decode_checkpoint(text: str | None) -> bytes | None:
    """The bytes of a base64 checkpoint (None stays None)."""
    return None if text is None else base64.b64decode(text)


def _registered(store: JobStore, criteria: dict[str, Any]) -> list[dict[str, Any]]:
    criteria = {f"output.{CHECKPOINT_FIELD}": {"$exists": True}} | criteria
    return list(
        store.query(criteria, properties=["uuid", "output.sha256"], sort={"completed_at": -1})
    )


def register_checkpoint(
    path: str | Path,
    store: JobStore,
    metadata: dict[str, Any] | None = None,
    sha256: str | None = None,
) -> ModelSpec:
    """Put a checkpoint file's bytes into the JobStore (once per sha256); return its spec.

    A checkpoint registered already (same sha256) is neither read nor checked again.

    Parameters
    ----------
    path
        The checkpoint file.
    store
        The JobStore of the project (connected or not).
    metadata
        Free-form description kept on the :class:`CheckpointDoc`.
    sha256
        The file's sha256 where the caller has just computed it (a packaged model's,
        checked against its card), so the file is not hashed twice.

    Raises
    ------
    ValueError
        The file is not a CHGNet checkpoint (nothing is stored then).
    """
    spec = ModelSpec(kind="checkpoint", sha256=sha256 or file_sha256(path))
    with store:
        if _registered(store, {"output.sha256": spec.sha256}):
            return spec
        check_checkpoint(path)
        default_head, heads = checkpoint_heads(path)
        doc = CheckpointDoc(
            default_head=default_head,
            heads=heads,
            model_id=spec.model_id,
            model=spec,
            sha256=spec.sha256,
            n_bytes=Path(path).stat().st_size,
            metadata=metadata or {},
            **{CHECKPOINT_FIELD: encode_checkpoint(path)},
        )
        store.update(
            {
                "uuid": str(uuid4()),
                "index": 1,
                "name": f"register checkpoint {spec.model_id}",
                "output": jsanitize(doc, strict=True, allow_bson=True, enum_values=True),
                "completed_at": now_iso(),
                "metadata": {"registered_from": Path(path).name},
                "hosts": [],
            },
            key=["uuid", "index"],
            save={"data": [CHECKPOINT_FIELD]},
        )
    return spec


def checkpoint_reference(spec: ModelSpec, store: JobStore) -> OutputReference | None:
    """Reference to the bytes of a registered checkpoint (None for a pretrained model or a
    calculator).

    Raises
    ------
    ValueError
        If the JobStore holds no checkpoint with the spec's sha256.
    """
    if spec.kind != "checkpoint":
        return None
    with store:
        hits = _registered(store, {"output.sha256": spec.sha256})
    if not hits:
        raise ValueError(
            f"checkpoint {spec.model_id} (sha256 {spec.sha256}) is not registered in the "
            "JobStore: fine-tune it there or register its file first"
        )
    return OutputReference(hits[0]["uuid"], attributes=(("a", CHECKPOINT_FIELD),))


def register_packaged(name: str, store: JobStore) -> ModelSpec:
    """Register the checkpoint of packaged model ``name`` (once per sha256); return its spec.

    The spec is the checkpoint's (``chgnet-ft-<sha12>``) with the packaged name as
    :attr:`ModelSpec.name`, so results never collide with a later file of that name.

    Raises
    ------
    ValueError
        Unknown model, or a file whose sha256 is not the card's (see
        :func:`surfflows.io.packaged.packaged_checkpoint`; nothing is stored then).
    """
    path, card = packaged_checkpoint(name)
    metadata = {
        "packaged_model": name,
        "interim": card.interim,
        "recipe": card.recipe,
        "parent_model_id": card.parent,
    }
    spec = register_checkpoint(path, store, metadata, sha256=card.sha256)
    return spec.model_copy(update={"name": name})


def resolve_model(text: str | dict, store: JobStore) -> ModelSpec:
    """:func:`resolve_name`, then the head: every model of a multi-head checkpoint has one.

    ``<name>@<head>`` chooses a head (``chgnet-ft-<prefix>@optb88vdw``,
    ``chgnet-surf@pbe``); a multi-head checkpoint named without one gets its default head
    explicitly, as the registered document says, so one model never has two ids. A
    single-head checkpoint takes no head.

    Raises
    ------
    ValueError
        If the name is unknown, or names a head the checkpoint lacks (the message names
        the heads it has).
    """
    head = None
    if isinstance(text, str) and "@" in text and not names_a_file(text):
        text, _, head = text.rpartition("@")
    spec = resolve_name(text, store)
    if spec.kind != "checkpoint":
        if head is not None:
            raise ValueError(
                f"model {spec.model_id}@{head}: only a fine-tuned checkpoint has heads"
            )
        return spec
    with store:
        hits = store.query(
            {"output.sha256": spec.sha256, "output.default_head": {"$exists": True}},
            properties=["output.default_head", "output.heads"],
            sort={"completed_at": -1},
            limit=1,
        )
        doc = next(iter(hits), {}).get("output", {})
    heads, default = doc.get("heads") or {}, doc.get("default_head")
    if not default:  # one head: the checkpoint's own model, no name
        if head is not None:
            raise ValueError(
                f"{spec.model_id} has a single head and no named heads: drop '@{head}'"
            )
        return spec
    head = head or default
    if head not in heads:
        raise ValueError(f"{spec.model_id} has no head {head!r}; its heads: {sorted(heads)}")
    return spec.model_copy(update={"head": head})


def resolve_name(text: str | dict, store: JobStore) -> ModelSpec:
    """:meth:`ModelSpec.parse`, plus registered names: ``chgnet-ft-<prefix>``, ``sha256:<prefix>``,
    and packaged models (``chgnet-surf``, :func:`register_packaged`).

    A checkpoint given as a file, or a packaged one, is registered in ``store`` on the way,
    so that jobs can get its bytes from there.
    """
    if isinstance(text, str) and text in packaged_names():
        return register_packaged(text, store)
    if isinstance(text, str) and text.startswith(("sha256:", "chgnet-ft-")):
        prefix = text.removeprefix("sha256:").removeprefix("chgnet-ft-")
        if not re.fullmatch("[0-9a-f]{1,64}", prefix):
            raise ValueError(f"model {short_repr(text)}: give 1 to 64 lowercase hex digits")
        criteria = {"output.sha256": prefix} if len(prefix) == 64 else {}
        with store:
            hits = sorted({d["output"]["sha256"] for d in _registered(store, criteria)})
        hits = [h for h in hits if h.startswith(prefix)]
        if len(hits) != 1:
            found = "no" if not hits else f"{len(hits)}"
            raise ValueError(
                f"model {text}: {found} registered models match sha256 prefix {prefix}"
                + ("; register the checkpoint file first (--model <file>)" if not hits else "")
            )
        return ModelSpec(kind="checkpoint", sha256=hits[0])
    spec = ModelSpec.parse(text)
    if spec.kind == "checkpoint" and spec.checkpoint:
        register_checkpoint(spec.checkpoint, store, sha256=spec.sha256)
    return spec
