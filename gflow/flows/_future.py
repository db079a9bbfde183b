"""Futures: what a task call returns inside a flow. The engine resolves them; the scheduler keeps its own
task states (``gflow.flows._events.TaskState``), which users never see."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from gflow._walk import LEAF as _LEAF
from gflow._walk import substitute

T = TypeVar("T")


class Future(Generic[T]):
    """The pending result of a task call. Pass it to other tasks, or call ``.result()`` to wait."""

    __slots__ = ("id", "run_id", "name", "_engine", "_done", "_ok", "_value", "_error", "__weakref__")

    def __init__(self, id: str, run_id: str, name: str, engine: Any):
        self.id = id
        self.run_id = run_id
        self.name = name
        self._engine = engine
        self._done = False
        self._ok = False
        self._value: Any = None
        self._error: BaseException | None = None

    def result(self, timeout: float | None = None) -> T:
        """Block until the call finishes; return its value or raise ``gflow.TaskFailed``."""
        if not self._done:
            self._engine.wait(self, timeout)
        if self._ok:
            return self._value  # type: ignore[no-any-return,unused-ignore]
        assert self._error is not None
        raise self._error

    def done(self) -> bool:
        return self._done

    def _set(self, ok: bool, value: Any, error: BaseException | None) -> None:
        """Called by the engine thread once the call is finished (before waiters are woken)."""
        self._ok = ok
        self._value = value
        self._error = error
        self._done = True

    @property
    def task_run_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        state = "done" if self._done and self._ok else "failed" if self._done else "pending"
        return f"<gflow.Future {self.name} {self.id} {state}>"

    def __bool__(self) -> bool:
        raise TypeError(
            "a gflow Future has no truth value; call .result() to wait for the value before using it in an `if`")

    def __iter__(self) -> Any:
        raise TypeError("a gflow Future is not iterable; call .result() first, or use task.map() to fan out")


def find_futures(value: Any, out: list[Future]) -> bool:
    """Append every Future inside ``value`` (lists, tuples, sets, dicts, pydantic fields) to ``out``."""
    t = type(value)
    if t in _LEAF:
        return False
    if t is Future:
        out.append(value)
        return True
    found = False
    if t is list or t is tuple or t is set or t is frozenset:
        for v in value:
            if type(v) not in _LEAF:
                found = find_futures(v, out) or found
    elif t is dict:
        for v in value.values():
            if type(v) not in _LEAF:
                found = find_futures(v, out) or found
    elif isinstance(value, BaseModel):
        for v in value.__dict__.values():
            if type(v) not in _LEAF:
                found = find_futures(v, out) or found
    return found


def resolve(value: Any, get: Callable[[Future], Any] = Future.result) -> Any:
    """Replace every Future inside ``value`` by its result (rebuilding containers)."""
    return substitute(value, Future, get)
