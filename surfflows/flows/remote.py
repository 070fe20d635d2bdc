"""Submitting campaigns through jobflow-remote (needs a MongoDB-backed project).

jobflow-remote keeps its queue in MongoDB; no part of submission works without a
server. What can be checked without one is checked here: the project file validates
against jobflow-remote's own schema, and flows survive their JSON round trip.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from surfflows.flows.campaign import CampaignConfig


def validate_project_file(path: str | Path):
    """Validate a jobflow-remote project YAML with jobflow-remote's ``Project`` model.

    Returns
    -------
    jobflow_remote.config.base.Project
        The parsed project.
    """
    from jobflow_remote.config.base import Project

    path = Path(path)
    data = yaml.safe_load(path.read_text())
    try:
        return Project.model_validate(data)
    except Exception as exc:
        raise ValueError(f"{path}: not a valid jobflow-remote project: {exc}") from exc


def submit_campaign(
    config: CampaignConfig,
    *,
    worker: str | None = None,
    project: str | None = None,
    priority: int = 0,
) -> list[str]:
    """Submit one flow per material to a jobflow-remote project; return the db ids.

    Parameters
    ----------
    config
        Validated campaign.
    worker, project
        jobflow-remote worker and project names (None: the project's defaults).
    priority
        Queue priority.
    """
    try:
        from jobflow_remote import submit_flow
    except ImportError as exc:
        raise ImportError(
            "jobflow-remote is not installed: pip install 'surfflows[remote]'"
        ) from exc
    ids: list[str] = []
    for flow in config.flows():
        ids.extend(submit_flow(flow, worker=worker, project=project, priority=priority))
    return ids
