"""The SQLite writer process: same records as in-thread writing, and a dead child loses nothing."""

import os
import signal

import flows_basic as fb
import pytest

from gflow.states import State
from gflow.store import _writer


def _close_writers():
    for w in list(_writer._writers.values()):
        w.close()
    _writer._writers.clear()


@pytest.fixture
def process_writer(monkeypatch):
    monkeypatch.setenv("GFLOW_WRITER", "process")
    yield
    _close_writers()


def test_process_writer_records_everything(process_writer, store):
    res = fb.map_reduce.run(300, executor="local", return_run=True)
    assert res.value == sum(range(1, 301))
    w = _writer._writers[(os.getpid(), store.path)]
    assert w.ready() and w._proc.pid != os.getpid()
    assert store.counts(res.id) == {"SUCCEEDED": 301}
    assert len([e for e in store.events(res.id) if e.task_run_id]) == 301 * 4


def test_process_writer_refuses_backward(process_writer, store):
    from gflow.store import RunRecord
    from gflow.store.base import trow

    store.create_run(RunRecord(id="r", flow="f", created=1.0))
    w = _writer.writer_for(store.path, 5.0)
    assert w.wait_ready()
    assert w.apply_rows([trow("r.1", "r", State.PENDING, 1, 1.0, task="m:t", name="t"),
                         trow("r.1", "r", State.SUCCEEDED, 1, 2.0)]) == []
    assert w.apply_rows([trow("r.1", "r", State.RUNNING, 1, 3.0)]) == [0]  # refused: states only move forward
    assert store.get_task_run("r.1").state is State.SUCCEEDED


def test_dead_writer_falls_back_without_loss(process_writer, store, work):
    """Kill the writer process while a run records; the recorder retries in its own thread."""
    w = _writer.writer_for(store.path, 30.0)
    assert w.wait_ready()

    @fb.gflow.task
    def killer(x: int) -> int:
        if x == 50:
            os.kill(w._proc.pid, signal.SIGKILL)
        return x

    @fb.gflow.flow
    def f(n: int) -> int:
        return fb.total(killer.map(range(n)))

    res = f.run(400, executor="local", return_run=True)
    assert res.value == sum(range(400))
    assert store.counts(res.id) == {"SUCCEEDED": 401}
    per_task = {}
    for e in store.events(res.id):
        if e.task_run_id:
            per_task.setdefault(e.task_run_id, []).append(e.state)
    assert all(v == [State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED] for v in per_task.values())
    assert len(per_task) == 401


@pytest.fixture
def auto_writer(monkeypatch):
    monkeypatch.delenv("GFLOW_WRITER", raising=False)
    yield
    _close_writers()


def test_a_long_run_of_small_batches_moves_to_the_writer_process(auto_writer, store):
    """Automatic mode: a small run writes from the driver; a chain (small batches, one a link) hands its SQL to
    the writer process once 1,000 rows were written from the driver, and every row arrives either way."""
    small = fb.chain.run(20, executor="local", return_run=True)
    assert small.value == 20 and (os.getpid(), store.path) not in _writer._writers
    res = fb.chain.run(600, executor="local", return_run=True)
    assert res.value == 600
    assert (os.getpid(), store.path) in _writer._writers
    assert store.counts(res.id) == {"SUCCEEDED": 600}
    per_task: dict[str, list[State]] = {}
    for e in store.events(res.id):
        if e.task_run_id:
            per_task.setdefault(e.task_run_id, []).append(e.state)
    assert len(per_task) == 600
    assert all(v == [State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED] for v in per_task.values())
