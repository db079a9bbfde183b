"""Substituting placeholders inside argument structures (lists, tuples, sets, dicts, pydantic fields)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel

LEAF = (str, int, float, bool, bytes, type(None))


def substitute(value: Any, kind: type, get: Callable[[Any], Any]) -> Any:
    """``value`` with every instance of ``kind`` inside it replaced by ``get(instance)`` (containers rebuilt)."""
    t = type(value)
    if t in LEAF:
        return value
    if t is kind:
        return get(value)
    if t is list:
        return [substitute(v, kind, get) for v in value]
    if t is tuple or t is set or t is frozenset:
        return t(substitute(v, kind, get) for v in value)
    if t is dict:
        return {k: substitute(v, kind, get) for k, v in value.items()}
    if isinstance(value, BaseModel):
        changed = {k: substitute(v, kind, get) for k, v in value.__dict__.items() if type(v) not in LEAF}
        return value.model_copy(update=changed) if changed else value
    return value
