"""``gflow logs`` for Google Cloud Batch: a task's entries in Cloud Logging (``batch_task_logs``), where the
optional ``google-cloud-logging`` package is installed and the caller has roles/logging.viewer."""

from __future__ import annotations

from typing import Any

from gflow.errors import ExecutorError


def log_filter(project: str, info: dict[str, Any]) -> str | None:
    """The Cloud Logging filter for the task a task run recorded (None without the job's uid)."""
    uid, index = info.get("job_uid"), info.get("task_index")
    if not uid or index is None:
        return None
    return (f'logName="projects/{project}/logs/batch_task_logs" AND labels.job_uid="{uid}" AND '
            f'labels.task_id:"task/{uid}-group0-{int(index)}/"')


def fetch(project: str | None, info: dict[str, Any], limit: int = 1000) -> str:
    """The task's log lines, oldest first.

    Raises:
        ExecutorError: there are none to read, saying why (no project, no job recorded, the
            ``google-cloud-logging`` package missing, no permission or another Cloud Logging error).
    """
    if not project:
        raise ExecutorError("no Google Cloud project in the run's executor URL or the task run's info, so no Cloud "
                            "Logging to read")
    flt = log_filter(project, info)
    if flt is None:
        raise ExecutorError("the task run recorded no Batch job uid and task index (its call never reached a Batch "
                            "task), so there is no Cloud Logging entry to look up")
    try:
        from google.cloud import logging as cloud_logging  # type: ignore[attr-defined]
    except ImportError:
        raise ExecutorError("reading Batch task logs needs google-cloud-logging (pip install google-cloud-logging); "
                            f"or look in the console: Logging, filter {flt}") from None
    try:
        client = cloud_logging.Client(project=project)
        entries = client.list_entries(filter_=flt, order_by=cloud_logging.ASCENDING, max_results=limit)
        return "\n".join(str(e.payload) for e in entries)
    except Exception as e:  # noqa: BLE001 - said in one line, with the fix for the usual cause
        first = (str(e).splitlines() or [type(e).__name__])[0][:300]
        raise ExecutorError(f"could not read Cloud Logging for job {info.get('job')} ({first}); the reader needs "
                            f"roles/logging.viewer in project {project}") from None
