"""Status of Google Cloud Batch jobs at scale, and their outcomes: Batch's handler for the shared
:class:`~gflow.executors.polling.PollingMonitor`.

One refresh: ``jobs.get`` for every unfinished job (one read per fan-out per cycle), whose
``status.taskGroups.group0.counts`` say how many tasks are in each state. Tasks are listed (``tasks.list``
with ``filter=State=S``, the API's documented form, pages of 1,000) only for a state whose count changed;
a listing longer than one page is repeated at most every ``list_gap`` seconds unless a tenth of the job
moved meanwhile or the job ended, so a 100,000-task job costs a few hundred list pages over its life, not a
listing per poll. When a job ends, what it still owes is listed once more.

A call is never reported SUCCEEDED without its outcome record: Batch saying SUCCEEDED with no record is a
failure that names the job, the task and the likely cause. Failures without a record are mapped by exit
code through the one map (:data:`gflow.errors.FAILURES`): 50001 (Spot VM preempted) is
:class:`~gflow.errors.Preempted`, 50002-50004 and 50006 (VM lost) :class:`~gflow.errors.NodeFailure`, 50005
(``maxRunDuration``) :class:`~gflow.errors.TaskTimeout`, 137 out of memory (or killed).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from gflow.errors import ExecutorError, GflowError, OutOfMemory, TaskTimeout, failure_class
from gflow.executors.base import Outcome
from gflow.executors.polling import ElementTracked, PollingHandler, PollingMonitor, Tracked, failed

DONE = ("SUCCEEDED", "FAILED")
ENDED = ("SUCCEEDED", "FAILED", "CANCELLED")
PAGE = 1000


class Handle(ElementTracked):
    """One call on Batch: the job, task index and position in the task's chunk that run it."""

    __slots__ = ()
    job: Job

    @property
    def task_name(self) -> str:
        return f"{self.job.name}/taskGroups/group0/tasks/{self.element}"

    def __repr__(self) -> str:
        return f"<gcp-batch {self.job.id}/{self.element} {self.call.id} {self.state.value}>"


class Job:
    """A submitted Batch job of ``count`` tasks (``name``: ``projects/P/locations/R/jobs/ID``)."""

    def __init__(self, name: str, count: int, image: str, manifest: str | None, chunk: int = 1):
        self.name = name
        self.id = name.rsplit("/", 1)[1]
        self.count = count
        self.image = image
        self.manifest = manifest
        self.chunk = chunk
        self.elements: dict[int, list[Handle]] = {}
        self.finished: set[int] = set()
        self.started: set[int] = set()
        self.counts: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.listed: dict[str, float] = {}
        self.moved_at: dict[str, int] = {}
        self.state = "QUEUED"
        self.uid = ""
        self.deleted = False

    def unfinished(self) -> list[int]:
        return [e for e in self.elements if e not in self.finished]


def _ts(v: Any) -> float | None:
    if not v:
        return None
    try:
        return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _index(task: dict) -> int:
    return int(str(task.get("name", "")).rsplit("/", 1)[-1])


def last_exit(task: dict) -> tuple[int | None, str]:
    """The exit code and description of a task's last status event that has one."""
    for ev in reversed((task.get("status") or {}).get("statusEvents") or []):
        code = (ev.get("taskExecution") or {}).get("exitCode")
        if code is not None:
            return int(code), str(ev.get("description") or "")
    return None, ""


def attempts(task: dict) -> int:
    """How many times Batch ran the task (each run ends in an event with an exit code)."""
    return sum(1 for ev in (task.get("status") or {}).get("statusEvents") or []
               if (ev.get("taskExecution") or {}).get("exitCode") is not None) or 1


