"""Tasks and flows for the Volcano executor's tests: imported by the driver and, by module path, by the
workers the fake kubelet starts (its pods get tests/resources on PYTHONPATH, as an image would hold them)."""

from __future__ import annotations

import time
from pathlib import Path

import gflow


@gflow.task
def square(x: int) -> int:
    return x * x


@gflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@gflow.task
def boom(x: int) -> int:
    raise ValueError(f"boom at {x}")


@gflow.task(retries=2)
def flaky(x: int, folder: str) -> int:
    """Fails on its first attempt (counted in a file), then succeeds."""
    p = Path(folder) / f"flaky-{x}"
    with open(p, "a") as f:
        f.write("x\n")
    if sum(1 for _ in open(p)) < 2:
        raise RuntimeError(f"first attempt of {x} fails")
    return x + 100


@gflow.task
def nap(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x


@gflow.task(resources=gflow.Resources(gpu=1))
def on_gpu(x: int) -> int:
    return x


@gflow.task(tags=("gang",))
def ganged(x: int) -> int:
    return x * 10


@gflow.flow
def fan(n: int = 5) -> int:
    return total(square.map(range(n)))


@gflow.flow
def fan_fail(n: int = 3) -> list[int]:
    return boom.map(range(n))


@gflow.flow
def retry_flow(folder: str) -> list[int]:
    return flaky.map(range(2), folder=folder)


@gflow.flow
def naps(n: int = 2, seconds: float = 30.0) -> list[int]:
    return nap.map(range(n), seconds=seconds)


@gflow.flow
def gpu_flow(n: int = 2) -> list[int]:
    return on_gpu.map(range(n))


@gflow.flow
def gang_flow(n: int = 3) -> list[int]:
    return ganged.map(range(n))


@gflow.task(timeout=1)
def nap_limited(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.flow
def naps_with_timeout(seconds: float = 60.0) -> float:
    return nap_limited(seconds)


@gflow.task
def vanish() -> int:
    import os

    os._exit(0)  # the process ends "successfully" before the worker can write the outcome record


@gflow.flow
def vanish_flow() -> int:
    return vanish()


@gflow.flow(image="registry.test/gflow/flows:1")
def fan_in_plain_image(n: int = 3) -> int:
    """A flow naming a plain image reference: run as given, nothing built (issue 23 item 6)."""
    return total(square.map(range(n)))


@gflow.task
def gated_square(x: int, folder: str) -> int:
    """Waits (up to 5 min) for ``folder/open``: the pods stay running while a test kills their driver."""
    gate = Path(folder) / "open"
    end = time.monotonic() + 300
    while not gate.exists() and time.monotonic() < end:
        time.sleep(0.05)
    return x * x


@gflow.flow
def gated_fan(n: int, folder: str) -> int:
    return total(gated_square.map(range(n), folder=folder))
