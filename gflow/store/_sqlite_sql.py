"""The SQL of the embedded store: its schema and migrations, and the batched writes of task-run transitions
(rows merged per task run, multi-row statements)."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from gflow.errors import StoreError
from gflow.states import RANK, TERMINAL_RANK, State
from gflow.store.base import seq_of as _seq_of

SCHEMA_VERSION = 4
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, flow TEXT NOT NULL, flow_path TEXT, state TEXT NOT NULL, rank INTEGER NOT NULL,
    params TEXT, image_tag TEXT, executor TEXT, created REAL NOT NULL, started REAL, ended REAL,
    tags TEXT, error TEXT, traceback TEXT, parent_run TEXT, resumed_from TEXT, replay_of TEXT,
    host TEXT, pid INTEGER, result_ref TEXT, result_inline TEXT, extra TEXT, resumed_by TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created DESC, id DESC);
CREATE INDEX IF NOT EXISTS runs_flow ON runs(flow, created DESC);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent_run) WHERE parent_run IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_resumed_from ON runs(resumed_from) WHERE resumed_from IS NOT NULL;
CREATE INDEX IF NOT EXISTS runs_replay_of ON runs(replay_of) WHERE replay_of IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_runs (
    id TEXT PRIMARY KEY, run_id TEXT NOT NULL, seq INTEGER, task TEXT, name TEXT, key TEXT,
    state TEXT NOT NULL, rank INTEGER NOT NULL, attempt INTEGER NOT NULL,
    created REAL, started REAL, ended REAL, error TEXT, traceback TEXT,
    result_ref TEXT, result_inline TEXT, handle TEXT, upstream TEXT, map_index INTEGER, cacheable INTEGER,
    ikey TEXT, executor TEXT, info TEXT
);
CREATE INDEX IF NOT EXISTS task_runs_run ON task_runs(run_id, seq);
CREATE INDEX IF NOT EXISTS task_runs_run_state ON task_runs(run_id, state);
CREATE INDEX IF NOT EXISTS task_runs_cache ON task_runs(key) WHERE cacheable = 1;
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, run_id TEXT NOT NULL, task_run_id TEXT,
    state TEXT NOT NULL, attempt INTEGER NOT NULL, ts REAL NOT NULL, message TEXT
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, seq);
CREATE TABLE IF NOT EXISTS objects (
    content_id TEXT NOT NULL, task_run_id TEXT NOT NULL, run_id TEXT NOT NULL, role TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_content ON objects(content_id, role);
CREATE INDEX IF NOT EXISTS objects_task_run ON objects(task_run_id);
CREATE TABLE IF NOT EXISTS table_rows (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, tbl TEXT NOT NULL, key TEXT NOT NULL, run_id TEXT, data TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS table_rows_key ON table_rows(tbl, key);
"""
#: columns added after schema version 2, for databases made by older gflow versions
MIGRATIONS = [
    ("task_runs", "ikey", "TEXT"), ("task_runs", "executor", "TEXT"), ("task_runs", "info", "TEXT"),
    ("runs", "resumed_by", "TEXT"),
]

UPSERT = """
INSERT INTO task_runs (id, run_id, seq, task, name, key, state, rank, attempt, created, started, ended,
    error, traceback, result_ref, result_inline, handle, upstream, map_index, cacheable, ikey, executor, info)
VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)
ON CONFLICT(id) DO UPDATE SET
    state = excluded.state, rank = excluded.rank, attempt = excluded.attempt,
    task = coalesce(excluded.task, task), name = coalesce(excluded.name, name),
    key = coalesce(excluded.key, key), started = coalesce(excluded.started, started),
    ended = coalesce(excluded.ended, ended),
    error = CASE WHEN excluded.state IN ('SUCCEEDED', 'CACHED') THEN excluded.error
                 ELSE coalesce(excluded.error, error) END,
    traceback = CASE WHEN excluded.state IN ('SUCCEEDED', 'CACHED') THEN excluded.traceback
                     ELSE coalesce(excluded.traceback, traceback) END,
    result_ref = coalesce(excluded.result_ref, result_ref),
    result_inline = coalesce(excluded.result_inline, result_inline), handle = coalesce(excluded.handle, handle),
    upstream = coalesce(excluded.upstream, upstream), map_index = coalesce(excluded.map_index, map_index),
    cacheable = coalesce(excluded.cacheable, cacheable), ikey = coalesce(excluded.ikey, ikey),
    executor = coalesce(excluded.executor, executor), info = coalesce(excluded.info, info)
WHERE task_runs.rank < 4 AND (excluded.attempt > task_runs.attempt
    OR (excluded.attempt = task_runs.attempt AND excluded.rank > task_runs.rank))
"""
EVENT_INSERT = "INSERT INTO events (run_id, task_run_id, state, attempt, ts, message) VALUES (?,?,?,?,?,?)"
TR_COLS = ("id, run_id, task, name, state, attempt, key, created, started, ended, error, traceback, "
            "result_ref, result_inline, handle, upstream, map_index, ikey, executor, info")
