"""How runs start and end in the scheduling core (a mixin of :class:`gflow.flows._core.Core`): run records,
cancels (a cancelled run takes its subflow runs with it), a flow body's return, the error a failed future
raises, and the one end-of-run path for flows and subflows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gflow.errors import Cancelled, FlowFailed, SerializationError, TaskFailed, UpstreamFailed
from gflow.flows._attempts import INLINE_MAX
from gflow.flows._events import (
    BodyReturned,
    CancelCalls,
    CancelRequested,
    Instruction,
    RecordRun,
    RunFinished,
    RunStarted,
    TaskState,
)
from gflow.flows._values import resolve_values
from gflow.serialization import encode
from gflow.states import State

PENDING, QUEUED, RUNNING = State.PENDING, State.QUEUED, State.RUNNING
SUCCEEDED, FAILED, CANCELLED = State.SUCCEEDED, State.FAILED, State.CANCELLED


class RunState:
    """A run (flow or subflow) as the core sees it."""

    __slots__ = ("id", "parent", "active", "body_done", "value", "error", "traceback", "failures", "cancelled",
                 "external_cancel", "children", "finished", "reused_changed", "flow_name", "fail_with")

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
        self.flow_name = flow_name
        #: stopped by a fault (the artifact store is full): the run ends FAILED with this error
        self.fail_with: BaseException | None = None


class RunEndings:
    if TYPE_CHECKING:  # the Core's state this mixin reads and writes
        tasks: dict[str, TaskState]
        runs: dict[str, RunState]
        _out: list[Instruction]
        _sid: str
        now: float

        def _record_run(self, ins: RecordRun) -> None: ...
        def _finish(self, ts: TaskState, state: State) -> None: ...
        def _release(self, ts: TaskState) -> None: ...
        def _record_not_run(self, ts: TaskState, st: State) -> None: ...

    def error_of(self, ts: TaskState) -> BaseException:
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

    def _run_started(self, ev: RunStarted) -> None:
        rec = ev.run
        assert rec is not None
        run = self.runs[rec.id] = RunState(rec.id, ev.parent, rec.flow)
        if ev.parent is not None:
            parent = self.tasks[ev.parent]
            self.runs[parent.run_id].children.append(rec.id)
            if self.runs[parent.run_id].cancelled is not None:
                run.cancelled = self.runs[parent.run_id].cancelled
        if ev.create:
            self._record_run(RecordRun(self._sid, rec.id, create=rec))
            self._record_run(RecordRun(self._sid, rec.id, RUNNING, self.now))

    def _cancel_requested(self, ev: CancelRequested) -> None:
        runs = [r for r in self.runs.values() if ev.run_id is None or r.id == ev.run_id]
        todo = list(runs)
        while todo:  # a cancelled run takes its subflow runs with it
            r = todo.pop()
            for c in r.children:
                child = self.runs.get(c)
                if child is not None and child not in runs:
                    runs.append(child)
                    todo.append(child)
        ids = {r.id for r in runs}
        for r in runs:
            if r.cancelled is None:
                r.cancelled = ev.reason
                r.external_cancel = ev.external and (ev.run_id is None or r.id == ev.run_id)
                r.fail_with = ev.error
        victims = [ts for ts in self.tasks.values() if ts.run_id in ids and not ts.state.terminal]
        by_executor: dict[str, list[Any]] = {}
        for ts in victims:
            if ts.handle is not None and ts.state in (QUEUED, RUNNING, PENDING):
                by_executor.setdefault(ts.executor, []).append(ts.handle)
        for name, handles in by_executor.items():
            self._out.append(CancelCalls(self._sid, name, handles))
        for ts in victims:
            if ts.state.terminal:
                continue
            if ts.state in (QUEUED, RUNNING):
                self._release(ts)
            ts.error = Cancelled(f"{ev.reason}: task run {ts.id}")
            self._record_not_run(ts, CANCELLED)
            self._finish(ts, CANCELLED)

    def _body_returned(self, ev: BodyReturned) -> None:
        run = self.runs[ev.run_id]
        run.body_done = True
        run.value = ev.value
        run.error = ev.error
        run.traceback = ev.traceback
        self._maybe_finish_run(run)

    def _maybe_finish_run(self, run: RunState) -> None:
        if run.finished or not run.body_done or run.active != 0:
            return
        run.finished = True
        state, value, error = self._outcome_of(run)
        ref = inline = None
        blobs: dict[str, bytes] = {}
        if state is SUCCEEDED:
            try:
                enc = encode(value, where=f"result of flow '{run.flow_name}'")
                ref = enc.digest
                if len(enc.data) <= 4 * INLINE_MAX:
                    inline = enc.data.decode()
                else:
                    blobs = {**enc.blobs, ref: enc.data}
                if inline is not None:
                    blobs = dict(enc.blobs)
            except (SerializationError, RecursionError):  # a flow may return anything; only canonical values are stored
                pass
        if not (run.external_cancel and state is CANCELLED):
            err_text = tb_text = None
            if error is not None:
                first = str(error).split("\n")[0]
                err_text = f"{type(error).__name__}: {first}"
                tb_text = getattr(error, "traceback", "") or run.traceback or _format_exc(error)
            self._record_run(RecordRun(self._sid, run.id, state, self.now, error=err_text, traceback=tb_text,
                                       result_ref=ref, result_inline=inline, blobs=blobs))
        self._out.append(RunFinished(self._sid, run.id, state, value, error, list(run.reused_changed)))
        if run.parent is not None:
            ts = self.tasks[run.parent]
            if ts.state.terminal:
                return
            if state is SUCCEEDED:
                ts.value = value
                self._finish(ts, SUCCEEDED)
                return
            if error is not None and not isinstance(error, (TaskFailed, Cancelled)):
                cause = error
                error = TaskFailed(f"subflow {run.flow_name}", task_run_id=ts.id, run_id=ts.run_id,
                                   error_type=type(cause).__name__, error_message=str(cause),
                                   traceback=run.traceback or _format_exc(cause))
                error.__cause__ = cause
            ts.error = error if error is not None else Cancelled(f"subflow run {run.id} was cancelled")
            if state is FAILED:
                self.runs[ts.run_id].failures.append(ts)
            self._finish(ts, CANCELLED if state is CANCELLED else FAILED)

    def _outcome_of(self, run: RunState) -> tuple[State, Any, BaseException | None]:
        failures = [self.error_of(t) for t in run.failures]
        error: BaseException | None = run.error
        value = None
        if error is None:
            try:
                value = resolve_values(run.value, self.tasks, on_error=self.error_of)
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
