"""The scheduling core alone: events in, instructions out; a fake clock, no threads, no sleeps."""

from __future__ import annotations

import itertools

import pytest

import gflow
from gflow.errors import InvalidTransition, TaskFailed, TaskTimeout
from gflow.executors.base import UPSTREAM_PENDING, Capabilities, Outcome, Ref
from gflow.flows._core import Core
from gflow.flows._events import (
    CALL,
    MAP,
    SUBFLOW,
    ArmTimer,
    BodyReturned,
    CacheHit,
    CacheLookedUp,
    CallsAdded,
    CancelCalls,
    CancelRequested,
    Dispatch,
    ExecutorAdded,
    Finished,
    Flush,
    Flushed,
    LookUp,
    Record,
    RecordRun,
    Resolve,
    RunFinished,
    RunStarted,
    Started,
    Submit,
    Submitted,
    TaskState,
    TimerFired,
)
from gflow.flows._future import Future
from gflow.flows._keys import compute_keys
from gflow.states import State
from gflow.store import RunRecord, TaskRunRecord
from gflow.store.base import transition_of

P, Q, R, RT, S, F, C, K = (State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING, State.SUCCEEDED,
                           State.FAILED, State.CANCELLED, State.CACHED)


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.task
def add(a: int, b: int) -> int:
    return a + b


@gflow.task(retries=gflow.Retry(count=2, backoff=10, factor=2))
def flaky(x: int) -> int:
    return x


@gflow.task(timeout=5)
def slow(x: int) -> int:
    return x


@gflow.task(cache=True)
def cached(x: int) -> int:
    return x


@gflow.task(max_concurrency=1)
def one_at_a_time(x: int) -> int:
    return x


class Harness:
    """Drives a Core with a fake clock and checks its invariants after every step."""

    def __init__(self, caps: Capabilities = Capabilities(), **core_kw):
        self.core = Core(**core_kw)
        self.now = 1000.0
        self._ids = itertools.count(1)
        self.handle(ExecutorAdded("open", "ex", caps))
        self.handle(RunStarted("start", RunRecord(id="r", flow="f")))

    def handle(self, ev):
        out = self.core.handle(ev, self.now)
        self.core.validate_state()
        for ins in list(out):  # as the engine does: the recorder wrote everything before a Flush
            if isinstance(ins, Flush):
                out += self.handle(Flushed("flushed", ins.run_id))
        return out

    def ts(self, task, *args, run="r", **kw) -> TaskState:
        """A task state as FlowRun makes it (futures among the arguments become dependencies)."""
        arguments = task.validator.bind(args, kw)
        deps = [v.id for v in arguments.values() if isinstance(v, Future)]
        key = ikey = None
        if not deps:
            arguments = task.validator.validate(arguments)
            key, ikey = compute_keys(task, arguments)
        return TaskState(f"{run}.{next(self._ids)}", run, task, arguments, deps, key=key, ikey=ikey, executor="ex",
                         version=task.code_version)

    def fut(self, ts: TaskState) -> Future:
        return Future(ts.id, ts.run_id, ts.name, None)

    def add(self, *tss):
        return self.handle(CallsAdded("add", list(tss)))

    def dispatch(self, cap=100):
        return self.handle(Dispatch("cap", "ex", cap))

    def submit_all(self, cap=100):
        """Dispatch and hand back handles (the call ids); returns the calls."""
        out = self.dispatch(cap)
        calls = [c for i in out if isinstance(i, Submit) for c in i.calls]
        self.handle(Submitted("ok", "ex", calls, [c.id for c in calls]))
        return calls

    def finish(self, ts, value=None, *, ok=True, attempt=None, exc=None, started=None):
        out = Outcome(True, value, started=started or self.now, ended=self.now) if ok else \
            Outcome.from_exception(exc or RuntimeError("boom"), "Traceback ...", started or self.now, self.now)
        return self.handle(Finished("done", ts.id, attempt or ts.attempt, out))


def transitions(instructions):
    """The transitions recorded by ``instructions``, as Transition objects (the core makes rows)."""
    return [transition_of(r) for i in instructions if isinstance(i, Record) for r in i.transitions]


def records(instructions) -> list[tuple[str, State, int]]:
    return [(t.task_run_id, t.state, t.attempt) for t in transitions(instructions)]


def only(instructions, kind):
    found = [i for i in instructions if isinstance(i, kind)]
    assert len(found) == 1, instructions
    return found[0]


