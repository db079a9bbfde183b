"""Tasks for tests/test_warm.py (module scope: process workers import them by path)."""

from __future__ import annotations

import os
import time

import gflow

LOADS_DIR = "GFLOW_TEST_LOADS_DIR"


@gflow.warm
def model(name: str) -> dict:
    """Counts its loads as files (one per load, across processes) in the directory the test names."""
    where = os.environ.get(LOADS_DIR)
    if where:
        with open(os.path.join(where, f"{os.getpid()}-{time.monotonic_ns()}"), "w") as f:
            f.write(name)
    return {"name": name, "pid": os.getpid()}


@gflow.task
def use_model(x: int) -> int:
    return x + len(model("esm")["name"])


@gflow.flow
def many(n: int = 20) -> list[int]:
    return use_model.map(range(n))


@gflow.task(batch_size=4)
def lengths(seqs: list[str], scale: int = 1) -> list[int]:
    if "bad" in seqs:
        raise ValueError("bad sequence in batch")
    return [len(s) * scale for s in seqs]


@gflow.task(batch_size=4)
def short_by_one(xs: list[int]) -> list[int]:
    return [x for x in xs][:-1] if len(xs) > 1 else list(xs)


@gflow.flow
def score_all(seqs: list[str], scale: int = 1) -> list[int]:
    return lengths.map(seqs, scale=scale)


BATCHES: list[int] = []


@gflow.task(batch_size=8)
def embed(seqs: list[str], scale: int = 1) -> list[int]:
    BATCHES.append(len(seqs))
    time.sleep(0.02)  # a fixed cost per call, paid once per batch
    if "bad" in seqs:
        raise ValueError("bad sequence")
    return [len(s) * scale * len(model("esm")["name"]) for s in seqs]


@gflow.task
def add(a: int, b: int = 1) -> int:
    return a + b


@gflow.flow
def embed_all(seqs: list[str]) -> list[int]:
    return embed.map(seqs, scale=1)


PAIRS: list[tuple[list, list]] = []


@gflow.task(batch_size=4)
def pair(xs: list[int], ys: list[int], scale: int = 1) -> list[int]:
    PAIRS.append((list(xs), list(ys)))
    return [(x + y) * scale for x, y in zip(xs, ys, strict=True)]


@gflow.flow
def pairs(xs: list[int], ys: list[int]) -> list[int]:
    return pair.map(xs, ys, scale=10)


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.flow
def inc_all(n: int) -> int:
    return len(inc.map(range(n)))
