"""A writer process for the SQLite store: batches cross a pipe and are applied on the other core.

In-process, the SQL work of recording every transition competes with the engine for one
interpreter; a child process gives it a core of its own. The engine's recorder starts one on
demand (a large backlog), keeps writing in its own thread until the child is ready, and falls back
to its own thread if the child dies. One writer per database file per driver process.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import Any

from gflow.errors import StoreError, StoreFull
from gflow.store.base import Row

log = logging.getLogger("gflow.writer")


def _send(f: Any, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(struct.pack("<Q", len(data)) + data)  # one write: each blocking call gives up the GIL
    f.flush()


def _recv(f: Any) -> Any:
    head = f.read(8)
    if len(head) < 8:
        raise EOFError("writer pipe closed")
    (n,) = struct.unpack("<Q", head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("writer pipe closed")
    return pickle.loads(data)


def _widen(pipe: Any) -> None:
    """Make a pipe hold a whole batch (up to the system's limit, 1 MiB by default on Linux): a writer
    that blocks on a full 64 KiB pipe gives up the GIL, and taking it back waits for the engine's
    threads each time, which made one 4,000-row batch take ~70 ms instead of ~15."""
    try:
        import fcntl

        with open("/proc/sys/fs/pipe-max-size") as f:
            limit = int(f.read())
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(limit, 8 << 20))
    except (ImportError, OSError, ValueError, AttributeError):
        pass  # not Linux, or not allowed: the default pipe works, only slower


class ProcessWriter:
    """A child process (``python -m gflow.store._writer_child``) applying batches to one SQLite file.

    A plain subprocess rather than multiprocessing: spawn would re-run the user's ``__main__``.
    """

    def __init__(self, path: str, timeout: float):
        self.path = path
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._proc = subprocess.Popen([sys.executable, "-m", "gflow.store._writer_child", path, str(timeout)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for pipe in (self._proc.stdin, self._proc.stdout):
            _widen(pipe)
        self._ready = False
        self._dead = False
        self._lock = threading.Lock()
        self._ready_event = threading.Event()
        threading.Thread(target=self._await_ready, daemon=True, name="gflow-writer-start").start()

    def _await_ready(self) -> None:
        try:
            kind, _ = _recv(self._proc.stdout)
            self._ready = kind == "ready"
        except (EOFError, OSError):
            self._dead = True
        self._ready_event.set()

    def ready(self) -> bool:
        return self._ready and not self._dead

    def wait_ready(self, timeout: float = 30.0) -> bool:
        self._ready_event.wait(timeout)
        return self.ready()

    def apply_rows(self, batch: list[Row]) -> list[int]:
        """Apply transition rows in the child; returns the positions refused."""
        with self._lock:
            try:
                _send(self._proc.stdin, batch)
                kind, payload = _recv(self._proc.stdout)
            except (EOFError, OSError, ValueError) as e:
                self._dead = True
                raise StoreError(f"the gflow writer process for {self.path} died ({e})") from None
        if kind == "full":
            raise StoreFull(payload)
        if kind == "error":
            raise StoreError(payload)
        return list(payload)

    def close(self) -> None:
        self._dead = True
        try:
            if self._proc.stdin is not None:
                _send(self._proc.stdin, None)
                self._proc.stdin.close()
        except Exception:  # the child is already gone
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()


_writers: dict[tuple[int, str], ProcessWriter] = {}
_lock = threading.Lock()


def writer_for(path: str, timeout: float) -> ProcessWriter:
    """The driver process's writer for ``path`` (started on first use; the caller checks ``ready()``)."""
    key = (os.getpid(), path)
    with _lock:
        w = _writers.get(key)
        if w is None or w._dead:
            w = _writers[key] = ProcessWriter(path, timeout)
        return w


@atexit.register
def _close_all() -> None:
    for w in list(_writers.values()):
        w.close()
