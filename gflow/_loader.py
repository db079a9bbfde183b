"""Finding a flow from ``path/to/file.py:flow`` or ``package.module:flow``."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

from gflow.errors import ConfigError


def load_target(target: str, kind: type | None = None) -> Any:
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
        found = sorted(k for k, v in vars(module).items() if kind is not None and isinstance(v, kind))
        what = kind.__name__.lower() if kind else "object"
        hint = f" ({what}s there: {', '.join(found)})" if found else f" (no {what}s found there)"
        raise ConfigError(f"no {what} named {name!r} in {where}{hint}")
    if hasattr(obj, "source_file") and (where.endswith(".py") or os.path.isfile(where)):
        obj.source_file = os.path.abspath(where)
    return obj
