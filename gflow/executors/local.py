"""The local executor: a thread pool (default) or a process pool, and an inline executor for tests."""

from __future__ import annotations

import os
import queue
import threading
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from typing import Any

from gflow._context import run_artifacts
from gflow.errors import ExecutorError
from gflow.executors._procpool import ProcessPool
from gflow.executors.base import (
    Call,
    CallDone,
    CallEvent,
    CallStarted,
    Capabilities,
    Executor,
    JobStatus,
    Listener,
    Outcome,
    StartReport,
    importable_problem,
)
from gflow.states import State
from gflow.usage import thread_meter, thread_usage


def _run_here(call: Call, listener: Listener, board: dict | None = None, artifacts: Any = None) -> None:
    """Run one call in this thread, reporting start and outcome to the engine.

    With a ``board``, the start is written there instead of sent: the engine reads the board a few
    times a second, so a task that finishes quickly costs the engine one wake-up, not two.
    """
    m = thread_meter()
    t0 = m[0]
    if board is None:
        listener(CallStarted(call.id, call.attempt, t0))
    else:
        board[call.id] = (call.attempt, t0)
    token = run_artifacts.set(artifacts) if artifacts is not None else None
    try:
        value = call.task.invoke(call.args, call.kwargs)
    except BaseException as e:  # noqa: BLE001 - reported, not swallowed
        t1 = time.time()
        out = Outcome.from_exception(e, traceback.format_exc(), t0, t1)
        out.info = {"usage": thread_usage(m, call.task, t1)}
        listener(CallDone(call.id, call.attempt, out))
        return
    finally:
        if token is not None:
            run_artifacts.reset(token)
    t1 = time.time()
    listener(CallDone(call.id, call.attempt, Outcome(True, value, started=t0, ended=t1,
                                                     info={"usage": thread_usage(m, call.task, t1)})))


