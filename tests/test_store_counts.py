"""The embedded store keeps counts by state in a summary table, in the write's own transaction (issue 24)."""

from __future__ import annotations

import sqlite3
import time

from gflow.states import State
from gflow.store import RunRecord, Transition
from gflow.store.sqlite import SQLiteStore


def _run(st: SQLiteStore, rid: str, n: int, *states: State) -> None:
    st.create_run(RunRecord(id=rid, flow="f", created=time.time()))
    for s in states:
        st.apply([Transition(f"{rid}.{i}", rid, s, 1, time.time(), task="m:a" if i % 2 else "m:b") for i in range(n)])


def test_counts_come_from_the_summary_kept_in_the_same_transaction(tmp_path):
    st = SQLiteStore(tmp_path / "s.db")
    _run(st, "r", 10, State.PENDING, State.QUEUED)
    st.apply([Transition("r.0", "r", State.RUNNING, 1, time.time())])
    conn = sqlite3.connect(tmp_path / "s.db")
    rows = conn.execute("SELECT task, state, n FROM task_counts WHERE run_id='r' AND n > 0 ORDER BY 1, 2").fetchall()
    assert rows == [("m:a", "QUEUED", 5), ("m:b", "QUEUED", 4), ("m:b", "RUNNING", 1)]
    assert st.counts("r") == {"QUEUED": 9, "RUNNING": 1}
    assert st.counts_by_task("r") == {"m:a": {"QUEUED": 5}, "m:b": {"QUEUED": 4, "RUNNING": 1}}
    # a write that fails rolls the summary back with it
    conn.execute("CREATE TRIGGER boom BEFORE INSERT ON events WHEN new.state = 'SUCCEEDED' "
                 "BEGIN SELECT RAISE(ABORT, 'boom'); END")
    conn.commit()
    try:
        st.apply([Transition("r.1", "r", State.SUCCEEDED, 1, time.time())])
    except Exception:  # noqa: BLE001 - the store's error type is not what this test is about
        pass
    assert st.counts("r") == {"QUEUED": 9, "RUNNING": 1}
    st.close()


def test_a_database_made_before_the_summary_is_backfilled_on_open(tmp_path):
    st = SQLiteStore(tmp_path / "old.db")
    _run(st, "r", 6, State.PENDING, State.QUEUED, State.RUNNING)
    st.close()
    conn = sqlite3.connect(tmp_path / "old.db")  # as an older gflow left it: no summary, no triggers
    for trig in ("task_counts_ins", "task_counts_upd", "task_counts_del"):
        conn.execute(f"DROP TRIGGER {trig}")
    conn.execute("DROP TABLE task_counts")
    conn.execute("UPDATE task_runs SET state='SUCCEEDED', rank=4 WHERE id='r.1'")
    conn.commit()
    conn.close()
    st = SQLiteStore(tmp_path / "old.db")
    assert st.counts("r") == {"RUNNING": 5, "SUCCEEDED": 1}
    st.apply([Transition("r.2", "r", State.FAILED, 1, time.time())])
    assert st.counts("r") == {"RUNNING": 4, "SUCCEEDED": 1, "FAILED": 1}
    assert SQLiteStore(tmp_path / "old.db").counts_many(["r"]) == {"r": {"RUNNING": 4, "SUCCEEDED": 1, "FAILED": 1}}
