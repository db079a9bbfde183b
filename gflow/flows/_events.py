"""The scheduling core's vocabulary: task states, events in, instructions out.

Events say what happened (a flow body added calls, an executor reported a start or an outcome, a timer
fired, a cache lookup came back, someone asked to cancel, a flow body returned). Instructions say what
the engine must do (submit a batch, cancel handles, record transitions, look values up, arm a timer,
resolve futures, finish a run). All are small slotted dataclasses; every event carries a
``stimulus_id`` and the instructions it causes carry the same one, so a task's story can be traced.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from gflow.executors.base import Call, Capabilities, Outcome
from gflow.states import State
from gflow.store.base import Row, RunRecord, TaskRunRecord

# -- task state ------------------------------------------------------------------------------------------

CALL, MAP, SUBFLOW = "call", "map", "subflow"


class TaskState:
    """One task call in a run, as the core sees it. Only the core reads and writes it once added.

    ``deps`` holds the ids of the calls it waits for until the core links them (``CallsAdded``).
    """

    __slots__ = ("id", "run_id", "task", "kind", "arguments", "deps", "waiting", "dependents", "state", "attempt",
                 "value", "error", "key", "ikey", "image", "handle", "desc", "index", "executor", "expand", "stash",
                 "looking", "result_ref", "result_inline", "started", "speculative", "twins", "version", "reclaims",
                 "group")

    def __init__(self, id: str, run_id: str, task: Any, arguments: Any, deps: list[Any], *, kind: str = CALL,
                 key: str | None = None, ikey: str | None = None, index: int | None = None, executor: str = "",
                 expand: Any = None, image: str | None = None, version: str | None = None):
        self.id = id
        self.run_id = run_id
        self.task = task
        self.kind = kind
        #: bound, validated arguments until the call is submitted or resolved; for a map, its children once fanned out
        self.arguments: Any = arguments
        self.deps: list[Any] = deps
        self.waiting = 0
        self.dependents: list[TaskState] | None = None
        self.state = State.PENDING
        self.attempt = 1
        self.value: Any = None
        #: a BaseException (own failure) or the TaskState whose failure kept this one from running
        self.error: Any = None
        self.key = key
        self.ikey = ikey
        #: the image its calls run in (part of the cache key), from the executor
        self.image = image
        #: the task's code version (part of the cache key), computed outside the core: the core reads no files
        self.version = version
        self.handle: Any = None
        #: the executor's description of the handle (job id, container, ...), recorded with RUNNING
        self.desc: str | None = None
        self.index = index
        self.executor = executor
        #: a map over futures: (task, iterables, common, new_child) to fan out once they resolve
        self.expand = expand
        #: a speculative call's outcome that arrived before its inputs' outcomes
        self.stash: Outcome | None = None
        self.looking = False
        self.result_ref: str | None = None
        self.result_inline: str | None = None
        self.started: float | None = None
        self.speculative = False
        #: cacheable calls with the same key made while this one was in flight: they take its result
        self.twins: list[TaskState] | None = None
        #: spot reclaims so far (``Preempted`` failures retried under ``Retry(spot=N)``, not counted in ``count``)
        self.reclaims = 0
        #: the map this call is an element of, when the map has options (``min_success``, ``max_concurrency``)
        self.group: Any = None

    @property
    def name(self) -> str:
        return self.task.name if self.task is not None else "subflow"

    def __repr__(self) -> str:
        return f"<TaskState {self.name} {self.id} {self.state.value} attempt={self.attempt}>"


@dataclass(slots=True)
class CacheHit:
    """A stored result found for a call: its value (already read and decoded), where it is stored, whence."""

    value: Any
    result_ref: str | None
    result_inline: str | None
    source: str  # the task run it came from ("this run" for the in-memory cache)
    version_changed: bool = False


# -- events ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Event:
    stimulus_id: str = ""
    kind: ClassVar[str] = "event"


@dataclass(slots=True)
class ExecutorAdded(Event):
    """An executor the engine opened (the flow's, or one a task is routed to)."""

    name: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)


@dataclass(slots=True)
class RunStarted(Event):
    """A flow or subflow run began; ``parent`` is the subflow's task state id in the parent run."""

    run: RunRecord | None = None
    parent: str | None = None
    create: bool = False  # record the run (created, then RUNNING), in order with the task transitions
    running: bool = True  # False: its body starts later (``BodyStarted``), after whoever watches it subscribed


@dataclass(slots=True)
class CallsAdded(Event):
    """A flow body made calls (task calls, map elements, a map over a future, a subflow placeholder)."""

    tasks: list[TaskState] = field(default_factory=list)


@dataclass(slots=True)
class Dispatch(Event):
    """The engine asked ``executor`` for capacity: it accepts ``capacity`` more calls now."""

    executor: str = ""
    capacity: int = 0


@dataclass(slots=True)
class Submitted(Event):
    """A ``Submit`` went through: the handles, in the order of its calls."""

    executor: str = ""
    calls: list[Call] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    descriptions: list[str] | None = None
    capacity: int = 1 << 30  # what the executor accepts now, after this batch (bounds speculation)


@dataclass(slots=True)
class SubmitFailed(Event):
    """The backend refused a whole batch."""

    executor: str = ""
    calls: list[Call] = field(default_factory=list)
    error: BaseException | None = None
    traceback: str = ""


