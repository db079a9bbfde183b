"""The executor contract: everything a backend author needs to know is in this module.

An executor runs *calls* (one attempt of one task call) somewhere and reports how they went. The
engine is its only client, and the engine's scheduling core decides every state change; executors never
touch the state store.

Lifecycle (a context manager)::

    ex.attach_artifacts(store)      # the run's artifact store (remote backends pass values through it)
    ex.start(listener)              # once per run, before the first submit
    ex.preflight()                  # the flow runner: setup checks before the run is recorded
    ex.image_tag_for(flow)          # then the image the run records (built or taken as given)
    handles = ex.submit(calls)      # a batch: a fan-out arrives as one batch (one array job where possible)
    ex.poll(handles)                # a look at the handles' states (tools and tests; the engine hears only events)
    ex.cancel(handles)              # queued calls never start; running ones stop where the backend can
    ex.close()                      # idempotent

Reporting. An executor calls ``listener(event)`` from any thread with the typed events of
:mod:`gflow.executors.events`: :class:`CallStarted` ``(call_id, attempt, ts, description=None)`` when a
call starts (``ts`` in seconds since the epoch as the backend saw it; ``description``, what the call runs
as when that is learnt only at the start, a container id or a pod name, is recorded with RUNNING instead
of :meth:`Executor.describe_handle`'s), and :class:`CallDone` ``(call_id, attempt, outcome)``. Every
handle reaches exactly one ``CallDone`` unless it was cancelled, and at most one ``CallStarted``. An
outcome's ``started`` is the time the call really started: the engine records RUNNING with it, so
durations are right even when the start is only learnt with the outcome. An executor whose starts are
cheaper to collect than to push (the local thread pool) sets ``capabilities.start_poll_interval`` and
returns them from :meth:`Executor.poll_starts` instead. Backends that must ask for their jobs' status
(batch services) use the one polling monitor, :mod:`gflow.executors.polling`, with a small handler.

Failures. A call that failed on the backend without an outcome record of its own (killed for memory,
preempted, evicted, its image not pulled) ends with an outcome whose class is one of the
:class:`~gflow.errors.ExecutorError` subclasses, mapped from the backend's own name in ONE table
(:data:`gflow.errors.FAILURES`, :func:`gflow.executors.polling.failed`); ``Outcome.error_class`` gives the class,
``error_type`` its qualified name for the records. Decisions compare classes, never strings.

Capacity. :meth:`Executor.capacity` is the one question the engine asks before a batch: how many
more calls the backend accepts now. The rest waits, ready, in the engine's core.

What a backend can do is declared in :class:`Capabilities` (``Executor.capabilities``), never
probed. Values cross the boundary in canonical form only (``gflow.serialization``); a remote
backend passes them through the artifact store (``gflow.images.protocol``: call spec -> ``gflow
worker`` -> outcome record) and returns outcomes whose ``result_ref`` already names the stored
result, which the engine records as is (no second encode or upload).
"""

from __future__ import annotations

import abc
import pickle
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gflow.errors import error_class
from gflow.executors.events import CallDone, CallEvent, CallStarted, Listener
from gflow.states import State
from gflow.tasks import Task

