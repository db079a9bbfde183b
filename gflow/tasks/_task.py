"""The ``@task`` decorator and the ``Task`` object."""

from __future__ import annotations

import difflib
import functools
import hashlib
import inspect
import textwrap
import typing
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import TypeAdapter, ValidationError

from gflow import _context
from gflow._context import current_flow
from gflow.errors import InvalidArguments
from gflow.tasks._batching import batched_params, run_batch
from gflow.tasks._maps import MAP_OPTIONS, map_here, map_options
from gflow.tasks._options import TaskOptions
from gflow.tasks._version import code_version

P = ParamSpec("P")
R = TypeVar("R")


def source_hash(fn: Callable[..., Any]) -> str:
    """Short hash of a function's source (falls back to its bytecode)."""
    try:
        src = textwrap.dedent(inspect.getsource(fn)).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        src = code.co_code + repr(code.co_consts).encode() if code else repr(fn).encode()
    return hashlib.sha256(src).hexdigest()[:16]


def module_name(fn: Callable[..., Any]) -> str:
    """The importable module name of ``fn``: a script run as ``__main__`` counts as its file's stem,
    so ``python examples/x.py`` and ``gflow run examples/x.py:flow`` give tasks the same identity."""
    mod = fn.__module__
    if mod == "__main__":
        import os
        import sys

        path = getattr(sys.modules.get("__main__"), "__file__", None)
        if path:
            return os.path.splitext(os.path.basename(path))[0]
    return mod


class ArgumentValidator:
    """Checks call arguments against a function's annotations (pydantic-compatible ones only)."""

    def __init__(self, fn: Callable[..., Any], label: str, batched: tuple[str, ...] = ()):
        self.label = label
        #: parameters of a ``batch_size`` task: a call carries one element, the function takes a list
        self.batched = batched
        self.signature = inspect.signature(fn)
        self._adapters: dict[str, TypeAdapter] | None = None
        self._fn = fn
        kinds = [p.kind for p in self.signature.parameters.values()]
        P_ = inspect.Parameter
        #: all parameters positional-or-keyword (the common case): bind and call without inspect
        self._simple = all(k in (P_.POSITIONAL_OR_KEYWORD, P_.POSITIONAL_ONLY) for k in kinds)
        self._names = tuple(self.signature.parameters)

    @property
    def adapters(self) -> dict[str, TypeAdapter]:
        if self._adapters is None:
            try:
                hints = typing.get_type_hints(self._fn)
            except Exception:
                hints = {}
            adapters = {}
            for name in self.signature.parameters:
                hint = hints.get(name)
                if name in self.batched:  # a call holds one element of the list the function declares
                    hint = _item_type(hint)
                if hint is None or hint is Any:
                    continue
                try:
                    adapters[name] = TypeAdapter(hint)
                except Exception:  # not a pydantic-compatible annotation: left unchecked
                    continue
            self._adapters = adapters
        return self._adapters

    def bind(self, args: tuple, kwargs: dict) -> dict[str, Any]:
        """Bind to the signature (defaults applied) or raise InvalidArguments."""
        if self._simple and not kwargs and len(args) == len(self._names):
            return dict(zip(self._names, args))
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as e:
            raise InvalidArguments(f"{self.label}: {self._unknown_keyword(kwargs) or e}") from None
        bound.apply_defaults()
        return bound.arguments

    def _unknown_keyword(self, kwargs: dict) -> str | None:
        """'got an unexpected keyword argument X (did you mean Y?)' for a keyword the signature does not have,
        said before the 'missing a required argument' that a misspelt keyword causes."""
        params = self.signature.parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        for k in kwargs:
            if k not in params:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (parameters: {', '.join(names) or 'none'})"
                return f"got an unexpected keyword argument {k!r}{hint}"
        return None

    def call_args(self, arguments: dict[str, Any]) -> tuple[tuple, dict]:
        """Positional and keyword arguments to call the function with, from bound ``arguments``."""
        if self._simple:
            return tuple(arguments.values()), {}
        ba = inspect.BoundArguments(self.signature, arguments)  # type: ignore[arg-type,unused-ignore]
        return ba.args, ba.kwargs

    def validate(self, arguments: dict[str, Any], skip: Callable[[Any], bool] | None = None) -> dict[str, Any]:
        """Validate bound arguments; returns them with pydantic's coercions applied.

        Values for which ``skip(value)`` is true (unresolved futures) are left alone.
        """
        adapters = self.adapters
        if not adapters:
            return arguments
        out = dict(arguments)
        for name, adapter in adapters.items():
            if name not in out:
                continue
            value = out[name]
            if skip is not None and skip(value):
                continue
            kind = self.signature.parameters[name].kind
            try:
                if kind is inspect.Parameter.VAR_POSITIONAL:
                    continue
                if kind is inspect.Parameter.VAR_KEYWORD:
                    continue
                out[name] = adapter.validate_python(value)
            except ValidationError as e:
                first = e.errors()[0]
                loc = ".".join(str(p) for p in first.get("loc", ()))
                where = f"{name}.{loc}" if loc else name
                raise InvalidArguments(
                    f"{self.label}: argument '{where}': {first.get('msg')} (got {type(value).__name__}: "
                    f"{_short(value)})"
                ) from None
        return out


