"""Tasks and flows for the Google Cloud Batch tests (module scope: workers import them by path)."""

from __future__ import annotations

import os
import time

import gflow


@gflow.task(resources=gflow.Resources(cpu=0.5, memory="256Mi"))
def square(x: int) -> int:
    return x * x


@gflow.task
def total(values: list[int]) -> int:
    return sum(values)


@gflow.task(retries=1)
def flaky(x: int, marker: str) -> int:
    """Fails its first attempt (it leaves a marker file), succeeds on the second."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return x + 100


@gflow.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.task
def exit_quietly(code: int) -> int:
    os._exit(code)


@gflow.task(resources=gflow.Resources(gpu=2, memory="8Gi", cpu=4), timeout=90)
def on_gpu(x: int) -> int:
    return x


@gflow.flow
def squares(n: int = 4) -> int:
    return total(square.map(range(n)))


@gflow.flow
def retried(marker: str) -> int:
    return flaky(1, marker)


@gflow.flow(image="us-central1-docker.pkg.dev/gflow-test/gflow/app:1")
def squares_in_plain_image(n: int = 3) -> int:
    """A flow naming a plain image reference: run as given, nothing built (issue 23 item 6)."""
    return total(square.map(range(n)))
