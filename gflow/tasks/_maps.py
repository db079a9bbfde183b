"""Options of one map (``task.map(xs, min_success=0.95, max_concurrency=50)``) and what a tolerated failure
of an element becomes: a :class:`Failed` value in the map's list.

A map with options gets one :class:`MapGroup`, shared by its elements' task states. ``min_success``: an
element whose attempts are spent fails as usual (recorded FAILED, with its error), but while the map's
failures stay within ``total - ceil(total * min_success)`` it is *tolerated*: its value is a ``Failed`` and
its dependents run as if it had succeeded, and the run does not fail for it. The failure past that allowance
fails as a plain failure does (its dependents and the run fail; tolerated ones stay ``Failed``).
``max_concurrency``: at most that many of the map's elements are submitted and not yet finished at once, on
any executor (the engine holds the rest back; array backends see smaller batches)."""

from __future__ import annotations

import itertools
import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from gflow.errors import InvalidArguments
from gflow.states import State

_ids = itertools.count(1)
#: the keyword arguments of ``Task.map`` that are options of the map, never arguments of its calls
MAP_OPTIONS = ("min_success", "max_concurrency")


class Failed(BaseModel):
    """A map element that failed under ``min_success``: stands in for its value in the map's list.

    Attributes:
        error_type: The error's type (``ValueError``, ``gflow.errors.OutOfMemory`` ...).
        message: The error's message.
        task_run_id: The failed task run (``gflow logs RUN --task-run ID`` shows it all).
        index: The element's position in the map.
    """

    model_config = ConfigDict(frozen=True)

    error_type: str
    message: str
    task_run_id: str
    index: int | None = None


def map_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Check ``min_success`` and ``max_concurrency`` of ``task.map``; raises one clear line, before anything
    is submitted."""
    ms, mc = options.get("min_success"), options.get("max_concurrency")
    if ms is not None and (isinstance(ms, bool) or not isinstance(ms, (int, float)) or not 0 < ms <= 1):
        raise InvalidArguments(f"task '{name}'.map(min_success={ms!r}): it must be a fraction in (0, 1], "
                               f"e.g. 0.95 (at least 95% of the elements must succeed)")
    if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
        raise InvalidArguments(f"task '{name}'.map(max_concurrency={mc!r}): it must be a whole number >= 1")
    return {"min_success": None if ms is None else float(ms), "max_concurrency": mc}


class MapGroup:
    """The shared state of one map's elements (only the scheduling core reads and writes it)."""

    __slots__ = ("key", "task", "total", "min_success", "max_concurrency", "failed", "allowed")

    def __init__(self, task: str, total: int, min_success: float | None, max_concurrency: int | None):
        self.key = f"gflow:map:{next(_ids)}"  # the concurrency slot key of this map (a task's is its identity)
        self.task = task
        self.total = total
        self.min_success = min_success
        self.max_concurrency = max_concurrency
        self.failed = 0
        # the most elements that may fail: total - ceil(total * min_success), with float noise ignored
        self.allowed = 0 if min_success is None else total - math.ceil(total * min_success - 1e-9)

    def tolerate(self) -> bool:
        """One more element failed for good: True while the failures stay within the allowance."""
        if self.min_success is None:
            return False
        self.failed += 1
        return self.failed <= self.allowed

    def summary(self) -> str:
        """``9,997 of 10,000 succeeded`` (with the task's name)."""
        return f"map '{self.task}': {self.total - self.failed:,} of {self.total:,} succeeded"


def tolerated(ts: Any) -> bool:
    """A map element that failed within its map's ``min_success``: its value is a :class:`Failed`."""
    return ts.state is State.FAILED and type(ts.value) is Failed


def group_for(task: Any, total: int, options: dict[str, Any] | None) -> MapGroup | None:
    if not options or (options.get("min_success") is None and options.get("max_concurrency") is None):
        return None
    return MapGroup(task.name, total, options.get("min_success"), options.get("max_concurrency"))


def map_here(task: Any, rows: list[tuple], common: dict[str, Any], min_success: float) -> list[Any]:
    """``task.map(xs, min_success=...)`` outside a flow: plain calls, failed ones :class:`Failed` while enough
    succeed; past the allowance the first error past it is raised, as a plain map would."""
    group = MapGroup(task.name, len(rows), min_success, None)
    out: list[Any] = []
    for i, row in enumerate(rows):
        try:
            out.append(task.invoke(row, common))
        except Exception as e:
            if not group.tolerate():
                raise
            out.append(Failed(error_type=qualified(type(e)), message=str(e), task_run_id="", index=i))
    return out


def qualified(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