RUN_COLS = ("id, flow, flow_path, state, params, image_tag, executor, created, started, ended, tags, error, "
             "traceback, parent_run, resumed_from, replay_of, host, pid, result_ref, result_inline, extra, resumed_by")
RUN_FIELDS = frozenset(c.strip() for c in RUN_COLS.split(","))


# row_of positions: 0 id, 1 run, 2 state, 3 attempt, 4 ts, 5 task, 6 name, 7 key, 8 upstream, 9 map_index,
# 10 error, 11 traceback, 12 result_ref, 13 result_inline, 14 handle, 15 message, 16 cacheable, 17 objects,
# 18 ikey, 19 executor, 20 info
RANK_OF = {st.value: RANK[st] for st in State}


def merge_rows(rows: Sequence[tuple]) -> list[list]:
    """One upsert row per task run: the last state wins, timestamps and fields accumulate."""
    merged: dict[str, list] = {}
    ranks = RANK_OF
    for t in rows:
        st = t[2]
        row = merged.get(t[0])
        if row is None:
            # seq only matters when the row is inserted, which is by its PENDING transition
            row = [t[0], t[1], _seq_of(t[0]) if st == "PENDING" else None, None, None, None, None, None, None,
                   None, None, None, None, None, None, None, None, None, None, None, None, None, None]
            merged[t[0]] = row
        rank = ranks[st]
        row[6] = st
        row[7] = rank
        row[8] = t[3]
        if st == "PENDING":
            row[9] = t[4]
            row[3] = t[5]
            row[4] = t[6]
            row[18] = t[9]
            row[19] = t[16]
            if t[8] is not None:
                row[17] = json.dumps(t[8])
        elif st == "RUNNING":
            row[10] = t[4]
            if t[14] is not None:
                row[16] = t[14]
        elif rank == TERMINAL_RANK:
            row[11] = t[4]
            if t[12] is not None:
                row[14] = t[12]
                row[15] = t[13]
            if t[11] is not None:
                row[13] = t[11]
            if st == "SUCCEEDED" or st == "CACHED":  # an earlier attempt's error stays in the events only
                row[12], row[13] = t[10], t[11]
        if t[7] is not None:
            row[5] = t[7]
        if t[10] is not None:
            row[12] = t[10]
        if t[18] is not None:
            row[20] = t[18]
        if t[19] is not None:
            row[21] = t[19]
        if t[20] is not None:
            row[22] = json.dumps(t[20], sort_keys=True, default=str)
    return list(merged.values())


def insert_many(c: sqlite3.Connection, sql: str, rows: Sequence[Sequence[Any]], per_stmt: int = 500) -> None:
    """Insert rows with multi-row VALUES statements.

    One statement per ``per_stmt`` rows instead of one per row: each SQLite step releases and
    re-takes the GIL, and with the engine busy on the other core a per-row step waits for the GIL
    every time, which made the writer the bottleneck.
    """
    if not rows:
        return
    head, _, tail = sql.partition("VALUES")
    tail = tail.strip()
    one = tail.split(")", 1)[0] + ")"
    rest = tail[len(one):]
    for i in range(0, len(rows), per_stmt):
        chunk = rows[i:i + per_stmt]
        c.execute(f"{head}VALUES {','.join([one] * len(chunk))}{rest}", [v for row in chunk for v in row])


def migrate(conn: sqlite3.Connection) -> None:
    """Add the columns newer gflow versions need to a database made by an older one."""
    for table, col, kind in MIGRATIONS:
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        if col not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {col} {kind}")


def refuse_empty_file(path: str) -> None:
    """A zero-length file is not a new store: it is a broken one (earlier runs would silently vanish).

    SQLite leaves a file empty for a moment while another process creates the database, so an empty
    file is given a second to fill before it is refused."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if os.path.getsize(path) > 0:
                return
        except FileNotFoundError:
            return
        if time.monotonic() >= deadline:
            raise StoreError(f"state store {path} is an empty file (0 bytes), not a gflow database; if it held "
                             f"earlier runs they are lost. Move it away to start a new store, or point "
                             f"--store / GFLOW_STORE at the right file")
        time.sleep(0.05)
