"""The trivial tasks and flows the engine and Dask benchmarks share (importable by Dask workers)."""

from __future__ import annotations

import gflow


def inc(x: int) -> int:
    return x + 1


@gflow.task
def g_inc(x: int) -> int:  # a task is imported on workers by module:qualname, so it has its own name
    return x + 1


@gflow.task
def g_total(xs: list[int]) -> int:
    return sum(xs)


@gflow.flow
def g_map(n: int) -> int:
    return g_total(g_inc.map(range(n)))


@gflow.flow
def g_loop(n: int) -> int:
    return g_total([g_inc(i) for i in range(n)])


@gflow.flow
def g_chain(n: int) -> int:
    x = 0
    for _ in range(n):
        x = g_inc(x)
    return x
