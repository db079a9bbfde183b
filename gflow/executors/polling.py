"""One polling monitor for every backend that is asked, not told, how its jobs are doing.

Shaped after Nextflow's ``TaskPollingMonitor`` + one ``TaskHandler`` per backend. AWS Batch uses it;
Slurm and Google Cloud Batch are written against it.

How to write a polling backend
------------------------------
1. Subclass :class:`Tracked` for what one call is on your backend (its job id, array index ...). The
   executor's ``submit`` returns these as handles.
2. Subclass :class:`PollingHandler`:

   - :meth:`~PollingHandler.refresh` asks the backend for the status of ALL the tracked calls in as few
     requests as it can (``squeue``/``sacct`` once, DescribeJobs in batches of 100, ``jobs.list``) and keeps
     the answer; it is called once per cycle, before the checks. It returns whether anything changed
     (the cadence then goes back to its fastest). An exception here is a *status error*: after
     ``max_errors`` in a row every unfinished call fails with an :class:`~gflow.errors.ExecutorError`.
   - :meth:`~PollingHandler.check_if_running` and :meth:`~PollingHandler.check_if_completed` read that
     answer for one call (no I/O): the start time, and a *detail* (anything the backend knows of the end)
     once it ended.
   - :meth:`~PollingHandler.outcome` turns a finished call and its detail into an
     :class:`~gflow.executors.base.Outcome` (reading the outcome record from the artifact store; run in
     the monitor's pool, so it may do I/O). A failure with no record becomes a gflow class through
     :func:`gflow.errors.failure_class` (one map for all backends): see :func:`failed`.
   - :meth:`~PollingHandler.kill` stops calls (cancel).
   - :meth:`~PollingHandler.pending_reason` (optional) reads why a queued call waits (no I/O): the monitor
     reports it as a :class:`~gflow.executors.events.CallPending` each time it changes.
3. In the executor: ``self.monitor = PollingMonitor(handler, cadence=Cadence(1, 30))``; in ``start``:
   ``self.monitor.start(listener)``; after each submit: ``self.monitor.track(handles)``; ``cancel``:
   ``self.monitor.cancel(handles)``; ``close``: ``self.monitor.close()``.

The monitor owns the rest: a thread that runs :meth:`PollingMonitor.cycle` at an adaptive cadence
(:class:`Cadence`; :meth:`PollingMonitor.wake` runs one at once), exactly-once reporting (a call is
reported started at most once and done exactly once, unless it was cancelled), the pool that reads
outcomes, and giving up after repeated status errors. Tests drive ``cycle()`` by hand with a fake clock
and a fake handler: no thread, no sleeps.
"""

from __future__ import annotations

import abc
import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from gflow.errors import ExecutorError, failure_class
from gflow.executors.base import Call, Outcome, qualname
from gflow.executors.events import CallDone, CallPending, CallStarted, Listener
from gflow.states import State

__all__ = ["Cadence", "PollingHandler", "PollingMonitor", "Tracked", "failed"]

log = logging.getLogger("gflow.executors.polling")


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


class Tracked:
    """One call the monitor follows; backends subclass it (with ``__slots__``) for their job's details.

    Attributes:
        call: The call.
        state: QUEUED, then RUNNING, then a terminal state (written by the monitor only).
        cancelled: Cancelled by the engine: never reported again.
        since: The monitor's clock when it began to follow the call.
        reason: The last pending reason reported for it (written by the monitor only).
    """

    __slots__ = ("call", "cancelled", "reason", "since", "state")

    def __init__(self, call: Call):
        self.call = call
        self.state = State.QUEUED
        self.cancelled = False
        self.since = 0.0  # the monitor's clock when tracking began
        self.reason: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.call.id} {self.state.value}>"


class ElementTracked(Tracked):
    """A call run as one element of an array job (AWS Batch, GCP Batch): the job, the element (array index or
    task index) and the call's position in that element's chunk, and the call spec whose outcome slot it reads."""

    __slots__ = ("element", "job", "pos", "spec")

    def __init__(self, call: Call, job: Any, element: int, pos: int, spec: str):
        super().__init__(call)
        self.job = job
        self.element = element
        self.pos = pos
        self.spec = spec


def failed(error: type[BaseException] | BaseException | str, message: str = "", *,
           info: dict[str, Any] | None = None, log_tail: str = "", started: float | None = None,
           ended: float | None = None, error_type: str | None = None) -> Outcome:
    """The outcome of a call that ended without an outcome record of its own.

    Args:
        error: A gflow class, an instance (``OutOfMemory(msg, requested=..., used=...)``), or the backend's
            own failure name, mapped through :func:`gflow.errors.failure_class` (the one map).
        message: One line naming what happened and the fix (an instance's own message if empty).
        error_type: What the store records; default the class's qualified name (a backend keeps the
            name it recorded before this map existed, e.g. ``gflow.PodEvicted``).

    The outcome carries the live exception (``exc``), so retry policies (``Retry(on=(gflow.Preempted,))``)
    and ``Outcome.error_class`` see the class.
    """
    if isinstance(error, BaseException):
        exc = error
        message = message or str(error)
    else:
        cls = failure_class(error) if isinstance(error, str) else error
        exc = cls(message)
    return Outcome(False, exc=exc, error_type=error_type or qualname(type(exc)), error_message=message,
                   traceback=log_tail, started=started, ended=ended if ended is not None else time.time(),
                   info=dict(info or {}))