def test_dependencies_release_in_order_and_values_flow_to_dependents():
    h = Harness()
    a, b = h.ts(inc, 1), h.ts(inc, 2)
    c = h.ts(add, h.fut(a), h.fut(b))
    out = h.add(a, b, c)
    assert records(out) == [(a.id, P, 1), (b.id, P, 1), (c.id, P, 1)]
    assert [c_.id for c_ in h.submit_all()] == [a.id, b.id]
    out = h.finish(a, 2)
    assert records(out) == [(a.id, R, 1), (a.id, S, 1)]
    assert only(out, Resolve).tasks == [a]
    assert h.dispatch() == []  # c still waits for b
    h.finish(b, 3)
    (call,) = only(h.dispatch(), Submit).calls
    assert call.id == c.id and call.args == (2, 3)  # the futures became their values
    assert c.key is not None  # its cache key is known now that its inputs are


def test_running_is_stamped_with_the_executors_start_time():
    h = Harness()
    a = h.ts(inc, 1)
    h.add(a)
    h.submit_all()
    h.now += 7
    out = h.finish(a, 2, started=h.now - 5)  # a process pool reports the start only with the outcome
    running = [t for t in transitions(out) if t.state is R]
    assert running[0].ts == h.now - 5


def test_retries_back_off_on_the_fake_clock_then_fail():
    h = Harness()
    a = h.ts(flaky, 1)
    h.add(a)
    h.submit_all()
    out = h.finish(a, ok=False)
    assert records(out) == [(a.id, R, 1), (a.id, RT, 1)]
    assert only(out, ArmTimer) == ArmTimer.match(id=a.id, attempt=2, timer="retry", at=h.now + 10)
    assert h.dispatch() == []  # not before the timer
    h.now += 10
    h.handle(TimerFired("t", a.id, 2, "retry"))
    (call,) = h.submit_all()
    assert call.attempt == 2
    out = h.finish(a, ok=False)
    assert only(out, ArmTimer).at == h.now + 20  # backoff * factor
    h.now += 20
    h.handle(TimerFired("t", a.id, 3, "retry"))
    h.submit_all()
    out = h.finish(a, ok=False, exc=ValueError("third"))
    assert records(out)[-1] == (a.id, F, 3)
    assert a.state is F and isinstance(a.error, TaskFailed) and a.error.attempts == 3
    assert "ValueError: third" in str(a.error)


def test_a_retry_timer_of_an_old_attempt_does_nothing():
    h = Harness()
    a = h.ts(flaky, 1)
    h.add(a)
    h.submit_all()
    h.finish(a, ok=False)
    assert h.handle(TimerFired("t", a.id, 1, "retry")) == []  # attempt 1's timer is stale
    assert h.dispatch() == []


def test_timeout_counts_from_the_start_cancels_and_ignores_the_late_outcome():
    h = Harness(Capabilities(reports_start=True))
    a = h.ts(slow, 1)
    h.add(a)
    h.submit_all()
    out = h.handle(Started("s", a.id, 1, h.now))
    assert only(out, ArmTimer) == ArmTimer.match(timer="timeout", at=h.now + 5)
    h.now += 5
    out = h.handle(TimerFired("t", a.id, 1, "timeout"))
    assert only(out, CancelCalls).handles == [a.id]
    assert records(out)[-1] == (a.id, F, 1)
    assert isinstance(a.error, TaskFailed) and a.error.error_type.endswith("TaskTimeout")
    assert h.finish(a, 1, attempt=1) == []  # the late outcome is stale


def test_timeout_counts_from_submit_where_starts_are_not_reported():
    h = Harness(Capabilities(reports_start=False))
    a = h.ts(slow, 1)
    h.add(a)
    out = h.dispatch()
    assert ArmTimer.match(id=a.id, timer="timeout", at=h.now + 5) in out


def test_cache_hit_is_recorded_with_a_readable_result_and_a_falsy_value_is_a_hit():
    h = Harness()
    a = h.ts(cached, 0)
    out = h.add(a)
    look = only(out, LookUp)
    assert look.items == [(a.id, a.key, None)]
    assert h.dispatch() == []  # waits for the lookup
    out = h.handle(CacheLookedUp("l", {a.id: None}))  # a miss: run it
    h.submit_all()
    out = h.finish(a, 0)
    (succ,) = [t for t in transitions(out) if t.state is S]
    assert succ.result_inline == "0" and succ.result_ref.startswith("sha256:")
    b = h.ts(cached, 0)  # the same call again in this run: its falsy result is a hit
    out = h.add(b)
    assert not [i for i in out if isinstance(i, LookUp)]
    (hit,) = [t for t in transitions(out) if t.state is K]
    assert (hit.result_ref, hit.result_inline) == (succ.result_ref, succ.result_inline)
    assert b.value == 0


