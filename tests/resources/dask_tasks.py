"""Tasks for the Dask executor tests. They live in an importable module because Dask workers import
tasks by ``module:qualname`` (``Task.__reduce__``); ``tests/resources`` is put on ``sys.path`` by
``tests/test_dask.py`` before its cluster starts, and the worker processes inherit it."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gflow


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.task
def add(a: int, b: int) -> int:
    return a + b


@gflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


def _bump(path: str) -> int:
    """Count calls in a file (workers are separate processes); returns this call's number."""
    p = Path(path)
    with open(p, "a") as f:
        f.write("x")
    return len(p.read_text())


@gflow.task(retries=3)
def flaky(path: str, fails: int) -> str:
    n = _bump(path)
    if n <= fails:
        raise RuntimeError(f"flaky failure {n}")
    return f"ok after {n}"


@gflow.task
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


class LockedError(Exception):
    """An exception that cannot be pickled (it holds a lock)."""

    def __init__(self, msg: str):
        super().__init__(msg)
        self.lock = threading.Lock()


@gflow.task
def raise_unpicklable() -> int:
    raise LockedError("cannot travel")


@gflow.task
def sleepy(seconds: float, path: str = "") -> float:
    if path:
        n = _bump(path)
        if n > 1:  # later attempts are quick
            return 0.0
    time.sleep(seconds)
    return seconds


@gflow.task(cache=True)
def cached_square(x: int, path: str) -> int:
    _bump(path)
    return x * x


@gflow.task
def where(i: int = 0) -> str:
    from distributed import get_worker

    return get_worker().address


@gflow.task(max_concurrency=1)
def interval(i: int, folder: str, seconds: float = 0.3) -> list[float]:
    t0 = time.time()
    time.sleep(seconds)
    t1 = time.time()
    Path(folder, f"{i}.txt").write_text(f"{t0} {t1}")
    return [t0, t1]


@gflow.task(retries=1)
def die_once(flag: str) -> int:
    """Kills its worker process on the first attempt."""
    if not os.path.exists(flag):
        Path(flag).write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


@gflow.task
def marked_sleep(i: int, folder: str, seconds: float) -> int:
    Path(folder, f"{i}.started").write_text("")
    time.sleep(seconds)
    return i


@gflow.task
def unpicklable_result() -> object:
    return threading.Lock()


@gflow.task(retries=2)
def killable_sleep(i: int, seconds: float) -> int:
    """A task long enough to be killed in the middle (its worker process gets SIGKILL from the test)."""
    time.sleep(seconds)
    return i * i


@gflow.flow
def killable_map(n: int, seconds: float) -> int:
    return total(killable_sleep.map(range(n), seconds=seconds))
