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
import inspect
import json
import os
import sys
import sysconfig
import textwrap
import types
from typing import Any

from gflow.errors import SerializationError
from gflow.serialization import canonical_json, to_jsonable

_encode_str = json.encoder.encode_basestring  # what the canonical encoder writes strings with (ensure_ascii=False)

_SIMPLE = (int, float, str, bytes, bool, type(None))


def compute_keys(task: Any, arguments: dict[str, Any], image: str | None = None) -> tuple[str, str]:
    """``(cache key, input key)`` of a call of ``task`` with bound ``arguments``.

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
    key = hashlib.sha256(f"{ident}\0{code_version(task)}\0{image or ''}\0{inputs}".encode()).hexdigest()
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


def code_version(task: Any) -> str:
    """The version of the code a task runs (cached on the task object): its pinned ``version`` option,
    else a hash of its source and of the project code it references."""
    cached = getattr(task, "_code_version", None)
    if cached is not None:
        return str(cached)
    pinned = task.options.version
    if pinned:
        v = f"pinned:{pinned}"
    else:
        h = hashlib.sha256()
        _Hasher(h).function(task.fn)
        v = h.hexdigest()[:24]
    try:
        task._code_version = v
    except AttributeError:  # a task-like object without a slot for it: compute again next time
        pass
    return v


# -- what counts as project code ---------------------------------------------------------------------------

def _library_roots() -> tuple[str, ...]:
    roots = set()
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(name)
        if p:
            roots.add(os.path.realpath(p))
    for p in (sys.base_prefix, sys.base_exec_prefix):
        roots.add(os.path.realpath(os.path.join(p, "lib")))
    import site

    for p in [*getattr(site, "getsitepackages", lambda: [])(), getattr(site, "getusersitepackages", lambda: "")()]:
        if p:
            roots.add(os.path.realpath(p))
    return tuple(sorted(r + os.sep for r in roots))


_LIB_ROOTS: tuple[str, ...] | None = None
_MODULE_HASH: dict[tuple[str, int, int], str] = {}


def project_file(module: types.ModuleType | None) -> str | None:
    """The source file of ``module`` if it is project code (not the stdlib, site-packages or gflow)."""
    global _LIB_ROOTS
    if module is None:
        return None
    name = module.__name__
    if name == "gflow" or name.startswith("gflow.") or name in sys.builtin_module_names:
        return None
    path = getattr(module, "__file__", None)
    if not path or not path.endswith(".py"):
        return None
    real = os.path.realpath(path)
    if _LIB_ROOTS is None:
        _LIB_ROOTS = _library_roots()
    if real.startswith(_LIB_ROOTS) or f"{os.sep}site-packages{os.sep}" in real:
        return None
    return real


class _Hasher:
    """Feeds the code a function depends on into a hash, each piece once."""

    def __init__(self, h: Any):
        self.h = h
        self.seen: set[int] = set()
        self.modules: set[str] = set()

    def function(self, fn: Any) -> None:
        fn = inspect.unwrap(getattr(fn, "fn", fn))
        if id(fn) in self.seen:
            return
        self.seen.add(id(fn))
        try:
            src = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError):
            code = getattr(fn, "__code__", None)
            src = repr(code.co_code + repr(code.co_consts).encode()) if code is not None else repr(fn)
        self.h.update(b"fn\0" + src.encode() + b"\0")
        code = getattr(fn, "__code__", None)
        if code is None:
            return
        glb = getattr(fn, "__globals__", {})
        home = glb.get("__name__")
        for name in sorted(_names(code)):
            if name in glb:
                self.reference(name, glb[name], home)

    def reference(self, name: str, obj: Any, home: str | None) -> None:
        simple_seq = isinstance(obj, (tuple, frozenset)) and all(isinstance(x, _SIMPLE) for x in obj)
        if isinstance(obj, _SIMPLE) or simple_seq:
            self.h.update(f"const\0{name}\0{obj!r}\0".encode())
            return
        if isinstance(obj, types.ModuleType):
            self.module(obj)
            return
        fn = getattr(obj, "fn", None) if type(obj).__name__ == "Task" else None
        target = fn or obj
        mod_name = getattr(target, "__module__", None)
        if not isinstance(mod_name, str):
            return
        if mod_name == home and isinstance(target, (types.FunctionType, type)):
            if id(target) in self.seen:
                return
            if isinstance(target, type):
                self.seen.add(id(target))
                try:
                    self.h.update(b"cls\0" + textwrap.dedent(inspect.getsource(target)).encode())
                except (OSError, TypeError):
                    self.h.update(f"cls\0{target.__qualname__}".encode())
            else:
                self.function(target)
            return
        self.module(sys.modules.get(mod_name))

    def module(self, module: types.ModuleType | None) -> None:
        path = project_file(module)
        if path is None or module is None or module.__name__ in self.modules:
            return
        self.modules.add(module.__name__)
        self.h.update(f"mod\0{module.__name__}\0{_file_hash(path)}\0".encode())
        # the project modules this one imports (or takes names from), transitively
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                self.module(value)
            elif isinstance(value, (types.FunctionType, type)):
                owner = getattr(value, "__module__", None)
                if isinstance(owner, str) and owner != module.__name__:
                    self.module(sys.modules.get(owner))


def _file_hash(path: str) -> str:
    st = os.stat(path)
    k = (path, st.st_mtime_ns, st.st_size)
    h = _MODULE_HASH.get(k)
    if h is None:
        with open(path, "rb") as f:
            h = _MODULE_HASH[k] = hashlib.sha256(f.read()).hexdigest()
    return h


def _names(code: types.CodeType) -> set[str]:
    """Global names a code object (and the code objects nested in it) refers to."""
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out