__all__ = ["UPSTREAM_PENDING", "Call", "CallDone", "CallEvent", "CallStarted", "Capabilities", "Executor", "JobStatus",
           "Listener", "Outcome", "Ref", "StartReport", "importable_problem", "qualname", "run_task"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do. Declared per executor class (or per instance, where it depends on options).

    Attributes:
        reports_start: A call's start is known before its outcome (pushed, or by ``poll_starts``).
            False: the start arrives with the outcome, so the engine counts a timeout from submit.
        start_poll_interval: If set, the engine calls :meth:`Executor.poll_starts` this often (seconds)
            while calls are in flight, instead of receiving a ``"started"`` event per call.
        accepts_refs: The backend can start a call before its inputs exist, given :class:`Ref`
            placeholders in the arguments and ``Call.refs``: dependent chains stay on the backend.
        array_jobs: A batch of calls of one task becomes one backend job (an array).
        spot: The backend runs calls on spot / preemptible capacity when their resources ask for it.

    Every executor reports through its listener (typed events); backends that must ask for their
    jobs' status do it in their own :class:`~gflow.executors.polling.PollingMonitor`, not in the engine.
    """

    reports_start: bool = True
    start_poll_interval: float | None = None
    accepts_refs: bool = False
    array_jobs: bool = False
    #: calls with ``Resources(spot=True)`` run on reclaimable capacity here; a task asking for spot on an
    #: executor without it is refused at the call, before anything is submitted
    spot: bool = False


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
    """How an attempt ended. ``exc`` is the live exception where the backend can carry it.

    Attributes:
        result_ref: The digest of the result already stored in the run's artifact store by a remote
            worker; the engine records it without encoding or uploading the value again.
        info: Backend details recorded on the task run (exit code, job id, log stream, attempts).
    """

    ok: bool
    value: Any = None
    exc: BaseException | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    started: float | None = None
    ended: float | None = None
    result_ref: str | None = None
    info: dict[str, Any] | None = None

    @classmethod
    def from_exception(cls, e: BaseException, tb: str, started: float | None, ended: float) -> Outcome:
        return cls(ok=False, exc=e, error_type=qualname(type(e)), error_message=str(e), traceback=tb,
                   started=started, ended=ended)

    @property
    def error_class(self) -> type[BaseException] | None:
        """The failure's class, for decisions by type (``issubclass(out.error_class, gflow.OutOfMemory)``):
        the live exception's, else the class ``error_type`` names (gflow's and builtins only,
        :func:`gflow.errors.error_class`); None for a success or an unknown name."""
        if self.ok:
            return None
        if self.exc is not None:
            return type(self.exc)
        return error_class(self.error_type)


def qualname(t: type) -> str:
    """``module.QualName`` of a class (builtins by bare name): what ``error_type`` records."""
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


_qualname = qualname  # the old private name, kept for callers outside gflow


def run_task(task: Any, args: tuple, kwargs: dict) -> Outcome:
    """Run a task's function here and say how it went (the body of a call in a pool or cluster worker).
    The exception travels only if it pickles; its type name, message and traceback always do."""
    from gflow.usage import thread_meter, thread_usage

    m = thread_meter()  # a cluster worker runs calls in threads: usage is measured per thread
    t0 = m[0]
    try:
        value = task.invoke(args, kwargs)
        t1 = time.time()
        return Outcome(True, value, started=t0, ended=t1, info={"usage": thread_usage(m, task, t1)})
    except BaseException as e:  # noqa: BLE001 - reported, not swallowed
        t1 = time.time()
        out = Outcome.from_exception(e, traceback.format_exc(), t0, t1)
        out.info = {"usage": thread_usage(m, task, t1)}
        try:
            pickle.loads(pickle.dumps(e))
        except Exception:  # noqa: BLE001
            out.exc = None
        return out


def importable_problem(task: Any) -> str | None:
    """Why another process (a pool worker, a Dask worker, a container) could not import ``task`` by
    its ``module:qualname``; None if it can, as far as this process can tell (the module must also be
    installed or on the path there)."""
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


@dataclass(frozen=True, slots=True)
class StartReport:
    """A call that started (from :meth:`Executor.poll_starts`)."""

    call_id: str
    attempt: int
    ts: float




class Executor(abc.ABC):
    """Base class of executors; a context manager. See the module docstring for the contract."""

    name: str = "executor"
    capabilities: Capabilities = Capabilities()
    _listener: Listener

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> Executor:
        """An executor from its URL and a profile's settings for this backend (the URL's own query
        parameters win). The default ignores the URL: ``cls(**settings)``."""
        return cls(**settings)

    def start(self, listener: Listener) -> None:
        """Called by the engine before the first submit of a run (again for each run that reuses this executor)."""
        self._listener = listener

    @abc.abstractmethod
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        """Start a batch of calls; returns one handle per call (in order). A batch may mix tasks.

        Raises:
            ExecutorError: the backend refused the whole batch (each call then fails, and is retried
                per its task's policy).
        """

    def reattach(self, calls: Sequence[Call], records: Sequence[Any]) -> list[Any]:
        """Follow jobs a dead driver left running instead of submitting ``calls`` again (``gflow resume``).

        ``records[i]`` is the dead run's task run (``TaskRunRecord``) of ``calls[i]``: same input key, its id the
        old call id its job's call spec names. A backend that lists its jobs by the run's tags or labels returns,
        per call, a handle that reports the old job's outcome under ``calls[i].id`` (read from the old call
        spec's outcome slot), or None where the job failed, vanished, or cannot be found: that call is
        submitted as usual. The default finds nothing.
        """
        return [None] * len(calls)

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        """Each handle's state as the executor knows it now (for tools and tests: the engine hears only the
        listener's events). The default reads a ``state`` attribute of the handle (QUEUED if it has none)."""
        return [JobStatus(getattr(h, "state", State.QUEUED)) for h in handles]

    @abc.abstractmethod
    def cancel(self, handles: Sequence[Any]) -> None:
        """Stop these calls (queued ones never start; running ones are stopped where possible)."""

    def poll_starts(self) -> list[StartReport]:
        """Calls that started since the last call (only for ``capabilities.start_poll_interval``)."""
        return []

    def attach_artifacts(self, artifacts: Any) -> None:
        """The engine hands over the run's artifact store before ``start`` (remote executors pass
        inputs and outcomes through it by reference); local executors ignore it."""

    def capacity(self) -> int:
        """How many more calls the backend accepts right now."""
        return sys.maxsize

    def describe_handle(self, handle: Any) -> str:
        """A short string for the state store (job id, array index, container, pod ...)."""
        return str(handle)

    def preflight(self) -> None:
        """Check, before a run is recorded, that calls can run here at all: credentials, region, cluster,
        and the artifact store this executor was attached (it must exist and be one the backend's workers can
        reach). The flow runner calls it once per run, after :meth:`attach_artifacts` and before
        :meth:`image_tag_for` (so a missing cluster is named before any image is built). Cheap and idempotent:
        a few read-only requests at most.

        Raises:
            GflowError: one line naming what is wrong and the fix (ConfigError for settings and setup).
        """

    def image_tag_for(self, flow: Any) -> str | None:
        """For image-based executors: build (if needed) the flow's image before the run is recorded and
        return the tag the run records. None for executors that run code in this environment."""
        return None

    def image_key(self, task: Any) -> str | None:
        """The image a task's calls run in, as it enters the task's cache key (None: no image)."""
        return None

    @classmethod
    def fetch_logs(cls, spec: str, handle: str, info: dict[str, Any] | None = None) -> str | None:
        """The backend's log of one task run (``gflow logs --task-run``), from the executor spec the run
        recorded and the task run's recorded handle and info; None where the backend keeps none at all.

        Raises:
            GflowError: a backend that keeps logs has none for this task run: the message says why (no job
                recorded, the pod or log stream is gone, no permission to read it, ...).
        """
        return None

    def close(self) -> None:
        """Release the backend (idempotent)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
