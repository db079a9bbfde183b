"""The CloudWatch log of one task run's Batch job (``gflow logs RUN --task-run ID``)."""

from __future__ import annotations

import re
from typing import Any

from gflow.clouds.aws import error_code, translate
from gflow.errors import ExecutorError
from gflow.executors.aws_batch._monitor import DEFAULT_LOG_GROUP

_JOB = re.compile(r"(?:^|\s)job=(\S+)")


def job_id_of(handle: str | None, info: dict[str, Any]) -> str | None:
    """The Batch job id (``PARENT:INDEX`` for an array child) from a task run's info or handle."""
    if info.get("job_id"):
        return str(info["job_id"])
    m = _JOB.search(handle or "")
    return m.group(1) if m else None


def stream_of(job: dict) -> str | None:
    container = job.get("container") or {}
    if container.get("logStreamName"):
        return str(container["logStreamName"])
    for attempt in reversed(job.get("attempts") or []):
        name = (attempt.get("container") or {}).get("logStreamName")
        if name:
            return str(name)
    return None


def fetch(ex: Any, handle: str | None, info: dict[str, Any]) -> str | None:
    """Read the whole log stream. The stream comes from ``info`` or, when the task run did not record
    it (successful children are not described while running), from DescribeJobs of its job.

    Raises:
        ExecutorError: the job or its stream cannot be found (naming them and why).
    """
    import botocore.exceptions as bx

    job_id = job_id_of(handle, info)
    stream = info.get("log_stream")
    if not stream:
        if not job_id:
            raise ExecutorError(f"no AWS Batch job id in the task run's handle {handle!r} or info")
        jobs = ex._call("describe_jobs", jobs=[job_id])["jobs"]
        if not jobs:
            raise ExecutorError(f"AWS Batch no longer knows job {job_id} (Batch keeps finished jobs about a week); "
                                f"its log may still be in CloudWatch Logs group {ex.log_group or DEFAULT_LOG_GROUP}")
        stream = stream_of(jobs[0])
        if not stream:
            return None  # it never started: there is no log
    groups = [info.get("log_group") or ex.log_group or DEFAULT_LOG_GROUP]
    if DEFAULT_LOG_GROUP not in groups:
        groups.append(DEFAULT_LOG_GROUP)  # a job definition without logConfiguration logs to Batch's default
    logs = ex._client("logs")
    for group in groups:
        lines: list[str] = []
        kw: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
        try:
            while True:
                page = logs.get_log_events(**kw)
                lines.extend(e["message"] for e in page.get("events", []))
                token = page.get("nextForwardToken")
                if not token or token == kw.get("nextToken"):
                    break
                kw["nextToken"] = token
        except bx.ClientError as e:
            if error_code(e)[0] == "ResourceNotFoundException":
                continue
            raise translate(e, f"reading log stream {stream} of job {job_id}") from None
        return "\n".join(lines)
    raise ExecutorError(f"CloudWatch Logs has no stream {stream} in {' or '.join(groups)} (expired by the group's "
                        f"retention, or the job's log configuration sends it elsewhere)")
