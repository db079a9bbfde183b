"""One attempt of a call, as plain functions over the scheduling core (:class:`gflow.flows._core.Core`): its
start, its concurrency slot, success (the result encoded once, or taken as the remote worker stored it),
failure with the retry policy and backoff, and cacheable twins taking the first one's result. Every state
change goes through ``Core._transition``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gflow.errors import (
    GflowError,
    InvalidArguments,
    NodeFailure,
    OutOfMemory,
    PodEvicted,
    Preempted,
    SerializationError,
    TaskFailed,
)
from gflow.executors.base import Outcome
from gflow.flows._events import ArmTimer, CacheHit, TaskState
from gflow.flows._keys import compute_keys
from gflow.flows._values import SCALARS, object_ids, resolve_values
from gflow.serialization import encode
from gflow.states import State
from gflow.tasks import Failed, format_memory

if TYPE_CHECKING:
    from gflow.flows._core import Core

QUEUED, RUNNING, RETRYING = State.QUEUED, State.RUNNING, State.RETRYING
SUCCEEDED, FAILED, CACHED = State.SUCCEEDED, State.FAILED, State.CACHED
INLINE_MAX = 16 * 1024
#: errors that no retry can fix (the same inputs fail the same way), by type name as outcomes carry them
NOT_RETRYABLE = (InvalidArguments.__name__, SerializationError.__name__)


def to_running(core: Core, ts: TaskState, started: float, arm: bool = True) -> None:
    ts.started = started
    core._transition(ts, RUNNING, at=started, handle=ts.desc)
    timeout = ts.task.options.timeout
    if arm and timeout:
        caps = core.caps.get(ts.executor)
        if caps is None or caps.reports_start:
            core.out.append(ArmTimer(core.sid, ts.id, ts.attempt, "timeout", started + timeout))


def queued_late(core: Core, ts: TaskState) -> None:
    """A speculative call started (or finished): it is QUEUED now."""
    core._transition(ts, QUEUED, executor=ts.executor)


def finished_attempt(core: Core, ts: TaskState, out: Outcome, retryable: bool = True) -> None:
    if ts.state is QUEUED:
        to_running(core, ts, out.started or out.ended or core.now, arm=False)
    if ts.state is RUNNING:
        release(core, ts)
    if out.ok:
        succeed(core, ts, out)
    else:
        fail(core, ts, out, retryable)


def release(core: Core, ts: TaskState) -> None:
    """A submitted call stopped occupying its task's concurrency slot."""
    task = ts.task
    group = ts.group
    if group is not None and group.max_concurrency is not None:
        ident = group.key
    elif task is None or task.options.max_concurrency is None:
        return
    else:
        ident = task.identity
    if ts.state not in (QUEUED, RUNNING):
        return
    core.running[ident] -= 1
    held = core.held.get(ident)
    while held:
        nxt = held.popleft()
        if not nxt.state.terminal:
            core.ready[nxt.executor].appendleft(nxt)
            break


def succeed(core: Core, ts: TaskState, out: Outcome) -> None:
    task = ts.task
    value = out.value
    late = ts.key is None and ts.arguments is not None  # ran speculatively: keys from the known inputs now
    if late:
        try:
            args = task.validator.validate(resolve_values(ts.arguments, core.tasks))
            ts.key, ts.ikey = compute_keys(task, args, ts.image, ts.version)
        except GflowError:
            ts.key = None
    ref, inline = out.result_ref, None
    if ref is None:
        try:
            enc = encode(value, allow_pickle=task.options.pickle, where=f"result of task '{task.name}'")
        except (SerializationError, RecursionError) as e:
            fail(core, ts, Outcome.from_exception(e, "", out.started, core.now), retryable=False)
            return
        core.blobs.update(enc.blobs)
        ref = enc.digest
        if len(enc.data) <= INLINE_MAX:
            inline = enc.data.decode()
        else:
            core.blobs[ref] = enc.data
    ts.value = value
    ts.result_ref = ref
    ts.result_inline = inline
    if task.options.cache and ts.key is not None:
        core.cache_mem[ts.key] = CacheHit(value, ref, inline, "this run")
    objs = None if type(value) in SCALARS else object_ids(value) or None
    core._transition(ts, SUCCEEDED, out.ended or core.now, key=ts.key if late else None, result_ref=ref,
                     result_inline=inline, objects=objs,
                     info=with_history(core, ts, out.info, True) if core.prior_usage else out.info,
                     ikey=ts.ikey if late else None)
    core._finish(ts)


def asks(resources: Any) -> str | None:
    """What an attempt asks for, recorded as its QUEUED event's message (``asks memory=128Mi spot``) when the
    call asks for memory or spot: the attempts table shows it, so an escalation is visible."""
    mem, spot = resources.memory, resources.spot
    if mem is None and not spot:
        return None
    return "asks" + (f" memory={format_memory(mem)}" if mem is not None else "") + (" spot" if spot else "")


