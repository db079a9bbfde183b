"""One attempt of a call in the scheduling core (a mixin of :class:`gflow.flows._core.Core`): its start, its
concurrency slot, success (the result encoded once, or taken as the remote worker stored it), failure with
the retry policy and backoff, and cacheable twins taking the first one's result."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from gflow.errors import GflowError, SerializationError, TaskFailed
from gflow.executors.base import Capabilities, Outcome
from gflow.flows._events import ArmTimer, CacheHit, Instruction, TaskState
from gflow.flows._keys import compute_keys
from gflow.flows._values import SCALARS, object_ids, resolve_values
from gflow.serialization import encode
from gflow.states import State
from gflow.store.base import Row, trow

if TYPE_CHECKING:
    from gflow.flows._endings import RunState

QUEUED, RUNNING, RETRYING = State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CACHED = State.SUCCEEDED, State.FAILED, State.CACHED
INLINE_MAX = 16 * 1024


class Attempts:
    if TYPE_CHECKING:  # the Core's state this mixin reads and writes
        tasks: dict[str, TaskState]
        runs: dict[str, RunState]
        caps: dict[str, Capabilities]
        ready: dict[str, deque[TaskState]]
        held: dict[str, deque[TaskState]]
        running: dict[str, int]
        cache_mem: dict[str, CacheHit]
        inflight: dict[str, TaskState]
        _out: list[Instruction]
        _rec: list[Row]
        _blobs: dict[str, bytes]
        _sid: str
        now: float

        def _ready(self, ts: TaskState) -> None: ...
        def _enqueue(self, ts: TaskState) -> None: ...
        def _cached(self, ts: TaskState, hit: CacheHit) -> None: ...
        def _finish(self, ts: TaskState, state: State) -> None: ...
        def _log(self, ts: TaskState, new: State) -> None: ...

    # -- attempts ----------------------------------------------------------------------------------------------------
    def _to_running(self, ts: TaskState, started: float, arm: bool = True) -> None:
        self._log(ts, RUNNING)
        ts.state = RUNNING
        ts.started = started
        self._rec.append(trow(ts.id, ts.run_id, RUNNING, ts.attempt, started, handle=ts.desc))
        timeout = ts.task.options.timeout
        if arm and timeout:
            caps = self.caps.get(ts.executor)
            if caps is None or caps.reports_start:
                self._out.append(ArmTimer(self._sid, ts.id, ts.attempt, "timeout", started + timeout))

    def _queued_late(self, ts: TaskState) -> None:
        """A speculative call started (or finished): it is QUEUED now."""
        self._log(ts, QUEUED)
        ts.state = QUEUED
        self._rec.append(trow(ts.id, ts.run_id, QUEUED, ts.attempt, self.now, executor=ts.executor))

    def _finished_attempt(self, ts: TaskState, out: Outcome, retryable: bool = True) -> None:
        if ts.state is QUEUED:
            self._to_running(ts, out.started or out.ended or self.now, arm=False)
        if ts.state is RUNNING:
            self._release(ts)
        if out.ok:
            self._succeed(ts, out)
        else:
            self._fail(ts, out, retryable)

    def _release(self, ts: TaskState) -> None:
        """A submitted call stopped occupying its task's concurrency slot."""
        task = ts.task
        if task is None or task.options.max_concurrency is None or ts.state not in (QUEUED, RUNNING):
            return
        ident = task.identity
        self.running[ident] -= 1
        held = self.held.get(ident)
        while held:
            nxt = held.popleft()
            if not nxt.state.terminal:
                self.ready[nxt.executor].appendleft(nxt)
                break

    def _succeed(self, ts: TaskState, out: Outcome) -> None:
        task = ts.task
        value = out.value
        late = ts.key is None and ts.arguments is not None  # ran speculatively: keys from the known inputs now
        if late:
            try:
                args = task.validator.validate(resolve_values(ts.arguments, self.tasks))
                ts.key, ts.ikey = compute_keys(task, args, ts.image)
            except GflowError:
                ts.key = None
        ref, inline = out.result_ref, None
        if ref is None:
            try:
                enc = encode(value, allow_pickle=task.options.pickle, where=f"result of task '{task.name}'")
            except (SerializationError, RecursionError) as e:
                self._fail(ts, Outcome.from_exception(e, "", out.started, self.now), retryable=False)
                return
            self._blobs.update(enc.blobs)
            ref = enc.digest
            if len(enc.data) <= INLINE_MAX:
                inline = enc.data.decode()
            else:
                self._blobs[ref] = enc.data
        ts.value = value
        ts.result_ref = ref
        ts.result_inline = inline
        objs = None if type(value) in SCALARS else object_ids(value) or None
        self._rec.append(trow(ts.id, ts.run_id, SUCCEEDED, ts.attempt, out.ended or self.now,
                              key=ts.key if late else None, result_ref=ref, result_inline=inline, objects=objs,
                              info=out.info, ikey=ts.ikey if late else None))
        if task.options.cache and ts.key is not None:
            self.cache_mem[ts.key] = CacheHit(value, ref, inline, "this run")
        self._finish(ts, SUCCEEDED)

    def _fail(self, ts: TaskState, out: Outcome, retryable: bool = True) -> None:
        task = ts.task
        policy = task.options.retries
        etype = type(out.exc) if out.exc is not None else None
        error = f"{out.error_type}: {out.error_message}"
        if out.error_type and out.error_type.endswith(("InvalidArguments", "SerializationError")):
            retryable = False
        if retryable and policy.should_retry(ts.attempt, etype):
            self._log(ts, RETRYING)
            ts.state = RETRYING
            self._rec.append(trow(ts.id, ts.run_id, RETRYING, ts.attempt, self.now, error=error,
                                        traceback=out.traceback, info=out.info))
            delay = policy.delay(ts.attempt)
            ts.attempt += 1
            ts.handle = None
            ts.started = None
            ts.speculative = False
            if delay <= 0:
                self._enqueue(ts)
            else:
                self._out.append(ArmTimer(self._sid, ts.id, ts.attempt, "retry", self.now + delay))
            return
        err = TaskFailed(task.name, task_run_id=ts.id, run_id=ts.run_id, error_type=out.error_type or "Error",
                         error_message=out.error_message or "", traceback=out.traceback or "", attempts=ts.attempt)
        err.__cause__ = out.exc
        ts.error = err
        self._rec.append(trow(ts.id, ts.run_id, FAILED, ts.attempt, self.now, error=error,
                                    traceback=out.traceback, info=out.info))
        self.runs[ts.run_id].failures.append(ts)
        self._finish(ts, FAILED)

    # -- speculation -------------------------------------------------------------------------------------------------

    def _release_twins(self, first: TaskState, st: State) -> None:
        """``first`` ended: the calls waiting for its result take it (or, if it failed, run themselves)."""
        if first.key is not None and self.inflight.get(first.key) is first:
            del self.inflight[first.key]
        twins, first.twins = first.twins, None
        for t in twins or ():
            if t.state.terminal:
                continue
            t.looking = False
            if st is SUCCEEDED or st is CACHED:
                self._cached(t, CacheHit(first.value, first.result_ref, first.result_inline, first.id))
            else:
                self._ready(t)
