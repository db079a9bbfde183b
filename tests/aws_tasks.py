"""Tasks and flows for the AWS Batch tests (module scope: workers import them by path)."""

from __future__ import annotations

import os
import signal
import time

import gflow


@gflow.task(resources=gflow.Resources(cpu=0.5, memory="256Mi"))
def square(x: int) -> int:
    return x * x


@gflow.task
def total(values: list[int]) -> int:
    return sum(values)


@gflow.task
def boom(message: str) -> int:
    raise ValueError(message)


@gflow.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.task(timeout=6)
def nap_limited(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.task
def exit_hard(code: int) -> int:
    os._exit(code)


@gflow.task
def kill_self(sig: int = int(signal.SIGKILL)) -> int:
    os.kill(os.getpid(), sig)
    return 0


@gflow.task(resources=gflow.Resources(gpu=1))
def gpu_task(x: int) -> int:
    return x


@gflow.flow
def squares(n: int = 4) -> int:
    return total(square.map(range(n)))


@gflow.flow
def failing(message: str = "no luck") -> int:
    return boom(message)


@gflow.flow
def naps(n: int = 3, seconds: float = 30.0) -> list[float]:
    return nap.map([seconds] * n)


@gflow.flow
def limited(seconds: list[float]) -> list[float]:
    return nap_limited.map(seconds)


@gflow.flow
def one_square(x: int = 3) -> int:
    return square(x)


@gflow.flow
def gpu_flow() -> int:
    return gpu_task(1)


@gflow.flow
def exits(codes: list[int]) -> list[int]:
    return exit_hard.map(codes)


@gflow.flow
def kills(n: int = 2) -> list[int]:
    return kill_self.map([int(signal.SIGKILL)] * n)


@gflow.flow(image="gflow-test/worker:1")
def squares_in_plain_image(n: int = 3) -> int:
    """A flow naming a plain image reference: run as given, nothing built (issue 23 item 6)."""
    return total(square.map(range(n)))


@gflow.warm
def process_model(name: str) -> dict:
    return {"name": name, "pid": os.getpid()}


@gflow.task
def warm_pid(x: int) -> int:
    return int(process_model("m")["pid"])


@gflow.task
def distinct(values: list[int]) -> int:
    return len(set(values))


@gflow.flow
def packed(n: int = 10, k: int = 5) -> int:
    return distinct(warm_pid.map(range(n), per_job=k))
