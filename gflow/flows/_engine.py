"""The engine: a small loop that does the I/O the scheduling core asks for.

One engine thread owns the core. Flow bodies (any thread) and executors (through their listener) put
messages on its queue; the loop turns them into events, hands them to the core in batches, and carries
out the instructions that come back: submit batches to executors, cancel handles, hand transitions and
run records to the recorder, flush it (and report back), look stored results up, keep timers, resolve
futures and wake whoever waits. It decides nothing about state: what the recorder learns (a lost
artifact store, a flush done) comes back to the core as an event. Several executors can serve one run
(a task routed elsewhere than the flow's executor); each has its own batches, capacity and cancel.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
import traceback as tb_mod
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from gflow.errors import GflowError, StoreError
from gflow.executors import get_executor, settings_key
from gflow.executors.base import CallDone, CallEvent, CallStarted, Executor
from gflow.executors.events import CallPending
from gflow.flows._core import Core
from gflow.flows._events import (
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
    Flush,
    Flushed,
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
from gflow.flows._future import Future
from gflow.flows._recorder import Recorder
from gflow.flows.pending import note_pending, pending_row
from gflow.serialization import decode
from gflow.states import State
from gflow.store import RunRecord, Store, TaskRunRecord
from gflow.tasks import Failed

log = logging.getLogger("gflow.engine")
_STOP = object()
_BATCH = 5000


class Engine:
    """Runs the calls of one top-level flow run and its subflows. A context manager: ``close`` stops the
    loop, flushes the recorder and closes the executors it opened.

    Args:
        executor: The flow's executor (a spec such as ``"local"`` or an :class:`Executor`).
        routes: Executors for some tasks: ``{task name or module:qualname or "@gpu": spec}``.
        backends: Settings per executor backend (a profile's ``aws_batch``, ``volcano``, ... tables).
        resume: Finished calls of a resumed run, by input key.
        adopt: Calls of a resumed run that were queued or running when its driver died, by input key: their
            jobs are followed where the executor finds them (``Executor.reattach``).
        rerun_changed: With ``resume``: recompute calls whose task code changed since.
        use_cache: False: take no result from the cache (a replay runs every call again).
    """

    def __init__(self, store: Store, artifacts: Any, *, executor: str | Executor = "local",
                 routes: dict[str, str] | None = None, resume: dict[str, TaskRunRecord] | None = None,
                 rerun_changed: bool = False, backends: dict[str, dict[str, Any]] | None = None,
                 use_cache: bool = True, adopt: dict[str, TaskRunRecord] | None = None):
        self.store = store
        self.artifacts = artifacts
        self.core = Core(resume=resume, rerun_changed=rerun_changed, use_cache=use_cache, adopt=adopt)
        self.recorder = Recorder(store, artifacts,
                                 on_lost=lambda e: self.q.put(ArtifactsLost("artifact-store-failed", e)),
                                 on_state_error=lambda: self.q.put(("state-failed",)))
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.executors: dict[str, Executor] = {}
        self._owned: list[Executor] = []
        self._open_lock = threading.Lock()
        self.routes = dict(routes or {})
        self._routed: dict[int, tuple[Any, str]] = {}
        self._images: dict[tuple[str, int], tuple[Any, str | None]] = {}
        self.backends = dict(backends or {})
        self.futures: dict[str, Future] = {}
        self.finished: dict[str, RunFinished] = {}
        #: top-level runs whose record was written (None) or could not be (the error)
        self._created: dict[str, BaseException | None] = {}
        self._cond = threading.Condition()
        self._waiters = 0
        #: future ids someone waits on (their counts); only their resolution wakes the waiters
        self._watched: dict[str, int] = {}
        self._notify = False
        self._timers: list[tuple[float, int, str, int, str]] = []
        self._seq = itertools.count()
        self._last_starts = 0.0
        self._start_pollers: list[str] = []
        #: the run whose record the engine watches for a cancel from outside (gflow runs cancel, the server)
        self.watch: str | None = None
        self.watch_interval = 1.0
        self.cancelled_by: str | None = None
        self._last_watch = time.monotonic()
        self._crashed: BaseException | None = None
        self._closed = False
        #: pending reasons heard in this loop step (``CallPending``): written beside the run, no state change
        self._waiting: list[CallPending] = []
        self._thread = threading.Thread(target=self._loop, name="gflow-engine", daemon=True)
        self.default = self.open_executor(executor)
        self._thread.start()

    # -- executors ----------------------------------------------------------------------------------------
    def open_executor(self, spec: str | Executor) -> str:
        """The name of the executor for ``spec``, opening (and starting) it on first use. Any thread."""
        with self._open_lock:
            if isinstance(spec, Executor):
                for name, ex in self.executors.items():
                    if ex is spec:
                        return name
                name = spec.name if spec.name not in self.executors else f"{spec.name}#{len(self.executors)}"
                ex = spec
            else:
                name = spec or "local"
                if name in self.executors:
                    return name
                ex = get_executor(name, self.backends.get(settings_key(name)))
                self._owned.append(ex)
            ex.attach_artifacts(self.artifacts)
            ex.start(self._listen)
            self.executors[name] = ex
            caps = ex.capabilities
            if caps.start_poll_interval:
                self._start_pollers.append(name)
            self.q.put(ExecutorAdded("executor-opened", name, caps))
            return name

    def route(self, task: Any) -> str:
        """Which executor runs ``task``'s calls: a profile route by task name or identity, the task's own
        ``executor`` option, a route by resources (``@gpu``), else the flow's executor."""
        got = self._routed.get(id(task))
        if got is not None and got[0] is task:
            return got[1]
        name = self._route(task)
        self._routed[id(task)] = (task, name)
        return name

    def _route(self, task: Any) -> str:
        routes = self.routes
        spec = routes.get(task.name) or routes.get(task.identity) or task.options.executor
        if spec is None and task.options.resources.gpu and "@gpu" in routes:
            spec = routes["@gpu"]
        if spec is None:
            return self.default
        return self.open_executor(spec)

    def image_key(self, executor: str, task: Any) -> str | None:
        """The image ``task`` runs in on ``executor`` (part of its cache key); asked once per task."""
        k = (executor, id(task))
        got = self._images.get(k)
        if got is not None and got[0] is task:
            return got[1]
        image = self.executors[executor].image_key(task)
        self._images[k] = (task, image)
        return image

    # -- API for flow threads --------------------------------------------------------------------------------
    def add(self, tasks: list[TaskState], futures: list[Future]) -> None:
        self.q.put(("add", tasks, futures))

    def start_run(self, record: RunRecord, parent: str | None = None, create: bool = False) -> None:
        self.q.put(RunStarted("run-started", record, parent, create))

    def create_run(self, record: RunRecord, timeout: float | None = 120.0) -> None:
        """Start a top-level run the way a subflow starts (the core records it); return once its record is
        written. It is RUNNING at :meth:`body_started`.

        Raises:
            StoreError: if the record cannot be created.
        """
        self.q.put(RunStarted("run-started", record, None, True, False))
        try:
            self._wait_for(lambda: record.id in self._created, timeout, f"the record of run {record.id}")
        except TimeoutError:
            raise StoreError(f"could not create run {record.id} in {self.store.url}: not written within "
                             f"{timeout:g}s") from None
        err = self._created.pop(record.id)
        if err is not None:
            raise StoreError(f"could not create run {record.id} in {self.store.url}: {err}") from err

    def body_started(self, run_id: str) -> None:
        self.q.put(BodyStarted("body-started", run_id))

    def body_returned(self, run_id: str, value: Any = None, error: BaseException | None = None,
                      traceback: str = "") -> None:
        self.q.put(BodyReturned("body-returned", run_id, value, error, traceback))

    def cancel(self, run_id: str | None = None, reason: str = "cancelled", external: bool = False) -> None:
        self.q.put(CancelRequested("cancel", run_id, reason, external))

    def wait(self, future: Future, timeout: float | None = None) -> None:
        """Block until ``future`` is resolved (``TimeoutError`` after ``timeout`` seconds)."""
        self._wait_for(lambda: future._done, timeout, repr(future), watch=future.id)

    def wait_run(self, run_id: str, timeout: float | None = None) -> RunFinished:
        """Block until the run ended (its terminal state handed to the recorder)."""
        self._wait_for(lambda: run_id in self.finished, timeout, f"run {run_id}")
        return self.finished[run_id]

    def _wait_for(self, cond: Any, timeout: float | None, what: str, watch: str | None = None) -> None:
        """Wait under the engine's condition. A waiter on one future is woken when that future resolves (the
        engine checks ``_watched`` after resolving), not at every resolution: a chain of calls would otherwise
        wake the flow's thread once a link, to take the GIL from the engine and go back to sleep."""
        deadline = None if timeout is None else time.monotonic() + timeout
        watched = self._watched
        with self._cond:
            self._waiters += 1
            if watch is not None:  # registered before the first check: a resolution after it will notify
                watched[watch] = watched.get(watch, 0) + 1
            try:
                while not cond():
                    if self._crashed is not None:
                        raise GflowError(f"the gflow engine crashed: {self._crashed!r}") from self._crashed
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError(f"{what} did not finish within {timeout}s")
                    self._cond.wait(min(remaining, 1.0) if remaining is not None else 1.0)
            finally:
                self._waiters -= 1
                if watch is not None:
                    left = watched[watch] - 1
                    if left:
                        watched[watch] = left
                    else:
                        del watched[watch]

    def snapshot(self) -> dict[str, Counter[str]]:
        """Live counts of task runs by task name and state (for progress displays; any thread)."""
        out: dict[str, Counter[str]] = {}
        for ts in list(self.core.tasks.values()):
            if ts.task is not None:
                c = out.get(ts.task.name)
                if c is None:
                    c = out[ts.task.name] = Counter()
                c[ts.state.value] += 1
        return out

    def close(self) -> None:
        """Stop the loop, write everything recorded, close the executors this engine opened. Idempotent.

        Raises:
            StoreError: if the recorded state cannot be written.
        """
        if self._closed:
            return
        self._closed = True
        self.q.put(_STOP)
        self._thread.join(timeout=30)
        try:
            self.recorder.close()
        finally:
            for ex in self._owned:
                try:
                    ex.close()
                except Exception:  # noqa: BLE001 - closing is best effort; the run's state is written
                    log.warning("closing executor %s failed", ex.name, exc_info=True)
            # futures point at this engine and it at them: drop its side so a finished run's calls are
            # freed at once by reference counting, not left for a full garbage collection to find
            self.futures.clear()
            self.core.release()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- executor listener (any thread) ----------------------------------------------------------------------
    def _listen(self, event: CallEvent) -> None:
        """The executors' listener: a :class:`CallStarted` or :class:`CallDone`, handed to the loop as is."""
        self.q.put(event)

    # -- the loop ------------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        q = self.q
        core = self.core
        try:
            while True:
                timeout = self._next_timeout()
                try:
                    msg = q.get(timeout=timeout) if timeout is None or timeout > 0 else q.get_nowait()
                except queue.Empty:
                    msg = None
                events: list[Event] = []
                n = 0
                while msg is not None:
                    if msg is _STOP:
                        return
                    self._convert(msg, events)
                    n += 1
                    if n >= _BATCH:
                        break
                    try:
                        msg = q.get_nowait()
                    except queue.Empty:
                        msg = None
                if self._waiting:
                    self._note_waiting()
                now = time.time()
                if self._timers and self._timers[0][0] <= now:
                    self._due_timers(now, events)
                self._periodic(events)
                try:
                    if events:
                        self._execute(core.handle_many(self._with_dispatch(events), now))
                    self._dispatch_all()
                except GflowError as e:  # a known fault (a bad setting found mid-run): fail the runs, not the engine
                    self._gflow_error(e)
                if self.recorder.state_error is not None and self.cancelled_by is None:
                    self._gflow_error(self.recorder.state_error)  # nothing can be recorded: stop computing
                if self._notify:
                    self._notify = False
                    if self._waiters:
                        with self._cond:
                            self._cond.notify_all()
        except BaseException as e:  # a bug in the engine must not hang the user's flow
            log.exception("gflow engine crashed")
            self._crashed = e
            with self._cond:
                self._cond.notify_all()

    def _convert(self, msg: Any, events: list[Event]) -> None:
        t = type(msg)
        if t is CallDone:
            events.append(Finished("executor-done", msg.call_id, msg.attempt, msg.outcome))
            return
        if t is CallStarted:
            events.append(Started("executor-started", msg.call_id, msg.attempt, msg.ts, msg.description))
            return
        if t is CallPending:  # not an event of the core: a note for people, no state changes
            self._waiting.append(msg)
            return
        if t is tuple:  # ("add", tasks, futures) from a flow's thread, or ("state-failed",): only a wake-up
            if msg[0] == "add":
                for f in msg[2]:
                    self.futures[f.id] = f
                events.append(CallsAdded("calls-added", msg[1]))
            return
        events.append(msg)

    def _note_waiting(self) -> None:
        """Write the pending reasons heard in this step for calls still QUEUED in that attempt (gflow.flows.pending).
        Reads the core's task states (this thread owns them) and changes none."""
        now = time.time()
        rows = []
        tasks = self.core.tasks
        for msg in self._waiting:
            ts = tasks.get(msg.call_id)
            if ts is not None and ts.attempt == msg.attempt and ts.state is State.QUEUED:
                rows.append(pending_row(ts.run_id, ts.id, ts.attempt, msg.reason, now))
        self._waiting = []
        if rows:
            note_pending(self.store, rows)

    def _next_timeout(self) -> float | None:
        t: float | None = None
        now_m = time.monotonic()
        if self._timers:
            t = max(0.0, self._timers[0][0] - time.time())
        busy = not self.core.idle()
        if busy:
            for name in self._start_pollers:
                iv = self.executors[name].capabilities.start_poll_interval or 0.02
                w = max(0.0, self._last_starts + iv - now_m)
                t = w if t is None else min(t, w)
            if any(self.core.has_ready(name) for name in list(self.executors)):
                t = 0.05 if t is None else min(t, 0.05)
        if self.watch is not None and self.cancelled_by is None:
            w = max(0.0, self._last_watch + self.watch_interval - now_m)
            t = w if t is None else min(t, w)
        return t

    def _due_timers(self, now: float, events: list[Event]) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, tid, attempt, kind = heapq.heappop(timers)
            events.append(TimerFired(f"timer-{kind}", tid, attempt, kind))

    def _periodic(self, events: list[Event]) -> None:
        now_m = time.monotonic()
        if self._start_pollers and now_m - self._last_starts >= 0.02:
            self._last_starts = now_m
            for name in self._start_pollers:
                for rep in self.executors[name].poll_starts():
                    events.append(Started("executor-started", rep.call_id, rep.attempt, rep.ts))
        if self.watch is not None and self.cancelled_by is None and now_m - self._last_watch >= self.watch_interval:
            self._last_watch = now_m
            self._check_cancelled(events)

    def _check_cancelled(self, events: list[Event]) -> None:
        """Cancel everything if someone else marked the watched run CANCELLED in the store."""
        assert self.watch is not None
        try:
            rec = self.store.get_run(self.watch)
        except GflowError as e:
            log.debug("could not check run %s for a cancel: %s", self.watch, e)
            return
        if rec.state is State.CANCELLED:
            self.cancelled_by = rec.error or "Cancelled"
            events.append(CancelRequested("cancelled-outside", None, f"run cancelled from outside "
                                                                       f"({self.cancelled_by})", True))

    def _with_dispatch(self, events: list[Event]) -> list[Event]:
        """``events``, then a ``Dispatch`` per executor with room: the calls they make ready go out in the same
        step (a chain then costs the core one step per link for the outcome and the next submit, not two)."""
        for name, ex in list(self.executors.items()):
            cap = ex.capacity()
            if cap > 0:
                events.append(Dispatch("capacity", name, _dispatch_size(ex, cap)))
        return events

    def _gflow_error(self, err: GflowError) -> None:
        """A gflow error raised while handling events (e.g. a signing key file other users can read, found when
        a pickle task's result is signed): every run of this engine ends FAILED with its one-line message. A
        second error while ending them is a bug and crashes the engine as before."""
        log.debug("ending the runs after %s", type(err).__name__, exc_info=True)
        if self.cancelled_by is None:
            self.cancelled_by = str(err)
        self._execute(self.core.handle(CancelRequested("engine-error", None, f"{type(err).__name__}: {err}",
                                                       error=err), time.time()))

    def _dispatch_all(self) -> None:
        core = self.core
        for name in core.ready_executors():
            ex = self.executors[name]
            while core.has_ready(name):
                cap = ex.capacity()
                if cap <= 0:
                    break
                self._execute(core.handle(Dispatch("capacity", name, _dispatch_size(ex, cap)), time.time()))

    # -- instructions -------------------------------------------------------------------------------------------
    def _execute(self, instructions: Sequence[Instruction]) -> None:
        """Carry out instructions in order; what they cause (submitted handles, lookups) is handled after."""
        work = deque(instructions)
        rec = self.recorder
        while work:
            ins = work.popleft()
            if type(ins) is Record:
                rec.add_many(ins.transitions, ins.blobs)
            elif type(ins) is Submit:
                work.extend(self._submit(ins))
            elif type(ins) is Adopt:
                # one reattach per executor for all the adoptions waiting here (a map's elements come one by one)
                same = [w for w in work if type(w) is Adopt and w.executor == ins.executor]
                if same:
                    work = deque(w for w in work if not (type(w) is Adopt and w.executor == ins.executor))
                    ins = Adopt(ins.stimulus_id, ins.executor, [c for a in (ins, *same) for c in a.calls],
                                [r for a in (ins, *same) for r in a.records])
                work.extend(self._adopt(ins))
            elif type(ins) is Resolve:
                self._resolve(ins.tasks)
            elif type(ins) is ArmTimer:
                heapq.heappush(self._timers, (ins.at, next(self._seq), ins.id, ins.attempt, ins.timer))
            elif type(ins) is CancelCalls:
                self._cancel_calls(ins)
            elif type(ins) is LookUp:
                work.extend(self._lookup(ins))
            elif type(ins) is RecordRun:
                rec.add_run(ins)
                if ins.create is not None and ins.create.parent_run is None:
                    rec.add_marker(self._created_marker(ins.run_id))
            elif type(ins) is Flush:
                rec.add_marker(self._flushed_marker(ins.run_id))
            elif type(ins) is RunFinished:
                self.finished[ins.run_id] = ins
                self._notify = True
            else:  # pragma: no cover - a new instruction type without a handler is a bug
                raise GflowError(f"the engine cannot carry out {ins!r}")

    def _flushed_marker(self, run_id: str) -> Any:
        """What the recorder calls once everything before a ``Flush`` is written: the core hears it as ``Flushed``."""
        rec = self.recorder

        def flushed() -> None:
            lost = rec.artifact_error if rec.artifact_error is not None else rec.state_error
            self.q.put(Flushed("flushed", run_id, lost, rec.take_held_back()))

        return flushed

    def _created_marker(self, run_id: str) -> Any:
        rec = self.recorder

        def created() -> None:
            with self._cond:
                self._created[run_id] = rec.create_errors.pop(run_id, None)
                self._cond.notify_all()

        return created

    def _submit(self, ins: Submit) -> list[Instruction]:
        ex = self.executors[ins.executor]
        try:
            handles = ex.submit(ins.calls)
        except Exception as e:  # noqa: BLE001 - translated: the backend refused the batch
            return self.core.handle(SubmitFailed("submit-failed", ins.executor, ins.calls, e, tb_mod.format_exc()),
                                    time.time())
        descs = [ex.describe_handle(h) for h in handles]
        cap = ex.capacity() if ex.capabilities.accepts_refs else 0
        return self.core.handle(Submitted("submitted", ins.executor, ins.calls, handles, descs, cap), time.time())

    def _adopt(self, ins: Adopt) -> list[Instruction]:
        ex = self.executors[ins.executor]
        try:
            handles = list(ex.reattach(ins.calls, ins.records))
        except Exception:  # noqa: BLE001 - nothing adopted: the calls are submitted again, as before reattach
            log.warning("could not look for the dead driver's jobs on %s; submitting %d calls again", ins.executor,
                        len(ins.calls), exc_info=True)
            handles = [None] * len(ins.calls)
        descs = [None if h is None else ex.describe_handle(h) for h in handles]
        return self.core.handle(Adopted("adopted", ins.executor, ins.calls, handles, descs), time.time())

    def _cancel_calls(self, ins: CancelCalls) -> None:
        ex = self.executors.get(ins.executor)
        if ex is None:
            return
        try:
            ex.cancel(ins.handles)
        except Exception:  # noqa: BLE001 - best effort: late outcomes are ignored anyway
            log.warning("cancelling %d calls on %s failed", len(ins.handles), ins.executor, exc_info=True)

    def _resolve(self, tasks: list[TaskState]) -> None:
        futures = self.futures
        core = self.core
        watched = self._watched
        for ts in tasks:
            f = futures.pop(ts.id, None)
            if f is None:
                continue
            st = ts.state
            if st is State.SUCCEEDED or st is State.CACHED or (st is State.FAILED and type(ts.value) is Failed):
                f._set(True, ts.value, None)
            else:
                f._set(False, None, core.error_of(ts))
            if watched and ts.id in watched:  # after _set: a waiter registered before it checks _done
                self._notify = True

    def _lookup(self, ins: LookUp) -> list[Instruction]:
        hits: dict[str, CacheHit | None] = {}
        for tid, key, rec in ins.items:
            ts = self.core.tasks.get(tid)
            hit: CacheHit | None = None
            try:
                if rec is None:
                    rec = self.store.find_cached(key)
                if rec is not None:
                    task = ts.task if ts is not None else None
                    value = self.load_result(rec, allow_pickle=bool(task is not None and task.options.pickle),
                                             where=f"stored result of task '{ts.name if ts else tid}'")
                    hit = CacheHit(value, rec.result_ref, rec.result_inline, rec.id,
                                   version_changed=bool(rec.key and key and rec.key != key))
            except GflowError as e:
                name = ts.name if ts is not None else tid
                log.warning("stored result for %s (%s) is unreadable (%s); computing it again", name, tid, e)
            hits[tid] = hit
        return self.core.handle(CacheLookedUp("looked-up", hits), time.time())

    def load_result(self, rec: TaskRunRecord, *, allow_pickle: bool = False, where: str = "stored result") -> Any:
        """The value a finished task run stored (inline in the state store, or as a blob), decoded as untrusted
        data: pickles only for a task that opted in (and then signed), blobs checked against their digest."""
        if rec.result_inline is not None:
            return decode(rec.result_inline, self.artifacts.get, allow_pickle=allow_pickle, where=where)
        if rec.result_ref is None:
            raise GflowError(f"task run {rec.id} has no stored result")
        return decode(self.artifacts.get(rec.result_ref), self.artifacts.get, allow_pickle=allow_pickle, where=where)


def _dispatch_size(ex: Any, cap: int) -> int:
    """Calls handed to an executor in one step: up to 10,000, but all it has room for when it makes arrays,
    so that a map reaches it whole and it can pack the map into one array (``per_job``, issue 18)."""
    return cap if ex.capabilities.array_jobs else min(cap, 10_000)
