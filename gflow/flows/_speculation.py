"""Speculative dispatch, as plain functions over the scheduling core (:class:`gflow.flows._core.Core`):
dependents of calls just submitted to an executor that takes references start at once, so a chain runs at
the backend's speed, not one driver round trip per link."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gflow.executors.base import Call
from gflow.flows._events import CALL, Submit, TaskState
from gflow.flows._values import resolve_values
from gflow.states import State

if TYPE_CHECKING:
    from gflow.flows._core import Core

PENDING, QUEUED, RUNNING, RETRYING = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, CACHED = State.SUCCEEDED, State.CACHED


def speculate(core: Core, executor: str, submitted: list[TaskState], capacity: int) -> None:
    """Start dependents of just-submitted calls at once, with ``Ref``s to their inputs, on an executor that
    resolves them itself (Dask): a chain then runs at the backend's speed, not one driver round trip per
    link. Cached, concurrency-limited and timed calls, maps and subflows take the ordinary path."""
    calls: list[Call] = []
    seen: set[str] = set()
    for n in submitted:
        for d in n.dependents or ():
            if len(calls) >= capacity:
                break
            if d.id in seen:
                continue
            seen.add(d.id)
            call = _speculative_call(core, executor, d)
            if call is not None:
                calls.append(call)
    if calls:
        core.out.append(Submit(core.sid, executor, calls))


def _speculative_call(core: Core, executor: str, ts: TaskState) -> Call | None:
    task = ts.task
    if (ts.kind != CALL or ts.state is not PENDING or ts.speculative or ts.looking or ts.executor != executor
            or ts.arguments is None):
        return None
    opts = task.options
    if opts.cache or opts.max_concurrency is not None or opts.timeout is not None:
        return None
    refs: dict[str, Any] = {}
    for dep in ts.deps:
        st = dep.state
        if st is SUCCEEDED or st is CACHED:
            continue
        if dep.group is not None and dep.group.min_success is not None:
            return None  # its value may become a Failed, which a reference cannot carry: the ordinary path
        if dep.handle is not None and dep.kind == CALL and dep.executor == executor and (
                st is QUEUED or st is RUNNING or (st is PENDING and dep.speculative)):
            refs[dep.id] = dep.handle
            continue
        return None
    try:
        args = resolve_values(ts.arguments, core.tasks, refs)
    except Exception:  # noqa: BLE001 - the ordinary path reports it
        return None
    ts.speculative = True
    call_args, call_kwargs = task.validator.call_args(args)
    return Call(ts.id, ts.run_id, task, call_args, call_kwargs, ts.attempt, None, ts.index, refs=refs)


def unspeculate(core: Core, ts: TaskState) -> None:
    """A speculative attempt could not get its inputs: run it the ordinary way once they are known. If it had
    been seen starting, that attempt ends (RETRYING) and the next one waits for the inputs."""
    ts.handle = None
    ts.stash = None
    ts.speculative = False
    if ts.state in (QUEUED, RUNNING):
        core._transition(ts, RETRYING, message="an input was not available; runs again once its inputs are known")
        ts.attempt += 1
        ts.started = None
    if ts.waiting == 0:
        core._ready(ts)
