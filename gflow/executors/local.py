"""The local executor: a thread pool (default) or a process pool, and an inline executor for tests."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from typing import Any

from gflow.executors.base import Call, Executor, JobStatus, Outcome
from gflow.states import State


def _run_here(call: Call, listener: Any) -> None:
    """Run one call in this thread, reporting start and outcome to the engine."""
    t0 = time.time()
    listener("started", call.id, call.attempt, t0)
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


class LocalExecutor(Executor):
    """Runs calls on this machine: ``local`` (threads), ``local://processes?workers=4``.

    Args:
        workers: Pool size (threads default: ``min(32, cpu + 4)``; processes: cpu count).
        processes: Use a process pool (for CPU-bound pure Python); tasks must be importable.
        max_in_flight: Backpressure: at most this many calls handed to the pool at once.
    """

    name = "local"
    pushes_events = True

    def __init__(self, workers: int | None = None, processes: bool = False, max_in_flight: int | None = None,
                 mp_context: str = "spawn"):
        self.processes = processes
        self.reports_start = not processes  # a process reports its start only with its outcome
        cpu = os.cpu_count() or 1
        self.workers = workers or (cpu if processes else min(32, cpu + 4))
        self.max_in_flight = max_in_flight or max(256, self.workers * 64)
        if processes:
            self._pool: cf.Executor = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(
                mp_context))
        else:
            self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="gflow-task")
        self._in_flight = 0
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str) -> LocalExecutor:
        parsed = urllib.parse.urlparse(spec if "://" in spec else spec.replace(":", "://", 1) if ":" in spec else "")
        kind = parsed.netloc or parsed.path.strip("/")
        q = {k: v[0] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        if kind not in ("", "threads", "processes"):
            from gflow.errors import ConfigError

            raise ConfigError(f"local executor {spec!r}: use local, local://threads or local://processes")
        return cls(workers=int(q["workers"]) if "workers" in q else None, processes=kind == "processes")

    def _listen(self, kind: str, call_id: str, attempt: int, payload: Any) -> None:
        if kind == "done":
            with self._lock:
                self._in_flight -= 1
        self._listener(kind, call_id, attempt, payload)

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        with self._lock:
            self._in_flight += len(calls)
        if not self.processes:
            listen = self._listen
            submit = self._pool.submit
            return [submit(_run_here, c, listen) for c in calls]
        handles = []
        for c in calls:
            fut = self._pool.submit(_run_in_process, c.task, c.args, c.kwargs)
            fut.add_done_callback(lambda f, c=c: self._process_done(c, f))
            handles.append(fut)
        return handles

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
        for h in handles:
            if h is not None and h.cancel() and not self.processes:
                with self._lock:
                    self._in_flight -= 1

    def capacity(self) -> int:
        return self.max_in_flight - self._in_flight

    def describe_handle(self, handle: Any) -> str:
        return f"{'process' if self.processes else 'thread'}-pool:{id(handle):x}"

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.shutdown(wait=False, cancel_futures=True)


class InlineExecutor(Executor):
    """Runs each call synchronously inside ``submit``: deterministic, for tests and debugging."""

    name = "inline"
    pushes_events = True

    @classmethod
    def from_spec(cls, spec: str) -> InlineExecutor:
        return cls()

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        for c in calls:
            _run_here(c, self._listener)
        return [None] * len(calls)

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(State.SUCCEEDED) for _ in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        return None
