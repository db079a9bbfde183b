"""Tasks for bench_warm.py (their own module: process and Dask workers import them by path)."""

from __future__ import annotations

import os
import time

import gflow

LOAD_S = float(os.environ.get("BENCH_WARM_LOAD_S", "2.0"))
ITEM_S = float(os.environ.get("BENCH_WARM_ITEM_S", "0.005"))


def _count_load() -> None:
    where = os.environ.get("BENCH_WARM_LOADS")
    if where:
        with open(os.path.join(where, f"{os.getpid()}-{time.monotonic_ns()}"), "w"):
            pass


def load_model(name: str) -> dict:
    """A model that takes LOAD_S seconds to load (sleeps: the cost is waiting on disk/GPU, not CPU)."""
    _count_load()
    time.sleep(LOAD_S)
    return {"name": name}


warm_model = gflow.warm(load_model)


@gflow.task
def score_warm(x: int) -> int:
    model = warm_model("m")
    time.sleep(ITEM_S)
    return x + len(model["name"])


@gflow.task
def score_cold(x: int) -> int:
    model = load_model("m")
    time.sleep(ITEM_S)
    return x + len(model["name"])


@gflow.flow
def warm_map(n: int) -> list[int]:
    return score_warm.map(range(n))


@gflow.flow
def cold_map(n: int) -> list[int]:
    return score_cold.map(range(n))


@gflow.task
def square(x: int) -> int:
    return x * x


@gflow.flow
def packed_map(n: int, per_job: int | None = None) -> list[int]:
    return square.map(range(n)) if per_job is None else square.map(range(n), per_job=per_job)


@gflow.task(batch_size=32)
def fixed_cost(xs: list[int]) -> list[int]:
    """A batched model call with a 20 ms fixed cost per call, whatever the batch."""
    time.sleep(0.02)
    return [x * 2 for x in xs]
