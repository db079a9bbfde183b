"""Status of AWS Batch jobs at scale, and their outcomes: the AWS Batch handler of the shared polling
monitor (:mod:`gflow.executors.polling`), which runs the cycles, claims and reports.

One refresh (once per cycle): DescribeJobs for every unfinished job (plain jobs and array parents) in batches of
100. An array parent is read through ``arrayProperties.statusSummary``; its children are listed
(ListJobs by ``arrayJobId`` and status) only when the summary shows more finished, failed or running
children than gflow knows of, when the parent itself ended, or on a slow sweep (the summary can lag).
A listing that takes more than one page (over 1,000 children) is repeated at most every ``list_gap``
seconds unless a tenth of the array finished meanwhile, so a 10,000-child array costs tens of
ListJobs calls over its life, not one listing per poll.
Failed children are described (batches of 100) for their attempts, exit code, reasons and log stream.
The interval adapts (the monitor's :class:`~gflow.executors.polling.Cadence`): back to the minimum when
something changed, growing while nothing did.

A call is never reported SUCCEEDED without its outcome record: Batch saying SUCCEEDED with no
record is a failure that names the job, the child index and the fix.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from gflow.errors import ExecutorError, GflowError, OutOfMemory, TaskTimeout, failure_class
from gflow.executors._batch import chunk
from gflow.executors.base import Outcome
from gflow.executors.polling import Cadence, ElementTracked, PollingHandler, PollingMonitor, Tracked, failed

__all__ = ["DEFAULT_LOG_GROUP", "BatchHandler", "BatchMonitor", "Cadence", "Handle", "Job", "element_of"]

log = logging.getLogger("gflow.executors.aws_batch")
TERMINAL = ("SUCCEEDED", "FAILED")
STARTED = ("STARTING", "RUNNING")
DEFAULT_LOG_GROUP = "/aws/batch/job"


class Handle(ElementTracked):
    """One call on AWS Batch: the job (and array element, and position in the element's chunk) that runs it."""

    __slots__ = ()
    job: Job

    @property
    def job_id(self) -> str:
        return self.job.child_id(self.element)

    def __repr__(self) -> str:
        return f"<aws-batch {self.job_id} {self.call.id} {self.state.value}>"


class Job:
    """A submitted Batch job: a plain job (``size`` 0, one element) or an array of ``size`` children."""

    def __init__(self, job_id: str, name: str, size: int, image: str, manifest: str | None, chunk: int = 1):
        self.id = job_id
        self.name = name
        self.size = size
        self.image = image
        self.manifest = manifest
        self.chunk = chunk
        self.elements: dict[int, list[Handle]] = {}
        self.finished: set[int] = set()
        self.started: set[int] = set()
        self.seen: dict[str, int] = {}
        self.listed: dict[str, float] = {}
        self.summary: dict[str, int] = {}
        self.last_change = 0.0
        self.state = "SUBMITTED"
        #: why it waits (DescribeJobs' statusReason while RUNNABLE: "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT")
        self.reason: str | None = None

    def child_id(self, element: int) -> str:
        return f"{self.id}:{element}" if self.size else self.id

    @property
    def done(self) -> bool:
        return len(self.finished) >= len(self.elements)

    def unfinished(self) -> list[int]:
        return [e for e in self.elements if e not in self.finished]


def element_of(summary: dict) -> int:
    """A child's array index (``arrayProperties.index``, else the ``:N`` suffix of its job id)."""
    idx = (summary.get("arrayProperties") or {}).get("index")
    if idx is not None:
        return int(idx)
    return int(str(summary["jobId"]).rsplit(":", 1)[1])


def _ms(v: Any) -> float | None:
    return v / 1000.0 if isinstance(v, int | float) and v > 0 else None


class BatchHandler(PollingHandler):
    """AWS Batch's side of the polling monitor: one refresh describes every unfinished job (and lists the
    children of arrays that changed); outcomes are read from the artifact store.

    Args:
        api: ``describe(ids) -> [job]`` (at most 100 ids), ``children(array_id, status) -> [summary]`` and
            ``terminate(ids, reason)`` (TerminateJob each, best effort).
        artifacts: Where the outcome records are (set by the executor once the run's store is known).
        sweep: Seconds after which an array whose summary did not change is listed anyway.
        describe_all: Describe succeeded children too (attempts and log stream on every task run).
    """

    name = "AWS Batch"
    hint = "check with 'aws batch describe-jobs --jobs JOB_ID'"

    def __init__(self, api: Any, artifacts: Any, *, log_group: str, queue: str, sweep: float = 60.0,
                 list_gap: float = 15.0, describe_all: bool = False):
        self.api = api
        self.artifacts = artifacts
        self.log_group = log_group
        self.queue = queue
        self.sweep = sweep
        self.list_gap = list_gap
        self.describe_all = describe_all
        #: every job submitted, by id
        self.jobs: dict[str, Job] = {}
        self._running: dict[tuple[str, int], float] = {}
        self._done: dict[tuple[str, int], dict] = {}
        self._lock = threading.Lock()  # job.finished: the cycle's thread and cancel's

    def add(self, job: Job, now: float) -> None:
        job.last_change = now
        self.jobs[job.id] = job

    # -- one refresh -------------------------------------------------------------------------------------
    def refresh(self, live: Sequence[Tracked], now: float) -> bool:
        jobs = list({id(h.job): h.job for h in live if isinstance(h, Handle)}.values())
        self._running, self._done = {}, {}
        by_id = {j.id: j for j in jobs}
        finished: list[tuple[Job, int, dict]] = []
        started: list[tuple[Job, int, float | None]] = []
        changed = False
        for part in chunk(jobs, 100):
            for d in self.api.describe([j.id for j in part]):
                job = by_id.get(d.get("jobId", ""))
                if job is None:
                    continue
                if job.state != d.get("status"):
                    job.state = d.get("status", job.state)
                    changed = True
                why = d.get("statusReason") if job.state == "RUNNABLE" else None
                job.reason = why if isinstance(why, str) and why else None
                if job.size == 0:
                    if d.get("status") in TERMINAL and 0 not in job.finished:
                        finished.append((job, 0, d))
                    elif d.get("status") in STARTED and 0 not in job.started:
                        started.append((job, 0, _ms(d.get("startedAt"))))
                else:
                    changed |= self._array(job, d, now, finished, started)
        self._details(finished)
        for job, el, ts in started:
            job.started.add(el)
            self._running[(job.id, el)] = ts or time.time()
        with self._lock:
            for job, el, detail in finished:
                if el not in job.finished:
                    job.finished.add(el)
                    self._done[(job.id, el)] = detail
        return changed

    def check_if_running(self, t: Tracked) -> float | None:
        h: Handle = t  # type: ignore[assignment]
        return self._running.get((h.job.id, h.element))

    def check_if_completed(self, t: Tracked) -> dict | None:
        h: Handle = t  # type: ignore[assignment]
        return self._done.get((h.job.id, h.element))

    def pending_reason(self, t: Tracked) -> str | None:
        h: Handle = t  # type: ignore[assignment]
        return h.job.reason if (h.job.id, h.element) not in self._running else None

    def _array(self, job: Job, d: dict, now: float, finished: list, started: list) -> bool:
        summary = {k: int(v) for k, v in ((d.get("arrayProperties") or {}).get("statusSummary") or {}).items()}
        changed = summary != job.summary
        if changed:
            job.summary = summary
            job.last_change = now
        ended = d.get("status") in TERMINAL
        sweep = now - job.last_change >= self.sweep
        all_in = summary.get("SUCCEEDED", 0) + summary.get("FAILED", 0) >= job.size
        want = []
        for status in ("SUCCEEDED", "FAILED", "RUNNING"):
            n, seen = summary.get(status, 0), job.seen.get(status, 0)
            if status == "RUNNING":
                due = n > 0 and n != seen
            else:
                due = ended or sweep or (n > seen and (all_in or n <= 1000 or n - seen >= job.size // 10))
            if due or (n != seen and now - job.listed.get(status, -1e18) >= self.list_gap):
                want.append(status)
        for status in want:
            listed = self.api.children(job.id, status)
            job.seen[status] = len(listed)
            job.listed[status] = now
            for s in listed:
                el = element_of(s)
                if el not in job.elements:
                    continue
                if status == "RUNNING":
                    if el not in job.started:
                        started.append((job, el, _ms(s.get("startedAt"))))
                elif el not in job.finished:
                    finished.append((job, el, s))
        if sweep:
            job.last_change = now
        return changed

    def _details(self, finished: list[tuple[Job, int, dict]]) -> None:
        """Describe children (failed ones, or all with ``describe_all``) for attempts, reasons, log stream."""
        need = [k for k, (job, el, s) in enumerate(finished)
                if job.size and (s.get("status") == "FAILED" or self.describe_all)]
        for part in chunk(need, 100):
            got = {d["jobId"]: d for d in self.api.describe([finished[k][0].child_id(finished[k][1]) for k in part])}
            for k in part:
                job, el, s = finished[k]
                d = got.get(job.child_id(el))
                if d is not None:  # the summary's container (exit code) and the description's (log stream)
                    container = {**(s.get("container") or {}), **(d.get("container") or {})}
                    finished[k] = (job, el, {**s, **d, "container": container})

    def kill(self, tracked: Sequence[Tracked]) -> None:
        """TerminateJob for cancelled calls: a whole job in one call (Batch cancels what has not started and
        stops what runs); what is left of a partly finished array child by child when that is at most 100."""
        by_job: dict[str, tuple[Job, list[Handle]]] = {}
        for h in tracked:
            if isinstance(h, Handle):
                by_job.setdefault(h.job.id, (h.job, []))[1].append(h)
        whole, children = [], []
        with self._lock:
            for job, hs in by_job.values():
                gone = [el for el in {h.element for h in hs} if all(h.cancelled for h in job.elements[el])]
                everything = all(h.cancelled for el in job.unfinished() for h in job.elements[el])
                if everything and (not job.size or not job.finished or len(gone) > 100):
                    whole.append(job)
                    job.finished.update(job.elements)
                else:
                    children += [job.child_id(el) for el in gone]
                    job.finished.update(gone)
        self.api.terminate([j.id for j in whole] + children, "gflow: cancelled")

    # -- outcomes ----------------------------------------------------------------------------------
    def outcome(self, t: Tracked, detail: Any) -> Outcome:
        h: Handle = t  # type: ignore[assignment]
        return self._outcome_of(h, detail)

    def lost(self, t: Tracked, message: str) -> Outcome:
        h: Handle = t  # type: ignore[assignment]
        h.job.finished.add(h.element)
        return failed(ExecutorError, f"AWS Batch job {h.job_id}: {message}", info={"job_id": h.job_id},
                      error_type="gflow.errors.ExecutorError")

    def _outcome_of(self, h: Handle, detail: dict) -> Outcome:
        from gflow.executors._batch import child_outcome
        from gflow.images.protocol import outcome_slot

        info = self.info(h, detail)
        out = child_outcome(self.artifacts, h.spec, info, allow_pickle=bool(h.call.task.options.pickle))
        if out is not None:
            return out
        status = detail.get("status")
        where = f"AWS Batch job {h.job_id}" + (f" (child {h.element} of array {h.job.id})" if h.job.size else "")
        if status == "SUCCEEDED":
            msg = (f"{where} SUCCEEDED, but call {h.call.id} has no outcome record ({outcome_slot(h.spec)} is not in "
                   f"{self.artifacts.url}): the container exited 0 without gflow recording a result. Fix: run an image "
                   f"whose entrypoint is 'gflow' (the job's command is 'worker ...') and that reaches the artifact "
                   f"store; see the job's log (gflow logs RUN --task-run ID)")
            error: type[ExecutorError] | ExecutorError = ExecutorError
        else:
            error, msg = self._failure(h, info, where)
            if error is OutOfMemory:
                error = OutOfMemory(msg, requested=h.call.task.options.resources.memory)
        return failed(error, msg, info=info, started=_ms(detail.get("startedAt")), ended=_ms(detail.get("stoppedAt")))

    def _failure(self, h: Handle, info: dict[str, Any], where: str) -> tuple[Any, str]:
        """Why a job failed without an outcome record, and the fix (``info``: what ``info()`` read of the job)."""
        reason = info.get("status_reason") or ""
        code = info.get("exit_code")
        creason = info.get("reason") or ""
        text = f"{reason} {creason}"
        # the class comes from the one map (gflow.errors.FAILURES) by Batch's own reason names
        etype: type[GflowError] = ExecutorError
        if "CannotPullContainer" in text:
            etype = failure_class("CannotPullContainerError")
            fix = (f"the queue's compute environment cannot pull image {h.job.image}: push it to a registry its "
                   f"instances reach (ECR in the same region) and give the execution role ecr:GetAuthorizationToken "
                   f"and ecr:BatchGetImage")
        elif "Host EC2" in text:
            etype = failure_class("Host EC2")
            fix = (f"the instance was reclaimed or terminated (spot) in each of {info.get('attempts') or 1} "
                   f"attempt(s); raise the executor's infra_retries or use an on-demand compute environment")
        elif "attempt duration exceeded" in text.lower() or "timeout" in reason.lower():
            etype = TaskTimeout
            fix = "it exceeded its time limit (the task's timeout x chunk = attemptDurationSeconds)"
        elif code == 137 or "OutOfMemory" in text:
            if "OutOfMemory" in text:
                etype = failure_class("OutOfMemoryError")
            fix = "it was killed (exit code 137: out of memory or SIGKILL); raise the task's Resources.memory"
        elif code == 2:
            fix = self._worker_error(h)
        elif reason.lower().startswith(("terminated", "cancel")) or "gflow:" in reason:
            fix = "it was cancelled or terminated"
        elif code is None:
            fix = (f"the container did not run or its exit was not recorded; check that the queue can pull image "
                   f"{h.job.image} and the job's log")
        else:
            fix = f"the container exited with code {code} before gflow could record an outcome; see the job's log"
        detail = "; ".join(x for x in (reason, creason, f"exit code {code}" if code is not None else "") if x)
        return etype, (f"{where} FAILED without an outcome record for call {h.call.id}"
                       f"{' (' + detail + ')' if detail else ''}: {fix} (log: gflow logs RUN --task-run ID)")

    def _worker_error(self, h: Handle) -> str:
        if h.job.manifest:
            try:
                missing = not self.artifacts.exists(h.job.manifest)
            except GflowError:
                missing = False
            if missing:
                return (f"its array manifest {h.job.manifest} is missing from {self.artifacts.url} (deleted before "
                        f"the job ran?); nothing of the stored results is lost: run the flow again")
        return (f"gflow worker could not run the call nor write its outcome to {self.artifacts.url}: check the job "
                f"reaches the store (GFLOW_ARTIFACTS, AWS_ENDPOINT_URL_S3) and the job role allows s3:GetObject and "
                f"s3:PutObject")

    def info(self, h: Handle, d: dict) -> dict[str, Any]:
        """What the task run records about the Batch job that ran its call."""
        attempts = d.get("attempts")
        last = (attempts[-1].get("container") if attempts else None) or {}
        container = d.get("container") or {}
        info = {
            "job_id": h.job_id, "array_job_id": h.job.id if h.job.size else None,
            "array_index": h.element if h.job.size else None, "call_in_chunk": h.pos if h.job.chunk > 1 else None,
            "queue": self.queue, "image": h.job.image, "status": d.get("status"),
            "status_reason": d.get("statusReason"), "exit_code": container.get("exitCode", last.get("exitCode")),
            "reason": container.get("reason") or last.get("reason"),
            "attempts": len(attempts) if attempts is not None else None,
            "log_group": self.log_group,
            "log_stream": container.get("logStreamName") or last.get("logStreamName"),
        }
        return {k: v for k, v in info.items() if v is not None}


class BatchMonitor(PollingMonitor):
    """The polling monitor with AWS Batch's handler (``jobs``: every job submitted, by id)."""

    handler: BatchHandler

    @property
    def jobs(self) -> dict[str, Job]:
        return self.handler.jobs

    def add(self, job: Job) -> None:
        """Follow ``job``'s calls (just submitted), without waking the thread (``track`` wakes it)."""
        self.handler.add(job, self.clock())
