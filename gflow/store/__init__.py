"""State stores, chosen by URL: ``sqlite:///...`` (embedded default), ``mongodb://...``."""

from __future__ import annotations

from typing import Any

from gflow.errors import ConfigError
from gflow.store.base import Event, RunRecord, Store, TaskRunRecord, Transition, registry_id

_SCHEMES = {
    "sqlite": "gflow.store.sqlite:SQLiteStore",
    "mongodb": "gflow.store.mongo:MongoStore",
    "mongodb+srv": "gflow.store.mongo:MongoStore",
}
_registered: dict[str, Any] = {}


def register_store(scheme: str, factory: Any) -> None:
    """Open URLs of ``scheme`` with ``factory(url) -> Store`` (test support such as ``gflow.testing``'s
    ``mongomock://`` uses this; production stores are built in)."""
    _registered[scheme.lower()] = factory


def open_store(url: str | Store, events: str | None = None) -> Store:
    """Open a store from its URL (or return a Store unchanged).

    Args:
        events: A ``redis://`` URL: layer live counters and the event stream in Redis over the
            durable store (see ``gflow.store.redis``).
    """
    if events:
        try:
            from gflow.store.redis import RedisLayer
        except ImportError as e:
            raise ConfigError(f"--events {events!r} needs the redis extra: pip install 'gflow[redis]' ({e})") from e
        return RedisLayer(open_store(url), events)
    if isinstance(url, Store):
        return url
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in _registered:
        store: Store = _registered[scheme](url)
        return store
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(f"unknown store URL {url!r}; known schemes: {', '.join(sorted({*_SCHEMES, *_registered}))}")
    from gflow.serialization import import_path

    try:
        cls = import_path(target)
    except ImportError as e:
        raise ConfigError(f"store {scheme!r} needs an optional dependency: {e} (pip install 'gflow[{scheme[:5]}]')") \
            from e
    return cls.from_url(url)


def driver_alive(rec: RunRecord) -> bool | None:
    """Whether a run's driver process still lives: True or False for a run driven from this host,
    None for one driven from another host (not knowable from here)."""
    import os
    import socket

    if rec.host != socket.gethostname():
        return None
    if not rec.pid:
        return False
    try:
        os.kill(rec.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def end_unfinished(store: Store, run_id: str, state: Any, error: str, ts: float) -> int:
    """Mark every unfinished task run of ``run_id`` with ``state`` (what a driver that is gone cannot
    do itself); returns how many."""
    from gflow.states import TERMINAL

    orphans = [t for t in store.task_runs(run_id) if t.state not in TERMINAL]
    store.apply([Transition(t.id, run_id, state, t.attempt, ts, error=error) for t in orphans])
    return len(orphans)


def cancel_run(store: Store, run_id: str, reason: str = "cancelled by user") -> RunRecord:
    """Mark a run CANCELLED. A live driver notices within about a second and cancels its calls
    (queued ones never start, running ones are cancelled on the backend where it can); a run whose
    driver is gone has its unfinished task runs marked CANCELLED here.

    Raises:
        RunNotFound, InvalidTransition: unknown id, or the run already ended.
    """
    import time

    from gflow.states import State

    rec = store.get_run(run_id)
    now = time.time()
    store.set_run_state(rec.id, State.CANCELLED, now, error=f"Cancelled: {reason}")
    if driver_alive(rec) is False:
        end_unfinished(store, rec.id, State.CANCELLED, f"Cancelled: {reason}", now)
    return store.get_run(rec.id)


__all__ = ["Event", "RunRecord", "Store", "TaskRunRecord", "Transition", "cancel_run", "driver_alive", "end_unfinished",
           "open_store", "register_store", "registry_id"]
