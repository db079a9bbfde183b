"""The scheduling core: the state machine of a flow run. No I/O, no threads, no clock.

``Core.handle(event, now)`` is the only way task-run state changes in the driver; it returns the
instructions the engine must carry out (see ``gflow.flows._events``). The core decides dependencies,
readiness, per-task concurrency limits, cache and resume reuse, retries and backoff, timeouts, map
expansion (also over a future of a list), speculative dispatch, subflows, cancellation and when a run
ends and how. Time is passed in, so tests drive all of it with a fake clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

from gflow.errors import (
    Cancelled,
    FlowFailed,
    GflowError,
    InvalidTransition,
    SerializationError,
    TaskFailed,
    TaskTimeout,
    UpstreamFailed,
)
from gflow.executors.base import UPSTREAM_PENDING, Call, Capabilities, Outcome
from gflow.flows._events import (
    CALL,
    MAP,
    SUBFLOW,
    ArmTimer,
    BodyReturned,
    CacheHit,
    CacheLookedUp,
    CallsAdded,
    CancelCalls,
    CancelRequested,
    Dispatch,
    Event,
    ExecutorAdded,
    Finished,
    Instruction,
    LookUp,
    Record,
    RecordRun,
    Resolve,
    RunFinished,
    RunStarted,
    Started,
    Submit,
    SubmitFailed,
    Submitted,
    TaskState,
    TimerFired,
)
from gflow.flows._keys import compute_keys
from gflow.flows._values import object_ids, resolve_values
from gflow.serialization import encode
from gflow.states import State
from gflow.store.base import TaskRunRecord, Transition

PENDING, QUEUED, RUNNING, RETRYING = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CANCELLED, CACHED = State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED
INLINE_MAX = 16 * 1024


class RunState:
    """A run (flow or subflow) as the core sees it."""

    __slots__ = ("id", "parent", "active", "body_done", "value", "error", "traceback", "failures", "cancelled",
                 "external_cancel", "children", "finished", "reused_changed", "flow_name", "fail_with")

    def __init__(self, run_id: str, parent: str | None, flow_name: str = "flow"):
        self.id = run_id
        self.parent = parent  # the subflow's task state id in the parent run
        self.active = 0
        self.body_done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback = ""
        self.failures: list[TaskState] = []
        self.cancelled: str | None = None
        self.external_cancel = False
        self.children: list[str] = []
        self.finished = False
        self.reused_changed: list[str] = []
        self.flow_name = flow_name
        #: stopped by a fault (the artifact store is full): the run ends FAILED with this error
        self.fail_with: BaseException | None = None


class Core:
    """The state machine. ``resume``: finished calls of the resumed run by input key (reused whatever
    their code version unless ``rerun_changed``); ``use_cache``: False reads no cached results (replay)."""

    def __init__(self, *, resume: dict[str, TaskRunRecord] | None = None, rerun_changed: bool = False,
                 use_cache: bool = True, story_size: int = 50_000):
        self.tasks: dict[str, TaskState] = {}
        self.runs: dict[str, RunState] = {}
        self.caps: dict[str, Capabilities] = {}
        self.ready: dict[str, deque[TaskState]] = {}
        self.held: dict[str, deque[TaskState]] = {}
        self.running: dict[str, int] = {}
        self.cache_mem: dict[str, CacheHit] = {}
        #: cacheable calls in flight by key: a second call with the same key waits for the first
        self.inflight: dict[str, TaskState] = {}
        self.resume = resume or {}
        self.rerun_changed = rerun_changed
        self.use_cache = use_cache
        self.story_log: deque[tuple[str, State, State, str, float]] = deque(maxlen=story_size)
        self.now = 0.0
        self._sid = ""
        self._out: list[Instruction] = []
        self._rec: list[Transition] = []
        self._blobs: dict[str, bytes] = {}
        self._resolved: list[TaskState] = []

    # -- the one entry point ---------------------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Instruction]:
        """Apply ``event`` at time ``now``; return the instructions it causes (in order)."""
        return self.handle_many((event,), now)

    def handle_many(self, events: Iterable[Event], now: float) -> list[Instruction]:
        """Apply several events in order; their transitions are recorded by one ``Record``."""
        self.now = now
        out = self._out = []
        for ev in events:
            self._sid = ev.stimulus_id
            _HANDLERS[type(ev)](self, ev)
        self._flush()
        self._out = []
        return out

    def _flush(self) -> None:
        self._flush_records()
        if self._resolved:
            self._out.append(Resolve(self._sid, self._resolved))
            self._resolved = []

    def _flush_records(self) -> None:
        if self._rec or self._blobs:
            self._out.append(Record(self._sid, self._rec, self._blobs))
            self._rec = []
            self._blobs = {}

    def _record_run(self, ins: RecordRun) -> None:
        """Run records go in order with task transitions: everything recorded so far is written first."""
        self._flush_records()
        self._out.append(ins)

    # -- queries -------------------------------------------------------------------------------------------------
    def has_ready(self, executor: str) -> bool:
        q = self.ready.get(executor)
        return bool(q)

    def ready_executors(self) -> list[str]:
        return [name for name, q in self.ready.items() if q]

    def idle(self, run_id: str | None = None) -> bool:
        if run_id is None:
            return all(r.active == 0 for r in self.runs.values())
        run = self.runs.get(run_id)
        return run is None or run.active == 0

    def story(self, task_id: str) -> list[tuple[str, State, State, str, float]]:
        """The recorded transitions of one task state: (id, from, to, stimulus id, time)."""
        return [s for s in self.story_log if s[0] == task_id]

    def error_of(self, ts: TaskState) -> BaseException:
        """What ``future.result()`` raises for a failed or cancelled call."""
        err = ts.error
        if isinstance(err, BaseException):
            return err
        if isinstance(err, TaskState):  # upstream failure: name the root cause
            root = err
            while isinstance(root.error, TaskState):
                root = root.error
            cause = root.error if isinstance(root.error, BaseException) else None
            if ts.state is CANCELLED:
                return Cancelled(f"task '{ts.name}' ({ts.id}) was cancelled")
            e = UpstreamFailed(ts.name, task_run_id=ts.id, run_id=ts.run_id, error_type="UpstreamFailed",
                               error_message=f"upstream task '{root.name}' ({root.id}) failed",
                               traceback=getattr(cause, "traceback", ""), attempts=0)
            e.__cause__ = cause
            return e
        return Cancelled(f"task '{ts.name}' ({ts.id}) was cancelled")

    def validate_state(self) -> None:
        """Check the core's invariants (tests call this after each step)."""
        active: dict[str, int] = {}
        for ts in self.tasks.values():
            if not ts.state.terminal:
                active[ts.run_id] = active.get(ts.run_id, 0) + 1
                if ts.kind != SUBFLOW and not isinstance(ts.deps, list):
                    raise AssertionError(f"{ts!r}: deps not linked")
                waiting = sum(1 for d in ts.deps if isinstance(d, TaskState) and not d.state.terminal)
                if ts.waiting != waiting and ts.state is PENDING and not ts.looking:
                    raise AssertionError(f"{ts!r}: waiting={ts.waiting} but {waiting} deps unfinished")
        for run in self.runs.values():
            if run.active != active.get(run.id, 0):
                raise AssertionError(f"run {run.id}: active={run.active}, counted {active.get(run.id, 0)}")
        for name, q in self.ready.items():
            for ts in q:
                if ts.state not in (PENDING, RETRYING) or ts.executor != name:
                    raise AssertionError(f"{ts!r} in ready queue of {name!r}")

    # -- events ----------------------------------------------------------------------------------------------------
    def _executor_added(self, ev: ExecutorAdded) -> None:
        self.caps[ev.name] = ev.capabilities
        self.ready.setdefault(ev.name, deque())

    def _run_started(self, ev: RunStarted) -> None:
        rec = ev.run
        assert rec is not None
        run = self.runs[rec.id] = RunState(rec.id, ev.parent, rec.flow)
        if ev.parent is not None:
            parent = self.tasks[ev.parent]
            self.runs[parent.run_id].children.append(rec.id)
            if self.runs[parent.run_id].cancelled is not None:
                run.cancelled = self.runs[parent.run_id].cancelled
        if ev.create:
            self._record_run(RecordRun(self._sid, rec.id, create=rec))
            self._record_run(RecordRun(self._sid, rec.id, RUNNING, self.now))

    def _calls_added(self, ev: CallsAdded) -> None:
        tasks = self.tasks
        rec = self._rec.append
        now = self.now
        for ts in ev.tasks:
            tasks[ts.id] = ts
            run = self.runs[ts.run_id]
            run.active += 1
            if ts.kind != SUBFLOW:
                rec(Transition(ts.id, ts.run_id, PENDING, 1, now, task=ts.task.identity, name=ts.task.name,
                               key=ts.key, upstream=list(ts.deps) if ts.deps else None, map_index=ts.index,
                               cacheable=1 if ts.task.options.cache else 0, ikey=ts.ikey))
            deps = [tasks[d] for d in ts.deps]
            ts.deps = deps
            waiting = 0
            bad = None
            for dep in deps:
                st = dep.state
                if st is SUCCEEDED or st is CACHED:
                    continue
                if st is FAILED or st is CANCELLED:
                    bad = dep
                    break
                waiting += 1
                if dep.dependents is None:
                    dep.dependents = [ts]
                else:
                    dep.dependents.append(ts)
            if bad is not None:
                ts.error = bad
                st = CANCELLED if bad.state is CANCELLED else FAILED
                self._record_not_run(ts, st)
                self._finish(ts, st)
                continue
            if run.cancelled is not None:
                ts.error = Cancelled(f"{run.cancelled}: task run {ts.id}")
                self._record_not_run(ts, CANCELLED)
                self._finish(ts, CANCELLED)
                continue
            ts.waiting = waiting
            if waiting == 0:
                self._ready(ts)

    def _dispatch(self, ev: Dispatch) -> None:
        q = self.ready.get(ev.executor)
        if not q:
            return
        caps = self.caps[ev.executor]
        cap = ev.capacity
        calls: list[Call] = []
        running = self.running
        held = self.held
        rec = self._rec.append
        now = self.now
        while q and len(calls) < cap:
            ts = q.popleft()
            if ts.state is not PENDING and ts.state is not RETRYING:
                continue  # cancelled while it waited here
            limit = ts.task.options.max_concurrency
            if limit is not None:
                ident = ts.task.identity
                n = running.get(ident, 0)
                if n >= limit:
                    held.setdefault(ident, deque()).append(ts)
                    continue
                running[ident] = n + 1
            self._log(ts, QUEUED)
            ts.state = QUEUED
            args = ts.arguments
            objs = object_ids(args) if ts.attempt == 1 and not _all_scalars(args) else None
            rec(Transition(ts.id, ts.run_id, QUEUED, ts.attempt, now, key=ts.key, objects=objs or None,
                           executor=ts.executor))
            call_args, call_kwargs = ts.task.validator.call_args(args)
            calls.append(Call(ts.id, ts.run_id, ts.task, call_args, call_kwargs, ts.attempt, ts.key, ts.index))
            timeout = ts.task.options.timeout
            if timeout and not caps.reports_start:
                self._out.append(ArmTimer(self._sid, ts.id, ts.attempt, "timeout", now + timeout))
        if calls:
            self._out.append(Submit(self._sid, ev.executor, calls))

    def _submitted(self, ev: Submitted) -> None:
        tasks = self.tasks
        stale: list[Any] = []
        fresh: list[TaskState] = []
        descs = ev.descriptions
        for i, (call, handle) in enumerate(zip(ev.calls, ev.handles)):
            ts = tasks.get(call.id)
            if ts is None or ts.attempt != call.attempt or ts.state.terminal:
                stale.append(handle)  # cancelled while the batch was being handed over
                continue
            if ts.state is RETRYING:
                continue  # this attempt already failed (its outcome came inside submit)
            ts.handle = handle
            if descs is not None:
                ts.desc = descs[i]
            fresh.append(ts)
        if stale:
            self._out.append(CancelCalls(self._sid, ev.executor, stale))
        caps = self.caps.get(ev.executor)
        if caps is not None and caps.accepts_refs and not self.resume and fresh and ev.capacity > 0:
            self._speculate(ev.executor, fresh, ev.capacity)

    def _submit_failed(self, ev: SubmitFailed) -> None:
        err = ev.error if ev.error is not None else GflowError("the executor refused the batch")
        for call in ev.calls:
            ts = self.tasks.get(call.id)
            if ts is None or ts.attempt != call.attempt or ts.state.terminal:
                continue
            out = Outcome.from_exception(err, ev.traceback, None, self.now)
            if ts.state is PENDING:  # a speculative call: take the ordinary path
                self._unspeculate(ts)
                continue
            self._finished_attempt(ts, out)

    def _started(self, ev: Started) -> None:
        ts = self.tasks.get(ev.id)
        if ts is None or ts.attempt != ev.attempt:
            return
        if ev.description is not None:
            ts.desc = ev.description
        if ts.state is PENDING and ts.speculative and ts.handle is not None:
            self._queued_late(ts)
        if ts.state is QUEUED:
            self._to_running(ts, ev.ts)

    def _finished(self, ev: Finished) -> None:
        ts = self.tasks.get(ev.id)
        out = ev.outcome
        if ts is None or out is None or ts.attempt != ev.attempt or ts.state.terminal or ts.state is RETRYING:
            return  # stale: a timed-out or cancelled attempt finishing late
        if ts.speculative:
            if ts.handle is None:
                return  # a speculative attempt already given up
            if not out.ok and out.error_type == UPSTREAM_PENDING:
                self._unspeculate(ts)
                return
            if ts.waiting > 0:  # its inputs' own outcomes have not arrived yet
                ts.stash = out
                return
            if ts.state is PENDING:
                self._queued_late(ts)
        elif ts.state is PENDING:
            return
        self._finished_attempt(ts, out)

    def _cache_looked_up(self, ev: CacheLookedUp) -> None:
        for tid, hit in ev.hits.items():
            ts = self.tasks.get(tid)
            if ts is None or not ts.looking:
                continue
            ts.looking = False
            if ts.state.terminal:
                continue
            if hit is None:
                self._enqueue(ts)
                continue
            self._cached(ts, hit)

    def _timer_fired(self, ev: TimerFired) -> None:
        ts = self.tasks.get(ev.id)
        if ts is None or ts.attempt != ev.attempt or ts.state.terminal:
            return
        if ev.timer == "retry" and ts.state is RETRYING:
            self._enqueue(ts)
        elif ev.timer == "timeout" and ts.state in (QUEUED, RUNNING):
            if ts.handle is not None:
                self._out.append(CancelCalls(self._sid, ts.executor, [ts.handle]))
            opts = ts.task.options
            e = TaskTimeout(f"task '{ts.name}' exceeded its timeout of {opts.timeout:g}s (attempt {ts.attempt})")
            self._finished_attempt(ts, Outcome.from_exception(e, "", ts.started, self.now))

    def _cancel_requested(self, ev: CancelRequested) -> None:
        runs = [r for r in self.runs.values() if ev.run_id is None or r.id == ev.run_id]
        todo = list(runs)
        while todo:  # a cancelled run takes its subflow runs with it
            r = todo.pop()
            for c in r.children:
                child = self.runs.get(c)
                if child is not None and child not in runs:
                    runs.append(child)
                    todo.append(child)
        ids = {r.id for r in runs}
        for r in runs:
            if r.cancelled is None:
                r.cancelled = ev.reason
                r.external_cancel = ev.external and (ev.run_id is None or r.id == ev.run_id)
                r.fail_with = ev.error
        victims = [ts for ts in self.tasks.values() if ts.run_id in ids and not ts.state.terminal]
        by_executor: dict[str, list[Any]] = {}
        for ts in victims:
            if ts.handle is not None and ts.state in (QUEUED, RUNNING, PENDING):
                by_executor.setdefault(ts.executor, []).append(ts.handle)
        for name, handles in by_executor.items():
            self._out.append(CancelCalls(self._sid, name, handles))
        for ts in victims:
            if ts.state.terminal:
                continue
            if ts.state in (QUEUED, RUNNING):
                self._release(ts)
            ts.error = Cancelled(f"{ev.reason}: task run {ts.id}")
            self._record_not_run(ts, CANCELLED)
            self._finish(ts, CANCELLED)

    def _body_returned(self, ev: BodyReturned) -> None:
        run = self.runs[ev.run_id]
        run.body_done = True
        run.value = ev.value
        run.error = ev.error
        run.traceback = ev.traceback
        self._maybe_finish_run(run)

    # -- readiness -------------------------------------------------------------------------------------------------
    def _ready(self, ts: TaskState) -> None:
        """All of a call's inputs are known: fan out a map, or check cache and resume, or queue it."""
        kind = ts.kind
        if kind == SUBFLOW:
            return  # finished when its child run finishes
        if kind == MAP:
            self._expand(ts)
            return
        if ts.speculative:
            if ts.stash is not None:  # ran speculatively and finished before its inputs' outcomes came
                out, ts.stash = ts.stash, None
                if ts.state is PENDING:
                    self._queued_late(ts)
                self._finished_attempt(ts, out)
            return
        if ts.state is not PENDING and ts.state is not RETRYING:
            return
        task = ts.task
        if ts.key is None:
            try:
                args = resolve_values(ts.arguments, self.tasks)
                args = task.validator.validate(args)
                ts.key, ts.ikey = compute_keys(task, args, ts.image)
            except (GflowError, TypeError, ValueError, RecursionError) as e:
                import traceback as tb_mod

                self._finished_attempt(ts, Outcome.from_exception(e, tb_mod.format_exc(), None, self.now),
                                       retryable=False)
                return
            ts.arguments = args
        if self.resume and ts.ikey is not None:
            rec = self.resume.get(ts.ikey)
            if rec is not None and not (self.rerun_changed and rec.key != ts.key):
                ts.looking = True
                self._out.append(LookUp(self._sid, [(ts.id, ts.key or "", rec)]))
                return
        if task.options.cache and self.use_cache and ts.key is not None:
            hit = self.cache_mem.get(ts.key)
            if hit is not None:
                self._cached(ts, hit)
                return
            first = self.inflight.get(ts.key)
            if first is not None and first is not ts and not first.state.terminal:
                ts.looking = True  # the same call is in flight: take its result when it has one
                if first.twins is None:
                    first.twins = [ts]
                else:
                    first.twins.append(ts)
                return
            self.inflight[ts.key] = ts
            ts.looking = True
            self._out.append(LookUp(self._sid, [(ts.id, ts.key, None)]))
            return
        self._enqueue(ts)

    def _enqueue(self, ts: TaskState) -> None:
        q = self.ready.get(ts.executor)
        if q is None:
            q = self.ready[ts.executor] = deque()
        q.append(ts)

    def _cached(self, ts: TaskState, hit: CacheHit) -> None:
        ts.value = hit.value
        ts.result_ref = hit.result_ref
        ts.result_inline = hit.result_inline
        if hit.version_changed:
            run = self.runs[ts.run_id]
            if ts.name not in run.reused_changed:
                run.reused_changed.append(ts.name)
        self._rec.append(Transition(ts.id, ts.run_id, CACHED, ts.attempt, self.now, key=ts.key,
                                    result_ref=hit.result_ref, result_inline=hit.result_inline,
                                    objects=object_ids(hit.value) or None, message=f"from {hit.source}"))
        if ts.task.options.cache and ts.key is not None and ts.key not in self.cache_mem:
            self.cache_mem[ts.key] = hit
        self._finish(ts, CACHED)

    def _expand(self, ts: TaskState) -> None:
        """A map over futures: fan out once they resolved, then gather the results into a list."""
        if ts.state is PENDING:  # phase 1: the iterables are known now
            task, iterables, common, new_child = ts.expand
            try:
                values = [resolve_values(it, self.tasks) for it in iterables]
                rows = list(zip(*values, strict=True)) if len(values) > 1 else [(x,) for x in values[0]]
                children = [new_child(task, row, common, i) for i, row in enumerate(rows)]
            except Exception as e:  # not iterable, mismatched lengths, invalid arguments
                import traceback as tb_mod

                self._finished_attempt(ts, Outcome.from_exception(e, tb_mod.format_exc(), None, self.now),
                                       retryable=False)
                return
            self._log(ts, RUNNING)
            ts.state = RUNNING
            self._rec.append(Transition(ts.id, ts.run_id, RUNNING, 1, self.now,
                                        message=f"fan-out of {len(children)} calls of '{task.name}'"))
            ts.arguments = children
            self._calls_added(CallsAdded(self._sid, children))
            ts.deps = children
            waiting = 0
            for c in children:
                st = c.state
                if st is SUCCEEDED or st is CACHED:
                    continue
                if st is FAILED or st is CANCELLED:
                    ts.error = c
                    st = CANCELLED if st is CANCELLED else FAILED
                    self._record_not_run(ts, st)
                    self._finish(ts, st)
                    return
                waiting += 1
                if c.dependents is None:
                    c.dependents = [ts]
                else:
                    c.dependents.append(ts)
            ts.waiting = waiting
            if waiting:
                return
        ts.value = [c.value for c in ts.arguments]  # phase 2: every call finished
        self._rec.append(Transition(ts.id, ts.run_id, SUCCEEDED, 1, self.now))
        ts.arguments = None
        self._finish(ts, SUCCEEDED)

    # -- attempts ----------------------------------------------------------------------------------------------------
    def _to_running(self, ts: TaskState, started: float, arm: bool = True) -> None:
        self._log(ts, RUNNING)
        ts.state = RUNNING
        ts.started = started
        self._rec.append(Transition(ts.id, ts.run_id, RUNNING, ts.attempt, started, handle=ts.desc))
        timeout = ts.task.options.timeout
        if arm and timeout:
            caps = self.caps.get(ts.executor)
            if caps is None or caps.reports_start:
                self._out.append(ArmTimer(self._sid, ts.id, ts.attempt, "timeout", started + timeout))

    def _queued_late(self, ts: TaskState) -> None:
        """A speculative call started (or finished): it is QUEUED now."""
        self._log(ts, QUEUED)
        ts.state = QUEUED
        self._rec.append(Transition(ts.id, ts.run_id, QUEUED, ts.attempt, self.now, executor=ts.executor))

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
        if ts.key is None and ts.arguments is not None:  # ran speculatively: key from the known inputs now
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
        objs = None if type(value) in _SCALARS else object_ids(value) or None
        self._rec.append(Transition(ts.id, ts.run_id, SUCCEEDED, ts.attempt, out.ended or self.now, key=ts.key,
                                    result_ref=ref, result_inline=inline, objects=objs, info=out.info, ikey=ts.ikey))
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
            self._rec.append(Transition(ts.id, ts.run_id, RETRYING, ts.attempt, self.now, error=error,
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
        self._rec.append(Transition(ts.id, ts.run_id, FAILED, ts.attempt, self.now, error=error,
                                    traceback=out.traceback, info=out.info))
        self.runs[ts.run_id].failures.append(ts)
        self._finish(ts, FAILED)

    # -- speculation -------------------------------------------------------------------------------------------------
    def _speculate(self, executor: str, submitted: list[TaskState], capacity: int) -> None:
        """Start dependents of just-submitted calls at once, with ``Ref``s to their inputs, on an executor
        that resolves them itself (Dask): a chain then runs at the backend's speed, not one driver round
        trip per link. Cached, concurrency-limited and timed calls, maps and subflows take the ordinary path."""
        calls: list[Call] = []
        seen: set[str] = set()
        for n in submitted:
            for d in n.dependents or ():
                if len(calls) >= capacity:
                    break
                if d.id in seen:
                    continue
                seen.add(d.id)
                call = self._speculative_call(executor, d)
                if call is not None:
                    calls.append(call)
        if calls:
            self._out.append(Submit(self._sid, executor, calls))

    def _speculative_call(self, executor: str, ts: TaskState) -> Call | None:
        task = ts.task
        if (ts.kind != CALL or ts.state is not PENDING or ts.speculative or ts.looking or ts.executor != executor
                or ts.arguments is None):
            return None
        opts = task.options
        if opts.cache or opts.max_concurrency is not None or opts.timeout is not None:
            return None
        refs: dict[str, Any] = {}
        for dep in ts.deps:
            st = dep.state
            if st is SUCCEEDED or st is CACHED:
                continue
            if dep.handle is not None and dep.kind == CALL and dep.executor == executor and (
                    st is QUEUED or st is RUNNING or (st is PENDING and dep.speculative)):
                refs[dep.id] = dep.handle
                continue
            return None
        try:
            args = resolve_values(ts.arguments, self.tasks, refs)
        except Exception:  # noqa: BLE001 - the ordinary path reports it
            return None
        ts.speculative = True
        call_args, call_kwargs = task.validator.call_args(args)
        return Call(ts.id, ts.run_id, task, call_args, call_kwargs, ts.attempt, None, ts.index, refs=refs)

    def _unspeculate(self, ts: TaskState) -> None:
        """A speculative attempt could not get its inputs: run it the ordinary way once they are known.
        If it had been seen starting, that attempt ends (RETRYING) and the next one waits for the inputs."""
        ts.handle = None
        ts.stash = None
        ts.speculative = False
        if ts.state in (QUEUED, RUNNING):
            self._log(ts, RETRYING)
            ts.state = RETRYING
            self._rec.append(Transition(ts.id, ts.run_id, RETRYING, ts.attempt, self.now,
                                        message="an input was not available; runs again once its inputs are known"))
            ts.attempt += 1
            ts.started = None
        if ts.waiting == 0:
            self._ready(ts)

    # -- endings ------------------------------------------------------------------------------------------------------
    def _record_not_run(self, ts: TaskState, st: State) -> None:
        """Record a call that ends without (further) running: upstream failed, or cancelled."""
        if ts.kind == SUBFLOW:
            return  # a run, not a task run: its own record says how it ended
        root = ts.error
        if isinstance(root, TaskState):
            msg = (f"Cancelled: upstream {root.id} was cancelled" if st is CANCELLED
                   else f"UpstreamFailed: upstream task run {root.id} failed")
        elif st is CANCELLED:
            msg = f"Cancelled: {root}" if root is not None else "Cancelled"
        else:
            msg = "UpstreamFailed"
        if ts.handle is not None and ts.speculative:  # its input will never come
            self._out.append(CancelCalls(self._sid, ts.executor, [ts.handle]))
        self._rec.append(Transition(ts.id, ts.run_id, st, ts.attempt, self.now, error=msg))

    def _finish(self, ts: TaskState, state: State) -> None:
        """``ts`` reached a terminal state (already recorded): resolve its future, release or fail its
        dependents (recording those that will never run), and end its run if that was the last call."""
        stack = [(ts, state)]
        runs = self.runs
        touched: list[RunState] = []
        while stack:
            n, st = stack.pop()
            if n.state.terminal:
                continue
            if n is not ts:
                self._record_not_run(n, st)
            self._log(n, st)
            n.state = st
            if n.twins is not None or (n.key is not None and self.inflight.get(n.key) is n):
                self._release_twins(n, st)
            if n.kind == CALL or st is not SUCCEEDED:
                n.arguments = None
            self._resolved.append(n)
            run = runs[n.run_id]
            run.active -= 1
            if run.active == 0:
                touched.append(run)
            deps = n.dependents
            n.dependents = None
            if not deps:
                continue
            if st is SUCCEEDED or st is CACHED:
                for d in deps:
                    d.waiting -= 1
                    if d.waiting == 0 and not d.state.terminal:
                        self._ready(d)
            else:
                follow = CANCELLED if st is CANCELLED else FAILED
                for d in deps:
                    if not d.state.terminal:
                        d.error = n
                        stack.append((d, follow))
        for run in touched:
            self._maybe_finish_run(run)

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

    def _maybe_finish_run(self, run: RunState) -> None:
        if run.finished or not run.body_done or run.active != 0:
            return
        run.finished = True
        state, value, error = self._outcome_of(run)
        ref = inline = None
        blobs: dict[str, bytes] = {}
        if state is SUCCEEDED:
            try:
                enc = encode(value, where=f"result of flow '{run.flow_name}'")
                ref = enc.digest
                if len(enc.data) <= 4 * INLINE_MAX:
                    inline = enc.data.decode()
                else:
                    blobs = {**enc.blobs, ref: enc.data}
                if inline is not None:
                    blobs = dict(enc.blobs)
            except (SerializationError, RecursionError):  # a flow may return anything; only canonical values are stored
                pass
        if not (run.external_cancel and state is CANCELLED):
            err_text = tb_text = None
            if error is not None:
                first = str(error).split("\n")[0]
                err_text = f"{type(error).__name__}: {first}"
                tb_text = getattr(error, "traceback", "") or run.traceback or _format_exc(error)
            self._record_run(RecordRun(self._sid, run.id, state, self.now, error=err_text, traceback=tb_text,
                                       result_ref=ref, result_inline=inline, blobs=blobs))
        self._out.append(RunFinished(self._sid, run.id, state, value, error, list(run.reused_changed)))
        if run.parent is not None:
            ts = self.tasks[run.parent]
            if ts.state.terminal:
                return
            if state is SUCCEEDED:
                ts.value = value
                self._finish(ts, SUCCEEDED)
                return
            if error is not None and not isinstance(error, (TaskFailed, Cancelled)):
                cause = error
                error = TaskFailed(f"subflow {run.flow_name}", task_run_id=ts.id, run_id=ts.run_id,
                                   error_type=type(cause).__name__, error_message=str(cause),
                                   traceback=run.traceback or _format_exc(cause))
                error.__cause__ = cause
            ts.error = error if error is not None else Cancelled(f"subflow run {run.id} was cancelled")
            if state is FAILED:
                self.runs[ts.run_id].failures.append(ts)
            self._finish(ts, CANCELLED if state is CANCELLED else FAILED)

    def _outcome_of(self, run: RunState) -> tuple[State, Any, BaseException | None]:
        failures = [self.error_of(t) for t in run.failures]
        error: BaseException | None = run.error
        value = None
        if error is None:
            try:
                value = resolve_values(run.value, self.tasks, on_error=self.error_of)
            except BaseException as e:  # noqa: BLE001 - a failed future in the returned value
                error = e
        if isinstance(error, UpstreamFailed) and failures:
            error = failures[0]  # name the task that failed, with its traceback, not a downstream victim
        if error is None and failures:
            error = failures[0]
        if run.fail_with is not None:
            return FAILED, None, run.fail_with
        if run.cancelled is not None:
            return CANCELLED, None, Cancelled(f"run {run.id} was cancelled: {run.cancelled}")
        if error is None:
            return SUCCEEDED, value, None
        if isinstance(error, TaskFailed) and len(failures) > 1 and error is failures[0]:
            error.args = (error.args[0] + f"\n\n({len(failures) - 1} more task(s) failed in run {run.id})",)
        if isinstance(error, FlowFailed):
            error.run_id = run.id
            error.failures = [f for f in failures if isinstance(f, TaskFailed)] or error.failures
        return (CANCELLED if isinstance(error, Cancelled) else FAILED), None, error

    def _log(self, ts: TaskState, new: State) -> None:
        old = ts.state
        if old.terminal:
            raise InvalidTransition(f"{ts!r}: {old} -> {new} after a terminal state; story: {self.story(ts.id)}")
        self.story_log.append((ts.id, old, new, self._sid, self.now))


_SCALARS = frozenset({int, float, str, bool, bytes, type(None)})


def _all_scalars(args: Any) -> bool:
    """True for bound arguments that are all plain scalars (no gflow objects to note for lineage)."""
    return type(args) is dict and all(type(v) in _SCALARS for v in args.values())


def _format_exc(e: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(e))


_HANDLERS: dict[type, Any] = {
    ExecutorAdded: Core._executor_added,
    RunStarted: Core._run_started,
    CallsAdded: Core._calls_added,
    Dispatch: Core._dispatch,
    Submitted: Core._submitted,
    SubmitFailed: Core._submit_failed,
    Started: Core._started,
    Finished: Core._finished,
    CacheLookedUp: Core._cache_looked_up,
    TimerFired: Core._timer_fired,
    CancelRequested: Core._cancel_requested,
    BodyReturned: Core._body_returned,
}
