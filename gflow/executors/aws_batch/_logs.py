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


def fetch(ex: Any, handle: str | None, info: dict[str, Any]) -> str:
    """Read the whole log stream. The stream comes from ``info`` or, when the task run did not record
    it (successful children are not described while running), from DescribeJobs of its job.

    Raises:
        ExecutorError: there is no log to read, saying why (no job id, the job is gone, it never started a
            container, the log group or stream does not exist).
        ConfigError: the credentials or permissions (``logs:GetLogEvents``) do not allow reading it.
    """
    import botocore.exceptions as bx

    job_id = job_id_of(handle, info)
    stream = info.get("log_stream")
    if not stream:
        if not job_id:
            raise ExecutorError(f"no AWS Batch job id in the task run's handle {handle!r} or info, so no log stream "
                                f"to read (was the call ever submitted?)")
        jobs = ex._call("describe_jobs", jobs=[job_id])["jobs"]
        if not jobs:
            raise ExecutorError(f"AWS Batch no longer knows job {job_id} (Batch keeps finished jobs about a week) and "
                                f"the task run recorded no log stream; look in CloudWatch Logs group "
                                f"{ex.log_group or DEFAULT_LOG_GROUP}")
        stream = stream_of(jobs[0])
        if not stream:
            job = jobs[0]
            why = job.get("statusReason") or (job.get("container") or {}).get("reason") or "no reason given"
            raise ExecutorError(f"AWS Batch job {job_id} has no log stream: it never ran a container "
                                f"(status {job.get('status')}: {why})")
    groups = [info.get("log_group") or ex.log_group or DEFAULT_LOG_GROUP]
    if DEFAULT_LOG_GROUP not in groups:
        groups.append(DEFAULT_LOG_GROUP)  # a job definition without logConfiguration logs to Batch's default
    logs = ex._client("logs")
    missing: list[str] = []
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
                text = str(e.response.get("Error", {}).get("Message", "")).lower()
                missing.append(f"log group {group} does not exist" if "group" in text else
                               f"group {group} has no stream {stream}")
                continue
            raise translate(e, f"reading log stream {stream} of job {job_id} in {group}") from None
        return "\n".join(lines)
    raise ExecutorError(f"CloudWatch Logs has no log of job {job_id}: {'; '.join(missing)} (expired by the group's "
                        f"retention, deleted, or the job's log configuration sends it elsewhere)")