class PollingHandler(abc.ABC):
    """One backend's side of the monitor (see the module docstring). Methods other than ``outcome`` and
    ``kill`` run on the monitor's cycle, one cycle at a time."""

    #: names the backend in messages ("AWS Batch", "Slurm")
    name: str = "backend"
    #: how a user checks a job by hand, added to the message when the monitor gives up on its calls
    hint: str = ""

    def refresh(self, live: Sequence[Tracked], now: float) -> bool:
        """Ask the backend for the status of all ``live`` calls at once (one cycle's only status query).
        ``now``: the monitor's clock (monotonic seconds; a fake one in tests), for "not seen for N seconds".

        Returns:
            Whether anything changed since the last refresh.

        Raises:
            Exception: the status could not be read (counted; see ``max_errors``).
        """
        return False

    @abc.abstractmethod
    def check_if_running(self, t: Tracked) -> float | None:
        """When ``t`` started (seconds since the epoch) if the last refresh says it runs or ran; else None."""

    @abc.abstractmethod
    def check_if_completed(self, t: Tracked) -> Any:
        """Not None (a detail handed to :meth:`outcome`) if the last refresh says ``t`` ended."""

    @abc.abstractmethod
    def outcome(self, t: Tracked, detail: Any) -> Outcome:
        """How ``t`` ended (may do I/O: runs in the monitor's pool)."""

    @abc.abstractmethod
    def kill(self, tracked: Sequence[Tracked]) -> None:
        """Stop these calls on the backend (best effort; they are never reported again)."""

    def describe(self, t: Tracked) -> str | None:
        """What ``t`` runs as, learnt at its start (a node, a pod); None: the handle's description stands."""
        return None

    def pending_reason(self, t: Tracked) -> str | None:
        """Why ``t`` still waits on the backend, in one line (``ReqNodeNotAvail: the nodes ...``), from the last
        refresh; None: no reason known (the default). The monitor adds :attr:`name` in front."""
        return None

    def lost(self, t: Tracked, message: str) -> Outcome:
        """The outcome of a call given up on (the backend's status could not be read)."""
        return failed(ExecutorError, f"{self.name}: call {t.call.id}: {message}")


