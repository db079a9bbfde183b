"""gflow's process pool: worker processes that each run one call at a time, watched by one thread.

Unlike ``concurrent.futures.ProcessPoolExecutor``, the pool knows which call runs in which process, so:

- a worker that dies (SIGKILL, the OOM killer, a segfault) fails only the call it was running; that
  worker is replaced and every other call goes on;
- a call can be stopped: cancelling a running call kills its worker (a timeout really stops the task);
- workers exit as soon as the driver dies, instead of finishing their task after the driver is gone and
  then hanging. On Linux the kernel kills them (``PR_SET_PDEATHSIG``), which needs nothing from the worker:
  a task holding the GIL in a long C call dies too. That signal fires when the *thread* that started the
  worker ends, so workers are started only by the pool's own thread, which lives as long as the pool
  (closing the pool ends its workers at once). Everywhere, each worker also blocks on a lifeline pipe whose
  other end only the driver holds; that thread needs the GIL, so it alone can be late (a task in a C call).

Workers are started with ``spawn`` and import tasks by ``module:qualname``; calls and outcomes cross
the pipe pickled (values the engine already checked have a canonical form).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

from gflow.errors import ExecutorError, OutOfMemory
from gflow.executors._memlimit import limit_memory, out_of_memory_message
from gflow.executors.base import Call, CallDone, CallStarted, Listener, Outcome
from gflow.usage import process_meter

log = logging.getLogger("gflow.executors.processes")


class WorkerDied(ExecutorError):
    """The worker process running a call died (killed, out of memory, crashed)."""


# -- the worker side ------------------------------------------------------------------------------------------

def _watch_lifeline(lifeline: Any) -> None:
    """Exit the moment the driver is gone (its end of the lifeline closes)."""
    try:
        lifeline.recv()
    except (EOFError, OSError):
        pass
    os._exit(70)


_PR_SET_PDEATHSIG = 1


def _die_with_driver(driver_pid: int) -> bool:
    """Linux: have the kernel SIGKILL this worker when the driver's thread that started it ends. Returns
    whether that is in place (False elsewhere, or when the worker was not started by the driver itself, as
    with a forkserver: the lifeline alone then)."""
    if not sys.platform.startswith("linux") or os.getppid() != driver_pid:
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != driver_pid:  # the driver died before the signal was armed
        os._exit(70)
    return True


def _worker_main(conn: Any, lifeline: Any, driver_pid: int = 0) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle: it cancels
    _die_with_driver(driver_pid)
    threading.Thread(target=_watch_lifeline, args=(lifeline,), daemon=True, name="gflow-lifeline").start()
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        if msg is None:
            return
        call_id, attempt, blob, artifacts_url = msg
        if artifacts_url:  # task code (gflow.models) finds its run's artifact store through the profile
            os.environ["GFLOW_ARTIFACTS"] = artifacts_url
        meter = process_meter()
        t0 = meter.t0
        conn.send(("started", call_id, attempt, (t0, f"process pid {os.getpid()}")))
        task: Any = None
        memory = restore = None
        try:
            task, args, kwargs = pickle.loads(blob)
            memory = task.options.resources.memory
            restore = limit_memory(memory)
            try:
                value = task.invoke(args, kwargs)
            finally:
                if restore is not None:
                    restore()
            out = Outcome(True, value, started=t0, ended=time.time())
        except MemoryError as e:  # past its Resources.memory (or the host's): one error type everywhere
            tb = traceback.format_exc()
            name = getattr(task, "name", "?")
            err = OutOfMemory(out_of_memory_message(name, memory) if restore is not None and memory else
                              f"task '{name}' ran out of memory: {e}", requested=memory)
            out = Outcome.from_exception(err, tb, t0, time.time())
        except BaseException as e:  # noqa: BLE001 - reported to the driver
            out = Outcome.from_exception(e, traceback.format_exc(), t0, time.time())
        out.info = {"usage": meter.stop(task)}
        try:
            data = pickle.dumps(("done", call_id, attempt, out), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 - the value or the exception does not pickle
            if out.ok:
                out = Outcome.from_exception(ExecutorError(
                    f"the result of {call_id} cannot be sent back from the worker process: {type(e).__name__}: {e}"),
                    traceback.format_exc(), t0, out.ended or time.time())
            out.exc = None  # the type name, message and traceback still travel
            data = pickle.dumps(("done", call_id, attempt, out), protocol=pickle.HIGHEST_PROTOCOL)
        conn.send_bytes(data)


# -- the driver side ----------------------------------------------------------------------------------------

class _Worker:
    __slots__ = ("proc", "conn", "lifeline", "call")

    def __init__(self, proc: Any, conn: Any, lifeline: Any):
        self.proc = proc
        self.conn = conn
        self.lifeline = lifeline
        self.call: Call | None = None


class ProcessPool:
    """``workers`` processes, started at the first call; ``report(event)`` (a :class:`CallStarted` or
    :class:`CallDone`) is called from the pool's thread. Workers send plain tuples over their pipe."""

    def __init__(self, workers: int, report: Listener, mp_context: str = "spawn"):
        self.size = workers
        self._report = report
        self._ctx: Any = multiprocessing.get_context(mp_context)
        self._lock = threading.Lock()
        self._pending: deque[Call] = deque()
        self._workers: list[_Worker] = []
        self._cancelled: set[tuple[str, int]] = set()
        self._closed = False
        #: the artifact store URL of the run being served, passed to workers with each call
        self.artifacts_url: str | None = None
        self._wake_r, self._wake_w = self._ctx.Pipe(duplex=False)
        self._thread = threading.Thread(target=self._loop, name="gflow-process-pool", daemon=True)
        self._thread.start()

    def _spawn(self) -> _Worker:
        """Start a worker. Only on the pool's thread: a worker's PR_SET_PDEATHSIG fires when its starting thread
        ends, and this one lives as long as the pool."""
        assert threading.current_thread() is self._thread, "workers are started by the pool's thread only"
        parent, child = self._ctx.Pipe()
        life_r, life_w = self._ctx.Pipe(duplex=False)
        proc = self._ctx.Process(target=_worker_main, args=(child, life_r, os.getpid()), daemon=True,
                                 name="gflow-worker")
        proc.start()
        child.close()
        life_r.close()
        return _Worker(proc, parent, life_w)

    # -- API (any thread) --------------------------------------------------------------------------------------
    def submit(self, call: Call) -> None:
        with self._lock:
            if self._closed:
                raise ExecutorError("the process pool is closed")
            self._pending.append(call)
        self._wake()

    def cancel(self, call: Call) -> bool:
        """A queued call never starts; a running one is stopped by killing its worker (which is replaced).
        Returns False if the call was neither queued nor running (it had finished)."""
        with self._lock:
            try:
                self._pending.remove(call)
                return True
            except ValueError:
                pass
            victim = next((w for w in self._workers if w.call is call), None)
            if victim is None:
                return False
            self._cancelled.add((call.id, call.attempt))
        try:
            victim.proc.kill()
        except (OSError, ValueError):  # already gone
            pass
        self._wake()
        return True

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
        self._wake()
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        for w in self._workers:
            try:
                if w.call is None:
                    w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in self._workers:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(1.0)
            for c in (w.conn, w.lifeline):
                c.close()
        self._wake_r.close()
        self._wake_w.close()

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc.pid is not None]

    # -- the pool's thread ---------------------------------------------------------------------------------
    def _wake(self) -> None:
        try:
            self._wake_w.send_bytes(b"")
        except (OSError, ValueError):
            pass

    def _loop(self) -> None:
        while True:
            self._assign()
            with self._lock:
                if self._closed:
                    return
                waitables: list[Any] = [self._wake_r]
                by: dict[Any, _Worker] = {}
                for w in self._workers:
                    if w.call is not None:
                        waitables += [w.conn, w.proc.sentinel]
                        by[w.conn] = by[w.proc.sentinel] = w
            for ready in mpc.wait(waitables):
                if ready is self._wake_r:
                    try:
                        while self._wake_r.poll():
                            self._wake_r.recv_bytes()
                    except (EOFError, OSError):
                        return
                    continue
                w = by[ready]
                if ready is w.conn:
                    self._read(w)
                elif w.call is not None:  # the process ended while running a call
                    self._died(w)

    def _assign(self) -> None:
        with self._lock:
            if self._pending and not self._workers and not self._closed:
                # started at the first call, all at once: a spare is warm when a timed-out call's worker is
                # killed and replaced
                self._workers = [self._spawn() for _ in range(self.size)]
            for i, w in enumerate(self._workers):
                if not self._pending:
                    return
                if w.call is not None:
                    continue
                if not w.proc.is_alive():
                    w = self._workers[i] = self._spawn()
                call = self._pending.popleft()
                try:
                    blob = pickle.dumps((call.task, call.args, call.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as e:  # noqa: BLE001 - an argument that does not pickle: this call fails
                    self._report(CallDone(call.id, call.attempt, Outcome.from_exception(
                        ExecutorError(f"task '{call.task.name}': its arguments cannot be sent to a worker process: "
                                      f"{type(e).__name__}: {e}"), traceback.format_exc(), None, time.time())))
                    continue
                try:
                    w.conn.send((call.id, call.attempt, blob, self.artifacts_url))
                except (OSError, ValueError):  # the worker died while idle: replace it and try again
                    self._pending.appendleft(call)
                    self._workers[i] = self._spawn()
                    continue
                w.call = call

    def _read(self, w: _Worker) -> None:
        try:
            data = w.conn.recv_bytes()
        except (EOFError, OSError):
            self._died(w)
            return
        try:
            msg = pickle.loads(data)
        except Exception as e:  # noqa: BLE001 - e.g. an exception type this process cannot import
            call = w.call
            if call is None:
                return
            msg = ("done", call.id, call.attempt, Outcome.from_exception(ExecutorError(
                f"the outcome of {call.id} could not be read from the worker process: {type(e).__name__}: {e}"),
                traceback.format_exc(), None, time.time()))
        kind, call_id, attempt, payload = msg
        call = w.call
        with self._lock:
            stopped = (call_id, attempt) in self._cancelled
            if kind == "done":
                w.call = None
                self._cancelled.discard((call_id, attempt))
        if stopped:
            return
        if kind == "done":
            self._report(CallDone(call_id, attempt, payload))
        else:
            self._report(CallStarted(call_id, attempt, payload[0], payload[1]))
        if kind == "done" and call is not None:
            self._wake()

    def _died(self, w: _Worker) -> None:
        w.proc.join(1.0)
        code = w.proc.exitcode
        with self._lock:
            call, w.call = w.call, None
            stopped = call is not None and (call.id, call.attempt) in self._cancelled
            if call is not None:
                self._cancelled.discard((call.id, call.attempt))
            idx = self._workers.index(w)
            closed = self._closed
            if not closed:
                self._workers[idx] = self._spawn()
        for c in (w.conn, w.lifeline):
            c.close()
        if call is None or stopped:
            return
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        err = WorkerDied(f"the worker process (pid {w.proc.pid}) running task '{call.task.name}' died ({how}); "
                         f"the call is retried per the task's retries")
        self._report(CallDone(call.id, call.attempt, Outcome.from_exception(err, "", None, time.time())))
