"""Garbage-collector tuning while flows run in this process.

A flow's driver creates many long-lived objects quickly (a task state, a future and a few rows per call).
With Python's default thresholds (700, 10, 10) the collector runs a young collection every 700
allocations and, as survivors pile up, repeated full ones that walk everything again: 10-20% of the
wall time of a 10,000-task map of trivial tasks (benchmarks/RESULTS.md). While at least one flow runs,
gflow raises the young-generation threshold to ``GFLOW_GC_GEN0`` (default 50,000; the older generations
to 100) and puts the previous thresholds back when the last run in the process ends. Collection still
happens, less often; ``GFLOW_GC_GEN0=0`` leaves the collector alone. A threshold the user set higher, or
a disabled collector, is left as it is.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


def _gen0() -> int:
    try:
        return max(0, int(os.environ.get("GFLOW_GC_GEN0", "50000")))
    except ValueError:
        return 50000


@contextmanager
def gc_tuned() -> Iterator[None]:
    """Raise the collector's thresholds while the body runs (nested and concurrent runs count once)."""
    global _depth, _saved
    with _lock:
        _depth += 1
        if _depth == 1:
            gen0 = _gen0()
            cur = gc.get_threshold()
            if gen0 and gc.isenabled() and 0 < cur[0] < gen0:
                _saved = cur
                gc.set_threshold(gen0, max(cur[1], 100), max(cur[2], 100))
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None
