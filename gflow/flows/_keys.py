"""Cache keys and the code a task runs.

A call has two keys:

- the **cache key**: sha256 of the task identity, the task's *code version*, the image it runs in
  (for image-based executors) and the canonical serialization of its bound arguments. ``cache=True``
  reuses results across runs by this key, so it must change whenever the result could;
- the **input key**: sha256 of the task identity and the arguments only. ``resume`` matches calls of
  the resumed run by it, so a fix to a task's code does not make every finished call of that task
  run again (``--rerun-changed`` recomputes the calls whose code version changed).

The code version covers (see docs/caching.md): the task function's source; the source of functions
and classes of the task's own module that it references, transitively; the values of simple module
constants it references (numbers, strings, tuples of them ...); and every *project module* it
references or imports — any module whose file is outside the standard library and site-packages (and
not gflow itself) — as the bytes of its file, transitively through that module's own project
imports. ``@gflow.task(version="...")`` pins the version by hand instead (nothing is hashed).
Not covered: data files read at run time, environment variables, modules imported by string
(``importlib``), installed third-party package versions (run in an image: its tag is in the key).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from gflow.errors import SerializationError
from gflow.serialization import canonical_json, to_jsonable
from gflow.tasks import code_version, project_file

__all__ = ["code_version", "compute_key", "compute_keys", "project_file"]

_encode_str = json.encoder.encode_basestring  # what the canonical encoder writes strings with (ensure_ascii=False)


def compute_keys(task: Any, arguments: dict[str, Any], image: str | None = None,
                 version: str | None = None) -> tuple[str, str]:
    """``(cache key, input key)`` of a call of ``task`` with bound ``arguments``. ``version``: the task's code
    version when the caller has it (the scheduling core always does: it reads no files); else computed here
    (once per task object, see :func:`code_version`).

    Raises:
        SerializationError: naming the task and the argument that has no canonical form.
    """
    inputs = _plain_json(arguments)
    if inputs is None:
        blobs: dict[str, bytes] = {}
        allow = task.options.pickle
        try:
            tree = {k: to_jsonable(v, blobs, allow, "") for k, v in arguments.items()}
        except SerializationError:  # again, naming the argument (not formatted on the common path)
            tree = {k: to_jsonable(v, blobs, allow, f"task '{task.name}' argument '{k}'")
                    for k, v in arguments.items()}
        inputs = canonical_json(tree)
    ident = task.identity
    ikey = hashlib.sha256(f"{ident}\0{inputs}".encode()).hexdigest()
    if version is None:
        version = code_version(task)
    key = hashlib.sha256(f"{ident}\0{version}\0{image or ''}\0{inputs}".encode()).hexdigest()
    return key, ikey


def _plain_json(arguments: dict[str, Any]) -> str | None:
    """The canonical JSON of arguments that are all strings, integers (JSON-safe), booleans or None, written
    directly (the same bytes ``gflow.serialization`` writes, without its tree walk); None for anything else."""
    parts = []
    for k in sorted(arguments):
        v = arguments[k]
        t = type(v)
        if t is int:
            if not -(2**53) < v < 2**53:
                return None
            text = str(v)
        elif t is str:
            text = _encode_str(v)
        elif t is bool:
            text = "true" if v else "false"
        elif v is None:
            text = "null"
        else:
            return None
        parts.append(f"{_encode_str(k)}:{text}")
    return "{" + ",".join(parts) + "}"


def compute_key(task: Any, arguments: dict[str, Any], image: str | None = None) -> str:
    """The cache key alone (see :func:`compute_keys`)."""
    return compute_keys(task, arguments, image)[0]
