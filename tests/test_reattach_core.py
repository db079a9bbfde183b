"""Reattach after a lost driver in the scheduling core (issue 19 item 4): ``Adopt`` out, ``Adopted`` in.

A fake clock, no threads: the core is fed events and its instructions are compared (tests/test_core.py's
harness)."""

from __future__ import annotations

from test_core import Harness, P, Q, S, inc, one_at_a_time, only, records

from gflow.flows._events import Adopt, Adopted, CancelCalls, CancelRequested, Started, Submit
from gflow.states import State
from gflow.store import TaskRunRecord


def _old(ts, run="dead") -> TaskRunRecord:
    return TaskRunRecord(id=f"{run}.{ts.id}", run_id=run, task=ts.task.identity, name=ts.name, state=State.FAILED,
                         key=ts.key, ikey=ts.ikey, executor="ex", error="DriverLost: the driver process died")


def test_an_in_flight_call_of_the_dead_run_is_adopted_not_submitted():
    h = Harness()
    a = h.ts(inc, 1)
    old = _old(a)
    h2 = Harness(adopt={a.ikey: old})
    a, b = h2.ts(inc, 1), h2.ts(inc, 2)
    out = h2.add(a, b)
    adopt = only(out, Adopt)
    assert adopt.executor == "ex" and [c.id for c in adopt.calls] == [a.id]
    assert adopt.records == [old]
    assert a.state is P and a.looking
    # b, not in flight when the driver died, goes the usual way
    sub = only(h2.dispatch(), Submit)
    assert [c.id for c in sub.calls] == [b.id]
    out = h2.handle(Adopted("adopted", "ex", adopt.calls, ["job-1:3"], ["img job=job-1:3"]))
    assert records(out) == [(a.id, Q, 1)]
    assert a.state is Q and a.handle == "job-1:3" and not a.looking
    assert h2.dispatch() == []  # never submitted again
    h2.handle(Started("s", a.id, 1, h2.now))
    out = h2.finish(a, 2)
    assert records(out) == [(a.id, S, 1)]
    assert a.value == 2


def test_a_call_whose_job_is_gone_is_submitted_as_usual():
    h = Harness()
    a = h.ts(inc, 5)
    h = Harness(adopt={a.ikey: _old(a)})
    a = h.ts(inc, 5)
    adopt = only(h.add(a), Adopt)
    out = h.handle(Adopted("adopted", "ex", adopt.calls, [None]))
    assert records(out) == []
    (call,) = only(h.dispatch(), Submit).calls
    assert call.id == a.id and call.attempt == 1
    h.finish(a, 6)
    assert a.state is S


def test_each_old_call_is_adopted_once_and_twins_run_normally():
    """Two calls with one input key: only the first follows the old job (it ran once); the other is submitted."""
    h = Harness()
    a = h.ts(inc, 7)
    h = Harness(adopt={a.ikey: _old(a)})
    a, twin = h.ts(inc, 7), h.ts(inc, 7)
    out = h.add(a, twin)
    assert [c.id for c in only(out, Adopt).calls] == [a.id]
    assert [c.id for c in only(h.dispatch(), Submit).calls] == [twin.id]


def test_an_adoption_that_comes_back_after_a_cancel_stops_the_job():
    h = Harness()
    a = h.ts(inc, 1)
    h = Harness(adopt={a.ikey: _old(a)})
    a = h.ts(inc, 1)
    adopt = only(h.add(a), Adopt)
    h.handle(CancelRequested("cancel", "r"))
    out = h.handle(Adopted("adopted", "ex", adopt.calls, ["job-9"]))
    assert only(out, CancelCalls).handles == ["job-9"]


def test_an_adopted_call_holds_its_concurrency_slot():
    h = Harness()
    a = h.ts(one_at_a_time, 1)
    h = Harness(adopt={a.ikey: _old(a)})
    a, b = h.ts(one_at_a_time, 1), h.ts(one_at_a_time, 2)
    adopt = only(h.add(a, b), Adopt)
    h.handle(Adopted("adopted", "ex", adopt.calls, ["job-1"]))
    assert h.dispatch() == []  # max_concurrency=1: a's adopted job runs
    h.handle(Started("s", a.id, 1, h.now))
    out = h.finish(a, 1)
    assert records(out) == [(a.id, S, 1)]
    assert [c.id for c in only(h.dispatch(), Submit).calls] == [b.id]
