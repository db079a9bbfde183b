"""A task's code version: its pinned ``version`` option, else a hash of its source and of the project code it
references (see ``gflow.flows._keys`` for what is covered). Reading source files is I/O, so it happens once
per task object, outside the scheduling core: when a flow body first calls the task
(``Task.code_version``, cached on the task), and the call carries the result into the core."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import sysconfig
import textwrap
import types
from typing import Any

_SIMPLE = (int, float, str, bytes, bool, type(None))


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

def code_parts(task: Any) -> dict[str, str]:
    """What a task's code version is made of, piece by piece: ``{"function m.f": digest, "constant K": digest,
    "module m": digest}`` (``{"pinned": version}`` for a pinned one); what ``gflow cache explain`` compares."""
    if task.options.version:
        return {"pinned": str(task.options.version)}
    parts: dict[str, str] = {}
    _Hasher(hashlib.sha256(), parts).function(task.fn)
    return parts


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

    def __init__(self, h: Any, parts: dict[str, str] | None = None):
        self.h = h
        self.seen: set[int] = set()
        self.modules: set[str] = set()
        #: when given: each piece's own digest by what it is (``function mod.f``, ``constant K``, ``module m``)
        self.parts = parts

    def _feed(self, label: str, data: bytes) -> None:
        self.h.update(data)
        if self.parts is not None:
            self.parts[label] = hashlib.sha256(data).hexdigest()[:16]

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
        self._feed(f"function {getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}",
                   b"fn\0" + src.encode() + b"\0")
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
            self._feed(f"constant {name}", f"const\0{name}\0{obj!r}\0".encode())
            return
        if isinstance(obj, types.ModuleType):
            self.module(obj)
            return
        # a task, or a @gflow.warm loader (a helper like any other: its code is in the key, never its values)
        fn = getattr(obj, "fn", None) if type(obj).__name__ in ("Task", "Warm") else None
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
                    data = b"cls\0" + textwrap.dedent(inspect.getsource(target)).encode()
                except (OSError, TypeError):
                    data = f"cls\0{target.__qualname__}".encode()
                self._feed(f"class {mod_name}.{target.__qualname__}", data)
            else:
                self.function(target)
            return
        self.module(sys.modules.get(mod_name))

    def module(self, module: types.ModuleType | None) -> None:
        path = project_file(module)
        if path is None or module is None or module.__name__ in self.modules:
            return
        self.modules.add(module.__name__)
        self._feed(f"module {module.__name__}", f"mod\0{module.__name__}\0{_file_hash(path)}\0".encode())
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