class BatchHandler(PollingHandler):
    """Google Cloud Batch's side of the polling monitor.

    Args:
        api: ``get(name) -> job dict | None`` (None: the job is gone), ``tasks(name, state) -> [task dict]``
            (every page) and ``delete(name)`` (best effort).
        artifacts: Where the outcome records are (set by the executor once the run's store is known).
        project, region: For messages and commands in them.
        list_gap: Seconds between listings of more than one page of a state, unless a tenth of the job moved.
    """

    name = "Google Cloud Batch"
    hint = "check with 'gcloud batch jobs describe JOB --location REGION'"

    def __init__(self, api: Any, artifacts: Any, *, project: str, region: str, list_gap: float = 15.0):
        self.api = api
        self.artifacts = artifacts
        self.project = project
        self.region = region
        self.list_gap = list_gap
        self.hint = f"check with 'gcloud batch jobs describe JOB --location {region} --project {project}'"
        #: every job submitted, by id
        self.jobs: dict[str, Job] = {}
        self._running: dict[tuple[str, int], float] = {}
        self._done: dict[tuple[str, int], dict] = {}
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        self.jobs[job.id] = job

    # -- one refresh ---------------------------------------------------------------------------------------------
    def refresh(self, live: Sequence[Tracked], now: float) -> bool:
        jobs = list({id(h.job): h.job for h in live if isinstance(h, Handle)}.values())
        self._running, self._done = {}, {}
        changed = False
        for job in jobs:
            if job.deleted:
                continue
            d = self.api.get(job.name)
            if d is None:
                changed = True
                self._gone(job, "the job was deleted outside gflow")
                continue
            job.uid = str(d.get("uid") or job.uid)
            status = d.get("status") or {}
            state = str(status.get("state") or job.state)
            group = (status.get("taskGroups") or {}).get("group0") or {}
            counts = {k: int(v) for k, v in (group.get("counts") or {}).items()}
            if counts != job.counts or state != job.state:
                changed = True
            job.counts, job.state = counts, state
            self._list(job, now)
            if state in ENDED:
                self._settle(job)
        return changed

    def _list(self, job: Job, now: float) -> None:
        ended = job.state in ENDED
        for state in (*DONE, "RUNNING"):  # ends first: a start is news only if it is not known to have ended
            n = job.counts.get(state, 0)
            if state == "RUNNING":
                if ended or n <= len(job.started - job.finished):
                    continue  # no task started that gflow has not seen start (fewer running is no news)
            elif n == job.seen.get(state, 0):
                continue
            due = (ended or n <= PAGE or abs(n - job.moved_at.get(state, 0)) >= max(1, job.count // 10)
                   or now - job.listed.get(state, -1e18) >= self.list_gap)
            if not due:
                continue
            tasks = self.api.tasks(job.name, state)
            job.seen[state] = len(tasks)
            job.moved_at[state] = n
            job.listed[state] = now
            for t in tasks:
                el = _index(t)
                if el not in job.elements:
                    continue
                if state == "RUNNING":
                    if el not in job.started:
                        job.started.add(el)
                        self._running[(job.id, el)] = self._started_at(t)
                elif el not in job.finished:
                    with self._lock:
                        job.finished.add(el)
                    self._done[(job.id, el)] = t

    @staticmethod
    def _started_at(task: dict) -> float:
        import time

        for ev in reversed((task.get("status") or {}).get("statusEvents") or []):
            if ev.get("taskState") == "RUNNING":
                ts = _ts(ev.get("eventTime"))
                if ts:
                    return ts
        return time.time()

    def _settle(self, job: Job) -> None:
        """The job ended: what it still owes after the final listings ended without a task record."""
        for el in job.unfinished():
            with self._lock:
                job.finished.add(el)
            self._done[(job.id, el)] = {"name": f"{job.name}/taskGroups/group0/tasks/{el}",
                                        "status": {"state": job.state}, "gflow_missing": True}

    def _gone(self, job: Job, why: str) -> None:
        job.deleted = True
        for el in job.unfinished():
            with self._lock:
                job.finished.add(el)
            self._done[(job.id, el)] = {"status": {"state": "DELETED"}, "gflow_missing": True, "why": why}

    def check_if_running(self, t: Tracked) -> float | None:
        h: Handle = t  # type: ignore[assignment]
        return self._running.get((h.job.id, h.element))

    def check_if_completed(self, t: Tracked) -> dict | None:
        h: Handle = t  # type: ignore[assignment]
        return self._done.get((h.job.id, h.element))

    def describe(self, t: Tracked) -> str | None:
        h: Handle = t  # type: ignore[assignment]
        return f"{h.job.image} job={h.job.id} task={h.element}"

    def kill(self, tracked: Sequence[Tracked]) -> None:
        """``jobs.delete`` for a job whose unfinished calls are all cancelled (Batch stops its running tasks and
        never starts the rest). Batch cannot stop single tasks: a job partly cancelled runs on, and the
        cancelled calls are never reported; it is deleted once nothing of it is wanted."""
        jobs = {id(h.job): h.job for h in tracked if isinstance(h, Handle)}
        doomed = []
        with self._lock:
            for job in jobs.values():
                if job.deleted:
                    continue
                if all(h.cancelled or h.state.terminal for el in job.unfinished() for h in job.elements[el]):
                    job.deleted = True
                    job.finished.update(job.elements)
                    doomed.append(job)
        for job in doomed:
            self.api.delete(job.name)

    # -- outcomes -----------------------------------------------------------------------------------------------
    def lost(self, t: Tracked, message: str) -> Outcome:
        h: Handle = t  # type: ignore[assignment]
        with self._lock:
            h.job.finished.add(h.element)
        return failed(ExecutorError, f"Google Cloud Batch job {h.job.id} task {h.element}: {message}",
                      info={"job": h.job.name, "task_index": h.element}, error_type="gflow.errors.ExecutorError")

    def outcome(self, t: Tracked, detail: Any) -> Outcome:
        from gflow.executors._batch import child_outcome
        from gflow.images.protocol import outcome_slot

        h: Handle = t  # type: ignore[assignment]
        info = self.info(h, detail)
        out = child_outcome(self.artifacts, h.spec, info, allow_pickle=bool(h.call.task.options.pickle))
        if out is not None:
            return out
        state = (detail.get("status") or {}).get("state")
        where = f"Google Cloud Batch job {h.job.id} task {h.element}"
        if state == "SUCCEEDED":
            msg = (f"{where} SUCCEEDED, but call {h.call.id} has no outcome record ({outcome_slot(h.spec)} is not in "
                   f"{self.artifacts.url}): the container exited 0 without gflow recording a result. Likely cause: "
                   f"the image's entrypoint is not 'gflow' (the runnable's commands are 'worker ...'), or the job's "
                   f"service account cannot write to the bucket; see the task's log (gflow logs RUN --task-run ID)")
            return failed(ExecutorError, msg, info=info)
        error, msg = self._failure(h, info, where, detail)
        if error is OutOfMemory:
            error = OutOfMemory(msg, requested=h.call.task.options.resources.memory)
        return failed(error, msg, info=info)

    def _failure(self, h: Handle, info: dict[str, Any], where: str, detail: dict) -> tuple[Any, str]:
        code = info.get("exit_code")
        tries = info.get("attempts") or 1
        etype: Any = failure_class(str(code)) if code is not None else ExecutorError
        if detail.get("status", {}).get("state") == "DELETED":
            fix = f"{detail.get('why', 'the job was deleted')}; run the flow again to run its calls"
        elif detail.get("gflow_missing"):
            fix = (f"the job ended {detail.get('status', {}).get('state')} without this task finishing (Batch did not "
                   f"run it: quota, an image that cannot be pulled, or a job cancelled outside gflow)")
        elif code == 50001:
            fix = (f"its Spot VM was preempted in each of {tries} attempt(s); raise the executor's infra_retries or "
                   f"run on standard VMs (spot=0)")
        elif code in (50002, 50003, 50004, 50006):
            fix = f"its VM failed or stopped answering (exit code {code}) in each of {tries} attempt(s)"
        elif code == 50005:
            etype = TaskTimeout
            fix = "it ran past its maxRunDuration (the task's timeout x chunk)"
        elif code == 137:
            etype = OutOfMemory
            fix = "it was killed (exit code 137: out of memory or SIGKILL); raise the task's Resources.memory"
        elif code == 2:
            fix = self._worker_error(h)
        elif code is None:
            fix = (f"the container did not run or its exit was not recorded; check that Batch can pull image "
                   f"{h.job.image} (the job's service account needs roles/artifactregistry.reader) and the task's log")
        else:
            fix = f"the container exited with code {code} before gflow could record an outcome; see the task's log"
        return etype, (f"{where} FAILED without an outcome record for call {h.call.id}"
                       f"{' (' + info['status'] + ')' if info.get('status') else ''}: {fix} "
                       f"(log: gflow logs RUN --task-run ID)")

    def _worker_error(self, h: Handle) -> str:
        if h.job.manifest:
            try:
                missing = not self.artifacts.exists(h.job.manifest)
            except GflowError:
                missing = False
            if missing:
                return (f"its manifest {h.job.manifest} is missing from {self.artifacts.url} (deleted before the job "
                        f"ran?); nothing of the stored results is lost: run the flow again")
        return (f"gflow worker could not run the call nor write its outcome to {self.artifacts.url}: check that the "
                f"job's service account has roles/storage.objectUser on the bucket (GFLOW_ARTIFACTS is set for it)")

    def info(self, h: Handle, detail: dict) -> dict[str, Any]:
        """What the task run records about the Batch task that ran its call."""
        code, desc = last_exit(detail)
        info = {"job": h.job.name, "job_id": h.job.id, "job_uid": h.job.uid or None, "task_index": h.element,
                "call_in_chunk": h.pos if h.job.chunk > 1 else None, "image": h.job.image,
                "state": (detail.get("status") or {}).get("state"), "exit_code": code,
                "status": desc[:300] or None, "attempts": attempts(detail) if code is not None else None,
                "project": self.project, "region": self.region}
        return {k: v for k, v in info.items() if v is not None}


class BatchMonitor(PollingMonitor):
    """The polling monitor with Google Cloud Batch's handler (``jobs``: every job submitted, by id)."""

    handler: BatchHandler

    @property
    def jobs(self) -> dict[str, Job]:
        return self.handler.jobs

    def add(self, job: Job) -> None:
        self.handler.add(job)
