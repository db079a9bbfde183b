"""``--param KEY=VALUE`` parsing for the CLI.

VALUE is a JSON value when it parses as JSON, else the bare string (a sequence, a path, a SMILES).
Decisions, each with one clear error line (:class:`~gflow.errors.InvalidArguments`) where it refuses:

- integers are kept exactly up to :data:`MAX_INT_DIGITS` digits (``n=<5000 digits>`` is that int, not
  a string; Python's 4,300-digit int/str limit does not apply: the user typed the value); longer
  literals are refused (conversion time grows with the square of the length);
- a value that starts like a JSON array or object (``[`` or ``{``) but is not valid JSON is refused
  rather than silently passed as text (quote it, ``'"[text"'``, to pass it as a string);
- values nested deeper than :data:`gflow.serialization.MAX_DEPTH` levels are refused;
- ``NaN``/``Infinity`` are accepted as floats (gflow stores them as tagged values);
- a key that is not an identifier, or is given twice, is refused; so is a JSON object with a repeated key.
"""

from __future__ import annotations

import decimal
import json
from typing import Any

from gflow.errors import InvalidArguments
from gflow.serialization import MAX_DEPTH

#: a bound on one value's size, far above any real parameter: parsing stays cheap whatever is passed
MAX_VALUE_CHARS = 10_000_000
#: longest integer literal kept as an int (conversion time grows with the square of the length)
MAX_INT_DIGITS = 100_000


def _parse_int(text: str) -> int:
    if len(text) <= 4000:
        return int(text)
    if len(text) > MAX_INT_DIGITS:
        raise _TooLong(f"an integer of {len(text):,} digits (at most {MAX_INT_DIGITS:,}); pass it as a string or "
                       f"a file")
    return int(decimal.Decimal(text))  # no int/str digit limit


class _TooLong(Exception):
    pass


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's pairs as a dict, refusing a key given twice (``json`` keeps the last silently)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"the JSON object has the key {k[:80]!r} twice")
        out[k] = v
    return out


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative)."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        node, d = stack.pop()
        if type(node) is dict or type(node) is list:
            d += 1
            deepest = max(deepest, d)
            if d > MAX_DEPTH:
                break
            stack.extend((c, d) for c in (node.values() if type(node) is dict else node))
    return deepest


def parse_param(item: str) -> tuple[str, Any]:
    """One ``KEY=VALUE`` -> (key, value).

    Raises:
        InvalidArguments: one line naming the parameter and what is wrong.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidArguments(f"malformed --param {item[:80]!r}: expected KEY=VALUE")
    if not key.isidentifier():
        raise InvalidArguments(f"--param {key[:80]!r}: not a parameter name (expected KEY=VALUE, KEY an identifier)")
    if len(raw) > MAX_VALUE_CHARS:
        raise InvalidArguments(f"--param {key}: the value is {len(raw):,} characters long; pass large inputs as a "
                               f"file path instead")
    try:
        value = json.loads(raw, parse_int=_parse_int, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise InvalidArguments(f"--param {key}: nested more than {MAX_DEPTH} levels deep") from None
    except (_TooLong, _DuplicateKey) as e:
        raise InvalidArguments(f"--param {key}: {e}") from None
    except ValueError as e:
        if raw.lstrip()[:1] in ("[", "{"):
            raise InvalidArguments(f"--param {key}: looks like JSON but is not valid JSON ({e}); fix it, or quote "
                                   f"it as a JSON string to pass it as text") from None
        return key, raw  # a bare string (a sequence, a path, ...)
    if _depth(value) > MAX_DEPTH:
        raise InvalidArguments(f"--param {key}: nested more than {MAX_DEPTH} levels deep")
    return key, value


def parse_params(items: tuple[str, ...]) -> dict[str, Any]:
    """``--param`` values by key (see the module docstring)."""
    params: dict[str, Any] = {}
    for item in items:
        key, value = parse_param(item)
        if key in params:
            raise InvalidArguments(f"--param {key} is given twice")
        params[key] = value
    return params
