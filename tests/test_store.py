"""The SQLite store: forward-only transitions, concurrent writers, bad files."""

import multiprocessing as mp
import os
import sqlite3
import threading
import time

import pytest

import gflow
from gflow.artifacts import LocalArtifactStore
from gflow.states import State, is_forward
from gflow.store import RunRecord, Transition, open_store
from gflow.store.sqlite import SQLiteStore


def _run(st, rid="r1"):
    st.create_run(RunRecord(id=rid, flow="f", created=time.time()))
    return rid


def test_forward_only_task_transitions(tmp_path):
    st = SQLiteStore(tmp_path / "g.db")
    rid = _run(st)
    tr = "r1.1"
    st.transition(Transition(tr, rid, State.PENDING, 1, 1.0, task="m:t", name="t"))
    st.transition(Transition(tr, rid, State.QUEUED, 1, 2.0, key="k"))
    st.transition(Transition(tr, rid, State.RUNNING, 1, 3.0))
    with pytest.raises(gflow.InvalidTransition, match="r1.1"):
        st.transition(Transition(tr, rid, State.QUEUED, 1, 4.0))  # backwards within an attempt
    st.transition(Transition(tr, rid, State.RETRYING, 1, 5.0, error="E: x"))
    st.transition(Transition(tr, rid, State.QUEUED, 2, 6.0))  # next attempt moves forward
    st.transition(Transition(tr, rid, State.RUNNING, 2, 7.0))
    st.transition(Transition(tr, rid, State.SUCCEEDED, 2, 8.0, result_ref="sha256:" + "0" * 64, result_inline="1"))
    for bad in (State.RUNNING, State.FAILED, State.SUCCEEDED):
        with pytest.raises(gflow.InvalidTransition):
            st.transition(Transition(tr, rid, bad, 3, 9.0))  # terminal is final
    rec = st.get_task_run(tr)
    assert (rec.state, rec.attempt, rec.result_inline, rec.started, rec.ended) == (State.SUCCEEDED, 2, "1", 7.0, 8.0)
    assert rec.error == "E: x" and rec.key == "k"
    evs = [(e.state, e.attempt) for e in st.events(rid)]
    assert evs == [(State.PENDING, 1), (State.QUEUED, 1), (State.RUNNING, 1), (State.RETRYING, 1),
                   (State.QUEUED, 2), (State.RUNNING, 2), (State.SUCCEEDED, 2)]  # refused ones left no event


def test_batch_refuses_only_backward_ones(tmp_path):
    st = SQLiteStore(tmp_path / "g.db")
    rid = _run(st)
    st.apply([Transition(f"r1.{i}", rid, State.PENDING, 1, 1.0, task="m:t", name="t") for i in range(3)])
    st.apply([Transition("r1.0", rid, State.SUCCEEDED, 1, 2.0)])
    refused = st.apply([Transition("r1.0", rid, State.RUNNING, 1, 3.0), Transition("r1.1", rid, State.QUEUED, 1, 3.0),
                        Transition("r1.1", rid, State.PENDING, 1, 3.5), Transition("r1.2", rid, State.FAILED, 1, 4.0)])
    assert [(t.task_run_id, t.state) for t in refused] == [("r1.0", State.RUNNING), ("r1.1", State.PENDING)]
    assert st.counts(rid) == {"SUCCEEDED": 1, "QUEUED": 1, "FAILED": 1}


def test_run_state_forward_only(tmp_path):
    st = SQLiteStore(tmp_path / "g.db")
    rid = _run(st)
    st.set_run_state(rid, State.RUNNING, 1.0)
    st.set_run_state(rid, State.FAILED, 2.0, error="x")
    with pytest.raises(gflow.InvalidTransition):
        st.set_run_state(rid, State.RUNNING, 3.0)
    with pytest.raises(gflow.RunNotFound):
        st.set_run_state("nope", State.RUNNING, 3.0)
    assert st.get_run(rid).state is State.FAILED and st.get_run(rid).error == "x"


def test_is_forward_rule():
    assert is_forward(None, 0, State.SUCCEEDED, 1)
    assert is_forward(State.RUNNING, 1, State.RETRYING, 1)
    assert not is_forward(State.RUNNING, 2, State.QUEUED, 1)
    assert not is_forward(State.CACHED, 1, State.RUNNING, 2)


def _writer(path, wid, n, shared):
    st = SQLiteStore(path, timeout=60)
    rid = f"w{wid}"
    st.create_run(RunRecord(id=rid, flow="load", created=time.time()))
    for i in range(n):
        tr = f"{rid}.{i}"
        for s in (State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED):
            st.apply([Transition(tr, rid, s, 1, time.time(), task="m:t", name="t")])
    # every writer also races on the same shared task runs, each state once
    for i in range(shared):
        for s in (State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED):
            st.apply([Transition(f"shared.{i}", "shared", s, 1, time.time(), task="m:t", name="t")])


