"""How runs start and end, as plain functions over the scheduling core (:class:`gflow.flows._core.Core`): run
records (top-level runs and subflows alike), cancels (a cancelled run takes its subflow runs with it), a lost
artifact store, a flow body's return, the error a failed future raises, and the one end-of-run path for flows
and subflows: a run whose work is done is flushed first, and its terminal state decided once the recorder
says whether its results are stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gflow.errors import Cancelled, FlowFailed, SerializationError, TaskFailed, UpstreamFailed
from gflow.flows._attempts import INLINE_MAX, release
from gflow.flows._events import (
    ArtifactsLost,
    BodyReturned,
    BodyStarted,
    CancelCalls,
    CancelRequested,
    Flush,
    Flushed,
    RecordRun,
    RunFinished,
    RunStarted,
    TaskState,
)
from gflow.flows._values import resolve_values
from gflow.serialization import encode
from gflow.states import State
from gflow.store.base import R_ATTEMPT, R_ID, R_RUN, trow

if TYPE_CHECKING:
    from gflow.flows._core import Core

PENDING, QUEUED, RUNNING = State.PENDING, State.QUEUED, State.RUNNING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED


class RunState:
    """A run (flow or subflow) as the core sees it."""

    __slots__ = ("id", "parent", "active", "body_done", "value", "error", "traceback", "failures", "cancelled",
                 "external_cancel", "children", "finished", "reused_changed", "flow_name", "fail_with", "ending",
                 "maps")

    def __init__(self, run_id: str, parent: str | None, flow_name: str = "flow"):
        self.id = run_id
        self.parent = parent  # the subflow's task state id in the parent run
        self.active = 0
        self.body_done = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.traceback = ""
        self.failures: list[TaskState] = []
        self.cancelled: str | None = None
        self.external_cancel = False
        self.children: list[str] = []
        self.finished = False
        self.reused_changed: list[str] = []
        #: maps with min_success that had failed elements, by group key (their counts go on the run's record)
        self.maps: dict[str, Any] = {}
        self.flow_name = flow_name
        #: stopped by a fault (the artifact store is full): the run ends FAILED with this error
        self.fail_with: BaseException | None = None
        #: its work is done and a ``Flush`` is out: (state, value, error, result ref, inline result) as decided
        #: then, final once ``Flushed`` says whether its results are stored
        self.ending: tuple[State, Any, BaseException | None, str | None, str | None] | None = None


def error_of(ts: TaskState) -> BaseException:
    """What ``future.result()`` raises for a failed or cancelled call."""
    err = ts.error
    if isinstance(err, BaseException):
        return err
    if isinstance(err, TaskState):  # upstream failure: name the root cause
        root = err
        while isinstance(root.error, TaskState):
            root = root.error
        cause = root.error if isinstance(root.error, BaseException) else None
        if ts.state is CANCELLED:
            return Cancelled(f"task '{ts.name}' ({ts.id}) was cancelled")
        e = UpstreamFailed(ts.name, task_run_id=ts.id, run_id=ts.run_id, error_type="UpstreamFailed",
                           error_message=f"upstream task '{root.name}' ({root.id}) failed",
                           traceback=getattr(cause, "traceback", ""), attempts=0)
        e.__cause__ = cause
        return e
    return Cancelled(f"task '{ts.name}' ({ts.id}) was cancelled")


def run_started(core: Core, ev: RunStarted) -> None:
    """A flow or subflow run began; with ``create`` its record is created (then RUNNING) in order with the rest."""
    rec = ev.run
    assert rec is not None
    run = core.runs[rec.id] = RunState(rec.id, ev.parent, rec.flow)
    if ev.parent is not None:
        parent = core.tasks[ev.parent]
        core.runs[parent.run_id].children.append(rec.id)
        if core.runs[parent.run_id].cancelled is not None:
            run.cancelled = core.runs[parent.run_id].cancelled
    if ev.create:
        core.record_run(RecordRun(core.sid, rec.id, create=rec))
    if ev.create and ev.running:
        core.record_run(RecordRun(core.sid, rec.id, RUNNING, core.now))


def body_started(core: Core, ev: BodyStarted) -> None:
    """A top-level run's body starts: the run is RUNNING (recorded before the calls its body makes)."""
    if ev.run_id in core.runs:
        core.record_run(RecordRun(core.sid, ev.run_id, RUNNING, core.now))


def cancel_requested(core: Core, ev: CancelRequested) -> None:
    runs = [r for r in core.runs.values() if ev.run_id is None or r.id == ev.run_id]
    todo = list(runs)
    while todo:  # a cancelled run takes its subflow runs with it
        r = todo.pop()
        for c in r.children:
            child = core.runs.get(c)
            if child is not None and child not in runs:
                runs.append(child)
                todo.append(child)
    ids = {r.id for r in runs}
    for r in runs:
        if r.cancelled is None:
            r.cancelled = ev.reason
            r.external_cancel = ev.external and (ev.run_id is None or r.id == ev.run_id)
            r.fail_with = ev.error
    victims = [ts for ts in core.tasks.values() if ts.run_id in ids and not ts.state.terminal]
    by_executor: dict[str, list[Any]] = {}
    for ts in victims:
        if ts.handle is not None and ts.state in (QUEUED, RUNNING, PENDING):
            by_executor.setdefault(ts.executor, []).append(ts.handle)
    for name, handles in by_executor.items():
        core.out.append(CancelCalls(core.sid, name, handles))
    for ts in victims:
        if ts.state.terminal:
            continue
        if ts.state in (QUEUED, RUNNING):
            release(core, ts)
        ts.error = Cancelled(f"{ev.reason}: task run {ts.id}")
        core._end(ts, CANCELLED)


