"""The embedded state store: one SQLite file in WAL mode, safe with several writer processes."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

from gflow.config import make_private_dirs
from gflow.errors import InvalidTransition, RunNotFound, StoreError, StoreFull
from gflow.states import RANK, TERMINAL_RANK, State
from gflow.store._sqlite_counts import RUN_COUNTS, RUNS_COUNTS, TASK_COUNTS, ensure_counts
from gflow.store._sqlite_sql import (
    EVENT_INSERT,
    RANK_OF,
    RUN_COLS,
    RUN_FIELDS,
    SCHEMA,
    SCHEMA_VERSION,
    TR_COLS,
    UPSERT,
    insert_many,
    merge_rows,
    migrate,
    refuse_empty_file,
    update_many,
)
from gflow.store._writer import writer_for
from gflow.store.base import (
    Event,
    RunRecord,
    Store,
    TaskRunRecord,
    Transition,
    by_input_key,
    check_run_id,
    prefix_match,
    row_of,
    table_key,
)
from gflow.store.base import seq_of as _seq_of


class SQLiteStore(Store):
    """``sqlite:///path/to/gflow.db`` (``?timeout=SECONDS`` sets how long to wait for a lock)."""

    def __init__(self, path: str | os.PathLike, *, timeout: float = 30.0):
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self.url = f"sqlite:///{self.path}"
        self.timeout = timeout
        self._local = threading.local()
        self._write_lock = threading.Lock()
        make_private_dirs(os.path.dirname(self.path))
        refuse_empty_file(self.path)
        _create_private(self.path)
        # Several threads or processes may create the same new file at once: setting WAL mode or
        # writing the schema can then report "locked" at once (no busy wait applies); retry briefly.
        delay = 0.01
        for attempt in range(50):
            try:
                with self._errors("open"):
                    conn = self._conn()
                    if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                        with self._write_lock:
                            conn.executescript(SCHEMA)
                            migrate(conn)
                            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                    with self._write_lock:
                        ensure_counts(conn)
                break
            except StoreError as e:
                if "locked" not in str(e) or attempt == 49:
                    raise
                self.close()
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    can_offload = True

    def offload_writer(self) -> Any:
        return writer_for(self.path, self.timeout)

    @classmethod
    def from_url(cls, url: str) -> SQLiteStore:
        parsed = urllib.parse.urlparse(url)
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db, sqlite:///~/in/home.db
        if not url.startswith("sqlite:///"):
            raise StoreError(f"sqlite URL {url!r} must look like sqlite:///path/to/gflow.db")
        path = url[len("sqlite:///"):].split("?", 1)[0]
        q = urllib.parse.parse_qs(parsed.query)
        timeout = float(q["timeout"][0]) if "timeout" in q else 30.0
        if not path:
            raise StoreError(f"sqlite URL {url!r} names no file; use sqlite:///path/to/gflow.db")
        return cls(path, timeout=timeout)

    # -- connections ---------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            self._local.conn = conn
        return conn

    def _errors(self, what: str):
        store = self

        class _Translate:
            def __enter__(self):
                return self

            def __exit__(self, et, e, tb):
                if e is None or not isinstance(e, sqlite3.Error):
                    return False
                msg = str(e)
                if "locked" in msg or "busy" in msg:
                    raise StoreError(
                        f"state store {store.path} is locked by another process (waited {store.timeout:g}s during "
                        f"{what})") from None
                if _is_full(e):
                    raise StoreFull(f"state store {store.path}: {what} failed: the disk is full ({msg}); free space, "
                                    f"then resume the run") from None
                if isinstance(e, sqlite3.DatabaseError) and ("not a database" in msg or "malformed" in msg):
                    raise StoreError(f"state store {store.path} is corrupt or not a SQLite database ({msg})") from None
                raise StoreError(f"state store {store.path}: {what} failed: {msg}") from None

        return _Translate()

    def _write(self, fn, what: str):
        with self._errors(what), self._write_lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                if conn.in_transaction:  # SQLite itself rolls back on a full disk: a second ROLLBACK would hide why
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

    def _read(self, sql: str, args: Sequence[Any] = (), what: str = "read") -> list[tuple]:
        with self._errors(what):
            return self._conn().execute(sql, args).fetchall()

    # -- runs ------------------------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> None:
        row = (run.id, run.flow, run.flow_path, run.state.value, RANK[run.state], run.params, run.image_tag,
               run.executor, run.created or time.time(), run.started, run.ended, json.dumps(run.tags), run.error,
               run.traceback, run.parent_run, run.resumed_from, run.replay_of, run.host, run.pid, run.result_ref,
               run.result_inline, json.dumps(run.extra), run.resumed_by)
        cols = RUN_COLS.replace("state,", "state, rank,")
        self._write(lambda c: c.execute(f"INSERT INTO runs ({cols}) VALUES ({','.join('?' * len(row))})", row),
                    "create run")

    def set_run_state(self, run_id, state, ts, *, error=None, traceback=None, result_ref=None, result_inline=None):
        state = State(state)
        rank = RANK[state]
        started = ts if state is State.RUNNING else None
        ended = ts if rank == TERMINAL_RANK else None

        def do(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE runs SET state=?, rank=?, started=coalesce(started, ?), ended=coalesce(?, ended), "
                "error=coalesce(?, error), traceback=coalesce(?, traceback), result_ref=coalesce(?, result_ref), "
                "result_inline=coalesce(?, result_inline) WHERE id=? AND rank < 4 AND rank < ?",
                (state.value, rank, started, ended, error, traceback, result_ref, result_inline, run_id, rank))
            if cur.rowcount == 0:
                row = c.execute("SELECT state FROM runs WHERE id=?", (run_id,)).fetchone()
                if row is None:
                    raise RunNotFound(f"no run {run_id!r} in {self.url}")
                raise InvalidTransition(f"run {run_id}: refused transition {row[0]} -> {state.value}")
            c.execute("INSERT INTO events (run_id, task_run_id, state, attempt, ts, message) VALUES (?,?,?,?,?,?)",
                      (run_id, None, state.value, 0, ts, error))
            return cur.rowcount

        self._write(do, "set run state")

    def update_run(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - RUN_FIELDS - {"extra"} | ({"state"} & set(fields))
        if bad:
            raise ValueError(f"update_run cannot set {sorted(bad)}")
        if not fields:
            return
        vals = [json.dumps(v) if k in ("tags", "extra") else v for k, v in fields.items()]

        def do(c):
            cur = c.execute(f"UPDATE runs SET {', '.join(f'{k}=?' for k in fields)} WHERE id=?", (*vals, run_id))
            if cur.rowcount == 0:
                raise RunNotFound(f"no run {run_id!r} in {self.url}")

        self._write(do, "update run")

    def _run_from_row(self, r: tuple) -> RunRecord:
        (id_, flow, flow_path, state, params, image_tag, executor, created, started, ended, tags, error, tb,
         parent_run, resumed_from, replay_of, host, pid, result_ref, result_inline, extra, resumed_by) = r
        return RunRecord(id=id_, flow=flow, flow_path=flow_path or "", state=State(state), params=params or "{}",
                         image_tag=image_tag, executor=executor, created=created, started=started, ended=ended,
                         tags=json.loads(tags or "[]"), error=error, traceback=tb, parent_run=parent_run,
                         resumed_from=resumed_from, replay_of=replay_of, host=host, pid=pid, result_ref=result_ref,
                         result_inline=result_inline, extra=json.loads(extra or "{}"), resumed_by=resumed_by)

    def get_run(self, run_id: str) -> RunRecord:
        check_run_id(run_id, self.url)
        rows = self._read(f"SELECT {RUN_COLS} FROM runs WHERE id=?", (run_id,), "get run")
        if not rows:
            # accept a unique prefix, as users copy short ids
            pattern = run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            ids = [r[0] for r in self._read("SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' LIMIT 6", (pattern,),
                                            "get run")]
            rows = self._read(f"SELECT {RUN_COLS} FROM runs WHERE id=?", (prefix_match(run_id, ids, self.url),),
                              "get run")
        return self._run_from_row(rows[0])

    def list_runs(self, *, flow=None, state=None, tag=None, since=None, until=None, limit=50, before=None):
        where, args = [], []
        if flow:
            where.append("flow = ?")
            args.append(flow)
        if state:
            where.append("state = ?")
            args.append(State(state).value)
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE value = ?)")
            args.append(tag)
        if since is not None:
            where.append("created >= ?")
            args.append(since)
        if until is not None:
            where.append("created < ?")
            args.append(until)
        if before is not None:
            where.append("(created < ? OR (created = ? AND id < ?))")
            args += [before[0], before[0], before[1]]
        sql = f"SELECT {RUN_COLS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created DESC, id DESC LIMIT ?"
        return [self._run_from_row(r) for r in self._read(sql, (*args, limit), "list runs")]

    # -- task runs -------------------------------------------------------------------------------
    def apply(self, transitions: Sequence[Transition]) -> list[Transition]:
        if not transitions:
            return []
        refused = self.apply_rows([row_of(t) for t in transitions])
        return [transitions[i] for i in refused]

    def apply_rows(self, rows: Sequence[tuple]) -> list[int]:
        """:meth:`apply` on transition rows (``gflow.store.base.Row``; the writer process receives these), with no
        objects to build; returns the positions of the refused ones."""
        if not rows:
            return []

        def do(c: sqlite3.Connection) -> list[int]:
            # Inside BEGIN IMMEDIATE no other writer can interleave, so checking against the stored
            # states here is atomic; the upsert's WHERE clause guards the same rule in SQL.
            current: dict[str, tuple[int, int]] = {}
            ids = list({r[0] for r in rows})
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                for id_, rank, attempt in c.execute(
                        f"SELECT id, rank, attempt FROM task_runs WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    current[id_] = (attempt, rank)
            existing = set(current)
            accepted: list[tuple] = []
            refused: list[int] = []
            ranks = RANK_OF
            for n, r in enumerate(rows):
                pos = (r[3], ranks[r[2]])
                cur = current.get(r[0])
                if cur is None or (cur[1] < TERMINAL_RANK and pos > cur):
                    current[r[0]] = pos
                    accepted.append(r)
                else:
                    refused.append(n)
            merged = merge_rows(accepted)
            insert_many(c, UPSERT, [m for m in merged if m[0] not in existing])
            update_many(c, [m for m in merged if m[0] in existing])
            objs = [(cid, r[0], r[1], "in" if r[2] == "QUEUED" else "out") for r in accepted if r[17] for cid in r[17]]
            if objs:
                insert_many(c, "INSERT INTO objects (content_id, task_run_id, run_id, role) VALUES (?,?,?,?)", objs)
            insert_many(c, EVENT_INSERT, [(r[1], r[0], r[2], r[3], r[4], r[15] or r[10]) for r in accepted])
            return refused

        return self._write(do, "record transitions")

    def _tr_from_row(self, r: tuple) -> TaskRunRecord:
        (id_, run_id, task, name, state, attempt, key, created, started, ended, error, tb, result_ref,
         result_inline, handle, upstream, map_index, ikey, executor, info) = r
        return TaskRunRecord(id=id_, run_id=run_id, task=task or "", name=name or "", state=State(state),
                             attempt=attempt, key=key, created=created, started=started, ended=ended, error=error,
                             traceback=tb, result_ref=result_ref, result_inline=result_inline, handle=handle,
                             upstream=json.loads(upstream) if upstream else [], map_index=map_index, ikey=ikey,
                             executor=executor, info=json.loads(info) if info else None)

    def get_task_run(self, task_run_id: str) -> TaskRunRecord:
        rows = self._read(f"SELECT {TR_COLS} FROM task_runs WHERE id=?", (task_run_id,), "get task run")
        if not rows:
            raise LookupError(f"no task run {task_run_id!r} in {self.url}")
        return self._tr_from_row(rows[0])

    def task_runs(self, run_id, *, state=None, task=None, limit=None, after=None):
        return self._task_run_query(TR_COLS, run_id, state=state, task=task, limit=limit, after=after)

    def _task_run_query(self, cols: str, run_id: str, *, state: Any = None, task: str | None = None,
                        limit: int | None = None, after: str | None = None) -> list[TaskRunRecord]:
        sql = f"SELECT {cols} FROM task_runs WHERE run_id = ?"
        args: list[Any] = [run_id]
        if state:
            sql += " AND state = ?"
            args.append(State(state).value)
        if task:
            sql += " AND (task = ? OR name = ?)"
            args += [task, task]
        if after:
            seq = _seq_of(after)
            sql += " AND seq > ?"
            args.append(seq if seq is not None else -1)
        sql += " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._tr_from_row(r) for r in self._read(sql, args, "list task runs")]

    def counts(self, run_id: str) -> dict[str, int]:
        # the summary table the triggers keep (gflow/store/_sqlite_counts.py), not a GROUP BY over the task runs
        return {s: n for s, n in self._read(RUN_COUNTS, (run_id,), "counts")}

    def counts_by_task(self, run_id: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for task, state, n in self._read(TASK_COUNTS, (run_id,), "counts by task"):
            out.setdefault(task, {})[state] = n
        return out

    def _in_chunks(self, sql: str, ids: Sequence[str], what: str) -> list[tuple]:
        """``sql`` has one ``{in}`` slot; runs it per chunk of ids (one IN (...) clause each)."""
        rows: list[tuple] = []
        ids = list(dict.fromkeys(ids))
        for i in range(0, len(ids), 500):
            chunk = ids[i:i + 500]
            rows += self._read(sql.format(ins=",".join("?" * len(chunk))), chunk, what)
        return rows

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord | None]:
        out: dict[str, RunRecord | None] = {r: None for r in run_ids}
        for row in self._in_chunks(f"SELECT {RUN_COLS} FROM runs WHERE id IN ({{ins}})", run_ids, "get runs"):
            out[row[0]] = self._run_from_row(row)
        return out

    def get_task_runs(self, task_run_ids: Sequence[str]) -> dict[str, TaskRunRecord | None]:
        out: dict[str, TaskRunRecord | None] = {t: None for t in task_run_ids}
        for row in self._in_chunks(f"SELECT {TR_COLS} FROM task_runs WHERE id IN ({{ins}})", task_run_ids,
                                   "get task runs"):
            out[row[0]] = self._tr_from_row(row)
        return out

    def counts_many(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {r: {} for r in run_ids}
        for run_id, state, n in self._in_chunks(RUNS_COUNTS, run_ids, "counts"):
            out[run_id][state] = n
        return out

    def events(self, run_id, *, after=0, limit=None):
        sql = "SELECT seq, run_id, task_run_id, state, attempt, ts, message FROM events WHERE run_id=? AND seq>? " \
              "ORDER BY seq"
        args: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Event(seq=r[0], run_id=r[1], task_run_id=r[2], state=State(r[3]), attempt=r[4], ts=r[5], message=r[6])
                for r in self._read(sql, args, "events")]

    def find_cached(self, key: str) -> TaskRunRecord | None:
        rows = self._read(
            f"SELECT {TR_COLS} FROM task_runs WHERE key=? AND cacheable=1 AND state IN ('SUCCEEDED','CACHED') "
            "AND result_ref IS NOT NULL ORDER BY ended DESC LIMIT 1", (key,), "cache lookup")
        return self._tr_from_row(rows[0]) if rows else None

    def results_for_resume(self, run_id: str) -> dict[str, TaskRunRecord]:
        rows = self._read(
            f"SELECT {TR_COLS} FROM task_runs WHERE run_id=? AND state IN ('SUCCEEDED','CACHED') "
            "AND result_ref IS NOT NULL AND coalesce(ikey, key) IS NOT NULL", (run_id,), "resume lookup")
        return by_input_key(map(self._tr_from_row, rows))

    def claim_resume(self, run_id: str, claimant: str, expected: str | None) -> str | None:
        def do(c: sqlite3.Connection) -> str | None:
            cur = c.execute("UPDATE runs SET resumed_by=? WHERE id=? AND resumed_by IS ?", (claimant, run_id, expected))
            if cur.rowcount == 1:
                return None
            row = c.execute("SELECT resumed_by FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run {run_id!r} in {self.url}")
            return str(row[0])

        return self._write(do, "claim run for resume")

    def results_by_key(self, run_id: str) -> dict[str, TaskRunRecord]:
        rows = self._read(
            f"SELECT {TR_COLS} FROM task_runs WHERE run_id=? AND state IN ('SUCCEEDED','CACHED') "
            "AND result_ref IS NOT NULL AND key IS NOT NULL", (run_id,), "resume lookup")
        return {r.key: r for r in map(self._tr_from_row, rows) if r.key}

    def put_rows(self, table: str, rows: Sequence[dict[str, Any]], key: Sequence[str],
                 run_id: str | None = None) -> int:
        data = [(table, table_key(r, key), run_id, json.dumps(r, sort_keys=True, separators=(",", ":")))
                for r in rows]

        def do(c: sqlite3.Connection) -> int:
            # a rewritten key moves to the end (a new seq): cursors walk write order
            insert_many(c, "INSERT OR REPLACE INTO table_rows (tbl, key, run_id, data) VALUES (?,?,?,?)", data)
            return len(data)

        return self._write(do, "write table rows") if data else 0

    def get_rows(self, table: str, where: dict[str, Any] | None = None, *, limit: int = 100,
                 after: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT seq, run_id, data FROM table_rows WHERE tbl = ?"
        args: list[Any] = [table]
        for field, value in (where or {}).items():
            if not field.replace("_", "").isalnum():
                raise StoreError(f"table {table!r}: field name {field!r} must be letters, digits and _")
            sql += f" AND json_extract(data, '$.{field}') = ?"
            args.append(value)
        if after:
            sql += " AND seq > ?"
            args.append(int(after) if after.isdigit() else -1)
        sql += " ORDER BY seq LIMIT ?"
        args.append(limit)
        return [{**json.loads(d), "_cursor": str(seq), "_run_id": run} for seq, run, d in
                self._read(sql, args, "read table rows")]

    def task_run_summaries(self, run_id: str, *, after: str | None = None,
                           limit: int | None = None) -> list[TaskRunRecord]:
        cols = TR_COLS.replace("traceback,", "NULL,").replace("result_inline,", "NULL,")
        return self._task_run_query(cols, run_id, limit=limit, after=after)

    def derived_runs(self, run_id: str) -> list[RunRecord]:
        rows = self._read(f"SELECT {RUN_COLS} FROM runs WHERE parent_run = ?1 OR resumed_from = ?1 OR replay_of = ?1 "
                          "ORDER BY created, id", (run_id,), "derived runs")
        return [self._run_from_row(r) for r in rows]

    def task_events_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Event]]:
        uniq = list(dict.fromkeys(keys))
        out: dict[tuple[str, str], list[Event]] = {k: [] for k in uniq}
        by_run: dict[str, list[str]] = {}
        for run_id, tr in uniq:
            by_run.setdefault(run_id, []).append(tr)
        for run_id, trs in by_run.items():
            for i in range(0, len(trs), 500):
                chunk = trs[i:i + 500]
                rows = self._read(
                    "SELECT seq, run_id, task_run_id, state, attempt, ts, message FROM events WHERE run_id=? AND "
                    f"task_run_id IN ({','.join('?' * len(chunk))}) ORDER BY seq", [run_id, *chunk], "events")
                for r in rows:
                    out[(run_id, r[2])].append(Event(seq=r[0], run_id=r[1], task_run_id=r[2], state=State(r[3]),
                                                     attempt=r[4], ts=r[5], message=r[6]))
        return out

    def objects_many(self, task_run_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        out: dict[str, dict[str, list[str]]] = {i: {"inputs": [], "outputs": []} for i in task_run_ids}
        for tr, cid, role in self._in_chunks(
                "SELECT task_run_id, content_id, role FROM objects WHERE task_run_id IN ({ins}) ORDER BY rowid",
                task_run_ids, "lineage"):
            out[tr]["inputs" if role == "in" else "outputs"].append(cid)
        return out

    def last_event_seq(self, run_id: str) -> int:
        rows = self._read("SELECT max(seq) FROM events WHERE run_id=?", (run_id,), "events")
        return int(rows[0][0] or 0)

    def downstream_many(self, run_id: str, task_run_ids: Sequence[str],
                        scan_limit: int = 200_000) -> dict[str, list[str]]:
        wanted = list(dict.fromkeys(task_run_ids))
        out: dict[str, list[str]] = {i: [] for i in wanted}
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            rows = self._read(
                "SELECT task_runs.id, j.value FROM task_runs, json_each(task_runs.upstream) AS j "
                f"WHERE task_runs.run_id=? AND task_runs.upstream IS NOT NULL AND j.value IN "
                f"({','.join('?' * len(chunk))}) ORDER BY task_runs.seq", [run_id, *chunk], "lineage")
            for down, up in rows:
                out[up].append(down)
        return out

    def lineage(self, content_id: str) -> dict[str, Any]:
        rows = self._read("SELECT task_run_id, role FROM objects WHERE content_id=?", (content_id,), "lineage")
        produced = sorted({r[0] for r in rows if r[1] == "out"})
        consumed = sorted({r[0] for r in rows if r[1] == "in"})
        inputs: list[str] = []
        for tr in produced:
            inputs += [cid for cid in self.objects_of(tr)["inputs"] if cid not in inputs]
        return {"produced_by": [self.get_task_run(t) for t in produced], "inputs": inputs,
                "consumed_by": [self.get_task_run(t) for t in consumed]}

    def objects_of(self, task_run_id: str) -> dict[str, list[str]]:
        rows = self._read("SELECT content_id, role FROM objects WHERE task_run_id=? ORDER BY rowid", (task_run_id,),
                          "lineage")
        return {"inputs": [r[0] for r in rows if r[1] == "in"], "outputs": [r[0] for r in rows if r[1] == "out"]}

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_SQLITE_FULL = 13  # the primary result code of "database or disk is full"


def _is_full(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == _SQLITE_FULL) or "database or disk is full" in str(e)


def _create_private(path: str) -> None:
    """Create a new database file with mode 0600: SQLite gives its -wal, -shm and -journal files the mode of the
    database file, so the whole store stays private (SQLite itself would create it 0644 under umask 022)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise StoreError(f"state store {path}: cannot create the database file: {e.strerror or e}") from None
    os.close(fd)
