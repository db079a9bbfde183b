"""The scheduling core: the state machine of a flow run. No I/O, no threads, no clock.

``Core.handle(event, now)`` is the only way task-run and run state change in the driver; it returns
the instructions the engine must carry out (``gflow.flows._events``). The core decides dependencies,
readiness, per-task concurrency limits, cache and resume reuse, retries and backoff, timeouts, map
expansion (also over a future of a list), speculative dispatch, subflows, cancellation, and when a run
ends and how. Time is passed in, so tests drive all of it with a fake clock; it reads no files (a
call's code version comes in on its ``TaskState``, computed when the flow body made the call).

**One transition function.** Every task-state change goes through ``Core._transition(ts, finish,
...)``: it checks ``(ts.state, finish)`` against :data:`TRANSITIONS`, appends the story line
``(task id, from, to, stimulus id, time)``, sets the state and builds the transition row the engine
hands to the recorder. Anything not in the table raises ``InvalidTransition`` with the call's story.
The table (start -> finish, and when it happens)::

    PENDING  -> QUEUED     dispatched to its executor (a speculative call: seen starting or finishing)
    PENDING  -> RUNNING    a map over a future fans out (the map's own state)
    PENDING  -> SUCCEEDED  a subflow placeholder: its child run succeeded
    PENDING  -> CACHED     a stored, in-run or twin result was taken (cache, resume)
    PENDING  -> FAILED     an upstream call failed; its arguments or map inputs were invalid; a subflow failed
    PENDING  -> CANCELLED  its run was cancelled, or an upstream call was
    QUEUED   -> RUNNING    the executor reported the start (or the outcome, which implies it)
    QUEUED   -> RETRYING   a speculative attempt lost its input: it runs again once the input is known
    QUEUED   -> FAILED     an upstream call failed under a speculative call
    QUEUED   -> CANCELLED  cancelled
    RUNNING  -> SUCCEEDED  the outcome was a value (a map: every element finished)
    RUNNING  -> FAILED     the outcome was an error, its retries spent (or a timeout); a map's element failed
    RUNNING  -> RETRYING   the outcome was an error and the retry policy allows another attempt
    RUNNING  -> CANCELLED  cancelled
    RETRYING -> QUEUED     the next attempt is dispatched (after the backoff timer, if any)
    RETRYING -> FAILED     an upstream call failed, or its keys cannot be computed, before the next attempt
    RETRYING -> CANCELLED  cancelled between attempts

Terminal states (SUCCEEDED, FAILED, CANCELLED, CACHED) have no way out; the store enforces the same
forward-only rule on what is recorded.

**How the work is split.** ``_core.py`` holds the ``Core``: its state, the entry point, the table, the
transition function, linking calls to their inputs (one ``_link`` for calls and map elements),
readiness, and the one place a call ends (``_finish``: resolve its future, release or end its
dependents, end its run when it was the last). Plain functions over the core hold the rest:
``_attempts.py`` (an attempt's start, success, failure, retry and backoff, concurrency slots, cacheable
twins), ``_speculation.py`` (dependents of submitted calls started at once with references to their
inputs) and ``_endings.py`` (runs: start, cancel, a body's return, and the one end-of-run path).

**The core alone decides how a run ends.** When a run's body returned and its last call ended, the
core asks the engine to ``Flush`` the recorder; the recorder reports back with ``Flushed`` (whether
results were lost in the artifact store or state writes were given up on, and which transitions it
held back for that reason). Only then does the core decide the run's terminal state (FAILED, and
resumable, if something is not stored), record the held-back calls FAILED, and emit the run's
``RecordRun`` and ``RunFinished``; the recorder writes what it is given. A failing artifact store,
learned by the recorder mid-run, comes in as ``ArtifactsLost``; a state store that refused writes for
too long, or a gflow error raised mid-run, as ``CancelRequested(error=...)``: every run stops and ends
FAILED with that error. Top-level runs and
subflows are created the same way, by ``RunStarted(create=True)`` (a top-level run with
``running=False``: it is RUNNING at ``BodyStarted``, once whoever watches it subscribed).
(``prepare_resume`` still records a *dead* driver's run FAILED before resuming it: that run has no
core left to decide.)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from gflow.errors import Cancelled, GflowError, InvalidTransition, TaskTimeout
from gflow.executors.base import UPSTREAM_PENDING, Call, Capabilities, Outcome
from gflow.flows import _attempts, _endings, _speculation
from gflow.flows._endings import RunState
from gflow.flows._events import (
    CALL,
    MAP,
    SUBFLOW,
    Adopt,
    Adopted,
    ArmTimer,
    ArtifactsLost,
    BodyReturned,
    BodyStarted,
    CacheHit,
    CacheLookedUp,
    CallsAdded,
    CancelCalls,
    CancelRequested,
    Dispatch,
    Event,
    ExecutorAdded,
    Finished,
    Flushed,
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
from gflow.flows._values import object_ids, resolve_values
from gflow.states import State
from gflow.store.base import Row, TaskRunRecord, trow
from gflow.tasks import Failed, group_for

PENDING, QUEUED, RUNNING, RETRYING = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CANCELLED, CACHED = State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED

#: the legal task-state moves, and when each happens (see the module docstring)
TRANSITIONS: dict[tuple[State, State], str] = {
    (PENDING, QUEUED): "dispatched to its executor (a speculative call: seen starting or finishing; a resumed "
                       "call: its dead driver's job adopted)",
    (PENDING, RUNNING): "a map over a future fans out",
    (PENDING, SUCCEEDED): "a subflow placeholder: its child run succeeded",
    (PENDING, CACHED): "a stored, in-run or twin result was taken (cache, resume)",
    (PENDING, FAILED): "an upstream call failed; invalid arguments or map inputs; a subflow failed",
    (PENDING, CANCELLED): "its run was cancelled, or an upstream call was",
    (QUEUED, RUNNING): "the executor reported the start (or the outcome)",
    (QUEUED, RETRYING): "a speculative attempt lost its input",
    (QUEUED, FAILED): "an upstream call failed under a speculative call",
    (QUEUED, CANCELLED): "cancelled",
    (RUNNING, SUCCEEDED): "the outcome was a value (a map: every element finished)",
    (RUNNING, FAILED): "the outcome was an error and no retry is left (or a timeout); a map's element failed",
    (RUNNING, RETRYING): "the outcome was an error and the retry policy allows another attempt",
    (RUNNING, CANCELLED): "cancelled",
    (RETRYING, QUEUED): "the next attempt is dispatched",
    (RETRYING, FAILED): "an upstream call failed, or its keys cannot be computed, before the next attempt",
    (RETRYING, CANCELLED): "cancelled between attempts",
}


class Core:
    """The state machine. ``resume``: finished calls of the resumed run by input key (reused whatever
    their code version unless ``rerun_changed``); ``adopt``: the resumed run's calls that were queued or running
    when its driver died, by input key (their jobs are followed, not submitted again, where the executor finds
    them: ``Adopt`` out, ``Adopted`` in); ``use_cache``: False reads no cached results (replay)."""

    def __init__(self, *, resume: dict[str, TaskRunRecord] | None = None, rerun_changed: bool = False,
                 use_cache: bool = True, story_size: int = 50_000, adopt: dict[str, TaskRunRecord] | None = None):
        self.tasks: dict[str, TaskState] = {}
        self.runs: dict[str, RunState] = {}
        self.caps: dict[str, Capabilities] = {}
        self.ready: dict[str, deque[TaskState]] = {}
        self.held: dict[str, deque[TaskState]] = {}
        self.running: dict[str, int] = {}
        self.cache_mem: dict[str, CacheHit] = {}
        #: (id(task), resources) -> (task, its copy with those resources): escalated retries share one copy
        self.variants: dict[tuple[int, Any], tuple[Any, Any]] = {}
        #: usage of the earlier attempts of calls that were retried, by task run id (gflow.flows._attempts)
        self.prior_usage: dict[str, dict[str, Any]] = {}
        #: cacheable calls in flight by key: a second call with the same key waits for the first
        self.inflight: dict[str, TaskState] = {}
        self.resume = resume or {}
        self.adopt = dict(adopt or {})
        self.rerun_changed = rerun_changed
        self.use_cache = use_cache
        self.story_log: deque[tuple[str, State, State, str, float]] = deque(maxlen=story_size)
        #: set by ``ArtifactsLost``: results could not be stored, so no run of this engine succeeds
        self.lost: BaseException | None = None
        self.now = 0.0
        #: the stimulus being handled, and what it caused so far (instructions, transition rows, blobs)
        self.sid = ""
        self.out: list[Instruction] = []
        self.rows: list[Row] = []
        self.blobs: dict[str, bytes] = {}
        self._resolved: list[TaskState] = []

    def release(self) -> None:
        """Forget the calls (after the engine closed): their states, queues and cached results."""
        for d in (self.tasks, self.ready, self.held, self.inflight, self.cache_mem, self.variants):
            d.clear()
        self.story_log.clear()
        self._resolved = []
        self.out = []

    # -- the one entry point ---------------------------------------------------------------------------------
    def handle(self, event: Event, now: float) -> list[Instruction]:
        """Apply ``event`` at time ``now``; return the instructions it causes (in order)."""
        return self.handle_many((event,), now)

    def handle_many(self, events: Iterable[Event], now: float) -> list[Instruction]:
        """Apply several events in order; their transitions are recorded by one ``Record``."""
        self.now = now
        out = self.out = []
        for ev in events:
            self.sid = ev.stimulus_id
            _HANDLERS[type(ev)](self, ev)
        self._flush()
        self.out = []
        return out

    def _flush(self) -> None:
        self.flush_records()
        if self._resolved:
            self.out.append(Resolve(self.sid, self._resolved))
            self._resolved = []

    def flush_records(self) -> None:
        """Emit the rows and blobs collected so far as one ``Record`` (before an instruction that must follow them)."""
        if self.rows or self.blobs:
            self.out.append(Record(self.sid, self.rows, self.blobs))
            self.rows = []
            self.blobs = {}

    def record_run(self, ins: RecordRun) -> None:
        """Run records go in order with task transitions: everything recorded so far is written first."""
        self.flush_records()
        self.out.append(ins)

    # -- the one transition function -------------------------------------------------------------------------------
    def _transition(self, ts: TaskState, finish: State, at: float | None = None, *, key: str | None = None,
                    ikey: str | None = None, error: str | None = None, traceback: str | None = None,
                    result_ref: str | None = None, result_inline: str | None = None, handle: str | None = None,
                    message: str | None = None, objects: list[str] | None = None, executor: str | None = None,
                    info: dict[str, Any] | None = None) -> None:
        """Move ``ts`` to ``finish``: check the move against :data:`TRANSITIONS`, write its story line, its state
        and its row (the keywords: the row's fields; ``at``: its time when not now). Subflow placeholders have no
        row (their run record says how they ended).

        Raises:
            InvalidTransition: for a move not in the table, with the call's story.
        """
        start = ts.state
        if (start, finish) not in TRANSITIONS:
            raise InvalidTransition(f"{ts!r}: {start} -> {finish} is not a legal move; story: {self.story(ts.id)}")
        now = self.now
        self.story_log.append((ts.id, start, finish, self.sid, now))
        ts.state = finish
        if ts.kind != SUBFLOW:
            # positionally, in trow's order (task, name, upstream, map_index, cacheable: written only at creation)
            self.rows.append(trow(ts.id, ts.run_id, finish, ts.attempt, now if at is None else at, None, None, key,
                                  None, None, error, traceback, result_ref, result_inline, handle, message, None,
                                  objects, ikey, executor, info))

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
        return _endings.error_of(ts)

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
        rows = self.rows
        now = self.now
        for ts in ev.tasks:
            tasks[ts.id] = ts
            run = self.runs[ts.run_id]
            run.active += 1
            if ts.kind != SUBFLOW:  # the call's first row (it is created PENDING: not a transition)
                rows.append(trow(ts.id, ts.run_id, PENDING, 1, now, task=ts.task.identity, name=ts.task.name,
                                 key=ts.key, upstream=list(ts.deps) if ts.deps else None, map_index=ts.index,
                                 cacheable=1 if ts.task.options.cache else 0, ikey=ts.ikey))
            if ts.deps and self._link(ts, [tasks[d] for d in ts.deps]):
                continue
            if run.cancelled is not None:
                ts.error = Cancelled(f"{run.cancelled}: task run {ts.id}")
                self._end(ts, CANCELLED)
                continue
            if ts.waiting == 0:
                self._ready(ts)

    def _link(self, ts: TaskState, deps: list[TaskState]) -> bool:
        """Make ``ts`` wait for its unfinished ``deps``. If one of them failed or was cancelled already, ``ts``
        ends the same way and this returns True."""
        ts.deps = deps
        waiting = 0
        for dep in deps:
            st = dep.state
            if st is SUCCEEDED or st is CACHED or (st is FAILED and type(dep.value) is Failed):
                continue
            if st is FAILED or st is CANCELLED:
                ts.error = dep
                self._end(ts, CANCELLED if st is CANCELLED else FAILED)
                return True
            waiting += 1
            if dep.dependents is None:
                dep.dependents = [ts]
            else:
                dep.dependents.append(ts)
        ts.waiting = waiting
        return False

    def _dispatch(self, ev: Dispatch) -> None:
        q = self.ready.get(ev.executor)
        if not q:
            return
        caps = self.caps[ev.executor]
        cap = ev.capacity
        calls: list[Call] = []
        running = self.running
        held = self.held
        out = self.out
        transition = self._transition
        while q and len(calls) < cap:
            ts = q.popleft()
            if ts.state is not PENDING and ts.state is not RETRYING:
                continue  # cancelled while it waited here
            group = ts.group
            limit = ts.task.options.max_concurrency if group is None or group.max_concurrency is None \
                else group.max_concurrency
            if limit is not None:
                ident = ts.task.identity if group is None or group.max_concurrency is None else group.key
                n = running.get(ident, 0)
                if n >= limit:
                    held.setdefault(ident, deque()).append(ts)
                    continue
                running[ident] = n + 1
            args = ts.arguments
            objs = object_ids(args) if ts.attempt == 1 else None
            # a call's keys are recorded with PENDING when known at the call, else with QUEUED (computed when its
            # inputs were known; again on a later attempt: a speculative first attempt ran without them)
            later = bool(ts.deps)
            transition(ts, QUEUED, key=ts.key if later else None, objects=objs or None,
                       ikey=ts.ikey if later else None, executor=ts.executor,
                       message=_attempts.asks(ts.task.options.resources))
            call_args, call_kwargs = ts.task.validator.call_args(args)
            calls.append(Call(ts.id, ts.run_id, ts.task, call_args, call_kwargs, ts.attempt, ts.key, ts.index))
            timeout = ts.task.options.timeout
            if timeout and not caps.reports_start:
                out.append(ArmTimer(self.sid, ts.id, ts.attempt, "timeout", self.now + timeout))
        if calls:
            out.append(Submit(self.sid, ev.executor, calls))

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
            self.out.append(CancelCalls(self.sid, ev.executor, stale))
        caps = self.caps.get(ev.executor)
        if caps is not None and caps.accepts_refs and not self.resume and fresh and ev.capacity > 0:
            _speculation.speculate(self, ev.executor, fresh, ev.capacity)

    def _adopted(self, ev: Adopted) -> None:
        """The executor found (a handle) or did not find (None) the dead driver's job of each call."""
        descs = ev.descriptions
        stale: list[Any] = []
        for i, (call, handle) in enumerate(zip(ev.calls, ev.handles)):
            ts = self.tasks.get(call.id)
            if ts is None or ts.state is not PENDING or not ts.looking or ts.attempt != call.attempt:
                if handle is not None:
                    stale.append(handle)  # cancelled meanwhile: stop following it
                continue
            ts.looking = False
            if handle is None:
                self._enqueue(ts)
                continue
            group, task = ts.group, ts.task
            if group is not None and group.max_concurrency is not None:
                self.running[group.key] = self.running.get(group.key, 0) + 1
            elif task.options.max_concurrency is not None:
                self.running[task.identity] = self.running.get(task.identity, 0) + 1
            later = bool(ts.deps)
            desc = descs[i] if descs is not None else None
            self._transition(ts, QUEUED, key=ts.key if later else None, ikey=ts.ikey if later else None,
                             executor=ts.executor, handle=desc,
                             message=f"adopted {desc or 'job'} of the dead driver's run")
            ts.handle = handle
            if desc is not None:
                ts.desc = desc
        if stale:
            self.out.append(CancelCalls(self.sid, ev.executor, stale))

    def _submit_failed(self, ev: SubmitFailed) -> None:
        err = ev.error if ev.error is not None else GflowError("the executor refused the batch")
        for call in ev.calls:
            ts = self.tasks.get(call.id)
            if ts is None or ts.attempt != call.attempt or ts.state.terminal:
                continue
            if ts.state is PENDING:  # a speculative call: take the ordinary path
                _speculation.unspeculate(self, ts)
                continue
            _attempts.finished_attempt(self, ts, Outcome.from_exception(err, ev.traceback, None, self.now))

    def _started(self, ev: Started) -> None:
        ts = self.tasks.get(ev.id)
        if ts is None or ts.attempt != ev.attempt:
            return
        if ev.description is not None:
            ts.desc = ev.description
        if ts.state is PENDING and ts.speculative and ts.handle is not None:
            _attempts.queued_late(self, ts)
        if ts.state is QUEUED:
            _attempts.to_running(self, ts, ev.ts)

    def _finished(self, ev: Finished) -> None:
        ts = self.tasks.get(ev.id)
        out = ev.outcome
        if ts is None or out is None or ts.attempt != ev.attempt or ts.state.terminal or ts.state is RETRYING:
            return  # stale: a timed-out or cancelled attempt finishing late
        if ts.speculative:
            if ts.handle is None:
                return  # a speculative attempt already given up
            if not out.ok and out.error_type == UPSTREAM_PENDING:
                _speculation.unspeculate(self, ts)
                return
            if ts.waiting > 0:  # its inputs' own outcomes have not arrived yet
                ts.stash = out
                return
            if ts.state is PENDING:
                _attempts.queued_late(self, ts)
        elif ts.state is PENDING:
            return
        _attempts.finished_attempt(self, ts, out)

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
                self.out.append(CancelCalls(self.sid, ts.executor, [ts.handle]))
            opts = ts.task.options
            e = TaskTimeout(f"task '{ts.name}' exceeded its timeout of {opts.timeout:g}s (attempt {ts.attempt})")
            _attempts.finished_attempt(self, ts, Outcome.from_exception(e, "", ts.started, self.now))

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
                    _attempts.queued_late(self, ts)
                _attempts.finished_attempt(self, ts, out)
            return
        if ts.state is not PENDING and ts.state is not RETRYING:
            return
        task = ts.task
        if ts.key is None:
            try:
                args = task.validator.validate(resolve_values(ts.arguments, self.tasks))
                ts.key, ts.ikey = compute_keys(task, args, ts.image, ts.version)
            except (GflowError, TypeError, ValueError, RecursionError) as e:
                self._invalid(ts, e)
                return
            ts.arguments = args
        if self.resume and ts.ikey is not None:
            rec = self.resume.get(ts.ikey)
            if rec is not None and not (self.rerun_changed and rec.key != ts.key):
                ts.looking = True
                self.out.append(LookUp(self.sid, [(ts.id, ts.key or "", rec)]))
                return
        if self.adopt and ts.ikey is not None and ts.state is PENDING and ts.attempt == 1:
            old = self.adopt.pop(ts.ikey, None)
            if old is not None and not (self.rerun_changed and old.key != ts.key):
                ts.looking = True
                call_args, call_kwargs = task.validator.call_args(ts.arguments)
                call = Call(ts.id, ts.run_id, task, call_args, call_kwargs, ts.attempt, ts.key, ts.index)
                self.out.append(Adopt(self.sid, ts.executor, [call], [old]))
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
            self.out.append(LookUp(self.sid, [(ts.id, ts.key, None)]))
            return
        self._enqueue(ts)

    def _invalid(self, ts: TaskState, e: BaseException) -> None:
        """A call that cannot run as made (its inputs do not fit, a map over something not iterable): it fails
        without a retry."""
        import traceback as tb_mod

        tb = "".join(tb_mod.format_exception(e))
        _attempts.finished_attempt(self, ts, Outcome.from_exception(e, tb, None, self.now), retryable=False)

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
        if ts.task.options.cache and ts.key is not None and ts.key not in self.cache_mem:
            self.cache_mem[ts.key] = hit
        self._transition(ts, CACHED, key=ts.key, ikey=ts.ikey, result_ref=hit.result_ref,
                         result_inline=hit.result_inline, objects=object_ids(hit.value) or None,
                         message=f"from {hit.source}")
        self._finish(ts)

    def _expand(self, ts: TaskState) -> None:
        """A map over futures: fan out once they resolved, then gather the results into a list."""
        if ts.state is PENDING:  # phase 1: the iterables are known now
            task, iterables, common, new_child, *more = ts.expand  # more: the map's options, when given
            options = more[0] if more else None
            new: Callable[..., TaskState] = new_child
            try:
                values = [resolve_values(it, self.tasks) for it in iterables]
                rows = list(zip(*values, strict=True)) if len(values) > 1 else [(x,) for x in values[0]]
                children = [new(task, row, common, i) for i, row in enumerate(rows)]
                # an element's inputs came from what the map waited on: record those edges (issue 22)
                ups = [d.id for d in ts.deps if d.kind != SUBFLOW]
                for c in children:
                    c.deps = list(dict.fromkeys([*ups, *c.deps])) if c.deps else ups
            except Exception as e:  # noqa: BLE001 - not iterable, mismatched lengths, invalid arguments
                self._invalid(ts, e)
                return
            group = group_for(task, len(children), options)
            if group is not None:
                for c in children:
                    c.group = group
            self._transition(ts, RUNNING, message=f"fan-out of {len(children)} calls of '{task.name}'")
            ts.arguments = children
            self._calls_added(CallsAdded(self.sid, children))
            if self._link(ts, children) or ts.waiting:
                return
        ts.value = [c.value for c in ts.arguments]  # phase 2: every call finished
        ts.arguments = None
        self._end(ts, SUCCEEDED)

    # -- endings ------------------------------------------------------------------------------------------------------
    def _end(self, ts: TaskState, state: State) -> None:
        """``ts`` ends in terminal ``state`` without an outcome of its own (FAILED or CANCELLED: it will not run, or
        not again; SUCCEEDED: a map gathered its elements, a subflow's run succeeded): the transition, then what
        follows from it (``_finish``)."""
        if state is FAILED or state is CANCELLED:
            self._transition(ts, state, error=self._not_run(ts, state))
        else:
            self._transition(ts, state)
        self._finish(ts)

    def _not_run(self, ts: TaskState, st: State) -> str:
        """The error recorded for a call that ends without (further) running: upstream failed, or cancelled."""
        root = ts.error
        if ts.handle is not None and ts.speculative:  # its input will never come
            self.out.append(CancelCalls(self.sid, ts.executor, [ts.handle]))
        if isinstance(root, TaskState):
            return (f"Cancelled: upstream {root.id} was cancelled" if st is CANCELLED
                    else f"UpstreamFailed: upstream task run {root.id} failed")
        if st is CANCELLED:
            return f"Cancelled: {root}" if root is not None else "Cancelled"
        return "UpstreamFailed"

    def _finish(self, ts: TaskState) -> None:
        """``ts`` reached a terminal state: resolve its future, release or end its dependents (those that will
        never run end FAILED or CANCELLED), and end its run if that was the last call."""
        stack = [ts]
        runs = self.runs
        inflight = self.inflight
        touched: list[RunState] = []
        while stack:
            n = stack.pop()
            st = n.state
            if n.twins is not None or (n.key is not None and inflight.get(n.key) is n):
                _attempts.release_twins(self, n, st)
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
            if st is SUCCEEDED or st is CACHED or (st is FAILED and type(n.value) is Failed):
                for d in deps:
                    d.waiting -= 1
                    if d.waiting == 0 and not d.state.terminal:
                        self._ready(d)
            else:
                follow = CANCELLED if st is CANCELLED else FAILED
                for d in deps:
                    if not d.state.terminal:
                        d.error = n
                        self._transition(d, follow, error=self._not_run(d, follow))
                        stack.append(d)
        for run in touched:
            _endings.maybe_finish_run(self, run)


_HANDLERS: dict[type, Callable[[Core, Any], None]] = {
    ExecutorAdded: Core._executor_added,
    RunStarted: _endings.run_started,
    CallsAdded: Core._calls_added,
    Dispatch: Core._dispatch,
    Submitted: Core._submitted,
    Adopted: Core._adopted,
    SubmitFailed: Core._submit_failed,
    Started: Core._started,
    Finished: Core._finished,
    CacheLookedUp: Core._cache_looked_up,
    TimerFired: Core._timer_fired,
    CancelRequested: _endings.cancel_requested,
    ArtifactsLost: _endings.artifacts_lost,
    BodyStarted: _endings.body_started,
    BodyReturned: _endings.body_returned,
    Flushed: _endings.flushed,
}