@dataclass(slots=True)
class Adopted(Event):
    """What :meth:`~gflow.executors.base.Executor.reattach` found for an ``Adopt``: a handle per call (None: the
    dead driver's job failed or is gone, so the call is queued as usual)."""

    executor: str = ""
    calls: list[Call] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)
    descriptions: list[str | None] | None = None


@dataclass(slots=True)
class Started(Event):
    id: str = ""
    attempt: int = 1
    ts: float = 0.0
    description: str | None = None  # what the call runs as (container, pod), if known only now


@dataclass(slots=True)
class Finished(Event):
    id: str = ""
    attempt: int = 1
    outcome: Outcome | None = None


@dataclass(slots=True)
class CacheLookedUp(Event):
    """Lookups done by the engine: ``hits`` maps a task state id to its hit (None: miss or unreadable)."""

    hits: dict[str, CacheHit | None] = field(default_factory=dict)


@dataclass(slots=True)
class TimerFired(Event):
    id: str = ""
    attempt: int = 1
    timer: str = ""  # "retry" or "timeout"


@dataclass(slots=True)
class CancelRequested(Event):
    run_id: str | None = None  # None: every run of this engine
    reason: str = "cancelled"
    external: bool = False  # cancelled from outside (the store says so): the run record is already CANCELLED
    error: BaseException | None = None  # the runs end FAILED with this error instead of CANCELLED


@dataclass(slots=True)
class BodyStarted(Event):
    """A top-level run's body starts now (its record was created by ``RunStarted(running=False)``)."""

    run_id: str = ""


@dataclass(slots=True)
class ArtifactsLost(Event):
    """The recorder could not write results to the artifact store: every run of the engine ends FAILED with
    ``error`` (resumable), and no more work starts."""

    error: BaseException | None = None


@dataclass(slots=True)
class Flushed(Event):
    """Everything recorded before a ``Flush`` is written, or given up on. ``lost``: why some of it is not stored
    (the artifact store lost results, or the state store refused writes for too long; set once it happened);
    ``held_back``: transitions the recorder did not write because a blob they reference was lost."""

    run_id: str = ""
    lost: BaseException | None = None
    held_back: list[Row] = field(default_factory=list)


@dataclass(slots=True)
class BodyReturned(Event):
    """A flow body returned ``value`` (which may hold futures) or raised ``error``."""

    run_id: str = ""
    value: Any = None
    error: BaseException | None = None
    traceback: str = ""


# -- instructions ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Instruction:
    stimulus_id: str = ""

    @classmethod
    def match(cls, **fields: Any) -> _Match:
        """A partial matcher for tests: ``Submit.match(executor="local") == instruction``."""
        return _Match(cls, fields)


class _Match:
    def __init__(self, cls: type, fields: dict[str, Any]):
        self.cls, self.fields = cls, fields

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.cls) and all(getattr(other, k) == v for k, v in self.fields.items())

    def __repr__(self) -> str:
        return f"{self.cls.__name__}.match({', '.join(f'{k}={v!r}' for k, v in self.fields.items())})"


@dataclass(slots=True)
class Submit(Instruction):
    executor: str = ""
    calls: list[Call] = field(default_factory=list)


@dataclass(slots=True)
class Adopt(Instruction):
    """Follow the jobs a dead driver left on ``executor`` for ``calls`` instead of submitting them: ``records``
    are the dead run's in-flight task runs of the same calls (same input key), in order."""

    executor: str = ""
    calls: list[Call] = field(default_factory=list)
    records: list[TaskRunRecord] = field(default_factory=list)


@dataclass(slots=True)
class CancelCalls(Instruction):
    executor: str = ""
    handles: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class Record(Instruction):
    """Transitions to record, in order, as rows (``gflow.store.base.Row``; ``transition_of`` makes them
    :class:`~gflow.store.base.Transition` objects); ``blobs`` are written to the artifact store first."""

    transitions: list[Row] = field(default_factory=list)
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class RecordRun(Instruction):
    """Create a run record, or move a run to ``state``, in order with the task transitions before it."""

    run_id: str = ""
    state: State | None = None
    ts: float = 0.0
    create: RunRecord | None = None
    error: str | None = None
    traceback: str | None = None
    result_ref: str | None = None
    result_inline: str | None = None
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: fields merged into the run record's ``extra`` with its terminal state (``maps``: partial maps' counts)
    extra: dict[str, Any] | None = None


@dataclass(slots=True)
class Flush(Instruction):
    """Write everything recorded so far, then report back with ``Flushed`` (a run's work is done: the core
    decides how it ends once it knows its results are stored)."""

    run_id: str = ""


@dataclass(slots=True)
class LookUp(Instruction):
    """Find stored results: ``items`` are (task state id, cache key, resume record or None)."""

    items: list[tuple[str, str, TaskRunRecord | None]] = field(default_factory=list)


@dataclass(slots=True)
class ArmTimer(Instruction):
    id: str = ""
    attempt: int = 1
    timer: str = ""
    at: float = 0.0


@dataclass(slots=True)
class Resolve(Instruction):
    """These futures are done (their task states are terminal)."""

    tasks: list[TaskState] = field(default_factory=list)


@dataclass(slots=True)
class RunFinished(Instruction):
    """A run ended (its terminal state is in a ``RecordRun`` before this): wake whoever waits for it."""

    run_id: str = ""
    state: State = State.SUCCEEDED
    value: Any = None
    error: BaseException | None = None
    reused_changed: list[str] = field(default_factory=list)
    #: one line per partial map (``map 'score': 9,997 of 10,000 succeeded``)
    summary: list[str] = field(default_factory=list)