def test_a_stored_hit_is_cached_with_its_reference_and_inline_value():
    h = Harness()
    a = h.ts(cached, 5)
    h.add(a)
    out = h.handle(CacheLookedUp("l", {a.id: CacheHit(5, "sha256:" + "a" * 64, "5", "old.3")}))
    (t,) = transitions(out)
    assert t.state is K and t.result_inline == "5" and t.result_ref == "sha256:" + "a" * 64
    assert "old.3" in t.message


def test_map_over_a_future_fans_out_when_the_list_is_known():
    h = Harness()
    src = h.ts(inc, 1)

    def new_child(task, row, common, i):
        return h.ts(task, *row, **common)

    m = TaskState("r.99", "r", type("M", (), {"name": "inc.map", "identity": "gflow:map",
                                               "options": gflow.tasks.TaskOptions()})(), None, [src.id], kind=MAP,
                  expand=(inc, [h.fut(src)], {}, new_child), executor="ex")
    h.add(src, m)
    h.submit_all()
    out = h.finish(src, [10, 20, 30])
    recs = records(out)
    assert (m.id, R, 1) in recs and len([r for r in recs if r[1] is P]) == 3
    calls = h.submit_all()
    assert sorted(c.args[0] for c in calls) == [10, 20, 30]
    for c in calls:
        h.finish(h.core.tasks[c.id], c.args[0] + 1)
    assert m.state is S and m.value == [11, 21, 31]


def test_map_over_something_not_iterable_fails_the_map_without_retry():
    h = Harness()
    src = h.ts(inc, 1)
    m = TaskState("r.99", "r", flaky, None, [src.id], kind=MAP, expand=(inc, [h.fut(src)], {}, None), executor="ex")
    h.add(src, m)
    h.submit_all()
    h.finish(src, 5)  # an int: not iterable
    assert m.state is F and "not iterable" in str(m.error)


def test_upstream_failure_cascades_but_spares_independent_branches():
    h = Harness()
    a, x = h.ts(inc, 1), h.ts(inc, 2)
    b = h.ts(inc, h.fut(a))
    c = h.ts(add, h.fut(b), h.fut(x))
    h.add(a, x, b, c)
    h.submit_all()
    out = h.finish(a, ok=False)
    assert (b.state, c.state, x.state) == (F, F, Q)
    assert {(r[0], r[1]) for r in records(out)} >= {(b.id, F), (c.id, F)}
    assert isinstance(h.core.error_of(c), gflow.UpstreamFailed) and a.id in str(h.core.error_of(c))
    h.finish(x, 3)
    out = h.handle(BodyReturned("ret", "r", None))
    fin = only(out, RunFinished)
    assert fin.state is F and fin.error.task == "inc"  # names the root, not a victim


def test_max_concurrency_holds_and_releases():
    h = Harness()
    tss = [h.ts(one_at_a_time, i) for i in range(3)]
    h.add(*tss)
    assert [c.id for c in h.submit_all()] == [tss[0].id]
    assert h.dispatch() == []
    h.finish(tss[0], 0)
    assert [c.id for c in h.submit_all()] == [tss[1].id]


def test_cancel_stops_in_flight_calls_and_ends_the_run_cancelled():
    h = Harness()
    a = h.ts(inc, 1)
    b = h.ts(inc, h.fut(a))
    h.add(a, b)
    h.submit_all()
    out = h.handle(CancelRequested("c", "r", "user said so"))
    assert only(out, CancelCalls).handles == [a.id]
    assert (a.state, b.state) == (C, C)
    out = h.handle(BodyReturned("ret", "r", None))
    assert only(out, RecordRun) == RecordRun.match(run_id="r", state=C)
    assert h.finish(a, 2) == []  # too late


def test_subflow_run_ends_after_its_task_events_and_resolves_its_placeholder():
    h = Harness()
    ph = TaskState("r.1", "r", None, None, [], kind=SUBFLOW, executor="ex")
    h.add(ph)
    out = h.handle(RunStarted("sub", RunRecord(id="c", flow="inner"), parent=ph.id, create=True))
    assert [i.create is not None for i in out if isinstance(i, RecordRun)] == [True, False]
    t = h.ts(inc, 1, run="c")
    h.add(t)
    h.submit_all()
    h.handle(BodyReturned("ret", "c", h.fut(t)))
    out = h.finish(t, 2)
    kinds = [type(i).__name__ for i in out]
    # the subflow's task transitions are recorded before the subflow run's terminal record
    assert kinds.index("Record") < kinds.index("RecordRun")
    assert only(out, RecordRun) == RecordRun.match(run_id="c", state=S)
    assert ph.state is S and ph.value == 2
    out = h.handle(BodyReturned("ret", "r", h.fut(ph)))
    assert only(out, RunFinished) == RunFinished.match(run_id="r", state=S, value=2)


