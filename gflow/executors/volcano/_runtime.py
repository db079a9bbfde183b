"""The Volcano executor's live state: one :class:`Handle` per call, one :class:`JobRec` per Job, and the
:class:`Tracker` that turns pod and Job watch events into the engine's ``started`` / ``done`` reports, and
runs the time limits (unschedulable pods, image pull errors, missing outcome records) on a clock it is given.

Threads: the pod watch, the Job watch and the tracker's own ticker call in; one lock guards the state;
listener calls and API deletes happen after the lock is released.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from gflow.executors._batch import backend_failure, child_outcome
from gflow.executors.base import Call, CallDone, CallEvent, CallStarted, Outcome
from gflow.executors.volcano import _manifest as vm
from gflow.executors.volcano import _status as vs
from gflow.states import State


class Handle:
    """One call in flight: its Job, its replica index and its call spec."""

    __slots__ = ("call", "evictions", "index", "jr", "outcome", "recheck_at", "spec", "started", "state",
                 "unsched_msg", "unsched_since", "view", "wait_msg", "wait_reason", "wait_since")

    def __init__(self, call: Call, jr: JobRec, index: int, spec: str):
        self.call, self.jr, self.index, self.spec = call, jr, index, spec
        self.state = State.QUEUED
        self.outcome: Outcome | None = None
        self.started = False
        self.evictions = 0
        self.unsched_since: float | None = None
        self.unsched_msg = ""
        self.wait_since: float | None = None
        self.wait_reason = ""
        self.wait_msg: str | None = None
        self.recheck_at: float | None = None
        self.view: vs.PodView | None = None

    @property
    def job(self) -> str:
        return self.jr.name

    @property
    def pod_name(self) -> str:
        return f"{self.jr.name}-{vm.TASK}-{self.index}"

    @property
    def done(self) -> bool:
        return self.state.terminal

    def __repr__(self) -> str:
        return f"<volcano {self.pod_name} {self.state.value}>"


class JobRec:
    """One Volcano Job of this driver."""

    __slots__ = ("deleted", "final_at", "handles", "image", "kill", "name", "open", "phase", "seen", "why")

    def __init__(self, name: str, image: str):
        self.name, self.image = name, image
        self.handles: list[Handle] = []
        self.open = 0
        self.phase, self.why = "Pending", ""
        self.final_at: float | None = None
        self.kill = False  # gflow gave up on (or cancelled) its calls: delete it once none is open
        self.deleted = False
        self.seen = False


Emit = CallEvent


class Tracker:
    """Maps watch events to call states for one :class:`~gflow.executors.volcano.VolcanoExecutor`."""

    def __init__(self, ex: Any, *, clock: Callable[[], float], unschedulable_after: float | None,
                 image_pull_after: float, outcome_grace: float, tick: float):
        self.ex = ex
        self.clock = clock
        self.unschedulable_after = unschedulable_after
        self.image_pull_after = image_pull_after
        self.outcome_grace = outcome_grace
        self.tick_interval = tick
        self.jobs: dict[str, JobRec] = {}
        self.open_calls = 0
        self.timed: set[Handle] = set()  # handles with a running time limit
        self.last_progress = clock()
        self.pod_events = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- bookkeeping ----------------------------------------------------------------------------------
    def add(self, name: str, calls: list[Call], specs: list[str], image: str) -> JobRec:
        jr = JobRec(name, image)
        jr.handles = [Handle(c, jr, i, s) for i, (c, s) in enumerate(zip(calls, specs))]
        with self._lock:
            jr.open = len(jr.handles)
            self.open_calls += jr.open
            self.jobs[name] = jr
        return jr

    def drop(self, jr: JobRec) -> None:
        """Forget a Job that was not created (or is deleted at once): its calls end without a report."""
        with self._lock:
            if self.jobs.pop(jr.name, None) is not None:
                for h in jr.handles:
                    if not h.done:
                        h.state = State.CANCELLED
                        self.open_calls -= 1
                jr.open = 0

    def info(self, h: Handle, v: vs.PodView | None = None) -> dict[str, Any]:
        v = v or h.view
        return {"executor": "volcano", "namespace": self.ex.namespace, "queue": self.ex.queue, "job": h.jr.name,
                "pod": h.pod_name, "index": h.index, "node": v.node if v else None,
                "exit_code": v.exit_code if v else None, "reason": v.reason if v else None,
                "evictions": h.evictions}

    def _finish(self, h: Handle, out: Outcome, emits: list[Emit]) -> None:
        if h.done:
            return
        h.state = State.SUCCEEDED if out.ok else State.FAILED
        h.outcome = out
        h.jr.open -= 1
        self.open_calls -= 1
        self.timed.discard(h)
        emits.append(CallDone(h.call.id, h.call.attempt, out))

    def _fail(self, h: Handle, error_type: str, message: str, emits: list[Emit]) -> None:
        log_tail = (h.view.message or "") if h.view is not None and h.view.finished else ""
        self._finish(h, backend_failure(error_type, message, info=self.info(h), log_tail=log_tail,
                                        ended=self.clock()), emits)

    def _try_outcome(self, h: Handle, emits: list[Emit]) -> bool:
        out = child_outcome(self.ex.artifacts, h.spec, self.info(h), allow_pickle=bool(h.call.task.options.pickle))
        if out is None:
            return False
        self._finish(h, out, emits)
        return True

    def _emit(self, emits: list[Emit], kills: Iterable[str] = ()) -> None:
        for ev in emits:
            self.ex._listener(ev)
        for job in kills:
            self.ex._delete(job)

    # -- watch events -------------------------------------------------------------------------------
    def _job_of(self, pod: dict) -> JobRec | None:
        meta = pod.get("metadata") or {}
        name = (meta.get("labels") or {}).get("volcano.sh/job-name") or \
            (meta.get("annotations") or {}).get("volcano.sh/job-name")
        if name is None:
            name = next((o.get("name") for o in meta.get("ownerReferences") or () if o.get("kind") == "Job"), None)
        return self.jobs.get(name) if name else None

    def on_pod(self, etype: str, pod: dict) -> None:
        emits: list[Emit] = []
        with self._lock:
            self.pod_events += 1
            jr = self._job_of(pod)
            if jr is None:
                return
            v = vs.pod_view(pod)
            idx = vm.pod_index(v.name, jr.name)
            if idx is None or idx >= len(jr.handles):
                return
            h = jr.handles[idx]
            if h.done:
                return
            now = self.clock()
            if etype == "DELETED" or (v.deleting and not v.finished):
                self._pod_gone(h, emits)
            elif v.finished:
                h.view = v
                if not self._try_outcome(h, emits):
                    if v.phase == "Succeeded":  # the record may still be on its way (a network file system)
                        h.recheck_at = now + self.outcome_grace
                        self.timed.add(h)
                    else:
                        self._fail(h, *vs.ended_without_record(self.ex.namespace, jr.name, v), emits)
            else:
                h.view = v
                if v.phase == "Running":
                    h.unsched_since = h.wait_since = None
                    self.timed.discard(h)
                    self.last_progress = now
                    if not h.started:
                        h.started = True
                        h.state = State.RUNNING
                        where = f"volcano {self.ex.namespace}/{jr.name} pod={h.pod_name} node={v.node or '-'}"
                        emits.append(CallStarted(h.call.id, h.call.attempt, v.started or now, where))
                else:
                    self._pending(h, v, now, emits)
        self._emit(emits)

    def _pending(self, h: Handle, v: vs.PodView, now: float, emits: list[Emit]) -> None:
        if v.waiting in vs.PULL_ERRORS or v.waiting in vs.CONFIG_ERRORS:
            if h.wait_since is None:
                h.wait_since = now
            h.wait_reason, h.wait_msg = v.waiting, v.message
            self.timed.add(h)
        elif v.unschedulable:
            if h.unsched_since is None:
                h.unsched_since = now
            h.unsched_msg = v.unschedulable
            self.timed.add(h)
        else:
            h.unsched_since = h.wait_since = None
            if h.recheck_at is None:
                self.timed.discard(h)

    def _pod_gone(self, h: Handle, emits: list[Emit]) -> None:
        """The pod was deleted or evicted before it finished: Volcano restarts it per the Job's policy (or the
        Job ends, and :meth:`tick` reports the call)."""
        if self._try_outcome(h, emits):
            return
        if h.view is not None:  # a pod we saw is gone (counted once, at its first sign of going)
            h.evictions += 1
        h.view = None
        h.unsched_since = h.wait_since = None
        if h.jr.final_at is None:
            self.timed.discard(h)

    def on_pod_relist(self, names: set[str]) -> None:
        emits: list[Emit] = []
        with self._lock:
            for jr in list(self.jobs.values()):
                for h in jr.handles:
                    if not h.done and h.view is not None and h.pod_name not in names:
                        self._pod_gone(h, emits)
        self._emit(emits)

    def on_job(self, etype: str, job: dict) -> None:
        emits: list[Emit] = []
        with self._lock:
            jr = self.jobs.get((job.get("metadata") or {}).get("name", ""))
            if jr is None:
                return
            jr.seen = True
            if etype == "DELETED":
                self._job_gone(jr, emits)
            else:
                jr.phase, jr.why = vs.job_phase(job)
                if jr.phase in vs.JOB_FINAL and jr.final_at is None and jr.open:
                    jr.final_at = self.clock()  # pod events may still be on their way: see tick()
                self._forget_if_done(jr)
        self._emit(emits)

    def _job_gone(self, jr: JobRec, emits: list[Emit]) -> None:
        jr.deleted = True
        for h in jr.handles:
            if not h.done and not self._try_outcome(h, emits):
                self._fail(h, "gflow.ExecutorError", vs.deleted_error(self.ex.namespace, jr.name, h.pod_name), emits)
        self._forget_if_done(jr)

    def on_job_relist(self, names: set[str]) -> None:
        emits: list[Emit] = []
        with self._lock:
            for jr in list(self.jobs.values()):
                if jr.seen and not jr.kill and jr.name not in names:
                    self._job_gone(jr, emits)
        self._emit(emits)

    def _forget_if_done(self, jr: JobRec) -> None:
        if jr.open == 0 and (jr.deleted or jr.phase in vs.JOB_FINAL):
            self.jobs.pop(jr.name, None)

    # -- time limits ----------------------------------------------------------------------------------
    def tick(self) -> None:
        """Apply the time limits now (the ticker thread calls this every ``tick`` seconds)."""
        emits: list[Emit] = []
        kills: list[str] = []
        ns = self.ex.namespace
        with self._lock:
            now = self.clock()
            for h in list(self.timed):
                if h.done:
                    self.timed.discard(h)
                elif h.recheck_at is not None and now >= h.recheck_at:
                    if not self._try_outcome(h, emits):
                        assert h.view is not None
                        self._fail(h, *vs.ended_without_record(ns, h.jr.name, h.view), emits)
                elif h.wait_since is not None and (now - h.wait_since >= self.image_pull_after
                                                   or h.wait_reason in ("InvalidImageName", "ErrImageNeverPull")):
                    msg = (vs.pull_error(ns, h.jr.name, h.pod_name, h.jr.image, h.wait_reason, h.wait_msg)
                           if h.wait_reason in vs.PULL_ERRORS else
                           vs.config_error(ns, h.jr.name, h.pod_name, h.wait_reason, h.wait_msg))
                    h.jr.kill = True
                    self._fail(h, "gflow.ImagePullError" if h.wait_reason in vs.PULL_ERRORS
                               else "gflow.ExecutorError", msg, emits)
                elif (h.unsched_since is not None and self.unschedulable_after is not None
                      and now - max(h.unsched_since, self.last_progress) >= self.unschedulable_after):
                    waited = now - h.unsched_since
                    h.jr.kill = True
                    self._fail(h, "gflow.Unschedulable",
                               vs.unschedulable_error(ns, h.jr.name, h.pod_name, waited, h.unsched_msg), emits)
            for jr in list(self.jobs.values()):
                if jr.final_at is not None and jr.open and now - jr.final_at >= self.outcome_grace:
                    for h in jr.handles:
                        if not h.done and not self._try_outcome(h, emits):
                            self._fail(h, "gflow.ExecutorError", vs.gone_error(
                                ns, jr.name, h.pod_name, jr.phase, jr.why, h.evictions), emits)
                if jr.kill and jr.open == 0 and not jr.deleted:
                    jr.deleted = True
                    kills.append(jr.name)
                self._forget_if_done(jr)
        self._emit(emits, kills)

    def cancel(self, handles: list[Handle]) -> list[str]:
        """Mark calls cancelled (no report follows); returns the Jobs with no open call left, to delete."""
        kills = []
        with self._lock:
            for h in handles:
                if h.done:
                    continue
                h.state = State.CANCELLED
                h.jr.open -= 1
                self.open_calls -= 1
                self.timed.discard(h)
                h.jr.kill = True
            for jr in {h.jr.name: h.jr for h in handles}.values():
                if jr.open == 0 and not jr.deleted and jr.kill:
                    jr.deleted = True
                    kills.append(jr.name)
                    self._forget_if_done(jr)
        return kills

    def unfinished_jobs(self) -> list[str]:
        with self._lock:
            return [jr.name for jr in self.jobs.values()
                    if not jr.deleted and (jr.open or jr.kill) and jr.phase not in vs.JOB_FINAL]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gflow-volcano-ticker", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the ticker must survive; the next tick tries again
                import logging

                logging.getLogger("gflow.executors.volcano").exception("volcano tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
