"""Submitting flows through jobflow-remote.

jobflow-remote keeps its queue in MongoDB (a maggma ``MongoStore``): its daemon and ``jf``
commands need a server. Jobs get every input from the flow or, for outputs already in the
project's JobStore (a registered checkpoint), from references the runner resolves before
the job runs, so workers need no surfflows settings.
"""

from __future__ import annotations

from jobflow import Flow

from surfflows.flows.campaign import CampaignConfig


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
        from jobflow_remote import ConfigManager
    except ImportError as exc:
        raise ImportError(
            "jobflow-remote is not installed: pip install 'surfflows[remote]'"
        ) from exc
    store = ConfigManager().get_project(project).get_jobstore()
    return submit_flows(config.flows(store), worker=worker, project=project, priority=priority)


def submit_flows(
    flows: list[Flow],
    *,
    worker: str | None = None,
    project: str | None = None,
    priority: int = 0,
) -> list[str]:
    """Submit flows to a jobflow-remote project; return the db ids of their jobs.

    References to outputs already in the project's JobStore (a registered checkpoint) are
    allowed: the runner resolves them from there before a job runs.
    """
    from jobflow_remote import submit_flow

    ids: list[str] = []
    for flow in flows:
        ids.extend(
            submit_flow(
                flow,
                worker=worker,
                project=project,
                priority=priority,
                allow_external_references=True,
            )
        )
    return ids
