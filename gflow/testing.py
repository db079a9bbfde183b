"""Helpers for testing flows: an isolated gflow home and a one-call flow runner.

In your conftest.py::

    from gflow.testing import gflow_home  # noqa: F401  (a pytest fixture)

    def test_design(gflow_home):
        result = run_flow(design, parent, executor="inline")
        assert result.state is gflow.State.SUCCEEDED
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gflow.flows import Flow, RunResult

_ENV = ("GFLOW_HOME", "GFLOW_PROFILE", "GFLOW_CONFIG", "GFLOW_EXECUTOR", "GFLOW_STORE", "GFLOW_ARTIFACTS",
        "GFLOW_EVENTS", "GFLOW_IMAGE_REGISTRY", "GFLOW_SIGNING_KEY", "GFLOW_BASE_IMAGE")


@contextmanager
def isolated_home(path: str | os.PathLike | None = None) -> Iterator[Path]:
    """Point gflow at a fresh home (state + artifacts) and ignore GFLOW_* settings while inside."""
    saved = {k: os.environ.pop(k) for k in _ENV if k in os.environ}
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="gflow-home-")
        path = tmp.name
    os.environ["GFLOW_HOME"] = str(path)
    try:
        yield Path(path)
    finally:
        os.environ.pop("GFLOW_HOME", None)
        os.environ.update(saved)
        if tmp is not None:
            tmp.cleanup()


def run_flow(flow: Flow, *args: Any, executor: Any = "inline", **kwargs: Any) -> RunResult:
    """Run ``flow`` and return its :class:`RunResult` (never raises for a failed run)."""
    return flow.run(*args, executor=executor, return_run=True, **kwargs)


_MOCK_SERVERS: dict[str, tuple[Any, Any]] = {}


def mongomock_store(url: str) -> Any:
    """A :class:`gflow.store.mongo.MongoStore` over mongomock (in-process, no server): the real pymongo
    code path for tests where no MongoDB server runs. ``mongomock://host/db``: stores with the same
    host share data (as with one server), each with a lock: mongomock does not make a single update
    atomic with respect to other threads, a MongoDB server does. Registered as the ``mongomock://``
    store scheme when this module is imported."""
    import threading
    import urllib.parse

    import mongomock

    from gflow.store.mongo import MongoStore

    parsed = urllib.parse.urlsplit(url)
    database = parsed.path.lstrip("/").split("/", 1)[0] or "gflow"
    _patch_mongomock()
    host = parsed.hostname or "localhost"
    with _MOCK_GUARD:
        if host not in _MOCK_SERVERS:
            _MOCK_SERVERS[host] = (mongomock.store.ServerStore(), threading.RLock())  # type: ignore[attr-defined]
        server, lock = _MOCK_SERVERS[host]
    return MongoStore(mongomock.MongoClient(_store=server), database, url=url, lock=lock)


def _patch_mongomock() -> None:
    """mongomock 4.3's bulk builder predates pymongo 4.11's ``sort`` argument of UpdateOne; accept it."""
    import inspect

    from mongomock.collection import BulkOperationBuilder

    orig = BulkOperationBuilder.add_update
    if "sort" in inspect.signature(orig).parameters:
        return

    def add_update(self, selector, doc, multi=False, upsert=False, collation=None, array_filters=None, hint=None,
                   sort=None):
        return orig(self, selector, doc, multi, upsert, collation=collation, array_filters=array_filters, hint=hint)

    BulkOperationBuilder.add_update = add_update  # type: ignore[method-assign]


def _register() -> None:
    import threading

    from gflow.store import register_store

    global _MOCK_GUARD
    _MOCK_GUARD = threading.Lock()
    register_store("mongomock", mongomock_store)


_MOCK_GUARD: Any = None
_register()

try:
    import pytest

    @pytest.fixture
    def gflow_home(tmp_path: Path) -> Iterator[Path]:
        """A pytest fixture: an isolated gflow home under the test's tmp_path."""
        with isolated_home(tmp_path / "gflow-home") as home:
            yield home

except ImportError:  # pytest is optional
    pass
