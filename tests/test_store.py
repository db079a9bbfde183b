"""SQLite-specific store behaviour: bad files, URLs, artifacts. The shared store contract
(forward-only transitions, batches, pagination, concurrent writers) runs over SQLite in
tests/test_mongo_store.py::TestSQLiteReference."""

import os
import sqlite3
import time

import pytest

import gflow
from gflow.artifacts import LocalArtifactStore
from gflow.states import State, is_forward
from gflow.store import RunRecord, open_store
from gflow.store.sqlite import SQLiteStore


def _run(st, rid="r1"):
    st.create_run(RunRecord(id=rid, flow="f", created=time.time()))
    return rid


def test_is_forward_rule():
    assert is_forward(None, 0, State.SUCCEEDED, 1)
    assert is_forward(State.RUNNING, 1, State.RETRYING, 1)
    assert not is_forward(State.RUNNING, 2, State.QUEUED, 1)
    assert not is_forward(State.CACHED, 1, State.RUNNING, 2)


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


def test_engine_retries_store_writes_while_the_store_is_locked(tmp_path, gflow_home, caplog):
    """The state store is unreachable (locked) for a while mid-run: nothing is lost, the run completes."""
    import threading

    import flows_basic as fb

    path = tmp_path / "locked.db"
    url = f"sqlite:///{path}?timeout=0.1"
    SQLiteStore(path)  # create the schema first
    work = tmp_path / "w"
    work.mkdir()
    released = threading.Event()

    def hold_lock():
        time.sleep(0.3)
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        time.sleep(1.0)  # writes fail with "locked" meanwhile; the recorder keeps its batches and retries
        holder.execute("ROLLBACK")
        holder.close()
        released.set()

    th = threading.Thread(target=hold_lock)
    th.start()
    os.environ["GFLOW_TEST_SLOW"] = "0.1"
    try:
        res = fb.killable.run(str(work), 20, executor="local://threads?workers=2", store=url, return_run=True)
    finally:
        os.environ.pop("GFLOW_TEST_SLOW", None)
        th.join()
    assert released.is_set()
    assert any("state write failed" in r.getMessage() and "locked" in r.getMessage() for r in caplog.records)
    assert res.state is State.SUCCEEDED and res.value == sum(range(20))
    st = SQLiteStore(path)
    assert st.counts(res.id) == {"SUCCEEDED": 21}
    assert len([e for e in st.events(res.id) if e.task_run_id]) == 21 * 4
