"""Values for people (CLI, dashboard): stored canonical values as the user wrote them, and strict JSON text.

Pure: nothing here imports or calls anything a value names, so it is safe on untrusted stored data.
Re-exported by :mod:`gflow.serialization`.
"""

from __future__ import annotations

import base64
import decimal
import json
import math
import secrets
from typing import Any

_TAG = "__gflow__"
_MAX_DEPTH = 100  # as gflow.serialization.MAX_DEPTH (not imported: that module imports this one)
_TOO_DEEP = "<nested too deep>"
#: how :func:`to_json_text` writes non-finite floats (JSON has no literal for them)
NON_FINITE_TEXT = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def to_display(tree: Any, _depth: int = 0) -> Any:
    """A stored canonical value as the user wrote it, for people (CLI, dashboard): gflow's tags removed,
    pydantic models and dataclasses as their fields, tuples and sets as lists, blobs summarised. Pure:
    it imports and calls nothing, so it is safe on untrusted stored data. Accepts the JSON text too.
    Parts nested deeper than 100 levels show as ``"<nested too deep>"``."""
    if isinstance(tree, (str, bytes)) and not isinstance(tree, str):
        tree = json.loads(tree)
    t = type(tree)
    if t is not list and t is not dict:
        return tree
    if _depth >= _MAX_DEPTH:
        return _TOO_DEEP
    d = _depth + 1
    if t is list:
        return [to_display(v, d) for v in tree]
    tag = tree.get(_TAG)
    if tag is None:
        return {k: to_display(v, d) for k, v in tree.items()}
    if tag in ("model", "dataclass"):
        return to_display(tree.get("data"), d)
    if tag in ("tuple", "set", "frozenset"):
        items = tree.get("items")
        return [to_display(v, d) for v in items] if type(items) is list else None
    if tag == "dict":
        out: dict[str, Any] = {}
        items = tree.get("items")
        for kv in items if type(items) is list else []:
            if isinstance(kv, list) and len(kv) == 2:
                k = to_display(kv[0], d)
                out[k if isinstance(k, str) else json.dumps(k, sort_keys=True)] = to_display(kv[1], d)
        return out
    if tag in ("float", "path", "datetime", "date"):
        return tree.get("v")
    if tag == "int":
        return tree.get("hex")
    if tag == "enum":
        return to_display(tree.get("v"), d)
    if tag == "bytes":
        b64 = tree.get("b64")
        try:
            return f"<{len(base64.b64decode(b64 if isinstance(b64, str) else '', validate=False))} bytes>"
        except ValueError:
            return "<bytes>"
    if tag in ("ndarray", "tensor"):
        return {"dtype": tree.get("dtype"), "shape": tree.get("shape"), "blob": tree.get("blob")}
    if tag == "pickle":
        return "<pickled value>"
    return {k: to_display(v, d) for k, v in tree.items()}


def display_json(text: str | bytes | None) -> Any:
    """:func:`to_display` of stored canonical JSON text (the text itself if it is not JSON). ``NaN`` or
    ``Infinity`` literals in the text (never written by gflow) come back as strings, so the result
    is always valid JSON."""
    if text is None:
        return None
    try:
        return to_display(json.loads(text, parse_constant=str))
    except (ValueError, RecursionError):
        return text


def to_json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text of a Python value, for printing (``gflow run`` prints a flow's result with it).

    Pydantic models, dataclasses, enums, sets and paths are written as pydantic writes them; NaN and
    infinities as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``; integers of any size as
    JSON numbers; anything else (or a value nested deeper than 100 levels) as the JSON string of its
    ``repr``. The text always parses with a strict JSON parser.
    """
    from pydantic_core import to_jsonable_python

    try:
        plain = to_jsonable_python(value, fallback=repr)
    except Exception:  # noqa: BLE001 - e.g. bytes that are not UTF-8, or nesting past pydantic's limit
        plain = value  # _strict writes lists and dicts (to 100 levels) and the repr of anything else
    big: list[str] = []
    nonce = secrets.token_hex(8)
    strict = _strict(plain, big, nonce, 0)
    text = json.dumps(strict, indent=indent, ensure_ascii=False, allow_nan=False)
    for i, digits in enumerate(big):  # ints past Python's int/str digit limit, written losslessly
        text = text.replace(json.dumps(_big_marker(nonce, i)), digits, 1)
    return text


def _strict(v: Any, big: list[str], nonce: str, depth: int) -> Any:
    t = type(v)
    if t is float:
        return v if math.isfinite(v) else NON_FINITE_TEXT[repr(v)]
    if t is int:
        if v.bit_length() <= 10_000:
            return v
        big.append(str(decimal.Decimal(v)))  # Decimal has no digit limit
        return _big_marker(nonce, len(big) - 1)
    if t is not list and t is not dict:
        return v if t in (str, bool, type(None)) else _safe_repr(v)
    if depth >= _MAX_DEPTH:
        return _TOO_DEEP
    if t is list:
        return [_strict(x, big, nonce, depth + 1) for x in v]
    return {str(k): _strict(x, big, nonce, depth + 1) for k, x in v.items()}


def _big_marker(nonce: str, i: int) -> str:
    return f"\x00gflow-int-{nonce}-{i}\x00"


def _safe_repr(v: Any) -> str:
    try:
        return repr(v)
    except Exception:  # noqa: BLE001 - RecursionError, an int past the digit limit, a broken __repr__
        return f"<{type(v).__name__}>"
