"""Slurm job status on the shared polling monitor: one ``squeue`` per cycle for every job gflow follows
(``sacct`` for jobs squeue forgot, where accounting is on), Slurm's states mapped to gflow's error
classes with a one-line reason each, and the reasons a job is still pending.

Outcome records in the artifact store are the truth for success: a call is reported SUCCEEDED only
with its record. Slurm's state explains a failure that left no record (killed for memory or time,
node failure, preemption, ``scancel`` from outside).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from gflow.errors import ExecutorError, OutOfMemory, TaskTimeout, failure_class
from gflow.executors._batch import child_outcome
from gflow.executors.base import Call, Outcome
from gflow.executors.polling import PollingHandler, Tracked, failed
from gflow.executors.slurm._commands import SACCT_FIELDS, SQUEUE_FIELDS, Row, Slurm, parse_sacct, parse_squeue

log = logging.getLogger("gflow.executors.slurm")

PENDING = ("PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING", "SUSPENDED")
STARTED = ("RUNNING", "COMPLETING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE", "REVOKED", "SPECIAL_EXIT")
#: what slurmstepd writes to a job's stderr when it kills it for memory (jobacct_gather's OverMemoryKill ends the
#: job FAILED or CANCELLED, not OUT_OF_MEMORY; the cgroup plugin says OUT_OF_MEMORY)
OOM_SIGNS = ("exceeded job memory limit", "exceeded step memory limit", "oom-kill", "oom_kill")
#: a job squeue and sacct no longer know (purged after MinJobAge, accounting off)
GONE = "GONE"

#: why a job is still PENDING, in words (squeue's Reason); shown by :meth:`SlurmHandler.pending`
PENDING_REASONS = {
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved (ask the admins, or choose another "
                       "partition)",
    "AssocGrpCpuLimit": "the account's CPU limit (GrpTRES=cpu) is reached: it starts when other jobs of the "
                        "account end",
    "AssocGrpJobsLimit": "the account's limit on running jobs is reached",
    "AssocMaxJobsLimit": "the account's per-user limit on running jobs is reached",
    "PartitionConfig": "it asks for more than the partition allows (CPUs, memory, GPUs or nodes): it will not "
                       "start; lower Resources or choose another partition",
    "PartitionTimeLimit": "its --time is above the partition's MaxTime: it will not start; lower the task's timeout",
    "QOSMaxJobsPerUserLimit": "the QOS's limit on running jobs per user is reached",
    "QOSGrpCpuLimit": "the QOS's CPU limit is reached",
    "Resources": "waiting for free resources",
    "Priority": "jobs of higher priority go first",
    "JobArrayTaskLimit": "the array's throttle (%K) is reached",
    "BeginTime": "its begin time has not come",
    "Dependency": "waiting for a job it depends on",
    "JobHeldUser": "held by a user (scontrol release JOBID)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail,_UnavailableNodes": "the nodes it needs are down, drained or reserved",
}


def pending_text(reason: str) -> str:
    """``ReqNodeNotAvail`` -> ``ReqNodeNotAvail: the nodes it needs are down ...``."""
    base = reason.split(",", 1)[0].split("(", 1)[0].strip()
    words = PENDING_REASONS.get(reason) or PENDING_REASONS.get(base)
    return f"{reason}: {words}" if words else reason


def failure(state: str, row: Row, job: str, *, mem_mib: int | None, time_minutes: str | None,
            log_tail: str) -> tuple[type[BaseException] | BaseException, str]:
    """The gflow class (or instance) and one line for a job element that ended ``state`` without an outcome
    record. TIMEOUT is :class:`gflow.errors.TaskTimeout`; the others go through the one map
    (:func:`gflow.errors.failure_class`)."""
    node = f" on node {row.nodes}" if row.nodes else ""
    if state == "OUT_OF_MEMORY" or (state in ("CANCELLED", "FAILED") and any(m in log_tail.lower() for m in OOM_SIGNS)):
        asked = f"--mem={mem_mib}M" if mem_mib else "its default memory (DefMemPerCPU)"
        msg = (f"Slurm killed job {job}{node}: it used more memory than {asked}; give the task more "
               f"(gflow.Resources(memory=...))")
        return OutOfMemory(msg, requested=mem_mib * (1 << 20) if mem_mib else None), msg
    if state == "TIMEOUT" or (state == "CANCELLED" and "due to time limit" in log_tail.lower()):
        limit = f"--time={time_minutes} min" if time_minutes else "the partition's default time limit"
        return TaskTimeout, (f"Slurm stopped job {job}{node} at its time limit ({limit}); raise the task's timeout or "
                             f"choose a partition with a longer MaxTime")
    if state in ("NODE_FAIL", "BOOT_FAIL"):
        return failure_class(state), (f"job {job} ended {state}: the node{node.replace(' on node', '')} failed while "
                                       f"running it (Slurm's reason: {row.reason or 'none'}); it can be retried")
    if state == "PREEMPTED":
        return failure_class(state), (f"job {job}{node} was preempted by a job of higher priority (the partition's "
                                       f"PreemptMode); it can be retried")
    if state == "CANCELLED":
        return ExecutorError, (f"job {job} was cancelled outside gflow (scancel by a user or an administrator"
                               f"{'; ' + row.reason if row.reason else ''})")
    if state == GONE:
        return ExecutorError, (f"Slurm no longer knows job {job} (finished more than MinJobAge ago and accounting is "
                               f"off) and it left no outcome record; see its log files")
    code = f" with exit code {row.exit_code}" if row.exit_code is not None else ""
    sig = f", signal {row.signal}" if row.signal else ""
    return ExecutorError, (f"job {job}{node} ended {state}{code}{sig} without an outcome record (the worker did not "
                           f"start, or was killed); its stderr is in the log files")


class Job:
    """One sbatch submission: a plain job (``array`` False, element 0) or an array."""

    def __init__(self, job_id: str, *, array: bool, manifest: str, log_dir: str, mem_mib: int | None = None,
                 time_minutes: str | None = None, chunk: int = 1):
        self.id = job_id
        self.array = array
        self.manifest = manifest
        self.log_dir = log_dir
        self.mem_mib = mem_mib
        self.time_minutes = time_minutes
        self.chunk = chunk
        #: element -> the calls it runs (a retry array holds only the resubmitted elements)
        self.elements: dict[int, list[SlurmTracked]] = {}

    def element_id(self, index: int) -> str:
        return f"{self.id}_{index}" if self.array else self.id

    def log_files(self, index: int) -> tuple[str, str]:
        stem = os.path.join(self.log_dir, f"{self.id}_{index}" if self.array else self.id)
        return f"{stem}.out", f"{stem}.err"


class SlurmTracked(Tracked):
    """One call on Slurm: the job (and array element, and position in the element's chunk) that runs it."""

    __slots__ = ("index", "job", "pos", "spec")

    def __init__(self, call: Call, job: Job, index: int, pos: int, spec: str):
        super().__init__(call)
        self.job = job
        self.index = index
        self.pos = pos
        self.spec = spec

    @property
    def job_id(self) -> str:
        return self.job.element_id(self.index)


def tail(path: str, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class SlurmHandler(PollingHandler):
    """The Slurm side of the shared :class:`~gflow.executors.polling.PollingMonitor`.

    Args:
        slurm: The command runner.
        artifacts: A callable returning the artifact store that holds the outcome records.
        accounting: ``sacct`` works here (``AccountingStorageType`` is not ``none``).
    """

    name = "Slurm"

    def __init__(self, slurm: Slurm, artifacts: Any, *, accounting: bool = False):
        self.slurm = slurm
        self.artifacts = artifacts
        self.accounting = accounting
        self.rows: dict[tuple[str, int], Row] = {}
        self.gone: set[str] = set()
        self.squeue_calls_per_cycle: list[int] = []
        self._seen: dict[tuple[str, int], tuple[str, str]] = {}

    # -- one status query per cycle ------------------------------------------------------------------
    def refresh(self, live: Sequence[Tracked], now: float) -> bool:
        jobs = sorted({t.job.id for t in live if isinstance(t, SlurmTracked)}, key=int)
        if not jobs:
            return False
        before = self.slurm.calls["squeue"]
        out = self.slurm.run(["squeue", "--noheader", "--states=all", "--jobs=" + ",".join(jobs),
                              "--Format=" + ",".join(f"{f}:|" for f in SQUEUE_FIELDS)],
                             what=" (status of gflow's jobs)", tolerate=("Invalid job id",))
        self.squeue_calls_per_cycle.append(self.slurm.calls["squeue"] - before)
        rows = parse_squeue(out)
        known = {r.job for r in rows}
        missing = [j for j in jobs if j not in known]
        if missing and self.accounting:
            acct = self.slurm.run(["sacct", "--noheader", "--parsable2", "-X", "--jobs=" + ",".join(missing),
                                   "--format=" + ",".join(SACCT_FIELDS)], what=" (accounting of gflow's jobs)")
            rows += parse_sacct(acct)
            known = {r.job for r in rows}
        self.gone = {j for j in jobs if j not in known}
        changed = bool(self.gone)
        for r in rows:
            for i in r.indices if r.indices is not None else [0]:
                key = (r.job, i)
                self.rows[key] = r
                sig = (r.state, r.reason)
                if self._seen.get(key) != sig:
                    self._seen[key] = sig
                    changed = True
        return changed

    def _row(self, t: SlurmTracked) -> Row | None:
        row = self.rows.get((t.job.id, t.index))
        if row is None and t.job.id in self.gone:
            return Row(job=t.job.id, indices=None, state=GONE)
        return row

    def check_if_running(self, t: Tracked) -> float | None:
        assert isinstance(t, SlurmTracked)
        row = self._row(t)
        if row is None or row.state not in STARTED + TERMINAL or row.state == GONE:
            return None
        return row.start or time.time()

    def check_if_completed(self, t: Tracked) -> Any:
        assert isinstance(t, SlurmTracked)
        row = self._row(t)
        return row if row is not None and (row.state in TERMINAL or row.state == GONE) else None

    def pending(self, t: SlurmTracked) -> str | None:
        """Why ``t`` has not started, in words (None: it started, or Slurm gives no reason)."""
        row = self._row(t)
        if row is None or row.state not in PENDING or not row.reason:
            return None
        return pending_text(row.reason)

    def pending_reason(self, t: Tracked) -> str | None:
        return self.pending(t) if isinstance(t, SlurmTracked) else None

    def describe(self, t: Tracked) -> str | None:
        assert isinstance(t, SlurmTracked)
        row = self._row(t)
        node = f" node={row.nodes}" if row is not None and row.nodes else ""
        return f"slurm job={t.job_id}{node}"

    # -- outcomes --------------------------------------------------------------------------------------
    def info(self, t: SlurmTracked, row: Row) -> dict[str, Any]:
        out, err = t.job.log_files(t.index)
        info: dict[str, Any] = {"job_id": t.job_id, "slurm_state": row.state, "stdout": out, "stderr": err}
        if row.exit_code is not None:
            info["exit_code"] = row.exit_code
        if row.nodes:
            info["node"] = row.nodes
        if row.reason:
            info["reason"] = row.reason
        return info

    def outcome(self, t: Tracked, detail: Any) -> Outcome:
        assert isinstance(t, SlurmTracked)
        row: Row = detail
        info = self.info(t, row)
        got = child_outcome(self.artifacts(), t.spec, info, allow_pickle=bool(t.call.task.options.pickle))
        if got is not None:
            return got
        log_tail = tail(info["stderr"])
        error, message = failure(row.state, row, t.job_id, mem_mib=t.job.mem_mib, time_minutes=t.job.time_minutes,
                                 log_tail=log_tail)
        out = failed(type(error) if isinstance(error, BaseException) else error, message, info=info,
                     log_tail=log_tail, started=row.start, ended=row.end)
        if isinstance(error, BaseException):
            out.exc = error  # keeps OutOfMemory.requested
        return out

    def kill(self, tracked: Sequence[Tracked]) -> None:
        """One ``scancel``: a whole job where every element still running is being cancelled, else its elements."""
        ids: list[str] = []
        by_job: dict[str, tuple[Job, set[int]]] = {}
        for t in tracked:
            if isinstance(t, SlurmTracked):
                by_job.setdefault(t.job.id, (t.job, set()))[1].add(t.index)
        for job_id, (job, gone) in by_job.items():
            others = {i for i, ts in job.elements.items()
                      if i not in gone and any(not x.cancelled and not x.state.terminal for x in ts)}
            if not others:
                ids.append(job_id)
            else:
                ids += [job.element_id(i) for i in sorted(gone)
                        if all(x.cancelled or x.state.terminal for x in job.elements.get(i, ()))]
        if ids:
            try:
                self.slurm.run(["scancel", *ids], what=" (cancel)")
            except Exception as e:  # noqa: BLE001 - best effort: the calls are never reported again anyway
                log.warning("scancel %s failed: %s", " ".join(ids), e)

    def lost(self, t: Tracked, message: str) -> Outcome:
        job = t.job_id if isinstance(t, SlurmTracked) else "?"
        return failed(ExecutorError, f"Slurm job {job} (call {t.call.id}): {message}; check with 'squeue -j {job}'")
