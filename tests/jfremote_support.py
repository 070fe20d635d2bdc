"""The real jobflow-remote Runner in one process, with its queue and JobStore in memory.

jobflow-remote's queue needs a MongoDB-like store (a :class:`~maggma.stores.MongoStore`
subclass: MontyStore lacks update pipelines and ``aggregate``). :class:`SharedMemoryStore` is
maggma's MemoryStore whose ``connect()`` reuses one module-level mongomock client, so the
runner, the submitting code and the test read the same collections, and whose ``close()``
keeps the data. The worker is a ``local`` shell worker: each job runs in a ``jf execution
run`` subprocess, whose environment carries no ``SURFFLOWS_*`` variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import mongomock_ng
import yaml
from jobflow import JobStore
from maggma.stores import MemoryStore

_CLIENT: mongomock_ng.MongoClient | None = None


class SharedMemoryStore(MemoryStore):
    """A MemoryStore on one in-process mongomock client shared by every instance."""

    def connect(self, force_reset: bool = False) -> None:
        global _CLIENT
        if _CLIENT is None:
            _CLIENT = mongomock_ng.MongoClient()
        if self._coll is None or force_reset:
            self._coll = _CLIENT["surfflows"][self.collection_name]

    def close(self) -> None:
        """Keep the data: the next ``connect()`` finds it."""


def reset_client() -> None:
    """Forget every collection (one fresh database per test)."""
    global _CLIENT
    _CLIENT = None


def _store(name: str) -> dict:
    return {"type": "SharedMemoryStore", "collection_name": name}


def write_project(folder: Path, work_dir: Path, name: str = "surfflows_test") -> Path:
    """A jobflow-remote project: local shell worker, queue and JobStore in shared memory."""
    project = {
        "name": name,
        "workers": {
            "local": {
                "type": "local",
                "scheduler_type": "shell",
                "work_dir": str(work_dir),
                # one torch thread per job on the shared test machine
                "pre_run": "export OMP_NUM_THREADS=1",
            }
        },
        "queue": {"store": _store("jobs")},
        "jobstore": {
            "docs_store": _store("outputs"),
            "additional_stores": {"data": _store("outputs_data")},
        },
        # poll fast: the tests wait for a few short jobs
        "runner": {
            "delay_checkout": 1,
            "delay_check_run_status": 1,
            "delay_advance_status": 1,
            "delay_refresh_limited": 5,
            "delay_update_batch": 5,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(project))
    return path


def project_jobstore() -> JobStore:
    """The project's JobStore as the submitting code and the tests see it."""
    return JobStore(
        docs_store=SharedMemoryStore(collection_name="outputs"),
        additional_stores={"data": SharedMemoryStore(collection_name="outputs_data")},
    )


def worker_environment_is_clean() -> bool:
    return not any(key.startswith("SURFFLOWS_") for key in os.environ)
