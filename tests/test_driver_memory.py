"""The driver's garbage: collector thresholds while a flow runs, and a finished run's calls freed at once."""

from __future__ import annotations

import gc
import weakref

import pytest

import gflow
from gflow._context import current_flow
from gflow.executors.base import Call
from gflow.flows._events import TaskState
from gflow.flows._future import Future

SEEN: list = []
REFS: list = []
ENGINES: list = []


@gflow.task
def thresholds(x: int) -> list[int]:
    return list(gc.get_threshold())


@gflow.flow
def peek(n: int = 2) -> list[list[int]]:
    return thresholds.map(range(n))


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.flow
def fan(n: int = 200) -> int:
    futs = inc.map(range(n))
    REFS.extend(weakref.ref(f) for f in futs)
    ENGINES.append(current_flow.get().engine)
    return len(futs)


@pytest.fixture
def default_thresholds():
    old = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    yield
    gc.set_threshold(*old)


def test_a_run_raises_the_young_threshold_and_puts_it_back(default_thresholds):
    inside = peek.run(executor="local")
    assert inside == [[50000, 100, 100]] * 2
    assert gc.get_threshold() == (700, 10, 10)


def test_the_threshold_is_configurable_and_zero_leaves_it(default_thresholds, monkeypatch):
    monkeypatch.setenv("GFLOW_GC_GEN0", "20000")
    assert peek.run(executor="local")[0] == [20000, 100, 100]
    monkeypatch.setenv("GFLOW_GC_GEN0", "0")
    assert peek.run(executor="local")[0] == [700, 10, 10]
    assert gc.get_threshold() == (700, 10, 10)


def test_a_higher_user_threshold_is_left_alone():
    old = gc.get_threshold()
    gc.set_threshold(90000, 10, 10)
    try:
        assert peek.run(executor="local")[0] == [90000, 10, 10]
    finally:
        gc.set_threshold(*old)


def test_a_closed_engine_holds_no_calls():
    """Whoever still holds the engine of a finished run (an executor given by the user holds its listener)
    does not keep the run's calls alive."""
    ENGINES.clear()
    assert fan.run(50, executor="local") == 50
    core = ENGINES[0].core
    assert not ENGINES[0].futures and not core.tasks and not core.inflight and not core.story_log


def test_a_finished_runs_calls_are_freed_without_a_collection():
    """The engine sits in reference cycles (its executor holds its listener; futures point at it), so
    what it held about the calls lived on until a full collection; it lets go of them when it closes."""
    REFS.clear()
    gc.collect()
    gc.disable()
    try:
        assert fan.run(200, executor="local") == 200
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        ours = [o for o in gc.garbage if isinstance(o, (TaskState, Call, Future))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert len(REFS) == 200 and sum(1 for r in REFS if r() is not None) == 0
    assert not ours  # (other tests' threads may leave garbage of their own meanwhile: only gflow's counts)
