"""The state-store interface and its records.

While a driver lives, its engine (deciding through the scheduling core) is the only writer of run state; a
dead driver's run is recorded FAILED by ``prepare_resume`` and ``gflow runs cancel`` marks a run CANCELLED. The
engine sends task-run transitions in batches
(:meth:`Store.apply`); the store enforces the forward-only rule itself (in the database, as a
conditional write), so concurrent writers can never move a record backwards.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from gflow.states import State

#: the longest run id (or prefix) a store looks up; longer input is not a run id
MAX_RUN_ID = 128


def prefix_match(run_id: str, candidates: Sequence[str], url: str) -> str:
    """The one candidate a run-id prefix names (stores query up to 6 ids starting with ``run_id``).

    Raises:
        RunNotFound: no candidate, or several (the message lists them: the prefix is ambiguous).
    """
    from gflow.errors import RunNotFound

    if not candidates:
        raise RunNotFound(f"no run {run_id!r} in {url}")
    if len(candidates) > 1:
        shown = ", ".join(sorted(candidates)[:5]) + (", ..." if len(candidates) > 5 else "")
        raise RunNotFound(f"run id prefix {run_id!r} is ambiguous: it matches {shown}; give more characters")
    return candidates[0]


def check_run_id(run_id: str, url: str) -> None:
    """Refuse input that cannot be a run id (too long) before any query is made."""
    from gflow.errors import RunNotFound

    if not isinstance(run_id, str) or not run_id or len(run_id) > MAX_RUN_ID:
        shown = run_id[:40] + "..." if isinstance(run_id, str) and len(run_id) > 40 else run_id
        raise RunNotFound(f"no run {shown!r} in {url} (a run id has 1 to {MAX_RUN_ID} characters)")


def registry_id(kind: str, key: str) -> str:
    """The lineage id under which objects of ``kind`` (a class name, any case) with ``key`` are recorded
    (what the engine records and :meth:`Store.lineage` is asked for by the server)."""
    return f"key:{kind.lower()}:{key}"


def table_key(row: dict[str, Any], key: Sequence[str]) -> str:
    """A row's key in a named table (:meth:`Store.put_rows`): the canonical JSON of its key fields' values.

    Raises:
        StoreError: when a key field is missing from the row.
    """
    import json

    from gflow.errors import StoreError

    missing = [k for k in key if k not in row]
    if missing or not key:
        raise StoreError(f"a table row needs its key fields {list(key)}; missing {missing}")
    return json.dumps([row[k] for k in key], sort_keys=True, separators=(",", ":"))


def by_input_key(records: Any) -> dict[str, TaskRunRecord]:
    """Finished task runs by input key (the cache key for records made before input keys existed)."""
    out: dict[str, TaskRunRecord] = {}
    for r in records:
        k = r.ikey or r.key
        if k:
            out[k] = r
    return out


def seq_of(task_run_id: str) -> int | None:
    """The creation order of a task run within its run: the number after the last dot of its id."""
    tail = task_run_id.rpartition(".")[2]
    return int(tail) if tail.isdigit() else None


@dataclass(slots=True)
class Transition:
    """One task-run state change, plus the fields it sets. ``None`` fields are left unchanged."""

    task_run_id: str
    run_id: str
    state: State
    attempt: int
    ts: float
    task: str | None = None
    name: str | None = None
    key: str | None = None
    upstream: list[str] | None = None
    map_index: int | None = None
    error: str | None = None
    traceback: str | None = None
    result_ref: str | None = None
    result_inline: str | None = None
    handle: str | None = None
    message: str | None = None
    cacheable: int | None = None
    #: content ids of gflow objects this call read (on QUEUED) or produced (on SUCCEEDED/CACHED)
    objects: list[str] | None = None
    #: the call's input key (identity + arguments, no code version): what resume matches on
    ikey: str | None = None
    #: the executor the call was submitted to (on QUEUED)
    executor: str | None = None
    #: backend details of the attempt (job id, exit code, log stream, ...)
    info: dict[str, Any] | None = None


#: A transition as a plain row: the fields of :class:`Transition` in order, the state as its string. The engine
#: makes rows (a tuple costs a fraction of an object), the recorder and the SQLite writer process pass them on
#: as they are; stores take them through :meth:`Store.apply_rows`.
Row = tuple
R_ID, R_RUN, R_STATE, R_ATTEMPT, R_TS = 0, 1, 2, 3, 4
R_KEY, R_ERROR, R_TRACEBACK, R_RESULT_REF, R_RESULT_INLINE, R_MESSAGE = 7, 10, 11, 12, 13, 15


def trow(task_run_id: str, run_id: str, state: State, attempt: int, ts: float, task: str | None = None,
         name: str | None = None, key: str | None = None, upstream: list[str] | None = None,
         map_index: int | None = None, error: str | None = None, traceback: str | None = None,
         result_ref: str | None = None, result_inline: str | None = None, handle: str | None = None,
         message: str | None = None, cacheable: int | None = None, objects: list[str] | None = None,
         ikey: str | None = None, executor: str | None = None, info: dict[str, Any] | None = None) -> Row:
    """A transition :data:`Row` (the same fields as :class:`Transition`)."""
    return (task_run_id, run_id, state._value_, attempt, ts, task, name, key, upstream, map_index, error, traceback,
            result_ref, result_inline, handle, message, cacheable, objects, ikey, executor, info)


def row_of(t: Transition) -> Row:
    """A :class:`Transition` as a :data:`Row`."""
    return (t.task_run_id, t.run_id, t.state._value_, t.attempt, t.ts, t.task, t.name, t.key, t.upstream,
            t.map_index, t.error, t.traceback, t.result_ref, t.result_inline, t.handle, t.message, t.cacheable,
            t.objects, t.ikey, t.executor, t.info)


def transition_of(row: Row) -> Transition:
    """A :data:`Row` as a :class:`Transition`."""
    return Transition(row[0], row[1], State(row[2]), *row[3:])


@dataclass(slots=True)
class RunRecord:
    """A flow run."""

    id: str
    flow: str
    flow_path: str = ""
    state: State = State.PENDING
    params: str = "{}"
    image_tag: str | None = None
    executor: str | None = None
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    tags: list[str] = field(default_factory=list)
    error: str | None = None
    traceback: str | None = None
    parent_run: str | None = None
    resumed_from: str | None = None
    replay_of: str | None = None
    host: str | None = None
    pid: int | None = None
    result_ref: str | None = None
    result_inline: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the run that resumed this one (claimed it), see :meth:`Store.claim_resume`
    resumed_by: str | None = None

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        import time

        return (self.ended or time.time()) - self.started


@dataclass(slots=True)
class TaskRunRecord:
    """A task run (one call of a task, possibly several attempts)."""

    id: str
    run_id: str
    task: str
    name: str
    state: State
    attempt: int = 1
    key: str | None = None
    created: float | None = None
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    traceback: str | None = None
    result_ref: str | None = None
    result_inline: str | None = None
    handle: str | None = None
    upstream: list[str] = field(default_factory=list)
    map_index: int | None = None
    ikey: str | None = None
    executor: str | None = None
    info: dict[str, Any] | None = None


@dataclass(slots=True)
class Event:
    """One entry of the event log."""

    seq: int
    run_id: str
    task_run_id: str | None
    state: State
    attempt: int
    ts: float
    message: str | None = None


#: an attempt's QUEUED event message saying what it asked for (``asks memory=128Mi spot``; gflow.flows._attempts)
ASKS_PREFIX = "asks "
_ERROR_TYPE = re.compile(r"^([A-Za-z_][\w.]*): ")


def asked_of(message: str | None) -> str | None:
    """What an attempt asked for, from its QUEUED event's message (``memory=128Mi spot``); None if not said."""
    if message and message.startswith(ASKS_PREFIX):
        return message[len(ASKS_PREFIX):]
    return None


