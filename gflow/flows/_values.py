"""Pure helpers over argument values: futures inside them, their substitution, gflow objects inside them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from gflow._walk import LEAF, substitute
from gflow.executors.base import Ref
from gflow.flows._future import Future
from gflow.store.base import registry_id
from gflow.tasks import Failed

SCALARS = frozenset({int, float, str, bool, bytes, type(None)})


def resolve_values(value: Any, tasks: Mapping[str, Any], refs: Mapping[str, Any] | None = None,
                   on_error: Callable[[Any], BaseException] | None = None) -> Any:
    """``value`` with every :class:`Future` inside it replaced by its call's value (``tasks``: id -> task
    state). Futures whose id is in ``refs`` become :class:`Ref` placeholders. With ``on_error``, a future
    whose call did not succeed raises ``on_error(task_state)``."""
    t = type(value)
    if t in LEAF:
        return value

    def get(f: Future) -> Any:
        if refs is not None and f.id in refs:
            return Ref(f.id)
        ts = tasks[f.id]
        if on_error is not None and ts.state.value not in ("SUCCEEDED", "CACHED") and type(ts.value) is not Failed:
            raise on_error(ts)  # (a map element failed within its min_success is a Failed value)
        return ts.value

    if t is Future:
        return get(value)
    if t is dict:
        return {k: substitute(v, Future, get) for k, v in value.items()}
    return substitute(value, Future, get)


def object_ids(value: Any, out: list[str] | None = None, depth: int = 0) -> list[str]:
    """Content ids of the gflow objects in ``value`` (itself, or inside lists/tuples/dicts, 3 levels)."""
    if out is None:
        out = []
    t = type(value)
    if t in SCALARS or depth > 3:
        return out
    cid = getattr(value, "content_id", None) if isinstance(value, BaseModel) else None
    if isinstance(cid, str):
        if cid not in out:
            out.append(cid)
        rk = getattr(value, "registry_key", None)
        key = rk() if callable(rk) else None
        if isinstance(key, str):  # found across runs whatever its name: ``key:molecule:CCO``
            entry = registry_id(type(value).__name__, key)
            if entry not in out:
                out.append(entry)
        return out
    if t is list or t is tuple:
        for v in value:
            if type(v) not in SCALARS:
                object_ids(v, out, depth + 1)
    elif t is dict:
        for v in value.values():
            if type(v) not in SCALARS:
                object_ids(v, out, depth + 1)
    return out
