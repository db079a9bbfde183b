"""Flows whose tasks use known amounts of CPU and memory (tests/test_usage.py)."""

from __future__ import annotations

import time

import gflow

MB = 1_000_000


@gflow.task
def burn(seconds: float) -> int:
    """Spin on the CPU for about ``seconds``."""
    end = time.thread_time() + seconds
    n = 0
    while time.thread_time() < end:
        n += 1
    return n


@gflow.task(resources=gflow.Resources(cpu=2, memory="1Gi"))
def hold(mb: int) -> int:
    """Allocate and touch ``mb`` MB, then let it go."""
    block = bytearray(mb * MB)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@gflow.flow
def burn_flow(seconds: float = 0.2) -> int:
    return burn(seconds)


@gflow.flow
def hold_flow(mb: int = 200) -> int:
    return hold(mb)


@gflow.flow
def burn_map(n: int = 3) -> list[int]:
    return burn.map([0.05] * n)


_tries = {"n": 0}


@gflow.task(retries=1)
def flaky(seconds: float) -> int:
    """Fails its first attempt in this process, after burning some CPU."""
    burn.fn(seconds)
    _tries["n"] += 1
    if _tries["n"] == 1:
        raise RuntimeError("first attempt fails")
    return 1


@gflow.flow
def flaky_flow() -> int:
    return flaky(0.01)
