"""The scheduling core alone: deterministic, no threads, no sleeps."""

from types import SimpleNamespace

from gflow.flows._core import Node, Scheduler
from gflow.states import State


def task(name, limit=None):
    return SimpleNamespace(name=name, identity=f"m:{name}", options=SimpleNamespace(max_concurrency=limit))


def node(i, deps=(), t=None, run="r"):
    return Node(f"{run}.{i}", run, t or task("t"), {}, list(deps))


def test_dependencies_release_in_order():
    s = Scheduler()
    a, b = node(1), node(2)
    c = node(3, [a, b])
    assert s.add([a, b, c]) == []
    assert s.pop_ready(10) == [a, b]
    s.succeeded(a)
    assert s.pop_ready(10) == []
    s.succeeded(b)
    assert s.pop_ready(10) == [c]
    s.succeeded(c)
    assert s.idle() and s.idle("r")


def test_upstream_failure_cascades_but_spares_independent():
    s = Scheduler()
    a, x = node(1), node(2)
    b = node(3, [a])
    c = node(4, [b, x])
    s.add([a, x, b, c])
    s.pop_ready(10)
    failed = s.failed(a)
    assert set(failed) == {b, c}
    assert b.state is State.FAILED and c.state is State.FAILED and b.error is a and c.error is b
    assert x.state is State.PENDING and not s.idle()
    s.succeeded(x)
    assert s.idle()


def test_dependency_already_failed_at_add():
    s = Scheduler()
    a = node(1)
    s.add([a])
    s.pop_ready(1)
    s.failed(a)
    b = node(2, [a])
    assert s.add([b]) == [b] and b.state is State.FAILED


def test_cancel_propagates_cancelled():
    s = Scheduler()
    a = node(1)
    b = node(2, [a])
    s.add([a, b])
    s.pop_ready(1)
    assert s.failed(a, State.CANCELLED) == [b]
    assert b.state is State.CANCELLED


def test_max_concurrency_holds_and_releases():
    s = Scheduler()
    t = task("lim", limit=2)
    ns = [node(i, t=t) for i in range(5)]
    s.add(ns)
    first = s.pop_ready(10)
    assert first == ns[:2]
    assert s.pop_ready(10) == []
    s.release(ns[0])
    s.succeeded(ns[0])
    assert s.pop_ready(10) == [ns[2]]


def test_capacity_respected_and_retry_requeue():
    s = Scheduler()
    ns = [node(i) for i in range(5)]
    s.add(ns)
    assert len(s.pop_ready(2)) == 2 and len(s.pop_ready(2)) == 2 and len(s.pop_ready(2)) == 1
    n = ns[0]
    n.state = State.RETRYING
    s.requeue(n)
    assert s.pop_ready(1) == [n]


def test_active_counts_per_run():
    s = Scheduler()
    a, b = node(1, run="r1"), node(1, run="r2")
    s.add([a, b])
    s.succeeded(a)
    assert s.idle("r1") and not s.idle("r2") and not s.idle()
