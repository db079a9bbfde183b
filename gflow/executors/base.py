"""The executor interface every backend implements.

``submit(calls)`` takes a batch (so a map can become one array job), ``poll(handles)`` reports
states, ``cancel(handles)`` stops them, ``close()`` releases the backend; ``can_submit(n)`` is how
the engine asks for capacity. Executors never touch the state store: they report outcomes and the
engine records them. An executor that can push events (``pushes_events = True``) calls the
listener given to :meth:`Executor.start`; others are polled.
"""

from __future__ import annotations

import abc
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gflow.states import State


@dataclass(slots=True)
class Call:
    """One attempt of one task call, as handed to an executor."""

    id: str
    run_id: str
    task: Any
    args: tuple
    kwargs: dict
    attempt: int = 1
    key: str | None = None
    index: int | None = None
    image: str | None = None
    refs: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> Any:
        return self.task.options


@dataclass(slots=True)
class Outcome:
    """How an attempt ended. ``exc`` is the live exception where the backend can carry it."""

    ok: bool
    value: Any = None
    exc: BaseException | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    started: float | None = None
    ended: float | None = None
    result_ref: str | None = None

    @classmethod
    def from_exception(cls, e: BaseException, tb: str, started: float | None, ended: float) -> Outcome:
        return cls(ok=False, exc=e, error_type=_qualname(type(e)), error_message=str(e), traceback=tb,
                   started=started, ended=ended)


def _qualname(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def importable_problem(task: Any) -> str | None:
    """Why another process (a pool worker, a Dask worker, a container) could not import ``task`` by
    its ``module:qualname``; None if it can, as far as this process can tell (the module must also be
    installed or on the path there)."""
    import sys

    from gflow.tasks import Task

    mod_name, _, qual = task.identity.partition(":")
    if "<locals>" in qual:
        return (f"task '{task.name}' is defined inside a function ({task.identity}); other processes import "
                f"tasks by module:qualname, so define it at module level")
    module = sys.modules.get(mod_name)
    main = sys.modules.get("__main__")
    if module is None and main is not None and getattr(task.fn, "__module__", None) == "__main__":
        module = main  # a script run as __main__: workers import it by its file's stem
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if not isinstance(obj, Task) and not callable(obj):
        return (f"task '{task.name}': {task.identity} cannot be found by import (decorate the function with "
                f"@gflow.task at module level where it is defined)")
    return None


#: error_type of an Outcome that says "an input of this speculative call was not available (its upstream
#: attempt failed or its result was released)": not a failure of the call; the engine runs it again
#: the ordinary way once its inputs are known
UPSTREAM_PENDING = "gflow.upstream-pending"


class Ref:
    """Stands, inside a speculative call's arguments, for the result of the call ``call_id``, still
    running on the same backend (executors with ``accepts_refs`` resolve it there)."""

    __slots__ = ("call_id",)

    def __init__(self, call_id: str):
        self.call_id = call_id

    def __reduce__(self) -> Any:
        return (Ref, (self.call_id,))

    def __repr__(self) -> str:
        return f"Ref({self.call_id})"


@dataclass(slots=True)
class JobStatus:
    """What :meth:`Executor.poll` returns for one handle."""

    state: State
    outcome: Outcome | None = None


#: listener(kind, call_id, attempt, payload): kind is "started" (payload = timestamp) or "done" (an Outcome)
Listener = Callable[[str, str, int, Any], None]


class Executor(abc.ABC):
    """Base class of executors; a context manager."""

    name: str = "executor"
    pushes_events: bool = False
    #: False when "started" is only known at the end; the engine then arms timeouts at submit time
    reports_start: bool = True
    #: the backend can start a call before its inputs exist, given ``Ref`` placeholders and
    #: ``Call.refs`` (dep call id -> the dep's handle): dependent chains then stay on the backend
    accepts_refs: bool = False
    #: optional dict (call id -> (attempt, start time)) the executor fills instead of sending
    #: "started" events; the engine reads it every ``board_interval`` seconds
    started_board: dict | None = None
    board_interval: float = 0.02
    poll_interval: float = 0.5

    def start(self, listener: Listener) -> None:
        """Called once by the engine before the first submit."""
        self._listener = listener

    @abc.abstractmethod
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        """Start a batch of calls; returns one handle per call (in order)."""

    @abc.abstractmethod
    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        """Current state of each handle (and its outcome once finished)."""

    @abc.abstractmethod
    def cancel(self, handles: Sequence[Any]) -> None:
        """Stop these calls (queued ones never start; running ones are stopped where possible)."""

    def attach_artifacts(self, artifacts: Any) -> None:
        """The engine hands over the run's artifact store before ``start`` (remote executors pass
        inputs and outcomes through it by reference); local executors ignore it."""

    def can_submit(self, n: int = 1) -> bool:
        """Whether ``n`` more calls can be accepted now."""
        return self.capacity() >= n

    def capacity(self) -> int:
        """How many more calls the backend accepts right now."""
        return sys.maxsize

    def describe_handle(self, handle: Any) -> str:
        """A short string for the state store (job id, array index, ...)."""
        return str(handle)

    def close(self) -> None:
        """Release the backend (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
