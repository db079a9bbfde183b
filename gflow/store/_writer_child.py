"""The SQLite writer's child process: ``python -m gflow.store._writer_child PATH TIMEOUT`` applies the
batches :class:`gflow.store._writer.ProcessWriter` sends to one SQLite file. Kept apart from the writer so
that ``sqlite`` imports the writer and the writer never imports ``sqlite`` back (only this child does)."""

from __future__ import annotations

import os
import sys

from gflow.errors import StoreFull
from gflow.store._writer import _recv, _send
from gflow.store.sqlite import SQLiteStore


def serve(path: str, timeout: float) -> None:
    """Apply the batches read from stdin to ``path`` until the driver closes the pipe."""
    rd, wr = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing else may write to the protocol pipe
    store = SQLiteStore(path, timeout=timeout)
    _send(wr, ("ready", os.getpid()))
    while True:
        try:
            msg = _recv(rd)
        except (EOFError, OSError):
            return  # the driver is gone
        if msg is None:
            return
        try:
            _send(wr, ("ok", store.apply_rows(msg)))  # transition rows: nothing to rebuild
        except StoreFull as e:  # its type crosses the pipe: the driver gives up on a full disk after a while
            _send(wr, ("full", str(e)))
        except Exception as e:  # noqa: BLE001 - reported to the driver, which retries
            _send(wr, ("error", f"{type(e).__name__}: {e}"))


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
