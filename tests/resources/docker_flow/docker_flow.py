"""An example flow project for the image tests: built into an image, run in containers, replayed.

The base image comes from ``GFLOW_TEST_BASE_IMAGE`` (the tests import a debootstrapped Debian);
extra pip packages from ``GFLOW_TEST_PACKAGES`` (comma-separated), so a test can change a
dependency without editing this file.
"""

from __future__ import annotations

import os

from helpers import scale  # a sibling module: code roots carry more than the flow file

import gflow
from gflow.images import Image
from gflow.objects import Score

IMAGE = Image(
    base=os.environ.get("GFLOW_TEST_BASE_IMAGE", "python:3.11-slim"),
    packages=[p for p in os.environ.get("GFLOW_TEST_PACKAGES", "").split(",") if p],
    env={"GFLOW_EXAMPLE": "1"},
)

#: a task with its own image (dependencies the flow's image does not have)
SIX = Image(base=IMAGE.base, packages=["six==1.17.0"])


@gflow.task(cache=True, resources=gflow.Resources(cpu=0.5, memory="256Mi"))
def square(x: int) -> int:
    return scale(x * x)


@gflow.task
def total(values: list[int]) -> Score:
    return Score(name="total", value=float(sum(values)))


@gflow.task
def boom(message: str) -> int:
    raise ValueError(message)


@gflow.task(resources=gflow.Resources(memory="64Mi"))
def hog(megabytes: int) -> int:
    block = bytearray(megabytes * 1024 * 1024)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return len(block)


@gflow.task(image=SIX)
def six_version() -> str:
    import six

    return six.__version__


@gflow.flow(image=IMAGE)
def squares(n: int = 4) -> Score:
    return total(square.map(range(n)))


@gflow.flow(image=IMAGE)
def failing(message: str = "no luck") -> int:
    return boom(message)


@gflow.flow(image=IMAGE)
def greedy(megabytes: int = 256) -> int:
    return hog(megabytes)


@gflow.flow(image=IMAGE)
def mixed() -> list[str]:
    return [six_version(), str(total([1, 2]).result().value)]


@gflow.task(retries=2)
def nap(i: int, seconds: float) -> int:
    import time

    time.sleep(seconds)
    return i * i


@gflow.task
def add_up(values: list[int]) -> int:
    return sum(values)


@gflow.flow(image=IMAGE)
def naps(n: int = 3, seconds: float = 1.0) -> int:
    return add_up(nap.map(range(n), seconds=seconds))
