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
    GflowError,
    InvalidTransition,
    TaskTimeout,
)
from gflow.executors.base import UPSTREAM_PENDING, Call, Capabilities, Outcome
from gflow.flows._attempts import Attempts
from gflow.flows._endings import RunEndings, RunState
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
    RunStarted,
    Started,
    Submit,
    SubmitFailed,
    Submitted,
    TaskState,
    TimerFired,
)
from gflow.flows._keys import compute_keys
from gflow.flows._speculation import Speculation
from gflow.flows._values import object_ids, resolve_values
from gflow.states import State
from gflow.store.base import Row, TaskRunRecord, trow

PENDING, QUEUED, RUNNING, RETRYING = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CANCELLED, CACHED = State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED


class Core(Attempts, RunEndings, Speculation):
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
        self._rec: list[Row] = []
        self._blobs: dict[str, bytes] = {}
        self._resolved: list[TaskState] = []

    def release(self) -> None:
        """Forget the calls (after the engine closed): their states, queues and cached results."""
        for d in (self.tasks, self.ready, self.held, self.inflight, self.cache_mem):
            d.clear()
        self.story_log.clear()
        self._resolved = []
        self._out = []

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

    def _calls_added(self, ev: CallsAdded) -> None:
        tasks = self.tasks
        rec = self._rec.append
        now = self.now
        for ts in ev.tasks:
            tasks[ts.id] = ts
            run = self.runs[ts.run_id]
            run.active += 1
            if ts.kind != SUBFLOW:
                rec(trow(ts.id, ts.run_id, PENDING, 1, now, task=ts.task.identity, name=ts.task.name,
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
            objs = object_ids(args) if ts.attempt == 1 else None
            # a call's keys are recorded with PENDING when known at the call, else with QUEUED (computed when its
            # inputs were known; again on a later attempt: a speculative first attempt ran without them)
            later = bool(ts.deps)
            rec(trow(ts.id, ts.run_id, QUEUED, ts.attempt, now, key=ts.key if later else None,
                     objects=objs or None, ikey=ts.ikey if later else None, executor=ts.executor))
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
        self._rec.append(trow(ts.id, ts.run_id, CACHED, ts.attempt, self.now, key=ts.key, ikey=ts.ikey,
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
            self._rec.append(trow(ts.id, ts.run_id, RUNNING, 1, self.now,
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
        self._rec.append(trow(ts.id, ts.run_id, SUCCEEDED, 1, self.now))
        ts.arguments = None
        self._finish(ts, SUCCEEDED)

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
        self._rec.append(trow(ts.id, ts.run_id, st, ts.attempt, self.now, error=msg))

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

    def _log(self, ts: TaskState, new: State) -> None:
        old = ts.state
        if old.terminal:
            raise InvalidTransition(f"{ts!r}: {old} -> {new} after a terminal state; story: {self.story(ts.id)}")
        self.story_log.append((ts.id, old, new, self._sid, self.now))




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
