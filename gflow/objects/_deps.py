"""Optional field libraries (RDKit, gemmi), imported on first use, and the error when one is missing."""

from __future__ import annotations

import functools
import importlib
import threading
import warnings
from types import ModuleType

from gflow.errors import GflowError


class MissingExtra(GflowError, ImportError):
    """A feature needs an optional library that is not installed; the message names the extra to install."""


_warned: set[str] = set()
_warn_lock = threading.Lock()


@functools.cache
def optional(module: str) -> ModuleType | None:
    """Imports ``module`` once; None where it is not installed."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def require(module: str, extra: str, feature: str) -> ModuleType:
    """Imports ``module`` or raises :class:`MissingExtra` naming ``feature`` and the extra that brings it."""
    found = optional(module)
    if found is None:
        raise MissingExtra(f"{feature} needs {module.split('.')[0]}: pip install 'gflow[{extra}]'")
    return found


def warn_once(key: str, message: str) -> None:
    """Emits ``message`` as a UserWarning the first time ``key`` is seen in this process."""
    with _warn_lock:
        if key in _warned:
            return
        _warned.add(key)
    warnings.warn(message, UserWarning, stacklevel=3)