def artifacts_lost(core: Core, ev: ArtifactsLost) -> None:
    """The recorder could not store results: stop every run; they end FAILED with the error (resumable)."""
    if core.lost is not None:
        return
    err = ev.error if ev.error is not None else Exception("the artifact store lost results")
    core.lost = err
    cancel_requested(core, CancelRequested(ev.stimulus_id, None, str(err), error=err))


def body_returned(core: Core, ev: BodyReturned) -> None:
    run = core.runs[ev.run_id]
    run.body_done = True
    run.value = ev.value
    run.error = ev.error
    run.traceback = ev.traceback
    maybe_finish_run(core, run)


def maybe_finish_run(core: Core, run: RunState) -> None:
    """A run whose body returned and whose last call ended: decide its outcome, write its result with the rest,
    and ask for a ``Flush``; it ends when ``Flushed`` comes back (:func:`flushed`)."""
    if run.finished or run.ending is not None or not run.body_done or run.active != 0:
        return
    state, value, error = _outcome_of(core, run)
    ref = inline = None
    if state is SUCCEEDED:
        try:
            enc = encode(value, where=f"result of flow '{run.flow_name}'")
            ref = enc.digest
            core.blobs.update(enc.blobs)
            if len(enc.data) <= 4 * INLINE_MAX:
                inline = enc.data.decode()
            else:
                core.blobs[ref] = enc.data
        except (SerializationError, RecursionError):  # a flow may return anything; only canonical values are stored
            pass
    run.ending = (state, value, error, ref, inline)
    core.flush_records()
    core.out.append(Flush(core.sid, run.id))


def flushed(core: Core, ev: Flushed) -> None:
    """Everything of a finished run is written: record the calls whose results were lost FAILED, decide the run's
    terminal state (FAILED if results were lost), record it, wake its waiters, and end its subflow placeholder."""
    run = core.runs.get(ev.run_id)
    if run is None or run.finished or run.ending is None:
        return
    run.finished = True
    lost = ev.lost if ev.lost is not None else core.lost
    if ev.held_back:  # not transitions of the core's calls (their values exist here): the store's record of them
        msg = f"ArtifactStoreError: its result was computed but could not be stored ({lost})"
        core.rows.extend(trow(r[R_ID], r[R_RUN], FAILED, r[R_ATTEMPT], core.now, error=msg) for r in ev.held_back)
    state, value, error, ref, inline = run.ending
    run.ending = None
    if lost is not None and state is SUCCEEDED:  # some of its results could not be stored: resumable, not done
        state, value, error, ref, inline = FAILED, None, lost, None, None
    if not (run.external_cancel and state is CANCELLED):
        err_text = tb_text = None
        if error is not None:
            first = str(error).split("\n")[0]
            err_text = f"{type(error).__name__}: {first}"
            tb_text = getattr(error, "traceback", "") or run.traceback or _format_exc(error)
        core.record_run(RecordRun(core.sid, run.id, state, core.now, error=err_text, traceback=tb_text,
                                  result_ref=ref, result_inline=inline, extra=_maps_extra(run)))
    core.out.append(RunFinished(core.sid, run.id, state, value, error, list(run.reused_changed),
                                [g.summary() for g in run.maps.values()]))
    if run.parent is None:
        return
    ts = core.tasks[run.parent]
    if ts.state.terminal:
        return
    if state is SUCCEEDED:
        ts.value = value
        core._end(ts, SUCCEEDED)
        return
    if error is not None and not isinstance(error, (TaskFailed, Cancelled)):
        cause = error
        error = TaskFailed(f"subflow {run.flow_name}", task_run_id=ts.id, run_id=ts.run_id,
                           error_type=type(cause).__name__, error_message=str(cause),
                           traceback=run.traceback or _format_exc(cause))
        error.__cause__ = cause
    ts.error = error if error is not None else Cancelled(f"subflow run {run.id} was cancelled")
    if state is FAILED:
        core.runs[ts.run_id].failures.append(ts)
    core._end(ts, CANCELLED if state is CANCELLED else FAILED)


def _maps_extra(run: RunState) -> dict[str, Any] | None:
    """The partial maps' counts for the run record's ``extra`` (``gflow runs show`` and the dashboard say them)."""
    if not run.maps:
        return None
    return {"maps": [{"task": g.task, "total": g.total, "succeeded": g.total - g.failed, "failed": g.failed,
                      "min_success": g.min_success, "summary": g.summary()} for g in run.maps.values()]}


def _outcome_of(core: Core, run: RunState) -> tuple[State, Any, BaseException | None]:
    failures = [error_of(t) for t in run.failures]
    error: BaseException | None = run.error
    value = None
    if error is None:
        try:
            value = resolve_values(run.value, core.tasks, on_error=error_of)
        except BaseException as e:  # noqa: BLE001 - a failed future in the returned value
            error = e
    if isinstance(error, UpstreamFailed) and failures:
        error = failures[0]  # name the task that failed, with its traceback, not a downstream victim
    if error is None and failures:
        error = failures[0]
    if run.fail_with is not None:
        return FAILED, None, run.fail_with
    if run.cancelled is not None:
        return CANCELLED, None, Cancelled(f"run {run.id} was cancelled: {run.cancelled}")
    if error is None:
        return SUCCEEDED, value, None
    if isinstance(error, TaskFailed) and len(failures) > 1 and error is failures[0]:
        error.args = (error.args[0] + f"\n\n({len(failures) - 1} more task(s) failed in run {run.id})",)
    if isinstance(error, FlowFailed):
        error.run_id = run.id
        error.failures = [f for f in failures if isinstance(f, TaskFailed)] or error.failures
    return (CANCELLED if isinstance(error, Cancelled) else FAILED), None, error


def _format_exc(e: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(e))
