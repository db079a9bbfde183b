"""Tasks and flows for the Slurm tests (module scope: array elements import them by path)."""

from __future__ import annotations

import os
import time

import gflow


@gflow.task(resources=gflow.Resources(cpu=1, memory="200Mi"))
def square(x: int) -> int:
    return x * x


@gflow.task
def total(values: list[int]) -> int:
    return sum(values)


@gflow.flow
def squares(n: int = 4) -> int:
    return total(square.map(range(n)))


@gflow.flow
def squares_one_per_job(n: int = 4) -> int:
    return total(square.map(range(n), per_job=1))


@gflow.task(retries=2)
def flaky(x: int, marker_dir: str, fail_on: list[int]) -> int:
    """Fails on its first attempt for the x in ``fail_on`` (a marker file remembers the attempt)."""
    marker = os.path.join(marker_dir, f"tried-{x}")
    if x in fail_on and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError(f"first attempt of {x} fails")
    return x * 10


@gflow.flow
def flaky_map(n: int, marker_dir: str, fail_on: list[int]) -> list[int]:
    return flaky.map(range(n), marker_dir=marker_dir, fail_on=fail_on)


@gflow.task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.flow
def naps(seconds: list[float]) -> list[float]:
    return nap.map(seconds)


@gflow.task(timeout=3)
def nap_limited(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.flow
def limited(seconds: float = 60.0) -> float:
    return nap_limited(seconds)


@gflow.task(resources=gflow.Resources(memory="100Mi"))
def hog(mib: int) -> int:
    """Holds ``mib`` MiB (touched, so it is resident) for a few seconds: past its --mem, Slurm kills it."""
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(8)
    return len(block)


@gflow.flow
def hogging(mib: int = 400) -> int:
    return hog(mib)


@gflow.task
def touch_and_nap(x: int, marker_dir: str, seconds: float) -> int:
    """Records that it ran (one file per attempt) and, while ``marker_dir/slow`` exists, naps unless x is 0
    (the driver-kill test counts reruns)."""
    with open(os.path.join(marker_dir, f"ran-{x}-{time.time_ns()}"), "w"):
        pass
    if x and os.path.exists(os.path.join(marker_dir, "slow")):
        time.sleep(seconds)
    return x


@gflow.flow
def resumable(n: int, marker_dir: str, seconds: float) -> list[int]:
    return touch_and_nap.map(range(n), marker_dir=marker_dir, seconds=seconds)


@gflow.task(timeout=600)
def patient(x: int) -> int:
    return x


@gflow.flow
def patients(n: int = 2) -> list[int]:
    return patient.map(range(n))


@gflow.task(resources=gflow.Resources(gpu=1))
def on_gpu(x: int) -> int:
    return x