def test_a_failing_subflow_fails_its_placeholder_and_the_parent():
    h = Harness()
    ph = TaskState("r.1", "r", None, None, [], kind=SUBFLOW, executor="ex")
    h.add(ph)
    h.handle(RunStarted("sub", RunRecord(id="c", flow="inner"), parent=ph.id, create=True))
    h.handle(BodyReturned("ret", "c", error=ValueError("inner body broke"), traceback="tb"))
    assert ph.state is F and "inner body broke" in str(ph.error)
    out = h.handle(BodyReturned("ret", "r", None))
    assert only(out, RunFinished).state is F


def test_speculative_dispatch_chains_on_executors_that_take_references():
    h = Harness(Capabilities(accepts_refs=True))
    a = h.ts(inc, 1)
    b = h.ts(inc, h.fut(a))
    h.add(a, b)
    out = h.dispatch()
    (call_a,) = only(out, Submit).calls
    out = h.handle(Submitted("ok", "ex", [call_a], ["ha"]))
    (call_b,) = only(out, Submit).calls
    assert call_b.id == b.id and call_b.refs == {a.id: "ha"} and isinstance(call_b.args[0], Ref)
    h.handle(Submitted("ok", "ex", [call_b], ["hb"]))
    assert h.finish(b, 3) == []  # b's outcome came before a's: kept until a's is known
    out = h.finish(a, 2)
    assert [r for r in records(out) if r[0] == b.id] == [(b.id, Q, 1), (b.id, R, 1), (b.id, S, 1)]
    assert b.value == 3 and b.key is not None


def test_a_speculative_call_without_its_input_runs_again_the_ordinary_way():
    h = Harness(Capabilities(accepts_refs=True))
    a = h.ts(flaky, 1)
    b = h.ts(inc, h.fut(a))
    h.add(a, b)
    (call_a,) = only(h.dispatch(), Submit).calls
    (call_b,) = only(h.handle(Submitted("ok", "ex", [call_a], ["ha"])), Submit).calls
    h.handle(Submitted("ok", "ex", [call_b], ["hb"]))
    h.handle(Finished("d", b.id, 1, Outcome(False, error_type=UPSTREAM_PENDING)))
    assert b.state is P and not b.speculative
    h.finish(a, ok=False)  # a retries
    h.now += 10
    h.handle(TimerFired("t", a.id, 2, "retry"))
    (call_a2,) = only(h.dispatch(), Submit).calls
    out = h.handle(Submitted("ok", "ex", [call_a2], ["ha2"]))
    (again,) = only(out, Submit).calls  # b rides on a's new attempt
    assert again.id == b.id and again.refs == {a.id: "ha2"}
    h.handle(Submitted("ok", "ex", [again], ["hb2"]))
    h.handle(Finished("d", b.id, 1, Outcome(False, error_type=UPSTREAM_PENDING)))  # and loses it again
    h.finish(a, 7)
    (call,) = only(h.dispatch(), Submit).calls
    assert call.id == b.id and call.args == (7,) and not call.refs


def test_keys_of_a_call_with_inputs_are_recorded_whichever_attempt_first_knows_them():
    """A speculative call seen starting, then without its input, runs again as attempt 2: that attempt's
    rows must carry the keys computed once the input is known (resume and the cache look them up)."""
    h = Harness(Capabilities(accepts_refs=True))
    a = h.ts(inc, 1)
    b = h.ts(inc, h.fut(a))
    rows = []
    rows += transitions(h.add(a, b))
    (call_a,) = only(h.dispatch(), Submit).calls
    (call_b,) = only(h.handle(Submitted("ok", "ex", [call_a], ["ha"])), Submit).calls
    h.handle(Submitted("ok", "ex", [call_b], ["hb"]))
    rows += transitions(h.handle(Started("s", b.id, 1, h.now)))
    rows += transitions(h.handle(Finished("d", b.id, 1, Outcome(False, error_type=UPSTREAM_PENDING))))
    assert b.attempt == 2
    rows += transitions(h.finish(a, 2))
    out = h.dispatch()
    rows += transitions(out)
    (call,) = only(out, Submit).calls
    assert call.id == b.id and call.args == (2,)
    h.handle(Submitted("ok", "ex", [call], ["hb2"]))
    rows += transitions(h.finish(b, 3))
    assert b.state is S and b.key is not None and b.ikey is not None
    mine = [t for t in rows if t.task_run_id == b.id]
    assert any(t.key == b.key for t in mine) and any(t.ikey == b.ikey for t in mine), mine