def error_type_of(message: str | None) -> str | None:
    """The short error type (``OutOfMemory``) an attempt's failure event starts with (``gflow.errors.OutOfMemory:
    ...``); None when the message does not start with one."""
    m = _ERROR_TYPE.match(message or "")
    return m.group(1).rsplit(".", 1)[-1] if m else None


class Store(abc.ABC):
    """Run and task-run state. Implementations: ``sqlite`` (embedded), ``mongo``, plus a ``redis`` layer.

    A context manager: ``close`` releases connections (idempotent)."""

    url: str
    #: the store can apply large batches in another process (:meth:`offload_writer`)
    can_offload: bool = False

    def offload_writer(self) -> Any:
        """A writer that applies transition batches elsewhere (an object with ``apply(batch)``, ``ready()``,
        ``wait_ready()``), for stores with ``can_offload``; None otherwise."""
        return None

    @abc.abstractmethod
    def claim_resume(self, run_id: str, claimant: str, expected: str | None) -> str | None:
        """Atomically set ``run_id``'s ``resumed_by`` to ``claimant`` if it is still ``expected``.

        Returns None on success, else the claimant found there (someone else won). This makes "one
        driver resumes a run at a time" hold across processes and hosts."""

    # runs --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_run(self, run: RunRecord) -> None: ...

    @abc.abstractmethod
    def set_run_state(self, run_id: str, state: State, ts: float, *, error: str | None = None,
                      traceback: str | None = None, result_ref: str | None = None,
                      result_inline: str | None = None) -> None:
        """Move a run forward; raises InvalidTransition (record unchanged) or RunNotFound."""

    @abc.abstractmethod
    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set non-state fields (image_tag, extra, ...)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRecord: ...

    @abc.abstractmethod
    def list_runs(self, *, flow: str | None = None, state: State | str | None = None, tag: str | None = None,
                  since: float | None = None, until: float | None = None, limit: int = 50,
                  before: tuple[float, str] | None = None) -> list[RunRecord]:
        """Newest first; ``before`` = (created, id) cursor for pagination."""

    # task runs ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def apply(self, transitions: Sequence[Transition]) -> list[Transition]:
        """Apply a batch atomically, in order; returns the transitions refused as backwards."""

    def apply_rows(self, rows: Sequence[Row]) -> list[int]:
        """:meth:`apply` on transition rows (what the engine records); returns the positions refused."""
        ts = [transition_of(r) for r in rows]
        refused = {id(t) for t in self.apply(ts)}
        return [i for i, t in enumerate(ts) if id(t) in refused]

    def transition(self, t: Transition) -> None:
        """Apply one transition; raises InvalidTransition if it was refused."""
        from gflow.errors import InvalidTransition

        if self.apply([t]):
            raise InvalidTransition(
                f"task run {t.task_run_id}: refused transition to {t.state.value} (attempt {t.attempt}); "
                "states only move forward"
            )

    @abc.abstractmethod
    def get_task_run(self, task_run_id: str) -> TaskRunRecord: ...

    @abc.abstractmethod
    def task_runs(self, run_id: str, *, state: State | str | None = None, task: str | None = None,
                  limit: int | None = None, after: str | None = None) -> list[TaskRunRecord]:
        """Task runs of a run in creation order; ``after`` = task-run id cursor."""

    @abc.abstractmethod
    def counts(self, run_id: str) -> dict[str, int]:
        """Number of task runs in each state."""

    def get_runs(self, run_ids: Sequence[str]) -> dict[str, RunRecord | None]:
        """Runs by exact id, None where unknown (stores override this with one query)."""
        from gflow.errors import RunNotFound

        out: dict[str, RunRecord | None] = {}
        for rid in dict.fromkeys(run_ids):
            try:
                rec = self.get_run(rid)
                out[rid] = rec if rec.id == rid else None
            except RunNotFound:
                out[rid] = None
        return out

    def get_task_runs(self, task_run_ids: Sequence[str]) -> dict[str, TaskRunRecord | None]:
        """Task runs by id, None where unknown (stores override this with one query)."""
        out: dict[str, TaskRunRecord | None] = {}
        for tid in dict.fromkeys(task_run_ids):
            try:
                out[tid] = self.get_task_run(tid)
            except LookupError:
                out[tid] = None
        return out

    def counts_many(self, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """Counts for several runs (stores override this with one query)."""
        return {rid: self.counts(rid) for rid in run_ids}

    def counts_by_task(self, run_id: str) -> dict[str, dict[str, int]]:
        """Number of task runs in each state, per task identity: ``{task: {state: n}}`` (stores that keep
        counts incrementally override this with a read of their summary)."""
        out: dict[str, dict[str, int]] = {}
        for t in self.task_run_summaries(run_id):
            by = out.setdefault(t.task or "", {})
            by[t.state.value] = by.get(t.state.value, 0) + 1
        return out

    @abc.abstractmethod
    def events(self, run_id: str, *, after: int = 0, limit: int | None = None) -> list[Event]: ...

    @abc.abstractmethod
    def find_cached(self, key: str) -> TaskRunRecord | None:
        """The newest finished task run with this cache key and a stored result, if any."""

    @abc.abstractmethod
    def results_by_key(self, run_id: str) -> dict[str, TaskRunRecord]:
        """Finished task runs of a run that have stored results, by cache key."""

    def results_for_resume(self, run_id: str) -> dict[str, TaskRunRecord]:
        """Finished task runs of a run that have stored results, by input key (``ikey``; the cache key for
        records made before input keys existed): what a resume reuses."""
        return by_input_key(self.results_by_key(run_id).values())

    def put_rows(self, table: str, rows: Sequence[dict[str, Any]], key: Sequence[str],
                 run_id: str | None = None) -> int:
        """Upsert ``rows`` (JSON objects) into a named table, one row per value of the ``key`` fields (the last
        write wins); ``run_id`` notes which run wrote them. Returns how many were written. For results people
        look up by key (a precalc run's predictions by model and input key)."""
        from gflow.errors import StoreError

        raise StoreError(f"{type(self).__name__} keeps no tables")

    def get_rows(self, table: str, where: dict[str, Any] | None = None, *, limit: int = 100,
                 after: str | None = None) -> list[dict[str, Any]]:
        """Rows of a table whose fields equal ``where``'s, in write order after the cursor ``after`` (each row
        carries ``_cursor`` and ``_run_id``)."""
        from gflow.errors import StoreError

        raise StoreError(f"{type(self).__name__} keeps no tables")

    def task_run_summaries(self, run_id: str, *, after: str | None = None,
                           limit: int | None = None) -> list[TaskRunRecord]:
        """:meth:`task_runs` without the large fields (``traceback``, ``result_inline`` are None): what a
        run page lists. Stores override it to read less."""
        out = self.task_runs(run_id, after=after, limit=limit)
        for t in out:
            t.traceback = None
            t.result_inline = None
        return out

    def derived_runs(self, run_id: str) -> list[RunRecord]:
        """Runs made from ``run_id``: its resumes, replays and subflow runs, oldest first (stores override
        this with an indexed query; the default scans the runs created after it)."""
        me = self.get_run(run_id)
        later = self.list_runs(since=me.created, limit=100_000)
        found = [r for r in later if r.id != me.id and me.id in (r.resumed_from, r.replay_of, r.parent_run)]
        return sorted(found, key=lambda r: (r.created, r.id))

    def task_events_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Event]]:
        """Events of many task runs, keyed by ``(run_id, task_run_id)``, in order (every key present)."""
        uniq = list(dict.fromkeys(keys))
        out: dict[tuple[str, str], list[Event]] = {k: [] for k in uniq}
        by_run: dict[str, set[str]] = {}
        for run_id, tr in uniq:
            by_run.setdefault(run_id, set()).add(tr)
        for run_id, wanted in by_run.items():
            for e in self.events(run_id):
                if e.task_run_id in wanted:
                    out[(run_id, e.task_run_id)].append(e)
        return out

    def objects_many(self, task_run_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
        """Content ids of the gflow objects many task runs read and produced: ``{id: {"inputs", "outputs"}}``."""
        return {i: self.objects_of(i) for i in dict.fromkeys(task_run_ids)}

    def last_event_seq(self, run_id: str) -> int:
        """The seq of a run's newest event (0 if none)."""
        last = 0
        while True:
            page = self.events(run_id, after=last, limit=10_000)
            if not page:
                return last
            last = page[-1].seq

    def downstream_many(self, run_id: str, task_run_ids: Sequence[str],
                        scan_limit: int = 200_000) -> dict[str, list[str]]:
        """Task runs of ``run_id`` whose recorded ``upstream`` names any of ``task_run_ids``:
        ``{upstream_id: [downstream ids]}`` (edges inside the run only; the generic path scans at most
        ``scan_limit`` task runs)."""
        wanted = list(dict.fromkeys(task_run_ids))
        out: dict[str, list[str]] = {i: [] for i in wanted}
        wanted_set = set(wanted)
        for tr in self.task_runs(run_id, limit=scan_limit):
            for up in tr.upstream:
                if up in wanted_set:
                    out[up].append(tr.id)
        return out

    def lineage(self, content_id: str) -> dict[str, Any]:
        """Which task run produced a gflow object (by content id), from which inputs, and which
        task runs consumed it: ``{"produced_by": [TaskRunRecord], "inputs": [ids], "consumed_by": [...]}``."""
        return {"produced_by": [], "inputs": [], "consumed_by": []}

    def objects_of(self, task_run_id: str) -> dict[str, list[str]]:
        """Content ids of the gflow objects a task run read and produced."""
        return {"inputs": [], "outputs": []}

    def close(self) -> None:
        """Release connections."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
