"""jobflow-remote: the shipped project template validates; submission to a MongoDB queue."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

TEMPLATE = Path(__file__).parents[1] / "configs" / "jobflow_remote" / "surfflows.yaml"


def test_project_template_validates():
    from jobflow_remote.config.base import Project

    project = Project.model_validate(yaml.safe_load(TEMPLATE.read_text()))
    assert project.name == "surfflows"
    assert set(project.workers) == {"cluster", "local"}
    assert project.jobstore["docs_store"]["collection_name"] == "outputs"
    assert "data" in project.jobstore["additional_stores"]


@pytest.mark.mongodb
def test_submit_to_mongodb_queue(tmp_path, monkeypatch):
    from jobflow_remote import ConfigManager

    from surfflows.flows.campaign import CampaignConfig
    from surfflows.flows.remote import submit_campaign

    project = yaml.safe_load(TEMPLATE.read_text())
    project["name"] = "surfflows_test"
    project["workers"] = {
        "local": {"type": "local", "scheduler_type": "shell", "work_dir": str(tmp_path / "jobs")}
    }
    mongo = {
        "type": "MongoURIStore",
        "uri": os.environ["SURFFLOWS_MONGODB_URI"],
        "database": "surfflows_test",
    }
    project["queue"]["store"] = mongo | {"collection_name": "jobs"}
    project["jobstore"] = {
        "docs_store": mongo | {"collection_name": "outputs"},
        "additional_stores": {"data": mongo | {"collection_name": "outputs_data"}},
    }
    folder = tmp_path / "jfremote"
    folder.mkdir()
    (folder / "surfflows_test.yaml").write_text(yaml.safe_dump(project))
    monkeypatch.setenv("JFREMOTE_PROJECTS_FOLDER", str(folder))
    monkeypatch.setenv("JFREMOTE_PROJECT", "surfflows_test")
    ConfigManager().get_project("surfflows_test")
    from jobflow_remote import JobController

    JobController.from_project_name("surfflows_test").reset(max_limit=0, reset_output=True)
    config = CampaignConfig.from_yaml(Path(__file__).parents[1] / "configs" / "demo.yaml")
    ids = submit_campaign(config, worker="local", project="surfflows_test")
    assert len(ids) == 2 * len(config.materials)