def _retry_decision(ts: TaskState, out: Outcome) -> tuple[bool, dict[str, Any]]:
    """Whether the retry policy allows another attempt after ``out``, and what the next attempt asks for
    differently (``Resources`` changes: more memory after an out-of-memory failure, on demand after ``spot``
    reclaims). A reclaim under ``Retry(spot=N)`` is not counted against ``count``."""
    policy = ts.task.options.retries
    res = ts.task.options.resources
    cls = out.error_class
    oom = cls is not None and issubclass(cls, (OutOfMemory, MemoryError))
    # a reclaim: Preempted anywhere; on spot capacity also a pod evicted or a node lost (how a spot node going
    # away looks on Kubernetes, where the reason names the eviction, not the reclaim)
    preempted = cls is not None and (issubclass(cls, Preempted) or
                                     (res.spot and issubclass(cls, (PodEvicted, NodeFailure))))
    changes: dict[str, Any] = {}
    free = False
    if preempted and policy.spot:
        if ts.reclaims < policy.spot:
            ts.reclaims += 1
            free = True
        if ts.reclaims >= policy.spot and res.spot:
            changes["spot"] = False
    if oom and policy.memory_factor is not None and res.memory is not None:
        more = policy.escalated(res.memory)
        if more != res.memory:
            changes["memory"] = more
    if free:
        return True, changes
    counted = ts.attempt - ts.reclaims
    code = (out.info or {}).get("exit_code")
    if policy.on_exit_codes is not None and isinstance(code, int) and code not in policy.on_exit_codes \
            and not (oom and policy.memory_factor is not None):
        return False, changes
    return policy.should_retry(counted, type(out.exc) if out.exc is not None else cls), changes


def variant(core: Core, task: Any, changes: dict[str, Any]) -> Any:
    """``task`` with its resources changed, one copy per (task, resources) in the core: retries that escalate
    the same way share one task object, so an array backend submits them as one array again."""
    res = task.options.resources.model_copy(update=changes)
    key = (id(task), res)
    v = core.variants.get(key)
    if v is None:
        v = core.variants[key] = (task, task.with_options(resources=res))
    return v[1]


def fail(core: Core, ts: TaskState, out: Outcome, retryable: bool = True) -> None:
    task = ts.task
    error = f"{out.error_type}: {out.error_message}"
    if out.error_type and out.error_type.rsplit(".", 1)[-1] in NOT_RETRYABLE:
        retryable = False
    again, changes = _retry_decision(ts, out) if retryable else (False, {})
    if again:
        core._transition(ts, RETRYING, error=error, traceback=out.traceback, info=with_history(core, ts, out.info))
        policy = task.options.retries
        if changes:  # the next attempt asks for other resources: a copy of the task with them
            ts.task = variant(core, task, changes)
        delay = policy.delay(ts.attempt)
        ts.attempt += 1
        ts.handle = None
        ts.started = None
        ts.speculative = False
        if delay <= 0:
            core._enqueue(ts)
        else:
            core.out.append(ArmTimer(core.sid, ts.id, ts.attempt, "retry", core.now + delay))
        return
    group = ts.group
    if group is not None and group.min_success is not None and group.tolerate():
        # within the map's min_success: recorded FAILED, but its value is a Failed and the run goes on
        ts.value = Failed(error_type=out.error_type or "Error", message=out.error_message or "", task_run_id=ts.id,
                          index=ts.index)
        core.runs[ts.run_id].maps[group.key] = group
        core._transition(ts, FAILED, error=error, traceback=out.traceback, info=with_history(core, ts, out.info, True))
        core._finish(ts)
        return
    if group is not None and group.min_success is not None:
        core.runs[ts.run_id].maps[group.key] = group
    err = TaskFailed(task.name, task_run_id=ts.id, run_id=ts.run_id, error_type=out.error_type or "Error",
                     error_message=out.error_message or "", traceback=out.traceback or "", attempts=ts.attempt)
    err.__cause__ = out.exc
    ts.error = err
    core.runs[ts.run_id].failures.append(ts)
    core._transition(ts, FAILED, error=error, traceback=out.traceback, info=with_history(core, ts, out.info, True))
    core._finish(ts)


def with_history(core: Core, ts: TaskState, info: dict[str, Any] | None, last: bool = False) -> dict[str, Any] | None:
    """An attempt's ``info`` with the usage of the call's earlier attempts (``usage_by_attempt``, keyed by attempt
    number): the task run keeps one ``info``, the last attempt's, so a retried call carries its history in it.
    Nothing is kept for calls that were not retried."""
    prior = core.prior_usage.pop(ts.id, None) if last else core.prior_usage.get(ts.id)
    usage = info.get("usage") if info else None
    if not last and usage is not None:
        prior = core.prior_usage.setdefault(ts.id, {})
        prior[str(ts.attempt)] = usage
        return {**(info or {}), "usage_by_attempt": dict(prior)}
    if not prior:
        return info
    return {**(info or {}), "usage_by_attempt": {**prior, **({str(ts.attempt): usage} if usage else {})}}


def release_twins(core: Core, first: TaskState, st: State) -> None:
    """``first`` ended: the calls waiting for its result take it (or, if it failed, run themselves)."""
    if first.key is not None and core.inflight.get(first.key) is first:
        del core.inflight[first.key]
    twins, first.twins = first.twins, None
    for t in twins or ():
        if t.state.terminal:
            continue
        t.looking = False
        if st is SUCCEEDED or st is CACHED:
            core._cached(t, CacheHit(first.value, first.result_ref, first.result_inline, first.id))
        else:
            core._ready(t)
