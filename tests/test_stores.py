"""Settings precedence and the embedded store surviving a new process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from surfflows.settings import get_settings
from surfflows.stores import get_job_store, get_store


def test_env_beats_yaml(tmp_path, monkeypatch):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(f"db_dir: {tmp_path / 'from_yaml'}\ndatabase: from_yaml\n")
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(settings_file))
    settings = get_settings()
    assert settings.database == "from_yaml"
    assert settings.db_dir == tmp_path / "db"  # env var set by the autouse fixture wins


def test_unknown_setting_is_named(tmp_path, monkeypatch):
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("mongo_uri: mongodb://x\n")
    monkeypatch.setenv("SURFFLOWS_SETTINGS_FILE", str(settings_file))
    with pytest.raises(ValueError, match="mongo_uri"):
        get_settings()


def test_unknown_store_name():
    with pytest.raises(ValueError, match="unknown store"):
        get_store("nope")


@pytest.mark.skipif(bool(os.environ.get("SURFFLOWS_MONGODB_URI")), reason="embedded default")
def test_embedded_store_reopened_in_new_process():
    store = get_job_store()
    with store:
        store.update(
            {"uuid": "abc", "index": 1, "output": {"gamma": 1.25}, "completed_at": "2026"},
            key=["uuid", "index"],
        )
    script = (
        "import json; from surfflows.stores import get_job_store\n"
        "s = get_job_store(); s.connect()\n"
        "print(json.dumps([{k: d[k] for k in ('uuid', 'output')} for d in s.query({})]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [{"uuid": "abc", "output": {"gamma": 1.25}}]


@pytest.mark.mongodb
def test_mongodb_round_trip():
    store = get_store("benchmarks")
    with store:
        store.update([{"benchmark_id": "test-roundtrip", "mae": 0.1}], key="benchmark_id")
        assert store.query_one({"benchmark_id": "test-roundtrip"})["mae"] == 0.1
        store.remove_docs({"benchmark_id": "test-roundtrip"})
