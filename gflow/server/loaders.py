"""Batched reads for the GraphQL resolvers: one store call for many ids (no N+1).

Each helper takes a :class:`~gflow.store.Store` and many keys. The embedded SQLite store gets one
SQL statement per batch; any other store gets the generic path through the Store interface (a
``*_many`` method on the store when it has one, else one call per key). The helpers are sync and
run on the server's store threads; :class:`Loaders` wraps them in per-request dataloaders.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from strawberry.dataloader import DataLoader

from gflow.states import State
from gflow.store import Event, RunRecord, Store, TaskRunRecord

_CHUNK = 500  # ids per IN (...) clause; SQLite's default limit on parameters is far above it


def _sqlite(store: Store) -> Any | None:
    """The store itself when it is the embedded SQLite store (for direct SQL), else None."""
    from gflow.store.sqlite import SQLiteStore

    return store if type(store) is SQLiteStore else None


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def counts_many(store: Store, run_ids: Sequence[str]) -> dict[str, dict[str, int]]:
    """Task-run counts by state for many runs: ``{run_id: {state: n}}`` (every id present)."""
    ids = list(dict.fromkeys(run_ids))
    out: dict[str, dict[str, int]] = {r: {} for r in ids}
    out.update(store.counts_many(ids))
    return out


def runs_many(store: Store, run_ids: Sequence[str]) -> dict[str, RunRecord | None]:
    """Runs by exact id (None where unknown)."""
    return store.get_runs(list(dict.fromkeys(run_ids)))


def task_runs_many(store: Store, ids: Sequence[str]) -> dict[str, TaskRunRecord | None]:
    """Task runs by id (None where unknown)."""
    return store.get_task_runs(list(dict.fromkeys(ids)))


def task_events_many(store: Store, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], list[Event]]:
    """Events of many task runs, keyed by ``(run_id, task_run_id)``, in order."""
    uniq = list(dict.fromkeys(keys))
    out: dict[tuple[str, str], list[Event]] = {k: [] for k in uniq}
    by_run: dict[str, list[str]] = defaultdict(list)
    for run_id, tr in uniq:
        by_run[run_id].append(tr)
    sq = _sqlite(store)
    for run_id, trs in by_run.items():
        if sq is None:
            wanted = set(trs)
            for e in store.events(run_id):
                if e.task_run_id in wanted:
                    out[(run_id, e.task_run_id)].append(e)
            continue
        for chunk in _chunks(trs):
            rows = sq._read(
                "SELECT seq, run_id, task_run_id, state, attempt, ts, message FROM events WHERE run_id=? AND "
                f"task_run_id IN ({','.join('?' * len(chunk))}) ORDER BY seq", [run_id, *chunk], "events")
            for r in rows:
                out[(run_id, r[2])].append(Event(seq=r[0], run_id=r[1], task_run_id=r[2], state=State(r[3]),
                                                 attempt=r[4], ts=r[5], message=r[6]))
    return out


def objects_many(store: Store, task_run_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Content ids of the gflow objects many task runs read and produced: ``{id: {"inputs", "outputs"}}``."""
    uniq = list(dict.fromkeys(task_run_ids))
    sq = _sqlite(store)
    if sq is None:
        return {i: store.objects_of(i) for i in uniq}
    out: dict[str, dict[str, list[str]]] = {i: {"inputs": [], "outputs": []} for i in uniq}
    for chunk in _chunks(uniq):
        rows = sq._read(f"SELECT task_run_id, content_id, role FROM objects WHERE task_run_id IN "
                        f"({','.join('?' * len(chunk))}) ORDER BY rowid", chunk, "lineage")
        for tr, cid, role in rows:
            out[tr]["inputs" if role == "in" else "outputs"].append(cid)
    return out


def last_event_seq(store: Store, run_id: str) -> int:
    """The seq of a run's newest event (0 if none): subscribe with ``after`` = this to get only what follows."""
    sq = _sqlite(store)
    if sq is not None:
        rows = sq._read("SELECT max(seq) FROM events WHERE run_id=?", (run_id,), "events")
        return rows[0][0] or 0
    last = 0
    while True:
        page = store.events(run_id, after=last, limit=10_000)
        if not page:
            return last
        last = page[-1].seq


def downstream_many(store: Store, run_id: str, task_run_ids: Sequence[str],
                    scan_limit: int = 200_000) -> dict[str, list[str]]:
    """Task runs of ``run_id`` whose recorded ``upstream`` lists name any of ``task_run_ids``.

    Returns ``{upstream_id: [downstream ids]}``. Only edges inside the run are found (the upstream
    lists are kept per task run; no reverse index exists). The generic path scans at most
    ``scan_limit`` task runs of the run.
    """
    wanted = list(dict.fromkeys(task_run_ids))
    out: dict[str, list[str]] = {i: [] for i in wanted}
    sq = _sqlite(store)
    if sq is not None:
        for chunk in _chunks(wanted):
            rows = sq._read(
                "SELECT task_runs.id, j.value FROM task_runs, json_each(task_runs.upstream) AS j "
                f"WHERE task_runs.run_id=? AND task_runs.upstream IS NOT NULL AND j.value IN "
                f"({','.join('?' * len(chunk))}) ORDER BY task_runs.seq", [run_id, *chunk], "lineage")
            for down, up in rows:
                out[up].append(down)
        return out
    wanted_set = set(wanted)
    for tr in store.task_runs(run_id, limit=scan_limit):
        for up in tr.upstream:
            if up in wanted_set:
                out[up].append(tr.id)
    return out


Call = Callable[..., Awaitable[Any]]


class Loaders:
    """Per-request (per-connection, for websockets) dataloaders; every load runs one batched store read.

    Values are not cached between loads (``cache=False``): a websocket connection lives long and
    must not see stale states; loads made in the same tick are still batched into one read.
    """

    def __init__(self, store: Store, call: Call):
        self.store = store
        self._call = call

        def loader(fn: Callable[[Store, list], dict]) -> DataLoader:
            async def load(keys: list) -> list:
                found = await call(fn, store, keys)
                return [found[k] for k in keys]

            return DataLoader(load_fn=load, cache=False)

        self.counts: DataLoader[str, dict[str, int]] = loader(counts_many)
        self.runs: DataLoader[str, RunRecord | None] = loader(runs_many)
        self.task_runs: DataLoader[str, TaskRunRecord | None] = loader(task_runs_many)
        self.task_events: DataLoader[tuple[str, str], list[Event]] = loader(task_events_many)
        self.objects: DataLoader[str, dict[str, list[str]]] = loader(objects_many)


def decode_json(text: str | None) -> Any:
    """A stored JSON field for the API (the raw text if it is not JSON)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
