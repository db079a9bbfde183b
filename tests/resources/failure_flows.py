"""Flows for tests/test_failures.py (issue 19): memory escalation, partial maps, map concurrency."""

from __future__ import annotations

import os
import time

import gflow


@gflow.task(resources=gflow.Resources(memory="64Mi"), retries=gflow.Retry(2, memory_factor=2.0))
def hungry(n_bytes: int) -> int:
    block = bytearray(n_bytes)  # really allocated: the worker's data limit is the request
    return len(block)


@gflow.flow
def hungry_flow(n_bytes: int = 150_000_000) -> int:
    return hungry(n_bytes)


@gflow.task
def picky(x: int) -> int:
    if x % 1000 == 999 and x < 3000:
        raise ValueError(f"bad input {x}")
    return x * 2


@gflow.task
def total(xs: list) -> int:
    return sum(x for x in xs if isinstance(x, int))


@gflow.flow
def partial_flow(n: int = 10_000, min_success: float = 0.99) -> int:
    return total(picky.map(range(n), min_success=min_success))


@gflow.flow
def partial_values(n: int = 10_000, min_success: float = 0.99) -> list:
    return [f.result() for f in picky.map(range(n), min_success=min_success)]


@gflow.task
def marked(folder: str, i: int, seconds: float = 0.0) -> int:
    path = os.path.join(folder, f"running-{i}")
    open(path, "w").close()
    try:
        time.sleep(seconds)
    finally:
        os.remove(path)
    return i


@gflow.flow
def throttled(folder: str, n: int = 200, k: int = 50, seconds: float = 0.0) -> int:
    return len(marked.map([folder] * n, range(n), seconds=seconds, max_concurrency=k))


@gflow.task(resources=gflow.Resources(memory="256Mi"), retries=gflow.Retry(2, memory_factor=2.0))
def hungry_pod(n_bytes: int, hold: float = 1.0) -> int:
    """Holds the memory for a while, so a kubelet that samples usage sees it (as a cgroup would at once)."""
    block = bytearray(n_bytes)
    for i in range(0, n_bytes, 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    time.sleep(hold)
    return len(block)


@gflow.flow
def hungry_pod_flow(n_bytes: int = 400_000_000) -> int:
    return hungry_pod(n_bytes)


@gflow.task(resources=gflow.Resources(spot=True), retries=gflow.Retry(0, spot=1))
def on_spot(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x


@gflow.flow
def spot_flow(n: int = 1, seconds: float = 0.0) -> list:
    return on_spot.map(range(n), seconds=seconds)


@gflow.flow
def clean_flow(n: int = 10_000) -> int:
    """The same map with no bad input and no min_success (a baseline for the partial map's cost)."""
    return total(picky.map(range(3000, 3000 + n)))
