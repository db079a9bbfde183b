"""The scheduling core's one transition function and its table; the core alone deciding how a run ends; the core
reading no files. Fed events with a fake clock, no threads."""

from __future__ import annotations

import itertools

import pytest

import gflow
from gflow.errors import ArtifactStoreError, InvalidTransition
from gflow.executors.base import Capabilities, Outcome
from gflow.flows import _keys
from gflow.flows._core import TRANSITIONS, Core
from gflow.flows._events import (
    SUBFLOW,
    ArtifactsLost,
    BodyReturned,
    BodyStarted,
    CallsAdded,
    Dispatch,
    ExecutorAdded,
    Finished,
    Flush,
    Flushed,
    Record,
    RecordRun,
    RunFinished,
    RunStarted,
    Submit,
    Submitted,
    TaskState,
)
from gflow.flows._future import Future
from gflow.states import State
from gflow.store import RunRecord
from gflow.store.base import transition_of, trow


@gflow.task
def inc(x: int) -> int:
    return x + 1


def _core() -> Core:
    core = Core()
    core.handle(ExecutorAdded("open", "ex", Capabilities()), 1.0)
    core.handle(RunStarted("start", RunRecord(id="r", flow="f")), 1.0)
    return core


def _ts(state: State, kind: str = "call") -> TaskState:
    ts = TaskState("r.1", "r", inc, {"x": 1}, [], kind=kind, executor="ex")
    ts.state = state
    return ts


@pytest.mark.parametrize(("start", "finish"), sorted(TRANSITIONS, key=lambda p: (p[0].rank, p[0].value, p[1].value)))
def test_every_legal_move_writes_state_story_and_row(start, finish):
    core = _core()
    core.sid = "stim-7"
    core.now = 42.0
    ts = _ts(start)
    core._transition(ts, finish, error="why")
    assert ts.state is finish
    assert core.story(ts.id) == [(ts.id, start, finish, "stim-7", 42.0)]
    (row,) = [transition_of(r) for r in core.rows]
    assert (row.task_run_id, row.run_id, row.state, row.attempt, row.ts, row.error) == \
        (ts.id, "r", finish, 1, 42.0, "why")


def test_every_other_move_is_refused_with_the_story():
    illegal = [(a, b) for a, b in itertools.product(State, State) if (a, b) not in TRANSITIONS]
    assert len(illegal) == len(State) ** 2 - len(TRANSITIONS)
    for start, finish in illegal:
        core = _core()
        ts = _ts(start)
        core.story_log.append((ts.id, State.PENDING, start, "earlier", 1.0))
        with pytest.raises(InvalidTransition, match=f"{start} -> {finish}.*story.*earlier"):
            core._transition(ts, finish)
        assert ts.state is start and not core.rows  # nothing written


def test_terminal_states_have_no_way_out_and_the_table_only_moves_forward():
    for (start, finish) in TRANSITIONS:
        assert not start.terminal
        assert finish.rank > start.rank or (start is State.RETRYING and finish is State.QUEUED)


def test_a_subflow_placeholder_moves_without_a_row():
    core = _core()
    ts = _ts(State.PENDING, SUBFLOW)
    core._transition(ts, State.SUCCEEDED)
    assert ts.state is State.SUCCEEDED and not core.rows and core.story(ts.id)


# -- the core alone decides how a run ends ------------------------------------------------------------------------

def _finished_call(core: Core) -> TaskState:
    ts = TaskState("r.1", "r", inc, {"x": 1}, [], executor="ex", version="v1", key="k", ikey="i")
    core.handle(CallsAdded("add", [ts]), 2.0)
    (call,) = [c for i in core.handle(Dispatch("cap", "ex", 10), 2.0) if isinstance(i, Submit) for c in i.calls]
    core.handle(Submitted("ok", "ex", [call], ["h"]), 2.0)
    core.handle(Finished("done", ts.id, 1, Outcome(True, 2, started=2.0, ended=3.0)), 3.0)
    return ts


def test_a_run_ends_only_once_the_recorder_says_its_results_are_stored():
    core = _core()
    ts = _finished_call(core)
    out = core.handle(BodyReturned("ret", "r", Future(ts.id, "r", "inc", None)), 4.0)
    assert [type(i) for i in out][-1] is Flush and not [i for i in out if isinstance(i, (RecordRun, RunFinished))]
    out = core.handle(Flushed("flushed", "r"), 5.0)
    assert [i for i in out if isinstance(i, RecordRun)] == [RecordRun.match(run_id="r", state=State.SUCCEEDED)]
    assert [i for i in out if isinstance(i, RunFinished)] == [RunFinished.match(state=State.SUCCEEDED, value=2)]


