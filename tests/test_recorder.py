"""The recorder: ordered, batched writes; a PENDING transition waits (a fake clock here) to be written with its
call's next one, and is written on its own once it waited long enough or at a flush."""

from __future__ import annotations

import time

from gflow.artifacts import open_artifacts
from gflow.flows._events import RecordRun
from gflow.flows._recorder import Recorder
from gflow.states import State
from gflow.store import RunRecord, open_store
from gflow.store.base import trow


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "the recorder did not write in time"
        time.sleep(0.01)


def _recorder(tmp_path, clock):
    st = open_store(f"sqlite:///{tmp_path / 'r.db'}")
    st.create_run(RunRecord(id="r", flow="f"))
    return st, Recorder(st, open_artifacts(str(tmp_path / "a")), interval=0.01, clock=clock, writer_mode="thread")


def test_pending_waits_for_the_next_transition_and_both_are_written_as_one_row(tmp_path):
    clock = Clock()
    st, rec = _recorder(tmp_path, clock)
    rec.add_many([trow("r.1", "r", State.PENDING, 1, 1.0, task="m:t", name="t")])
    time.sleep(0.1)  # several of the recorder's ticks, on the fake clock no time passes
    assert st.counts("r") == {}
    rec.add_many([trow("r.1", "r", State.QUEUED, 1, 2.0), trow("r.1", "r", State.RUNNING, 1, 3.0)])
    _wait(lambda: st.counts("r") == {"RUNNING": 1})
    assert [e.state for e in st.events("r")] == [State.PENDING, State.QUEUED, State.RUNNING]
    rec.close()


def test_a_pending_call_is_written_once_it_waited_long_enough(tmp_path):
    clock = Clock()
    st, rec = _recorder(tmp_path, clock)
    rec.add_many([trow("r.1", "r", State.PENDING, 1, 1.0, task="m:t", name="t")])
    time.sleep(0.1)
    assert st.counts("r") == {}
    clock.t += rec.pending_hold + 0.01
    _wait(lambda: st.counts("r") == {"PENDING": 1})
    rec.close()


def test_flush_and_run_records_write_what_is_held_first(tmp_path):
    clock = Clock()
    st, rec = _recorder(tmp_path, clock)
    rec.add_many([trow("r.1", "r", State.PENDING, 1, 1.0, task="m:t", name="t")])
    rec.add_run(RecordRun("end", "r", State.FAILED, 5.0, error="E: x"))
    rec.flush()
    assert st.counts("r") == {"PENDING": 1} and st.get_run("r").state is State.FAILED
    evs = st.events("r")
    assert [e.task_run_id for e in evs] == ["r.1", None]  # the call's event before the run's end
    rec.add_many([trow("r.2", "r", State.PENDING, 1, 6.0, task="m:t", name="t")])
    rec.flush()  # a flush never leaves a held row behind
    assert st.counts("r") == {"PENDING": 2}
    rec.close()
