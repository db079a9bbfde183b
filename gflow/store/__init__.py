"""State stores, chosen by URL: ``sqlite:///...`` (embedded default), ``mongodb://...``."""

from __future__ import annotations

from gflow.errors import ConfigError
from gflow.store.base import Event, RunRecord, Store, TaskRunRecord, Transition

_SCHEMES = {
    "sqlite": "gflow.store.sqlite:SQLiteStore",
    "mongodb": "gflow.store.mongo:MongoStore",
    "mongomock": "gflow.store.mongo:MongoStore",
}


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
    target = _SCHEMES.get(scheme)
    if target is None:
        raise ConfigError(f"unknown store URL {url!r}; known schemes: {', '.join(sorted(_SCHEMES))}")
    from gflow.serialization import import_path

    try:
        cls = import_path(target)
    except ImportError as e:
        raise ConfigError(f"store {scheme!r} needs an optional dependency: {e} (pip install 'gflow[{scheme[:5]}]')") \
            from e
    return cls.from_url(url)


__all__ = ["Event", "RunRecord", "Store", "TaskRunRecord", "Transition", "open_store"]