def test_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "g.db")
    st = SQLiteStore(path)
    st.create_run(RunRecord(id="shared", flow="load", created=time.time()))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 60, 20)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for w in range(4):
        assert st.counts(f"w{w}") == {"SUCCEEDED": 60}
        assert len(st.events(f"w{w}")) == 240
    assert st.counts("shared") == {"SUCCEEDED": 20}
    # however the writers interleaved, each shared task run's events only ever move forward
    for i in range(20):
        seq = [e.state for e in st.events("shared") if e.task_run_id == f"shared.{i}"]
        ranks = [s.rank for s in seq]
        assert ranks == sorted(ranks) and len(set(ranks)) == len(ranks) and seq[-1] is State.SUCCEEDED


def test_concurrent_threads_one_store(tmp_path):
    st = SQLiteStore(tmp_path / "g.db")
    rid = _run(st)

    def work(k):
        for i in range(50):
            st.apply([Transition(f"r1.{k}-{i}", rid, State.PENDING, 1, 1.0, task="m:t", name="t"),
                      Transition(f"r1.{k}-{i}", rid, State.SUCCEEDED, 1, 2.0)])

    ths = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in ths]
    [t.join() for t in ths]
    assert st.counts(rid) == {"SUCCEEDED": 200}


def test_corrupt_file_clear_error(tmp_path):
    p = tmp_path / "bad.db"
    p.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(gflow.StoreError, match="corrupt or not a SQLite database"):
        SQLiteStore(p)
    assert p.read_bytes().startswith(b"this is not sqlite")  # nothing overwritten


def test_locked_file_clear_error(tmp_path):
    path = tmp_path / "g.db"
    st = SQLiteStore(path, timeout=0.3)
    rid = _run(st)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(gflow.StoreError, match="locked"):
            st.set_run_state(rid, State.RUNNING, 1.0)
    finally:
        holder.execute("ROLLBACK")
    st.set_run_state(rid, State.RUNNING, 1.0)  # fine once the lock is gone
    assert st.get_run(rid).state is State.RUNNING


def test_open_store_urls(tmp_path):
    st = open_store(f"sqlite:///{tmp_path}/x/g.db")
    assert st.path == str(tmp_path / "x" / "g.db")
    with pytest.raises(gflow.ConfigError, match="unknown store URL"):
        open_store("postgres://x")
    os.chdir(tmp_path)
    assert open_store("sqlite:///rel.db").path == str(tmp_path / "rel.db")


def test_pagination_and_filters(tmp_path):
    st = SQLiteStore(tmp_path / "g.db")
    for i in range(5):
        st.create_run(RunRecord(id=f"r{i}", flow="a" if i % 2 else "b", created=100.0 + i, tags=[f"t{i % 2}"]))
    page1 = st.list_runs(limit=2)
    assert [r.id for r in page1] == ["r4", "r3"]
    page2 = st.list_runs(limit=2, before=(page1[-1].created, page1[-1].id))
    assert [r.id for r in page2] == ["r2", "r1"]
    assert [r.id for r in st.list_runs(flow="a")] == ["r3", "r1"]
    assert [r.id for r in st.list_runs(tag="t0")] == ["r4", "r2", "r0"]
    assert [r.id for r in st.list_runs(since=102, until=104)] == ["r3", "r2"]


def test_missing_artifact_named(tmp_path):
    arts = LocalArtifactStore(tmp_path / "a")
    d = arts.put(b"hello")
    assert arts.get(d) == b"hello"
    missing = "sha256:" + "ab" * 32
    with pytest.raises(gflow.ArtifactNotFound, match=missing):
        arts.get(missing)


def test_missing_result_artifact_recomputes_on_resume(tmp_path, gflow_home):
    """A cached result whose blob vanished is recomputed, not crashed on."""
    import flows_basic as fb

    work = tmp_path / "w"
    work.mkdir()
    np = pytest.importorskip("numpy")

    @gflow.task(cache=True)
    def big(n: int):
        fb.bump(str(work), "big")
        return np.zeros(n)

    @gflow.flow
    def f():
        return float(big(50_000).result().sum())

    assert f.run(executor="inline") == 0.0
    for p in (gflow_home / "artifacts").rglob("*"):
        if p.is_file():
            p.unlink()
    assert f.run(executor="inline") == 0.0
    assert fb.count(str(work), "big") == 2
