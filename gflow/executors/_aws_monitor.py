"""Status of AWS Batch jobs at scale, and their outcomes.

One poll cycle: DescribeJobs for every unfinished job (plain jobs and array parents) in batches of
100. An array parent is read through ``arrayProperties.statusSummary``; its children are listed
(ListJobs by ``arrayJobId`` and status) only when the summary shows more finished, failed or running
children than gflow knows of, when the parent itself ended, or on a slow sweep (the summary can lag).
A listing that takes more than one page (over 1,000 children) is repeated at most every ``list_gap``
seconds unless a tenth of the array finished meanwhile, so a 10,000-child array costs tens of
ListJobs calls over its life, not one listing per poll.
Failed children are described (batches of 100) for their attempts, exit code, reasons and log stream.
The interval adapts (:class:`Cadence`): back to the minimum when something changed, growing while
nothing did.

A call is never reported SUCCEEDED without its outcome record: Batch saying SUCCEEDED with no
record is a failure that names the job, the child index and the fix.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gflow.errors import GflowError
from gflow.executors._batch import chunk
from gflow.executors.base import Call, Outcome
from gflow.states import State

log = logging.getLogger("gflow.executors.aws_batch")
TERMINAL = ("SUCCEEDED", "FAILED")
STARTED = ("STARTING", "RUNNING")
DEFAULT_LOG_GROUP = "/aws/batch/job"


class Handle:
    """One call on AWS Batch: the job (and array element, and position in the element's chunk) that runs it."""

    __slots__ = ("call", "cancelled", "element", "job", "pos", "spec", "state")

    def __init__(self, call: Call, job: Job, element: int, pos: int, spec: str):
        self.call = call
        self.job = job
        self.element = element
        self.pos = pos
        self.spec = spec
        self.state = State.QUEUED
        self.cancelled = False

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

    def child_id(self, element: int) -> str:
        return f"{self.id}:{element}" if self.size else self.id

    @property
    def done(self) -> bool:
        return len(self.finished) >= len(self.elements)

    def unfinished(self) -> list[int]:
        return [e for e in self.elements if e not in self.finished]


@dataclass
class Cadence:
    """The adaptive poll interval: ``low`` after a change, times ``factor`` per quiet cycle, up to ``high``."""

    low: float = 1.0
    high: float = 30.0
    factor: float = 2.0
    interval: float = 0.0

    def __post_init__(self) -> None:
        self.interval = self.low

    def next(self, changed: bool) -> float:
        self.interval = self.low if changed else min(self.high, self.interval * self.factor)
        return self.interval

    def reset(self) -> None:
        self.interval = self.low


def element_of(summary: dict) -> int:
    """A child's array index (``arrayProperties.index``, else the ``:N`` suffix of its job id)."""
    idx = (summary.get("arrayProperties") or {}).get("index")
    if idx is not None:
        return int(idx)
    return int(str(summary["jobId"]).rsplit(":", 1)[1])


def _ms(v: Any) -> float | None:
    return v / 1000.0 if isinstance(v, int | float) and v > 0 else None


class Monitor:
    """Polls Batch for the jobs it tracks and reports starts and outcomes through ``emit``.

    Args:
        api: ``describe(ids) -> [job]`` (at most 100 ids) and ``children(array_id, status) -> [summary]``.
        artifacts: Where the outcome records are.
        emit: ``emit(kind, handle, payload)``: ``"started"`` (a timestamp) or ``"done"`` (an Outcome).
        sweep: Seconds after which an array whose summary did not change is listed anyway.
        describe_all: Describe succeeded children too (attempts and log stream on every task run).
    """

    def __init__(self, api: Any, artifacts: Any, emit: Callable[[str, Handle, Any], None], *, log_group: str,
                 queue: str, sweep: float = 60.0, list_gap: float = 15.0, describe_all: bool = False,
                 clock: Callable[[], float] = time.monotonic, workers: int = 16):
        self.api = api
        self.artifacts = artifacts
        self.emit = emit
        self.log_group = log_group
        self.queue = queue
        self.sweep = sweep
        self.list_gap = list_gap
        self.describe_all = describe_all
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self.lock = threading.RLock()
        self.cycles = 0
        #: one cycle at a time: the monitor thread's and one asked for from outside (tests, a final poll)
        self._cycling = threading.Lock()
        self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="gflow-batch-outcomes")

    def add(self, job: Job) -> None:
        job.last_change = self.clock()
        with self.lock:
            self.jobs[job.id] = job

    def active(self) -> list[Job]:
        with self.lock:
            return [j for j in self.jobs.values() if not j.done]

    # -- one cycle ---------------------------------------------------------------------------------
    def cycle(self) -> bool:
        """Poll once; returns whether anything changed."""
        with self._cycling:
            return self._cycle()

    def _cycle(self) -> bool:
        jobs = self.active()
        if not jobs:
            return False
        self.cycles += 1
        now = self.clock()
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
            for h in job.elements.get(el, ()):
                if self._claim(h, State.RUNNING):
                    self.emit("started", h, ts or time.time())
        items: list[tuple[Handle, dict]] = []
        for job, el, detail in finished:
            if el in job.finished:
                continue
            job.finished.add(el)
            items.extend((h, detail) for h in job.elements.get(el, ()) if not h.cancelled)
        for h, out in zip([h for h, _ in items], self._pool.map(self._outcome, items)):
            if self._claim(h, State.SUCCEEDED if out.ok else State.FAILED):
                self.emit("done", h, out)
        return changed or bool(started) or bool(finished)

    def _claim(self, h: Handle, state: State) -> bool:
        with self.lock:
            if h.cancelled or h.state.terminal or h.state is state:
                return False
            h.state = state
            return True

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

    # -- outcomes ----------------------------------------------------------------------------------
    def _outcome(self, item: tuple[Handle, dict]) -> Outcome:
        h, detail = item
        try:
            return self._outcome_of(h, detail)
        except Exception as e:  # noqa: BLE001 - never lose a call: report why it could not be read
            return Outcome(False, error_type="gflow.errors.ExecutorError",
                           error_message=f"AWS Batch job {h.job_id}: cannot read the outcome of call {h.call.id}: {e}",
                           ended=time.time(), info=self.info(h, detail))

    def _outcome_of(self, h: Handle, detail: dict) -> Outcome:
        from gflow.executors._batch import backend_failure, child_outcome
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
            etype = "gflow.errors.ExecutorError"
        else:
            etype, msg = self._failure(h, info, where)
        return backend_failure(etype, msg, info=info, started=_ms(detail.get("startedAt")),
                               ended=_ms(detail.get("stoppedAt")))

    def _failure(self, h: Handle, info: dict[str, Any], where: str) -> tuple[str, str]:
        """Why a job failed without an outcome record, and the fix (``info``: what ``info()`` read of the job)."""
        reason = info.get("status_reason") or ""
        code = info.get("exit_code")
        creason = info.get("reason") or ""
        text = f"{reason} {creason}"
        etype = "gflow.errors.ExecutorError"
        if "CannotPullContainer" in text:
            fix = (f"the queue's compute environment cannot pull image {h.job.image}: push it to a registry its "
                   f"instances reach (ECR in the same region) and give the execution role ecr:GetAuthorizationToken "
                   f"and ecr:BatchGetImage")
        elif "Host EC2" in text:
            fix = (f"the instance was reclaimed or terminated (spot) in each of {info.get('attempts') or 1} "
                   f"attempt(s); raise the executor's infra_retries or use an on-demand compute environment")
        elif "attempt duration exceeded" in text.lower() or "timeout" in reason.lower():
            etype = "gflow.errors.TaskTimeout"
            fix = "it exceeded its time limit (the task's timeout x chunk = attemptDurationSeconds)"
        elif code == 137 or "OutOfMemory" in text:
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

    def fail_all(self, message: str) -> None:
        """Give up on every unfinished call (the backend cannot be followed any more)."""
        for job in self.active():
            for el in job.unfinished():
                job.finished.add(el)
                for h in job.elements[el]:
                    if self._claim(h, State.FAILED):
                        self.emit("done", h, Outcome(False, error_type="gflow.errors.ExecutorError",
                                                     error_message=f"AWS Batch job {h.job_id}: {message}",
                                                     ended=time.time(), info={"job_id": h.job_id}))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

