"""Futures: what a task call returns inside a flow."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

from gflow._walk import LEAF as _LEAF
from gflow._walk import substitute
from gflow.flows._core import Node
from gflow.states import State



class Future(Node):
    """The pending result of a task call. Pass it to other tasks, or call ``.result()`` to wait."""

    __slots__ = ()

    def result(self, timeout: float | None = None) -> Any:
        """Block until the call finishes; return its value or raise ``gflow.TaskFailed``."""
        if not self.state.terminal:
            self.engine.wait(self, timeout)
        if self.state is State.SUCCEEDED or self.state is State.CACHED:
            return self.value
        raise self.engine.error_of(self)

    def done(self) -> bool:
        return self.state.terminal

    @property
    def task_run_id(self) -> str:
        return self.id

    def __repr__(self) -> str:
        name = self.task.name if self.task is not None else "subflow"
        return f"<gflow.Future {name} {self.id} {self.state.value}>"

    def __bool__(self) -> bool:
        raise TypeError(
            "a gflow Future has no truth value; call .result() to wait for the value before using it in an `if`")

    def __iter__(self):
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
