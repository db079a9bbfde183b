"""The local executor: a thread pool (default) or a process pool, and an inline executor for tests."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import multiprocessing
import os
import queue
import threading
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from typing import Any

from gflow.errors import ExecutorError
from gflow.executors.base import Call, Capabilities, Executor, JobStatus, Outcome, StartReport, importable_problem
from gflow.states import State


def _run_here(call: Call, listener: Any, board: dict | None = None) -> None:
    """Run one call in this thread, reporting start and outcome to the engine.

    With a ``board``, the start is written there instead of sent: the engine reads the board a few
    times a second, so a task that finishes quickly costs the engine one wake-up, not two.
    """
    t0 = time.time()
    if board is None:
        listener("started", call.id, call.attempt, t0)
    else:
        board[call.id] = (call.attempt, t0)
    try:
        value = call.task.fn(*call.args, **call.kwargs)
    except BaseException as e:  # noqa: BLE001 - reported, not swallowed
        listener("done", call.id, call.attempt, Outcome.from_exception(e, traceback.format_exc(), t0, time.time()))
        return
    listener("done", call.id, call.attempt, Outcome(True, value, started=t0, ended=time.time()))


def _run_in_process(task: Any, args: tuple, kwargs: dict) -> Outcome:
    """Body of a process-pool call: the outcome travels back pickled (exception best-effort)."""
    t0 = time.time()
    try:
        value = task.fn(*args, **kwargs)
        return Outcome(True, value, started=t0, ended=time.time())
    except BaseException as e:  # noqa: BLE001
        out = Outcome.from_exception(e, traceback.format_exc(), t0, time.time())
        try:
            import pickle

            pickle.loads(pickle.dumps(e))
        except Exception:
            out.exc = None  # not picklable: the type name, message and traceback still travel
        return out


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


class LocalExecutor(Executor):
    """Runs calls on this machine: ``local`` (threads), ``local://processes?workers=4``.

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
        if processes:  # a process reports its start only with its outcome
            self.capabilities = Capabilities(reports_start=False)
        cpu = os.cpu_count() or 1
        self.workers = workers or (cpu if processes else min(32, cpu + 4))
        self.max_in_flight = max_in_flight or max(256, self.workers * 64)
        if processes:
            self._pool: Any = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(
                mp_context))
        else:
            self._pool = _ThreadPool(self.workers, self._run_thread_call)
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False
        #: call id -> (attempt, start time), written by pool threads, handed out by poll_starts()
        self._board: dict[str, tuple[int, float]] = {}

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

    def _listen(self, kind: str, call_id: str, attempt: int, payload: Any) -> None:
        if kind == "done":
            with self._lock:
                self._in_flight -= 1
        self._listener(kind, call_id, attempt, payload)

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        with self._lock:
            self._in_flight += len(calls)
        if not self.processes:
            put = self._pool.q.put
            for c in calls:
                put(c)
            return list(calls)
        handles: list[Any] = []
        for c in calls:
            problem = importable_problem(c.task)
            if problem is not None:  # would break the pool in the child: fail this call clearly instead
                fut: cf.Future = cf.Future()
                fut.set_result(Outcome.from_exception(ExecutorError(problem), "", None, time.time()))
                fut.add_done_callback(functools.partial(self._process_done, c))
                handles.append(fut)
                continue
            fut = self._pool.submit(_run_in_process, c.task, c.args, c.kwargs)
            fut.add_done_callback(functools.partial(self._process_done, c))
            handles.append(fut)
        return handles

    def _run_thread_call(self, call: Call) -> None:
        cancelled = self._pool.cancelled
        if cancelled and (call.id, call.attempt) in cancelled:
            cancelled.discard((call.id, call.attempt))
            with self._lock:
                self._in_flight -= 1
            return
        _run_here(call, self._listen, self._board)

    def _process_done(self, call: Call, fut: cf.Future) -> None:
        if fut.cancelled():
            with self._lock:
                self._in_flight -= 1
            return
        try:
            outcome = fut.result()
        except BaseException as e:  # the pool broke (a worker died) or the value did not pickle
            outcome = Outcome.from_exception(e, traceback.format_exc(), None, time.time())
        # a process cannot reach the engine while it runs: its start is reported with its outcome
        self._listener("started", call.id, call.attempt, outcome.started or time.time())
        self._listen("done", call.id, call.attempt, outcome)

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        if not self.processes:  # threads push their events; this is a best-effort view
            board = self._board
            return [JobStatus(State.CANCELLED if (h.id, h.attempt) in self._pool.cancelled else
                              State.RUNNING if h.id in board else State.QUEUED) for h in handles]
        out = []
        for h in handles:
            if h.cancelled():
                out.append(JobStatus(State.CANCELLED))
            elif h.running():
                out.append(JobStatus(State.RUNNING))
            elif not h.done():
                out.append(JobStatus(State.QUEUED))
            else:
                out.append(JobStatus(State.SUCCEEDED if h.exception() is None else State.FAILED))
        return out

    def cancel(self, handles: Sequence[Any]) -> None:
        """Queued calls never start; a running thread cannot be stopped (its result is ignored)."""
        for h in handles:
            if h is None:
                continue
            if self.processes:
                h.cancel()
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
        return f"process-pool:{id(handle):x}" if self.processes else f"thread-pool:{handle.id}"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.processes:
                self._pool.shutdown(wait=False, cancel_futures=True)
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
            _run_here(c, self._listener)
        return [None] * len(calls)

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(State.SUCCEEDED) for _ in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        return None
