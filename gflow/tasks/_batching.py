"""Batched calls of a ``@gflow.task(batch_size=B)`` function: grouping calls into batches, one call of the
vectorized function per batch, and the element-by-element fallback when a batch fails.

A call of a batch task carries one element per batched parameter (its state, outcome record, retries and
cache key are its own); only where it runs are calls with equal common arguments grouped, up to
``batch_size`` at a time, and the batched parameters handed over as lists. A batch that raises, or returns
a list of the wrong length, is run again one element at a time, so one bad input fails only its own call.
"""

from __future__ import annotations

import inspect
import logging
import traceback
from collections.abc import Callable
from typing import Any

from gflow.errors import BatchLengthMismatch, InvalidArguments

log = logging.getLogger("gflow.batch")


class BatchResult:
    """One call's result within a batch: its value, or the exception (with its traceback) it failed with."""

    __slots__ = ("exc", "tb", "value")

    def __init__(self, value: Any = None, exc: BaseException | None = None, tb: str = ""):
        self.value, self.exc, self.tb = value, exc, tb

    @property
    def ok(self) -> bool:
        return self.exc is None

    def unwrap(self) -> Any:
        if self.exc is not None:
            raise self.exc
        return self.value


def batched_params(fn: Callable[..., Any], names: tuple[str, ...] | None, label: str) -> tuple[str, ...]:
    """The parameters of ``fn`` that take lists: ``names`` if given (each checked), else the first one."""
    params = [n for n, p in inspect.signature(fn).parameters.items()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not params:
        raise InvalidArguments(f"task '{label}': batch_size needs a function with a parameter to batch over")
    if not names:
        return (params[0],)
    for n in names:
        if n not in params:
            raise InvalidArguments(f"task '{label}': batched parameter {n!r} is not a parameter of the function "
                                   f"(parameters: {', '.join(params)})")
    return tuple(names)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values that do not compare (arrays): grouped by identity
        return all(a[k] is b[k] for k in a)


def run_batch(task: Any, calls: list[tuple[tuple, dict]], fallback: bool = True) -> list[BatchResult]:
    """Run ``calls`` of ``task`` here; one ``BatchResult`` per call, in order. Calls of a task without
    ``batch_size`` run one by one."""
    size = task.options.batch_size
    if size is None:
        return [_one(task.fn, a, k) for a, k in calls]
    batched = task.batched
    out: list[BatchResult | None] = [None] * len(calls)
    groups: list[tuple[dict[str, Any], list[int], list[dict[str, Any]]]] = []
    for i, (args, kwargs) in enumerate(calls):
        try:
            arguments = task.validator.bind(args, kwargs)
        except BaseException as e:  # noqa: BLE001 - this call's own error
            out[i] = BatchResult(exc=e, tb=traceback.format_exc())
            continue
        common = {k: v for k, v in arguments.items() if k not in batched}
        for g in groups:
            if len(g[1]) < size and _same(g[0], common):
                g[1].append(i)
                g[2].append(arguments)
                break
        else:
            groups.append((common, [i], [arguments]))
    for _common, idx, bound in groups:
        results = _call(task, bound)
        if isinstance(results, BatchResult) and fallback and len(idx) > 1:
            log.warning("task %r: a batch of %d failed (%s: %s); running its elements one by one", task.name, len(idx),
                        type(results.exc).__name__, results.exc)
            for i, arguments in zip(idx, bound, strict=True):
                one = _call(task, [arguments])
                out[i] = one if isinstance(one, BatchResult) else BatchResult(one[0])
            continue
        for j, i in enumerate(idx):
            out[i] = results if isinstance(results, BatchResult) else BatchResult(results[j])
    return [r if r is not None else BatchResult(exc=RuntimeError("call not run")) for r in out]


def _call(task: Any, bound: list[dict[str, Any]]) -> list[Any] | BatchResult:
    """One call of the vectorized function over ``bound`` calls: the list of results, or the failure."""
    merged = {k: ([b[k] for b in bound] if k in task.batched else v) for k, v in bound[0].items()}
    args, kwargs = task.validator.call_args(merged)
    try:
        values = task.fn(*args, **kwargs)
    except BaseException as e:  # noqa: BLE001 - the batch's error (each element's when run alone)
        return BatchResult(exc=e, tb=traceback.format_exc())
    if not isinstance(values, (list, tuple)) or len(values) != len(bound):
        got = f"{len(values)} results" if isinstance(values, (list, tuple)) else f"a {type(values).__name__}"
        err = BatchLengthMismatch(f"task '{task.name}' returned {got} for a batch of {len(bound)} elements "
                                f"(a batch_size task returns a list with one result per element)")
        return BatchResult(exc=err, tb="")
    return list(values)


def _one(fn: Callable[..., Any], args: tuple, kwargs: dict) -> BatchResult:
    try:
        return BatchResult(fn(*args, **kwargs))
    except BaseException as e:  # noqa: BLE001 - this call's own error
        return BatchResult(exc=e, tb=traceback.format_exc())
