"""The durable MongoDB store: ``mongodb://host/db`` (tests: ``mongomock://name/db`` via ``gflow.testing``).

Collections: ``runs``, ``task_runs``, ``events`` and ``counters`` (the per-run event sequence).

The forward-only rule is enforced by MongoDB itself: every transition is one conditional upsert
whose filter only matches a stored task run that the transition moves forward
(``rank < 4 AND pos < new_pos``, where ``pos = attempt * 8 + rank``). When the filter does not match
an existing document, the upsert's insert fails on the duplicate ``_id``: that is a refusal, and no
read precedes the write. A batch becomes one unordered ``bulk_write`` with one upsert per task run.

Events get a per-run ``seq`` reserved in blocks from ``counters`` before the state write. A task
run also records the highest event seq applied to it (``eseq``), and the conditional update requires
the new seq to be higher, so one task run's events are in seq order even when several writers race
on it (a writer overtaken that way reserves a fresh seq and retries; only a real backward move is
refused). The events of a batch are also kept on each task run (``last``) until the next batch, so a
batch retried after a network failure between the state write and the event insert writes its
missing events, with their original seqs, instead of reporting its own transitions as refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import pymongo
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

from gflow.errors import InvalidTransition, RunNotFound, StoreError
from gflow.states import RANK, TERMINAL_RANK, State, is_forward
from gflow.store.base import (
    Event,
    RunRecord,
    Store,
    TaskRunRecord,
    Transition,
    by_input_key,
    check_run_id,
    prefix_match,
    table_key,
)
from gflow.store.base import seq_of as _seq_of

_DUP = 11000
_FINISHED = [State.SUCCEEDED.value, State.CACHED.value]
_RUN_FIELDS = frozenset(f.name for f in dataclasses.fields(RunRecord)) - {"id"}
_TR_FIELDS = tuple(f.name for f in dataclasses.fields(TaskRunRecord) if f.name != "id")
_SLOW_TRIES = 20
_SERVER_GONE = (pymongo.errors.ConnectionFailure, pymongo.errors.ServerSelectionTimeoutError,
                pymongo.errors.NetworkTimeout, pymongo.errors.AutoReconnect)

def _pos(state: State, attempt: int) -> int:
    return attempt * 8 + RANK[state]


def _redact(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


class MongoStore(Store):
    """``mongodb://[user:pass@]host[:port]/[database][?options]`` (database defaults to ``gflow``).

    ``serverSelectionTimeoutMS`` defaults to 10000 here (pymongo's default is 30 s). Tests run the
    same code over mongomock through ``gflow.testing`` (the ``mongomock://`` scheme it registers).
    """

    def __init__(self, client: Any, database: str = "gflow", *, url: str | None = None,
                 lock: threading.RLock | None = None):
        self.client = client
        self.url = url or f"mongodb:///{database}"
        self._safe_url = _redact(self.url)
        self._lock = lock if lock is not None else contextlib.nullcontext()
        db = client[database]
        self.runs = db["runs"]
        self.task_runs_coll = db["task_runs"]
        self.events_coll = db["events"]
        self.counters = db["counters"]
        self.table_rows = db["table_rows"]
        with self._errors("create indexes"):
            self._create_indexes()

    @classmethod
    def from_url(cls, url: str) -> MongoStore:
        parsed = urllib.parse.urlsplit(url)
        database = parsed.path.lstrip("/").split("/", 1)[0] or "gflow"
        if parsed.scheme not in ("mongodb", "mongodb+srv"):
            raise StoreError(f"MongoDB URL {_redact(url)!r} must start with mongodb://")
        opts = {k.lower() for k in urllib.parse.parse_qs(parsed.query)}
        kwargs: dict[str, Any] = {}
        if "serverselectiontimeoutms" not in opts:
            kwargs["serverSelectionTimeoutMS"] = 10_000
        try:
            client = pymongo.MongoClient(url, **kwargs)
        except (PyMongoError, ValueError) as e:
            raise StoreError(f"MongoDB URL {_redact(url)!r} is invalid: {e}") from None
        return cls(client, database, url=url)

    def _create_indexes(self) -> None:
        D, A = pymongo.DESCENDING, pymongo.ASCENDING
        self.runs.create_index([("created", D), ("_id", D)], name="created")
        self.runs.create_index([("flow", A), ("created", D)], name="flow_created")
        self.runs.create_index([("state", A), ("created", D)], name="state_created")
        self.runs.create_index([("tags", A), ("created", D)], name="tags_created")
        for f in ("parent_run", "resumed_from", "replay_of"):  # derived_runs
            self.runs.create_index([(f, A)], name=f, sparse=True)
        self.task_runs_coll.create_index([("run_id", A), ("seq", A)], name="run_seq")
        self.task_runs_coll.create_index([("run_id", A), ("state", A), ("seq", A)], name="run_state_seq")
        self.task_runs_coll.create_index([("run_id", A), ("task", A), ("seq", A)], name="run_task_seq")
        self.task_runs_coll.create_index([("run_id", A), ("name", A), ("seq", A)], name="run_name_seq")
        self.task_runs_coll.create_index([("key", A), ("ended", D)], name="cache_key",
                                         partialFilterExpression={"cacheable": 1})
        self.task_runs_coll.create_index("outputs", name="outputs")  # multikey: lineage by content id
        self.task_runs_coll.create_index("inputs", name="inputs")
        self.events_coll.create_index([("run_id", A), ("seq", A)], name="run_seq", unique=True)

    # -- errors ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Hold the mongomock lock, and translate pymongo errors into StoreError."""
        try:
            with self._lock:
                yield
        except _SERVER_GONE as e:
            raise StoreError(f"MongoDB at {self._safe_url} is unreachable during {what} "
                             f"({type(e).__name__}: {_first_line(e)})") from None
        except PyMongoError as e:
            raise StoreError(f"MongoDB store {self._safe_url}: {what} failed ({type(e).__name__}: "
                             f"{_first_line(e)})") from None

    # -- runs ----------------------------------------------------------------------------------------
    def create_run(self, run: RunRecord) -> None:
        doc = {k: v for k, v in dataclasses.asdict(run).items() if v is not None}  # missing, not null: $min
        doc["_id"] = doc.pop("id")
        doc["state"] = run.state.value
        doc["rank"] = RANK[run.state]
        doc["created"] = run.created or time.time()
        with self._errors("create run"):
            try:
                self.runs.insert_one(doc)
            except DuplicateKeyError:
                raise StoreError(f"run {run.id!r} already exists in {self._safe_url}") from None

    def set_run_state(self, run_id, state, ts, *, error=None, traceback=None, result_ref=None, result_inline=None):
        state = State(state)
        rank = RANK[state]
        fields: dict[str, Any] = {"state": state.value, "rank": rank}
        for k, v in (("error", error), ("traceback", traceback), ("result_ref", result_ref),
                     ("result_inline", result_inline)):
            if v is not None:
                fields[k] = v
        if rank == TERMINAL_RANK:
            fields["ended"] = ts
        with self._errors("set run state"):
            update: dict[str, Any] = {"$set": fields}
            if state is State.RUNNING:
                update["$min"] = {"started": ts}  # keeps the first start; sets it when missing
            res = self.runs.update_one({"_id": run_id, "rank": {"$lt": min(rank, TERMINAL_RANK)}}, update)
            if res.matched_count == 0:
                doc = self.runs.find_one({"_id": run_id}, {"state": 1})
                if doc is None:
                    raise RunNotFound(f"no run {run_id!r} in {self._safe_url}")
                raise InvalidTransition(f"run {run_id}: refused transition {doc['state']} -> {state.value}")
            seq = self._reserve(run_id, 1)
            self._insert_events([{"_id": f"{run_id}|run|{state.value}", "run_id": run_id, "seq": seq,
                                  "task_run_id": None, "state": state.value, "attempt": 0, "ts": ts,
                                  "message": error}])

    def update_run(self, run_id: str, **fields: Any) -> None:
        bad = set(fields) - _RUN_FIELDS | ({"state"} & set(fields))
        if bad:
            raise ValueError(f"update_run cannot set {sorted(bad)}")
        if not fields:
            return
        with self._errors("update run"):
            if self.runs.update_one({"_id": run_id}, {"$set": fields}).matched_count == 0:
                raise RunNotFound(f"no run {run_id!r} in {self._safe_url}")

    def get_run(self, run_id: str) -> RunRecord:
        check_run_id(run_id, self._safe_url)
        with self._errors("get run"):
            doc = self.runs.find_one({"_id": run_id})
            if doc is None:  # accept a unique prefix, as users copy short ids
                ids = [d["_id"] for d in self.runs.find({"_id": {"$regex": "^" + re.escape(run_id)}}, {"_id": 1})
                       .limit(6)]
                doc = self.runs.find_one({"_id": prefix_match(run_id, ids, self._safe_url)})
        if doc is None:
            raise RunNotFound(f"no run {run_id!r} in {self._safe_url}")
        return _run_from_doc(doc)

    def list_runs(self, *, flow=None, state=None, tag=None, since=None, until=None, limit=50, before=None):
        q: dict[str, Any] = {}
        if flow:
            q["flow"] = flow
        if state:
            q["state"] = State(state).value
        if tag:
            q["tags"] = tag
        created: dict[str, float] = {}
        if since is not None:
            created["$gte"] = since
        if until is not None:
            created["$lt"] = until
        if created:
            q["created"] = created
        if before is not None:
            q["$or"] = [{"created": {"$lt": before[0]}}, {"created": before[0], "_id": {"$lt": before[1]}}]
        with self._errors("list runs"):
            cur = self.runs.find(q).sort([("created", pymongo.DESCENDING), ("_id", pymongo.DESCENDING)])
            return [_run_from_doc(d) for d in cur.limit(limit)]

    # -- task runs -----------------------------------------------------------------------------------
    def apply(self, transitions: Sequence[Transition]) -> list[Transition]:
        if not transitions:
            return []
        groups: dict[str, list[Transition]] = {}
        for t in transitions:
            groups.setdefault(t.task_run_id, []).append(t)
        with self._errors("record transitions"):
            seqs = self._reserve_for(transitions)
            fast: list[list[Transition]] = []
            slow: list[list[Transition]] = []
            for g in groups.values():
                (fast if _chain_forward(g) else slow).append(g)
            events: list[dict[str, Any]] = []
            accepted: set[int] = set()
            failed = self._bulk(fast, seqs) if fast else set()
            for i, g in enumerate(fast):
                if i in failed:
                    slow.append(g)
                else:
                    for t in g:
                        accepted.add(id(t))
                        events.append(_event_doc(t, seqs[id(t)]))
            for g in slow:
                for t in g:
                    seq = self._apply_one(t, seqs[id(t)])
                    if seq is not None:
                        accepted.add(id(t))
                        events.append(_event_doc(t, seq))
            self._insert_events(events)
        return [t for t in transitions if id(t) not in accepted]

    def _reserve(self, run_id: str, n: int) -> int:
        """Reserve ``n`` event seqs of a run; returns the last one."""
        for _ in range(3):
            try:
                doc = self.counters.find_one_and_update({"_id": run_id}, {"$inc": {"seq": n}}, upsert=True,
                                                        return_document=ReturnDocument.AFTER)
                return doc["seq"]
            except DuplicateKeyError:  # two writers created the counter at once: the other won, $inc it
                continue
        raise StoreError(f"could not reserve event seqs for run {run_id} in {self._safe_url}")

    def _reserve_for(self, transitions: Sequence[Transition]) -> dict[int, int]:
        per_run: dict[str, int] = {}
        for t in transitions:
            per_run[t.run_id] = per_run.get(t.run_id, 0) + 1
        nxt = {run: self._reserve(run, n) - n + 1 for run, n in per_run.items()}
        seqs = {}
        for t in transitions:
            seqs[id(t)] = nxt[t.run_id]
            nxt[t.run_id] += 1
        return seqs

    def _bulk(self, groups: list[list[Transition]], seqs: dict[int, int]) -> set[int]:
        """One conditional upsert per task run; returns the indexes of the groups refused."""
        ops = []
        for g in groups:
            first = g[0]
            ops.append(UpdateOne(_forward_filter(first, seqs[id(first)]), _update_doc(g, seqs), upsert=True))
        try:
            self.task_runs_coll.bulk_write(ops, ordered=False)
        except BulkWriteError as e:
            errors = e.details.get("writeErrors", [])
            other = [w for w in errors if w.get("code") != _DUP]
            if other or e.details.get("writeConcernErrors"):
                w = (other or e.details["writeConcernErrors"])[0]
                raise StoreError(f"MongoDB store {self._safe_url}: writing task runs failed: {w.get('errmsg')}") \
                    from None
            return {w["index"] for w in errors}
        return set()

    def _apply_one(self, t: Transition, seq: int) -> int | None:
        """Apply one transition with its own conditional write; returns its event seq, or None if refused."""
        upd = _update_doc([t], {id(t): seq})
        for _ in range(_SLOW_TRIES):
            flt = _forward_filter(t, seq)
            try:
                self.task_runs_coll.update_one(flt, upd, upsert=True)
                return seq
            except DuplicateKeyError:
                pass  # the task run exists and the filter did not match (or a racing writer created it)
            if self.task_runs_coll.update_one(flt, upd).matched_count:
                return seq
            doc = self.task_runs_coll.find_one({"_id": t.task_run_id}, {"state": 1, "attempt": 1, "last": 1})
            if doc is None:
                continue
            for e in doc.get("last") or ():
                if e[1] == t.state.value and e[2] == t.attempt and e[3] == t.ts:
                    return e[0]  # this very transition was applied by an earlier try of the batch
            if not is_forward(State(doc["state"]), doc["attempt"], t.state, t.attempt):
                return None
            # forward, but a racing writer applied a later-reserved event seq first: take a new one
            seq = self._reserve(t.run_id, 1)
            upd = _update_doc([t], {id(t): seq})
        raise StoreError(f"task run {t.task_run_id}: could not record {t.state.value} after {_SLOW_TRIES} tries "
                         "against concurrent writers")

    def _insert_events(self, docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        try:
            self.events_coll.insert_many(docs, ordered=False)
        except BulkWriteError as e:  # an event already written by an earlier try of the same batch
            other = [w for w in e.details.get("writeErrors", []) if w.get("code") != _DUP]
            if other or e.details.get("writeConcernErrors"):
                raise StoreError(f"MongoDB store {self._safe_url}: writing events failed: "
                                 f"{(other or e.details['writeConcernErrors'])[0].get('errmsg')}") from None

    def get_task_run(self, task_run_id: str) -> TaskRunRecord:
        with self._errors("get task run"):
            doc = self.task_runs_coll.find_one({"_id": task_run_id}, _TR_PROJECTION)
        if doc is None:
            raise LookupError(f"no task run {task_run_id!r} in {self._safe_url}")
        return _tr_from_doc(doc)

    def task_runs(self, run_id, *, state=None, task=None, limit=None, after=None):
        q: dict[str, Any] = {"run_id": run_id}
        if state:
            q["state"] = State(state).value
        if task:
            q["$or"] = [{"task": task}, {"name": task}]
        if after:
            seq = _seq_of(after)
            q["seq"] = {"$gt": seq if seq is not None else -1}
        with self._errors("list task runs"):
            cur = self.task_runs_coll.find(q, _TR_PROJECTION).sort("seq", pymongo.ASCENDING)
            if limit is not None:
                cur = cur.limit(limit)
            return [_tr_from_doc(d) for d in cur]

    def counts(self, run_id: str) -> dict[str, int]:
        with self._errors("counts"):
            rows = self.task_runs_coll.aggregate([{"$match": {"run_id": run_id}},
                                                  {"$group": {"_id": "$state", "n": {"$sum": 1}}}])
            return {r["_id"]: r["n"] for r in rows}

    def counts_many(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """:meth:`counts` of many runs in one query: ``{run_id: {state: n}}``, every id present."""
        out: dict[str, dict[str, int]] = {r: {} for r in run_ids}
        with self._errors("counts"):
            rows = self.task_runs_coll.aggregate([
                {"$match": {"run_id": {"$in": list(out)}}},
                {"$group": {"_id": {"r": "$run_id", "s": "$state"}, "n": {"$sum": 1}}}])
            for row in rows:
                out[row["_id"]["r"]][row["_id"]["s"]] = row["n"]
        return out

    def events(self, run_id, *, after=0, limit=None):
        with self._errors("events"):
            cur = self.events_coll.find({"run_id": run_id, "seq": {"$gt": after}}).sort("seq", pymongo.ASCENDING)
            if limit is not None:
                cur = cur.limit(limit)
            return [Event(seq=d["seq"], run_id=d["run_id"], task_run_id=d.get("task_run_id"), state=State(d["state"]),
                          attempt=d["attempt"], ts=d["ts"], message=d.get("message")) for d in cur]

    def find_cached(self, key: str) -> TaskRunRecord | None:
        with self._errors("cache lookup"):
            docs = list(self.task_runs_coll.find(
                {"key": key, "cacheable": 1, "state": {"$in": _FINISHED}, "result_ref": {"$ne": None}},
                _TR_PROJECTION).sort("ended", pymongo.DESCENDING).limit(1))
        return _tr_from_doc(docs[0]) if docs else None

    def put_rows(self, table: str, rows: Sequence[dict[str, Any]], key: Sequence[str],
                 run_id: str | None = None) -> int:
        if not rows:
            return 0
        with self._errors("write table rows"):
            last = self._reserve(f"rows:{table}", len(rows))
            keys = [table_key(r, key) for r in rows]
            ops = [UpdateOne({"_id": f"{table}\x00{k}"},
                             {"$set": {"tbl": table, "key": k, "run_id": run_id, "data": r,
                                       "seq": last - len(rows) + 1 + i}}, upsert=True)
                   for i, (r, k) in enumerate(zip(rows, keys, strict=True))]
            self.table_rows.bulk_write(ops, ordered=True)
        return len(rows)

    def get_rows(self, table: str, where: dict[str, Any] | None = None, *, limit: int = 100,
                 after: str | None = None) -> list[dict[str, Any]]:
        q: dict[str, Any] = {"tbl": table, **{f"data.{f}": v for f, v in (where or {}).items()}}
        if after and after.isdigit():
            q["seq"] = {"$gt": int(after)}
        with self._errors("read table rows"):
            docs = list(self.table_rows.find(q).sort("seq", pymongo.ASCENDING).limit(limit))
        return [{**d["data"], "_cursor": str(d["seq"]), "_run_id": d.get("run_id")} for d in docs]

    def derived_runs(self, run_id: str) -> list[RunRecord]:
        with self._errors("derived runs"):
            docs = list(self.runs.find({"$or": [{"parent_run": run_id}, {"resumed_from": run_id},
                                                {"replay_of": run_id}]}).sort([("created", 1), ("_id", 1)]))
        return [_run_from_doc(d) for d in docs]

    def claim_resume(self, run_id: str, claimant: str, expected: str | None) -> str | None:
        with self._errors("claim run for resume"):
            res = self.runs.update_one({"_id": run_id, "resumed_by": expected}, {"$set": {"resumed_by": claimant}})
            if res.modified_count == 1 or res.matched_count == 1:
                return None
            doc = self.runs.find_one({"_id": run_id}, {"resumed_by": 1})
        if doc is None:
            raise RunNotFound(f"no run {run_id!r} in {self._safe_url}")
        return str(doc.get("resumed_by"))

    def results_for_resume(self, run_id: str) -> dict[str, TaskRunRecord]:
        with self._errors("resume lookup"):
            docs = list(self.task_runs_coll.find(
                {"run_id": run_id, "state": {"$in": _FINISHED}, "result_ref": {"$ne": None}}, _TR_PROJECTION))
        return by_input_key(map(_tr_from_doc, docs))

    def results_by_key(self, run_id: str) -> dict[str, TaskRunRecord]:
        with self._errors("resume lookup"):
            docs = list(self.task_runs_coll.find(
                {"run_id": run_id, "state": {"$in": _FINISHED}, "result_ref": {"$ne": None}, "key": {"$ne": None}},
                _TR_PROJECTION))
        return {r.key: r for r in map(_tr_from_doc, docs) if r.key}

    def lineage(self, content_id: str) -> dict[str, Any]:
        with self._errors("lineage"):
            produced = list(self.task_runs_coll.find({"outputs": content_id}, _TR_PROJECTION).sort("_id", 1))
            consumed = list(self.task_runs_coll.find({"inputs": content_id}, _TR_PROJECTION).sort("_id", 1))
        inputs: list[str] = []
        for d in produced:
            inputs += [cid for cid in d.get("inputs") or () if cid not in inputs]
        return {"produced_by": [_tr_from_doc(d) for d in produced], "inputs": inputs,
                "consumed_by": [_tr_from_doc(d) for d in consumed]}

    def objects_of(self, task_run_id: str) -> dict[str, list[str]]:
        with self._errors("lineage"):
            d = self.task_runs_coll.find_one({"_id": task_run_id}, {"inputs": 1, "outputs": 1}) or {}
        return {"inputs": list(d.get("inputs") or ()), "outputs": list(d.get("outputs") or ())}

    # -- live events (issue 24) ------------------------------------------------------------------
    @property
    def can_subscribe(self) -> bool:
        """Whether this MongoDB can push new events (change streams: a replica set or a sharded cluster; not a
        standalone server, not mongomock). Probed once; the server polls the event log otherwise."""
        ok = getattr(self, "_can_subscribe", None)
        if ok is None:
            try:
                with self.events_coll.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=1):
                    ok = True
            except Exception:  # noqa: BLE001 - OperationFailure on a standalone server, TypeError on mongomock
                ok = False
            self._can_subscribe = ok
        return ok

    def subscribe(self, run_id: str, *, stop: threading.Event | None = None) -> Iterator[int]:
        """The seq of each event of ``run_id`` inserted from now on, through a change stream, until ``stop`` is
        set (checked every second). The events themselves are read from the log: this only says when."""
        with self._errors("watch events"):
            stream = self.events_coll.watch(
                [{"$match": {"operationType": "insert", "fullDocument.run_id": run_id}}], max_await_time_ms=1000)
        try:
            while stop is None or not stop.is_set():
                with self._errors("watch events"):
                    change = stream.try_next()
                if change is not None:
                    yield int(change["fullDocument"].get("seq", 0))
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


# -- documents ---------------------------------------------------------------------------------------
_TR_PROJECTION = {"last": 0, "eseq": 0, "pos": 0, "rank": 0, "cacheable": 0, "seq": 0}


def _first_line(e: BaseException) -> str:
    return str(e).split("\n", 1)[0][:300]


def _chain_forward(g: list[Transition]) -> bool:
    """True if each transition of one task run's batch moves forward from the one before."""
    return all(is_forward(a.state, a.attempt, b.state, b.attempt) for a, b in itertools.pairwise(g))


def _forward_filter(t: Transition, seq: int) -> dict[str, Any]:
    """Matches the stored task run only if ``t`` (with event seq ``seq``) moves it forward."""
    return {"_id": t.task_run_id, "rank": {"$lt": TERMINAL_RANK}, "pos": {"$lt": _pos(t.state, t.attempt)},
            "eseq": {"$lt": seq}}


def _update_doc(g: list[Transition], seqs: dict[int, int]) -> dict[str, Any]:
    """The ``$set`` for one task run's transitions (in order): the last state wins, fields accumulate."""
    first, last = g[0], g[-1]
    s: dict[str, Any] = {"run_id": first.run_id, "seq": _seq_of(first.task_run_id)}
    for t in g:
        st = t.state
        rank = RANK[st]
        if st is State.PENDING:
            s["created"] = t.ts
            for k in ("task", "name", "map_index", "cacheable", "upstream"):
                v = getattr(t, k)
                if v is not None:
                    s[k] = v
        elif st is State.RUNNING:
            s["started"] = t.ts
            if t.handle is not None:
                s["handle"] = t.handle
        elif rank == TERMINAL_RANK:
            s["ended"] = t.ts
            if t.result_ref is not None:
                s["result_ref"] = t.result_ref
                s["result_inline"] = t.result_inline
            if t.traceback is not None:
                s["traceback"] = t.traceback
        if t.key is not None:
            s["key"] = t.key
        if t.error is not None:
            s["error"] = t.error
        if t.ikey is not None:
            s["ikey"] = t.ikey
        if t.executor is not None:
            s["executor"] = t.executor
        if t.info is not None:
            s["info"] = t.info
        if t.objects:  # gflow objects read (when queued) or produced (when finished), for lineage
            s["inputs" if st is State.QUEUED else "outputs"] = list(t.objects)
    if last.state in (State.SUCCEEDED, State.CACHED):  # an earlier attempt's error is history (in the events)
        s["error"] = last.error
        s["traceback"] = last.traceback
    s.update(state=last.state.value, rank=RANK[last.state], attempt=last.attempt, pos=_pos(last.state, last.attempt),
             eseq=seqs[id(last)], last=[[seqs[id(t)], t.state.value, t.attempt, t.ts] for t in g])
    return {"$set": s}


def _event_doc(t: Transition, seq: int) -> dict[str, Any]:
    # the _id names the transition: a task run enters each (attempt, state) at most once
    return {"_id": f"{t.task_run_id}|{t.attempt}|{t.state.value}", "run_id": t.run_id, "seq": seq,
            "task_run_id": t.task_run_id, "state": t.state.value, "attempt": t.attempt, "ts": t.ts,
            "message": t.message or t.error}


def _run_from_doc(d: dict[str, Any]) -> RunRecord:
    kw = {k: d[k] for k in _RUN_FIELDS if k in d and d[k] is not None}
    kw["state"] = State(d["state"])
    return RunRecord(id=d["_id"], **kw)


def _tr_from_doc(d: dict[str, Any]) -> TaskRunRecord:
    kw: dict[str, Any] = {k: d.get(k) for k in _TR_FIELDS}
    kw["state"] = State(d["state"])
    kw["task"] = kw["task"] or ""
    kw["name"] = kw["name"] or ""
    kw["upstream"] = kw["upstream"] or []
    return TaskRunRecord(id=d["_id"], **kw)
