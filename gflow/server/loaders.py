"""Batched reads for the GraphQL resolvers: one store call for many ids (no N+1).

Each helper takes a :class:`~gflow.store.Store` and many keys and makes one batched Store call
(each store answers it in as few queries as it can; the interface has generic defaults). The
helpers are sync and run on the server's store threads; :class:`Loaders` wraps them in per-request
dataloaders.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from strawberry.dataloader import DataLoader

from gflow.store import Event, RunRecord, Store, TaskRunRecord


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
    return store.task_events_many(keys)


def objects_many(store: Store, task_run_ids: Sequence[str]) -> dict[str, dict[str, list[str]]]:
    """Content ids of the gflow objects many task runs read and produced: ``{id: {"inputs", "outputs"}}``."""
    return store.objects_many(task_run_ids)


def last_event_seq(store: Store, run_id: str) -> int:
    """The seq of a run's newest event (0 if none): subscribe with ``after`` = this to get only what follows."""
    return store.last_event_seq(run_id)


def downstream_many(store: Store, run_id: str, task_run_ids: Sequence[str],
                    scan_limit: int = 200_000) -> dict[str, list[str]]:
    """Task runs of ``run_id`` whose recorded ``upstream`` lists name any of ``task_run_ids``."""
    return store.downstream_many(run_id, task_run_ids, scan_limit)


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