class _ThreadPool:
    """A minimal pool: workers pull calls from one queue (no per-call Future or Condition)."""

    def __init__(self, workers: int, run: Any):
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled: set[tuple[str, int]] = set()
        self._run = run
        self._threads = [threading.Thread(target=self._work, name=f"gflow-task-{i}", daemon=True)
                         for i in range(workers)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        get = self.q.get
        while True:
            call = get()
            if call is None:
                return
            self._run(call)

    def shutdown(self) -> None:
        for _ in self._threads:
            self.q.put(None)


def _batches(calls: Sequence[Call]) -> list[Call | list[Call]]:
    """Calls as the thread pool takes them: one by one, except calls of a ``batch_size`` task, which go
    in lists of up to ``batch_size`` (one pool thread runs a list as batches)."""
    out: list[Call | list[Call]] = []
    open_: dict[int, list[Call]] = {}
    for c in calls:
        size = getattr(c.task.options, "batch_size", None)
        if size is None or size == 1:
            out.append(c)
            continue
        group = open_.get(id(c.task))
        if group is None or len(group) >= size:
            group = open_[id(c.task)] = []
            out.append(group)
        group.append(c)
    return out


class LocalExecutor(Executor):
    """Runs calls on this machine: ``local`` (threads), ``local://processes?workers=4``.

    Threads cannot be stopped: a timed-out call's thread runs to its end and its result is ignored.
    Processes can: a timed-out (or cancelled) call's worker is killed and replaced; a worker that dies
    fails only its own call (retried per the task's policy); workers exit when the driver dies
    (:mod:`gflow.executors._procpool`).

    Args:
        workers: Pool size (threads default: ``min(32, cpu + 4)``; processes: cpu count).
        processes: Use a process pool (for CPU-bound pure Python); tasks must be importable.
        max_in_flight: Backpressure: at most this many calls handed to the pool at once.
    """

    name = "local"
    capabilities = Capabilities(start_poll_interval=0.02)

    def __init__(self, workers: int | None = None, processes: bool = False, max_in_flight: int | None = None,
                 mp_context: str = "spawn"):
        self.processes = processes
        if processes:  # workers push their starts (and a running call can be killed)
            self.capabilities = Capabilities()
        cpu = os.cpu_count() or 1
        self.workers = workers or (cpu if processes else min(32, cpu + 4))
        self.max_in_flight = max_in_flight or max(256, self.workers * 64)
        self._pool: Any
        self._procs: ProcessPool | None = None
        if processes:
            self._procs = ProcessPool(self.workers, self._listen, mp_context)
        else:
            self._pool = _ThreadPool(self.workers, self._run_thread_call)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False
        #: call id -> (attempt, start time), written by pool threads, handed out by poll_starts()
        self._board: dict[str, tuple[int, float]] = {}
        self._artifacts: Any = None

    def attach_artifacts(self, artifacts: Any) -> None:
        """Task code run here sees its run's artifact store (``gflow.models``); process workers get its URL."""
        self._artifacts = artifacts
        if self._procs is not None:
            self._procs.artifacts_url = getattr(artifacts, "url", None)

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> LocalExecutor:
        """``local``, ``local://threads?workers=8``, ``local://processes?workers=4``; profile settings:
        ``workers``, ``max_in_flight``."""
        parsed = urllib.parse.urlparse(spec if "://" in spec else spec.replace(":", "://", 1) if ":" in spec else "")
        kind = parsed.netloc or parsed.path.strip("/")
        q = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        if kind not in ("", "threads", "processes"):
            from gflow.errors import ConfigError

            raise ConfigError(f"local executor {spec!r}: use local, local://threads or local://processes")
        try:
            workers = int(q["workers"]) if "workers" in q else settings.get("workers")
        except ValueError:
            from gflow.errors import ConfigError

            raise ConfigError(f"local executor {spec!r}: workers must be an integer") from None
        return cls(workers=workers, processes=kind == "processes", max_in_flight=settings.get("max_in_flight"))

    def _listen(self, event: CallEvent) -> None:
        if type(event) is CallDone:
            with self._lock:
                self._in_flight -= 1
        self._listener(event)

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        with self._lock:
            self._in_flight += len(calls)
        if self._procs is None:
            put = self._pool.q.put
            for item in _batches(calls):
                put(item)
            return list(calls)
        for c in calls:
            problem = importable_problem(c.task)
            if problem is not None:  # the worker could not import it: fail this call clearly instead
                self._listen(CallDone(c.id, c.attempt, Outcome.from_exception(ExecutorError(problem), "", None,
                                                                              time.time())))
                continue
            self._procs.submit(c)
        return list(calls)

    def _run_thread_call(self, call: Call | list[Call]) -> None:
        if type(call) is list:
            self._run_thread_batch(call)
            return
        assert isinstance(call, Call)
        cancelled = self._pool.cancelled
        if cancelled and (call.id, call.attempt) in cancelled:
            cancelled.discard((call.id, call.attempt))
            with self._lock:
                self._in_flight -= 1
            return
        _run_here(call, self._listen, self._board, self._artifacts)

    def _run_thread_batch(self, calls: list[Call]) -> None:
        """Calls of one ``batch_size`` task, run as batches in this thread (``Task.invoke_many``); each call
        still starts and ends as its own event, with its own outcome."""
        cancelled = self._pool.cancelled
        live = []
        for c in calls:
            if cancelled and (c.id, c.attempt) in cancelled:
                cancelled.discard((c.id, c.attempt))
                with self._lock:
                    self._in_flight -= 1
            else:
                live.append(c)
        if not live:
            return
        m = thread_meter()
        t0 = m[0]
        for c in live:
            self._board[c.id] = (c.attempt, t0)
        token = run_artifacts.set(self._artifacts) if self._artifacts is not None else None
        try:
            results = live[0].task.invoke_many([(c.args, c.kwargs) for c in live])
        finally:
            if token is not None:
                run_artifacts.reset(token)
        t1 = time.time()
        usage = thread_usage(m, live[0].task, t1)  # the batch's, shared by its calls
        usage["batch"] = len(live)
        for c, r in zip(live, results, strict=True):
            out = Outcome(True, r.value, started=t0, ended=t1) if r.ok else \
                Outcome.from_exception(r.exc or RuntimeError("no result"), r.tb, t0, t1)
            out.info = {"usage": usage}
            self._listen(CallDone(c.id, c.attempt, out))

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        """Both pools push their events; this is a best-effort view."""
        board = self._board
        cancelled = self._pool.cancelled if self._procs is None else set()
        return [JobStatus(State.CANCELLED if (h.id, h.attempt) in cancelled else
                          State.RUNNING if h.id in board else State.QUEUED) for h in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        """Queued calls never start. A running thread cannot be stopped (its result is ignored); a running
        process is killed (and replaced)."""
        for h in handles:
            if h is None:
                continue
            if self._procs is not None:
                if self._procs.cancel(h):
                    with self._lock:
                        self._in_flight -= 1
            else:
                self._pool.cancelled.add((h.id, h.attempt))

    def poll_starts(self) -> list[StartReport]:
        board = self._board
        out = []
        for call_id in list(board):
            entry = board.pop(call_id, None)
            if entry is not None:
                out.append(StartReport(call_id, entry[0], entry[1]))
        return out

    def capacity(self) -> int:
        return self.max_in_flight - self._in_flight

    def describe_handle(self, handle: Any) -> str:
        return "process-pool" if self._procs is not None else "thread-pool"

    def worker_pids(self) -> list[int]:
        """The process pool's worker pids (empty for threads)."""
        return self._procs.pids() if self._procs is not None else []

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._procs is not None:
                self._procs.close()
            else:
                self._pool.shutdown()


class InlineExecutor(Executor):
    """Runs each call synchronously inside ``submit``: deterministic, for tests and debugging."""

    name = "inline"

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> InlineExecutor:
        return cls()

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        for c in calls:
            _run_here(c, self._listener, None, self._artifacts)
        return [None] * len(calls)

    _artifacts: Any = None

    def attach_artifacts(self, artifacts: Any) -> None:
        self._artifacts = artifacts

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(State.SUCCEEDED) for _ in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        return None