class PollingMonitor:
    """Follows tracked calls through a :class:`PollingHandler` and reports them to the listener.

    Args:
        handler: The backend's handler.
        cadence: The poll interval's policy.
        max_errors: Status errors in a row after which every unfinished call fails.
        workers: Threads that read outcomes.
        fatal: Exception types that fail every unfinished call at once (e.g. ``ConfigError``: lost credentials).
        clock: Monotonic seconds (a fake one in tests); handed to ``refresh`` as ``now``.
    """

    def __init__(self, handler: PollingHandler, *, cadence: Cadence | None = None, max_errors: int = 10,
                 workers: int = 16, fatal: tuple[type[BaseException], ...] = (),
                 clock: Callable[[], float] = time.monotonic):
        if max_errors < 1:
            raise ValueError(f"max_errors must be at least 1, got {max_errors}")
        self.handler = handler
        self.cadence = cadence or Cadence()
        self.max_errors = max_errors
        self.fatal = fatal
        self.workers = workers
        self.clock = clock
        self.lock = threading.RLock()
        self.cycles = 0
        self.errors = 0
        self._live: dict[int, Tracked] = {}
        self._listener: Listener | None = None
        self._cycling = threading.Lock()  # one cycle at a time: the thread's, or one run by hand
        self._pool: cf.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()

    # -- what the executor calls -------------------------------------------------------------------------------
    def start(self, listener: Listener) -> None:
        """Report to ``listener`` from now on (the executor's ``start``)."""
        self._listener = listener

    def track(self, tracked: Sequence[Tracked], *, thread: bool = True) -> None:
        """Follow these calls (just submitted); starts the thread (unless ``thread=False``) and wakes it."""
        now = self.clock()
        with self.lock:
            for t in tracked:
                t.since = now
                self._live[id(t)] = t
        self.cadence.reset()
        if thread:
            self._ensure_thread()
            self._wake.set()

    def live(self) -> list[Tracked]:
        """The calls still followed (not ended, not cancelled)."""
        with self.lock:
            return list(self._live.values())

    def cancel(self, tracked: Sequence[Tracked]) -> list[Tracked]:
        """Never report these again and kill them on the backend; returns those that were still live."""
        gone: list[Tracked] = []
        with self.lock:
            for t in tracked:
                if t.cancelled or t.state.terminal:
                    continue
                t.cancelled = True
                t.state = State.CANCELLED
                self._live.pop(id(t), None)
                gone.append(t)
        if gone:
            self.handler.kill(gone)
        return gone

    def wake(self) -> None:
        """Run a cycle now (the thread's next wait ends)."""
        self.cadence.reset()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and the outcome pool (idempotent); calls still live are not reported."""
        self._stop.set()
        self._wake.set()
        th = self._thread
        if th is not None and th is not threading.current_thread():
            th.join(timeout=10)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # -- one cycle -------------------------------------------------------------------------------------------------
    def cycle(self) -> bool:
        """Refresh the status of every live call once and report what started and what ended.

        Returns:
            Whether anything changed (the cadence's input).
        """
        with self._cycling:
            return self._cycle()

    def _cycle(self) -> bool:
        live = self.live()
        if not live:
            return False
        self.cycles += 1
        h = self.handler
        try:
            changed = bool(h.refresh(live, self.clock()))
        except Exception as e:  # noqa: BLE001 - counted; the backend may answer next time
            self.errors += 1
            log.warning("reading the status from %s failed (%d in a row): %s", h.name, self.errors, e)
            if self.errors >= self.max_errors or isinstance(e, self.fatal):
                self.errors = 0
                self.fail_all(f"gflow lost track of the job ({type(e).__name__}: {e}); it may still be running"
                              + (f": {h.hint}" if h.hint else ""))
                return True
            return False
        self.errors = 0
        started: list[tuple[Tracked, float]] = []
        done: list[tuple[Tracked, Any]] = []
        waiting: list[tuple[Tracked, str | None]] = []
        for t in live:
            detail = h.check_if_completed(t)
            if detail is not None:
                done.append((t, detail))
            elif t.state is State.QUEUED:
                ts = h.check_if_running(t)
                if ts is not None:
                    started.append((t, ts))
                else:
                    why = h.pending_reason(t)
                    if why != t.reason:
                        waiting.append((t, why))
        for t, why in waiting:
            with self.lock:
                if t.cancelled or t.state is not State.QUEUED:
                    continue
                t.reason = why
            self._emit(CallPending(t.call.id, t.call.attempt, f"{h.name}: {why}" if why else None))
        for t, ts in started:
            if self._claim(t, State.RUNNING):
                self._emit(CallStarted(t.call.id, t.call.attempt, ts, h.describe(t)))
        if done:
            for (t, _), out in zip(done, self._outcomes(done)):
                if self._claim(t, State.SUCCEEDED if out.ok else State.FAILED):
                    self._emit(CallDone(t.call.id, t.call.attempt, out))
        return changed or bool(started) or bool(done) or bool(waiting)

    def _outcomes(self, done: list[tuple[Tracked, Any]]) -> list[Outcome]:
        if len(done) == 1:
            return [self._outcome(done[0])]
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="gflow-poll-outcomes")
        # a few slices per thread, not a future per call: 10,000 outcomes cost ~10x less in the pool itself
        k = -(-len(done) // (self.workers * 4))
        parts = [done[i:i + k] for i in range(0, len(done), k)]
        return [out for got in self._pool.map(self._outcome_slice, parts) for out in got]

    def _outcome_slice(self, part: list[tuple[Tracked, Any]]) -> list[Outcome]:
        return [self._outcome(item) for item in part]

    def _outcome(self, item: tuple[Tracked, Any]) -> Outcome:
        t, detail = item
        try:
            return self.handler.outcome(t, detail)
        except Exception as e:  # noqa: BLE001 - never lose a call: say why its outcome could not be read
            return self.handler.lost(t, f"cannot read its outcome: {type(e).__name__}: {e}")

    def _claim(self, t: Tracked, state: State) -> bool:
        """Move ``t`` to ``state`` unless it was cancelled, ended, or is there already (exactly-once reports)."""
        with self.lock:
            if t.cancelled or t.state.terminal or t.state is state:
                return False
            t.state = state
            if state.terminal:
                self._live.pop(id(t), None)
            return True

    def _emit(self, event: CallStarted | CallDone | CallPending) -> None:
        if self._listener is None:
            raise ExecutorError(f"{self.handler.name}: the monitor reports before start(listener) was called")
        self._listener(event)

    def fail_all(self, message: str) -> None:
        """Give up on every live call: each is reported done with :meth:`PollingHandler.lost`'s outcome."""
        for t in self.live():
            out = self.handler.lost(t, message)
            if self._claim(t, State.FAILED):
                self._emit(CallDone(t.call.id, t.call.attempt, out))

    # -- the thread ------------------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self.lock:
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._loop, name=f"gflow-poll-{self.handler.name}", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.cadence.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                changed = self.cycle()
            except Exception:  # noqa: BLE001 - a bug in a handler's check must not end the monitoring
                log.exception("a %s poll cycle failed", self.handler.name)
                changed = False
            self.cadence.next(changed)

