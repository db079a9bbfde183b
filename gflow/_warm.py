"""``@gflow.warm``: a loader whose value is kept per worker process and reused by every later call there.

A warm value (a model, a tokenizer, an open database) is loaded once per process and key (the loader's
arguments), whichever thread asks first; the other threads that ask while it loads wait for that load
instead of starting their own. ``max_items`` bounds how many values one loader keeps (least recently used
out first: one model on a GPU at a time). A loader that raises gives its error to every call that was
waiting on that load, and keeps nothing: the next call tries again. Values are never stored or serialized
(pickling a loader pickles a reference to it, never its values), and they are not part of any cache key:
the loader's code is, like any helper a task references (see ``gflow.tasks._version``).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from gflow.errors import InvalidArguments

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["Warm", "warm"]


class _Slot:
    """One key's load: the thread that loads fills it; threads that ask meanwhile wait on ``done``."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class Warm(Generic[P, R]):
    """A ``@gflow.warm`` loader. Call it like the function; the value is loaded once per process and key."""

    def __init__(self, fn: Callable[P, R], max_items: int | None = None):
        if max_items is not None and (type(max_items) is not int or max_items < 1):
            raise InvalidArguments(f"@gflow.warm on {getattr(fn, '__qualname__', fn)!r}: max_items must be an "
                                   f"integer of at least 1, got {max_items!r}")
        self.fn = fn
        self.max_items = max_items
        self.loads = 0  # how many times the loader ran in this process (benchmarks and tests read it)
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, _Slot] = OrderedDict()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        key = _key(args, kwargs)
        with self._lock:
            slot = self._values.get(key)
            mine = slot is None
            if slot is None:
                slot = self._values[key] = _Slot()
                self.loads += 1
            else:
                self._values.move_to_end(key)
        if not mine:
            slot.done.wait()
            if slot.error is not None:
                raise slot.error
            return slot.value
        try:
            slot.value = self.fn(*args, **kwargs)
        except BaseException as e:
            slot.error = e
            with self._lock:  # nothing kept: the next call loads again
                if self._values.get(key) is slot:
                    del self._values[key]
            slot.done.set()
            raise
        slot.done.set()
        self._evict()
        return slot.value

    def _evict(self) -> None:
        if self.max_items is None:
            return
        with self._lock:
            while len(self._values) > self.max_items:
                self._values.popitem(last=False)  # the least recently used; its value goes with the last user

    def cached(self) -> int:
        """How many values this process holds for this loader."""
        with self._lock:
            return sum(1 for s in self._values.values() if s.done.is_set())

    def clear(self) -> None:
        """Release every value this process holds (a loaded model's memory goes with its last user)."""
        with self._lock:
            self._values.clear()

    def __reduce__(self) -> Any:
        # a warm value never crosses a process: a loader pickles as a reference to its module-level name
        return (_import_warm, (f"{self.fn.__module__}:{self.fn.__qualname__}",))

    def __repr__(self) -> str:
        return f"<gflow.warm {self.fn.__module__}:{self.fn.__qualname__}>"


def _import_warm(path: str) -> Any:
    from gflow.serialization import import_path

    return import_path(path)


def _key(args: tuple, kwargs: dict) -> Hashable:
    key = (args, tuple(sorted(kwargs.items()))) if kwargs else args
    try:
        hash(key)
    except TypeError:
        raise InvalidArguments(f"a @gflow.warm loader's arguments must be hashable (they key its values), got "
                               f"{_types(args, kwargs)}") from None
    return key


def _types(args: tuple, kwargs: dict) -> str:
    return ", ".join([type(a).__name__ for a in args] + [f"{k}={type(v).__name__}" for k, v in kwargs.items()])


@overload
def warm(fn: Callable[P, R], /) -> Warm[P, R]: ...


@overload
def warm(fn: None = None, /, *, max_items: int | None = None) -> Callable[[Callable[P, R]], Warm[P, R]]: ...


def warm(fn: Callable[P, R] | None = None, /, *, max_items: int | None = None) -> Any:
    """Keep a loader's value per worker process: ``@gflow.warm`` or ``@gflow.warm(max_items=1)``.

    Args:
        max_items: keep at most this many values (one per distinct arguments), dropping the least
            recently used; default unbounded.
    """
    if fn is not None:
        if not callable(fn):
            raise TypeError(f"@gflow.warm needs a function, got {type(fn).__name__}")
        return Warm(fn, max_items)

    def wrap(f: Callable[P, R]) -> Warm[P, R]:
        if not callable(f):
            raise TypeError(f"@gflow.warm needs a function, got {type(f).__name__}")
        return Warm(f, max_items)

    return wrap
