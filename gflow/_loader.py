"""Finding a flow (or a task) from ``path/to/file.py:NAME`` or ``package.module:NAME``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from gflow.errors import ConfigError


def load_runnable(target: str) -> Any:
    """A flow, or a task wrapped as a one-call flow, from ``file.py:NAME`` or ``module:NAME``.

    Raises:
        ConfigError: naming what could not be found (and the flows and tasks that are there).
    """
    from gflow.flows import Flow, task_flow
    from gflow.tasks import Task

    obj = load_target(target, (Flow, Task))
    if isinstance(obj, Task):
        where = target.rpartition(":")[0]
        is_file = where.endswith(".py") or os.path.isfile(where)
        return task_flow(obj, source_file=os.path.abspath(where) if is_file else None)
    return obj


def load_target(target: str, kind: type | tuple[type, ...] | None = None) -> Any:
    """Import the object a target names; ``kind`` checks its type.

    Raises:
        ConfigError: a one-line message naming what could not be found.
    """
    if ":" not in target:
        raise ConfigError(f"target {target!r} must look like path/to/file.py:flow or package.module:flow")
    where, _, name = target.rpartition(":")
    if not name:
        raise ConfigError(f"target {target!r} names no flow after ':'")
    if where.endswith(".py") or os.sep in where or os.path.isfile(where):
        path = os.path.abspath(where)
        if not os.path.isfile(path):
            raise ConfigError(f"no such file: {where}")
        mod_name = os.path.splitext(os.path.basename(path))[0]
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # so process/remote workers can import the same module by name
        existing = sys.modules.get(mod_name)
        if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") == path:
            module = existing
        else:
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"cannot import {where}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception:
                sys.modules.pop(mod_name, None)
                raise
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ConfigError(f"cannot import module {where!r}: {e}") from None
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is None or (kind is not None and not isinstance(obj, kind)):
        kinds = kind if isinstance(kind, tuple) else (kind,) if kind is not None else ()
        found = sorted(k for k, v in vars(module).items() if kinds and isinstance(v, kinds))
        what = " or ".join(k.__name__.lower() for k in kinds) if kinds else "object"
        plural = "s or ".join(k.__name__.lower() for k in kinds) + "s" if kinds else "objects"
        hint = f" ({plural} there: {', '.join(found)})" if found else f" (no {plural} found there)"
        raise ConfigError(f"no {what} named {name!r} in {where}{hint}")
    if hasattr(obj, "source_file") and (where.endswith(".py") or os.path.isfile(where)):
        obj.source_file = os.path.abspath(where)
    return obj
