"""``gflow logs`` for Google Cloud Batch: a task's entries in Cloud Logging (``batch_task_logs``), where the
optional ``google-cloud-logging`` package is installed and the caller has roles/logging.viewer."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gflow.executors.gcp_batch")


def log_filter(project: str, info: dict[str, Any]) -> str | None:
    """The Cloud Logging filter for the task a task run recorded (None without the job's uid)."""
    uid, index = info.get("job_uid"), info.get("task_index")
    if not uid or index is None:
        return None
    return (f'logName="projects/{project}/logs/batch_task_logs" AND labels.job_uid="{uid}" AND '
            f'labels.task_id:"task/{uid}-group0-{int(index)}/"')


def fetch(project: str | None, info: dict[str, Any], limit: int = 1000) -> str | None:
    """The task's log lines, oldest first; None where they cannot be read (no package, no permission)."""
    flt = log_filter(project, info) if project else None
    if flt is None:
        return None
    try:
        from google.cloud import logging as cloud_logging  # type: ignore[attr-defined]
    except ImportError:
        log.info("reading Batch task logs needs google-cloud-logging (pip install google-cloud-logging)")
        return None
    try:
        client = cloud_logging.Client(project=project)
        entries = client.list_entries(filter_=flt, order_by=cloud_logging.ASCENDING, max_results=limit)
        return "\n".join(str(e.payload) for e in entries)
    except Exception as e:  # noqa: BLE001 - logs are best effort
        log.warning("could not read Cloud Logging for %s: %s", info.get("job"), e)
        return None
