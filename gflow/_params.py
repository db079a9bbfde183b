"""``--param KEY=VALUE`` parsing for the CLI: a JSON value when the text parses as JSON, else the bare string."""

from __future__ import annotations

import json
from typing import Any

from gflow.errors import InvalidArguments


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InvalidArguments(f"malformed --param {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw  # a bare string (a sequence, a path, ...)
        params[key.strip()] = value
    return params