def _item_type(hint: Any) -> Any:
    """``X`` of ``list[X]`` / ``Sequence[X]`` (what one element of a batched parameter must be), else None."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is not None and len(args) == 1 and isinstance(origin, type) and origin is not tuple:
        return args[0]
    return None


def check_counts(label: str, **counts: Any) -> None:
    """One line naming an option that must be a count of at least 1 (``per_job``, ``batch_size``)."""
    for name, v in counts.items():
        if v is not None and (type(v) is not int or v < 1):
            raise InvalidArguments(f"{label}: {name} must be an integer of at least 1, got {v!r}")


def _short(value: Any, n: int = 80) -> str:
    r = repr(value)
    return r if len(r) <= n else r[: n - 3] + "..."


class Task(Generic[P, R]):
    """A decorated function. Call it outside a flow: plain call. Inside a flow: a future."""

    def __init__(self, fn: Callable[P, R], options: TaskOptions):
        self.fn = fn
        self.options = options
        self.identity = f"{module_name(fn)}:{fn.__qualname__}"
        self.name = options.name or fn.__name__
        self.version = options.version or source_hash(fn)
        self.batched: tuple[str, ...] = ()
        if options.batch_size is not None:
            self.batched = batched_params(fn, options.batched, self.name)
        self.validator = ArgumentValidator(fn, f"task '{self.name}'", self.batched)
        functools.update_wrapper(self, fn)

    @property
    def code_version(self) -> str:
        """The version of the code this task runs (part of its calls' cache keys): its pinned ``version``, else a
        hash of its source and the project code it references. Computed on first use (it reads source files)
        and cached on the task, so the scheduling core, which reads no files, gets it with each call."""
        return code_version(self)

    # -- calling -----------------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        ctx = current_flow.get()
        if ctx is None:
            return self.invoke(args, kwargs)
        return ctx.call(self, args, kwargs)

    def invoke(self, args: tuple | list, kwargs: dict) -> Any:
        """Run one call's function here (what executors and the worker do): for a ``batch_size`` task, a
        batch of one."""
        if self.options.batch_size is None:
            return self.fn(*args, **kwargs)
        return run_batch(self, [(tuple(args), kwargs)], fallback=False)[0].unwrap()

    def invoke_many(self, calls: list[tuple[tuple, dict]]) -> list[Any]:
        """Run several calls here, each with its own result or exception (``BatchResult``); a ``batch_size``
        task's calls are grouped into batches of up to ``batch_size`` with equal common arguments, and a
        batch that raises or returns the wrong length is run again element by element."""
        return run_batch(self, calls)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        """Schedule a call inside a flow and return its future (same as calling it there)."""
        ctx = current_flow.get()
        if ctx is None:
            raise RuntimeError(f"task '{self.name}'.submit() needs a running flow; call the task directly instead")
        return ctx.call(self, args, kwargs)

    def map(self, *iterables: Iterable[Any], per_job: int | None = None, **common: Any) -> list[Any]:
        """Fan out over ``iterables`` (zipped, like ``map``); ``common`` goes to every call.

        ``per_job=K`` runs K elements one after another in each job / array child / pod of a job backend
        (sharing ``@gflow.warm`` values); each element is still its own task run.

        Inside a flow this returns one future per element, handed to the executor as one batch; if an
        iterable is itself a future (of a list), it returns one future of the list of results, and the
        fan-out happens when that future resolves. Outside a flow it returns the list of results.

        Two keywords are options of the map, never arguments of its calls: ``min_success`` (a fraction in
        (0, 1]: while at least that share of the elements succeeds, failed ones are :class:`gflow.Failed`
        values and the run goes on) and ``max_concurrency`` (at most that many elements run at once).
        """
        if not iterables:
            raise InvalidArguments(f"task '{self.name}'.map() needs at least one iterable")
        options = map_options(self.name, {k: common.pop(k) for k in MAP_OPTIONS if k in common})
        check_counts(f"task '{self.name}'.map()", per_job=per_job)
        task = self
        if self.options.batch_size is not None and self.options.batched is None and len(iterables) > 1:
            # every mapped parameter of a vectorized task receives a list (not only the first)
            task = task.with_options(batched=tuple(self.validator._names[:len(iterables)]))
        ctx = current_flow.get()
        if ctx is not None:
            if per_job is not None:
                task = task.with_options(per_job=per_job)
            if options["min_success"] is None and options["max_concurrency"] is None:
                return ctx.map(task, iterables, common)  # an iterable may be a future of a list
            return ctx.map(task, iterables, common, options)
        rows = list(zip(*iterables, strict=True)) if len(iterables) > 1 else [(x,) for x in iterables[0]]
        if options["min_success"] is not None:
            return map_here(task, rows, common, options["min_success"])
        if task.options.batch_size is not None:
            return [r.unwrap() for r in run_batch(task, [(row, common) for row in rows])]
        return [self.fn(*row, **common) for row in rows]

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run one call of this task as a run of its own (recorded, cached and resumable like a flow's),
        with the keyword options of ``Flow.run`` (``executor=``, ``store=``, ``return_run=`` ...)."""
        make = _context.one_call_flow
        if make is None:  # pragma: no cover - importing gflow.tasks imports gflow, which imports gflow.flows
            raise RuntimeError("Task.run needs gflow.flows (import gflow)")
        return make(self).run(*args, **kwargs)

    # -- options -----------------------------------------------------------------------------------
    def with_options(self, **changes: Any) -> Task[P, R]:
        """A copy of this task with some options changed (validated like the decorator's)."""
        check_counts(f"task '{self.name}'", per_job=changes.get("per_job"), batch_size=changes.get("batch_size"))
        new = Task(self.fn, self.options.merged(**changes))
        new.identity = self.identity
        return new

    def __reduce__(self):
        return (_load_task, (self.identity, self.options))

    def __repr__(self) -> str:
        return f"<gflow.Task {self.identity} v{self.version}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)


def _load_task(identity: str, options: TaskOptions) -> Task:
    from gflow.serialization import import_path

    task = import_path(identity)
    if not isinstance(task, Task):
        if not callable(task):
            raise TypeError(f"{identity} is not a gflow task")
        return Task(task, options)  # `t = gflow.task(f)`: the module holds the plain function under its name
    if task.options != options:
        task = task.with_options(**{k: getattr(options, k) for k in type(options).model_fields})
    return task


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    fn: None = None,
    /,
    *,
    name: str | None = ...,
    version: str | None = ...,
    retries: Any = ...,
    retry_backoff: float = ...,
    retry_on: Any = ...,
    timeout: float | None = ...,
    cache: bool = ...,
    resources: Any = ...,
    image: Any = ...,
    max_concurrency: int | None = ...,
    pickle: bool = ...,
    tags: Any = ...,
    executor: Any = ...,
    per_job: int | None = ...,
    batch_size: int | None = ...,
    batched: Any = ...,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a gflow task: ``@task`` or ``@task(retries=2, cache=True, ...)``.

    Args:
        name: Display name (default: the function's name).
        version: Task version (default: a hash of the function's source).
        retries: Extra attempts (int) or a ``gflow.Retry`` policy; ``retry_backoff`` and
            ``retry_on`` set its backoff (seconds) and exception types.
        timeout: Seconds per attempt.
        cache: Reuse results across runs for equal inputs.
        resources: ``gflow.Resources(cpu=..., memory="2Gi", gpu=...)``.
        image: A ``gflow.Image`` overriding the flow's image for this task.
        max_concurrency: At most this many calls of this task run at once.
        pickle: Allow pickled inputs/outputs for values that have no canonical form.
        per_job: Elements of a map run one after another in each job / array child / pod.
        batch_size: The function is vectorized: its batched parameters (``batched``, default the first
            one) receive lists of up to this many elements and it returns a list of the same length.
        executor: Run this task's calls on this executor (URL) instead of the flow's; a profile's
            ``executors`` table can override it per task name.
    """
    check_counts("@gflow.task", per_job=options.get("per_job"), batch_size=options.get("batch_size"))
    opts = TaskOptions().merged(**options)

    def wrap(f: Callable[P, R]) -> Task[P, R]:
        if isinstance(f, Task):
            return f.with_options(**options)
        if not callable(f):
            raise TypeError(f"@gflow.task needs a function, got {type(f).__name__}")
        return Task(f, opts)

    if fn is not None:
        return wrap(fn)
    return wrap