def test_keys_of_a_speculative_call_that_failed_and_ran_again_are_recorded():
    h = Harness(Capabilities(accepts_refs=True))
    a = h.ts(inc, 1)
    b = h.ts(flaky, h.fut(a))
    rows = transitions(h.add(a, b))
    (call_a,) = only(h.dispatch(), Submit).calls
    (call_b,) = only(h.handle(Submitted("ok", "ex", [call_a], ["ha"])), Submit).calls
    h.handle(Submitted("ok", "ex", [call_b], ["hb"]))
    rows += transitions(h.finish(a, 2))
    rows += transitions(h.finish(b, ok=False))  # its own error: retried after the back-off
    h.now += 10
    h.handle(TimerFired("t", b.id, 2, "retry"))
    out = h.dispatch()
    rows += transitions(out)
    (call,) = only(out, Submit).calls
    h.handle(Submitted("ok", "ex", [call], ["hb2"]))
    rows += transitions(h.finish(b, 2))
    assert b.state is S and b.attempt == 2 and b.key is not None
    mine = [t for t in rows if t.task_run_id == b.id]
    assert any(t.key == b.key for t in mine) and any(t.ikey == b.ikey for t in mine), mine


def test_resume_reuses_finished_calls_even_if_their_code_changed_unless_asked():
    old = TaskRunRecord(id="old.1", run_id="old", task="t", name="inc", state=S, key="other-version",
                        result_ref="sha256:" + "b" * 64, result_inline="2")
    probe = Harness()
    a = probe.ts(inc, 1)
    resume = {a.ikey: old}
    h = Harness(resume=resume)
    a = h.ts(inc, 1)
    out = h.add(a)
    assert only(out, LookUp).items == [(a.id, a.key, old)]
    h.handle(CacheLookedUp("l", {a.id: CacheHit(2, old.result_ref, "2", old.id, version_changed=True)}))
    out = h.handle(BodyReturned("ret", "r", h.fut(a)))
    fin = only(out, RunFinished)
    assert fin.value == 2 and fin.reused_changed == ["inc"]
    h2 = Harness(resume=resume, rerun_changed=True)
    b = h2.ts(inc, 1)
    out = h2.add(b)
    assert not [i for i in out if isinstance(i, LookUp)]
    assert [c.id for c in h2.submit_all()] == [b.id]


def test_a_body_returning_a_failed_future_fails_the_run_with_that_error():
    h = Harness()
    a = h.ts(inc, 1)
    h.add(a)
    h.submit_all()
    h.finish(a, ok=False, exc=KeyError("k"))
    out = h.handle(BodyReturned("ret", "r", {"x": h.fut(a)}))
    fin = only(out, RunFinished)
    assert fin.state is F and isinstance(fin.error, TaskFailed) and "KeyError" in str(fin.error)


def test_the_run_waits_for_its_calls_before_it_ends():
    h = Harness()
    a = h.ts(inc, 1)
    h.add(a)
    h.submit_all()
    assert not [i for i in h.handle(BodyReturned("ret", "r", 5)) if isinstance(i, RunFinished)]
    out = h.finish(a, 2)
    assert only(out, RunFinished) == RunFinished.match(state=S, value=5)


def test_an_illegal_transition_raises_with_the_story():
    h = Harness()
    a = h.ts(inc, 1)
    h.add(a)
    h.submit_all()
    h.finish(a, 2)
    with pytest.raises(InvalidTransition, match="story"):
        h.core._transition(a, R)
    assert [s[2] for s in h.core.story(a.id)] == ["QUEUED", "RUNNING", "SUCCEEDED"]


def test_invariants_hold_for_a_thousand_call_map():
    h = Harness()
    tss = [h.ts(inc, i) for i in range(1000)]
    h.add(*tss)
    while any(t.state is P for t in tss):
        calls = h.submit_all(cap=128)
        for c in calls:
            h.finish(h.core.tasks[c.id], c.args[0] + 1)
    assert all(t.state is S for t in tss) and h.core.runs["r"].active == 0
    assert TaskTimeout and CALL  # names used by this module
