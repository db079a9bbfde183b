"""Resolving ``module:qualname`` paths named by stored data, without running code.

Stored data is untrusted (docs/RELIABILITY.md, "Trust model for stored data"): a path read from it
may name any object. So resolution here

- accepts only dotted identifiers, with no ``__dunder__`` part (no ``__globals__``, ``__builtins__``,
  ``pip.__main__``); a module named exactly ``__main__`` is allowed (types defined in a script);
- looks names up statically, in ``vars()`` of the module and of each enclosing class: no
  ``getattr``, so no descriptor, property or module ``__getattr__`` runs;
- for types (:func:`resolve_type`), imports nothing except gflow's own object modules
  (:data:`IMPORTABLE`): importing runs a module's top-level code, so any other module must already be
  imported by the program (the flow or task module imports the types it uses, and ``gflow worker``
  imports the task's module before it reads the inputs).
"""

from __future__ import annotations

import enum
import functools
import importlib
import re
import sys
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from gflow.errors import SerializationError

#: packages whose modules decoding may import (gflow's own objects: known code, no import side effects)
IMPORTABLE = ("gflow.objects",)
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def split_path(path: Any) -> tuple[str, tuple[str, ...]]:
    """``module:Qual.Name`` -> (``module``, (``Qual``, ``Name``)).

    Raises:
        SerializationError: the path is not a plain ``module:qualname`` of identifiers.
    """
    if type(path) is not str or path.count(":") != 1 or len(path) > 1000:
        raise SerializationError(f"{_short(path)} is not a 'module:qualname' path")
    return _split(path)


@functools.lru_cache(maxsize=4096)
def _split(path: str) -> tuple[str, tuple[str, ...]]:  # pure: the same path always splits (or fails) the same
    mod_name, _, qual = path.partition(":")
    mod_parts, qual_parts = mod_name.split("."), qual.split(".")
    for part in (*mod_parts, *qual_parts):
        if not _IDENT.match(part):
            raise SerializationError(f"{_short(path)} is not a 'module:qualname' path")
        if part.startswith("__") and part.endswith("__") and not (mod_name == "__main__" and part in mod_parts):
            raise SerializationError(f"{path}: names a dunder attribute or module ({part}); refused")
    return mod_name, tuple(qual_parts)


def lookup(module: ModuleType, qual_parts: tuple[str, ...], path: str) -> Any:
    """The object at ``qual_parts`` in ``module``, found through ``vars()`` only (enclosing parts must be classes)."""
    obj: Any = module
    for i, part in enumerate(qual_parts):
        if i and not isinstance(obj, type):
            raise SerializationError(f"{path}: {'.'.join(qual_parts[:i])} is not a class")
        try:
            obj = vars(obj)[part]
        except (KeyError, TypeError):
            raise SerializationError(f"{path}: no {part!r} in {module.__name__}") from None
    return obj


def _importable(mod_name: str) -> bool:
    return any(mod_name == p or mod_name.startswith(p + ".") for p in IMPORTABLE)


_KINDS = {"enum": "an Enum", "model": "a pydantic model", "dataclass": "a dataclass"}


def resolve_type(path: Any, kind: str) -> type:
    """The class a stored value names, from a module already imported (or gflow's objects), checked to be
    of ``kind`` (``enum``, ``model`` or ``dataclass``) without calling anything on it.

    Raises:
        SerializationError: malformed path, module not imported, no such name, or not a class of that kind.
    """
    mod_name, qual_parts = split_path(path)
    module = sys.modules.get(mod_name)
    if module is None and _importable(mod_name):
        try:
            module = importlib.import_module(mod_name)
        except ImportError as e:
            raise SerializationError(f"{path}: cannot import {mod_name}: {e}") from None
    if module is None:
        raise SerializationError(
            f"{path}: module {mod_name!r} is not imported, and decoding stored data never imports a module "
            f"(that would run its code); import {mod_name} in the flow or task module that uses the type")
    obj = lookup(module, qual_parts, path)
    problem = _refusal(obj, kind) if isinstance(obj, type) else f"is a {type(obj).__name__}, not {_KINDS[kind]}"
    if problem:
        raise SerializationError(f"{path} {problem}; refused")
    return obj


@functools.lru_cache(maxsize=4096)
def _refusal(cls: type, kind: str) -> str | None:
    """Why ``cls`` may not be built as ``kind`` from stored data, or None (cached: a class's MRO is fixed)."""
    if kind == "dataclass":
        ok = is_dataclass_type(cls)
    else:
        ok = (enum.Enum if kind == "enum" else BaseModel) in mro(cls)
    if not ok:
        return f"is a class, not {_KINDS[kind]}"
    fin = _finalizer(cls) if kind != "enum" else None
    if fin:
        return f"defines __del__ (in {fin}); gflow does not construct objects with finalizers from stored data"
    return None


def _finalizer(cls: type) -> str | None:
    """The class in ``cls``'s MRO that defines ``__del__``, if any: a finalizer runs by itself, on
    attacker-chosen fields, whenever the object is collected, so such types are never built from stored data."""
    for c in mro(cls):
        if c is not object and "__del__" in vars(c):
            return c.__qualname__
    return None


def mro(cls: type) -> tuple[type, ...]:
    """``cls.__mro__`` read from ``type`` itself (no metaclass attribute can stand in for it)."""
    return type.__dict__["__mro__"].__get__(cls, type(cls))


def has_in_mro(cls: type, base: type) -> bool:
    return base in mro(cls)


def is_dataclass_type(cls: type) -> bool:
    return any("__dataclass_fields__" in vars(c) for c in mro(cls))


def import_task_object(path: Any) -> Any:
    """What ``gflow worker`` runs: import the module a task path names (the image holds that code) and
    look the name up statically. Only the task's own module is imported; the caller checks it is a Task.

    Raises:
        SerializationError: the path is malformed or names nothing.
        ImportError: the module cannot be imported.
    """
    mod_name, qual_parts = split_path(path)
    if mod_name == "__main__":
        raise SerializationError(f"{path}: a task in __main__ cannot be imported by a worker")
    module = importlib.import_module(mod_name)
    return lookup(module, qual_parts, path)


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 80 else r[:77] + "..."