def test_results_lost_in_the_artifact_store_fail_the_run_and_its_held_back_calls():
    core = _core()
    ts = _finished_call(core)
    core.handle(BodyReturned("ret", "r", Future(ts.id, "r", "inc", None)), 4.0)
    lost = ArtifactStoreError("could not write results to the artifact store /x: disk full")
    row = trow(ts.id, "r", State.SUCCEEDED, 1, 3.0, result_ref="sha256:" + "a" * 64)
    out = core.handle(Flushed("flushed", "r", lost, [row]), 5.0)
    rows = [transition_of(r) for i in out if isinstance(i, Record) for r in i.transitions]
    assert [(t.task_run_id, t.state) for t in rows] == [(ts.id, State.FAILED)]
    assert "could not be stored" in rows[0].error
    (rec,) = [i for i in out if isinstance(i, RecordRun)]
    assert rec.state is State.FAILED and rec.error.startswith("ArtifactStoreError") and rec.result_ref is None
    (fin,) = [i for i in out if isinstance(i, RunFinished)]
    assert fin.state is State.FAILED and fin.error is lost
    kinds = [type(i) for i in out]
    assert kinds.index(Record) < kinds.index(RecordRun) < kinds.index(RunFinished)


def test_an_artifact_store_lost_mid_run_is_an_event_that_stops_every_run_failed():
    core = _core()
    a = TaskState("r.1", "r", inc, {"x": 1}, [], executor="ex", version="v1", key="k", ikey="i")
    core.handle(CallsAdded("add", [a]), 2.0)
    core.handle(Dispatch("cap", "ex", 10), 2.0)
    err = ArtifactStoreError("the artifact store is full")
    core.handle(ArtifactsLost("lost", err), 3.0)
    assert a.state is State.CANCELLED
    core.handle(BodyReturned("ret", "r", None), 3.0)
    (fin,) = [i for i in core.handle(Flushed("flushed", "r"), 4.0) if isinstance(i, RunFinished)]
    assert fin.state is State.FAILED and fin.error is err


def test_a_top_level_run_is_created_by_the_same_event_as_a_subflow():
    core = Core()
    out = core.handle(RunStarted("start", RunRecord(id="sub", flow="f"), None, create=True), 1.0)
    assert [(i.create is not None, i.state) for i in out if isinstance(i, RecordRun)] == \
        [(True, None), (False, State.RUNNING)]
    # a top-level run: created first, RUNNING when its body starts (after an observer subscribed to it)
    out = core.handle(RunStarted("start", RunRecord(id="top", flow="f"), None, create=True, running=False), 1.0)
    assert [(i.create is not None, i.state) for i in out if isinstance(i, RecordRun)] == [(True, None)]
    out = core.handle(BodyStarted("body", "top"), 2.0)
    assert out == [RecordRun.match(run_id="top", state=State.RUNNING, ts=2.0)]


# -- the core reads no files ------------------------------------------------------------------------------------------

def test_the_core_takes_a_calls_code_version_from_its_task_state(monkeypatch):
    def no_io(task):
        raise AssertionError("the core computed a code version (it reads source files)")

    core = _core()
    a = TaskState("r.1", "r", inc, {"x": 1}, [], executor="ex", version="v1", key="k", ikey="i")
    b = TaskState("r.2", "r", inc, {"x": Future("r.1", "r", "inc", None)}, ["r.1"], executor="ex", version="v1")
    core.handle(CallsAdded("add", [a, b]), 2.0)
    (call,) = [c for i in core.handle(Dispatch("cap", "ex", 10), 2.0) if isinstance(i, Submit) for c in i.calls]
    core.handle(Submitted("ok", "ex", [call], ["h"]), 2.0)
    monkeypatch.setattr(_keys, "code_version", no_io)
    core.handle(Finished("done", a.id, 1, Outcome(True, 2, started=2.0, ended=3.0)), 3.0)
    assert b.key == _keys.compute_keys(inc, {"x": 2}, None, "v1")[0]


def test_a_tasks_code_version_is_computed_once_and_cached_on_the_task(monkeypatch):
    @gflow.task
    def fresh(x: int) -> int:
        return x

    v = fresh.code_version
    from gflow.tasks import _version

    monkeypatch.setattr(_version, "_Hasher", None)  # computing it again would fail
    assert fresh.code_version == v and gflow.task(version="7")(fresh.fn).code_version == "pinned:7"


def test_a_top_level_run_whose_record_cannot_be_created_raises_before_its_body_runs(gflow_home):
    ran = []

    @gflow.flow
    def once(x: int) -> int:
        ran.append(x)
        return inc(x)

    assert once.run(1, run_id="taken-1") == 2
    with pytest.raises(gflow.errors.StoreError, match="could not create run taken-1"):
        once.run(5, run_id="taken-1")
    assert ran == [1]
    from gflow.store import open_store

    st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    try:
        assert st.get_run("taken-1").state is State.SUCCEEDED  # the first run's record is left alone
    finally:
        st.close()


def test_a_run_record_not_written_in_time_is_a_store_error_not_a_timeout(gflow_home):
    import threading

    from gflow.artifacts import open_artifacts
    from gflow.flows._engine import Engine
    from gflow.store import open_store

    st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    release = threading.Event()

    class SlowStore:  # a real store whose run creation hangs (a locked database) until released
        def __getattr__(self, name):
            return getattr(st, name)

        def create_run(self, rec):
            release.wait(10)
            st.create_run(rec)

    engine = Engine(SlowStore(), open_artifacts(str(gflow_home / "a")), executor="local")
    try:
        with pytest.raises(gflow.errors.StoreError, match="could not create run slow-1.*not written within 0.2s"):
            engine.create_run(RunRecord(id="slow-1", flow="f"), timeout=0.2)
    finally:
        release.set()
        engine.close()
        st.close()
