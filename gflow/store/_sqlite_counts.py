"""Counts by state kept incrementally in the embedded store (issue 24).

``task_counts(run_id, task, state, n)`` is a summary table kept by triggers on ``task_runs``: every
insert, state change or delete of a task run adjusts it inside the same write transaction, whatever
code path wrote it (the store, the offloaded writer process, a resume's marking). A run's counts are
then a read of a few rows instead of a ``GROUP BY`` over its task runs. A database made by an older
gflow gets the table and is backfilled once, when it is first opened.
"""

from __future__ import annotations

import sqlite3

COUNTS_SCHEMA = ["""
CREATE TABLE IF NOT EXISTS task_counts (
    run_id TEXT NOT NULL, task TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (run_id, task, state)
) WITHOUT ROWID""", """
CREATE TRIGGER IF NOT EXISTS task_counts_ins AFTER INSERT ON task_runs BEGIN
    INSERT INTO task_counts (run_id, task, state, n) VALUES (new.run_id, coalesce(new.task, ''), new.state, 1)
    ON CONFLICT (run_id, task, state) DO UPDATE SET n = n + 1;
END""", """
CREATE TRIGGER IF NOT EXISTS task_counts_upd AFTER UPDATE OF state, task, run_id ON task_runs
WHEN old.state IS NOT new.state OR coalesce(old.task, '') IS NOT coalesce(new.task, '') OR old.run_id IS NOT new.run_id
BEGIN
    UPDATE task_counts SET n = n - 1
    WHERE run_id = old.run_id AND task = coalesce(old.task, '') AND state = old.state;
    INSERT INTO task_counts (run_id, task, state, n) VALUES (new.run_id, coalesce(new.task, ''), new.state, 1)
    ON CONFLICT (run_id, task, state) DO UPDATE SET n = n + 1;
END""", """
CREATE TRIGGER IF NOT EXISTS task_counts_del AFTER DELETE ON task_runs BEGIN
    UPDATE task_counts SET n = n - 1
    WHERE run_id = old.run_id AND task = coalesce(old.task, '') AND state = old.state;
END"""]

BACKFILL = """
INSERT INTO task_counts (run_id, task, state, n)
SELECT run_id, coalesce(task, ''), state, count(*) FROM task_runs GROUP BY run_id, coalesce(task, ''), state
"""

RUN_COUNTS = "SELECT state, sum(n) FROM task_counts WHERE run_id = ? GROUP BY state HAVING sum(n) > 0"
RUNS_COUNTS = ("SELECT run_id, state, sum(n) FROM task_counts WHERE run_id IN ({ins}) GROUP BY run_id, state "
               "HAVING sum(n) > 0")
TASK_COUNTS = "SELECT task, state, n FROM task_counts WHERE run_id = ? AND n > 0 ORDER BY task, state"


def has_counts(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = 'task_counts_del'"
                        ).fetchone() is not None


def ensure_counts(conn: sqlite3.Connection) -> None:
    """Create the summary table and its triggers, backfilled from the task runs, in one transaction.

    Called on every open (a cheap check when they exist); ``BEGIN IMMEDIATE`` makes two processes
    opening an old database at once backfill it once."""
    if has_counts(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        if not has_counts(conn):
            conn.execute("DROP TABLE IF EXISTS task_counts")
            for stmt in COUNTS_SCHEMA:
                conn.execute(stmt)
            conn.execute(BACKFILL)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
