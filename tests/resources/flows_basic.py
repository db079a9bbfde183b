"""Tasks and flows for the engine tests, importable by process-pool workers (module scope only).

Side effects that tests count (attempts, executions) go to files under a folder passed in, so
they are visible across threads and processes alike.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gflow
from gflow.objects import Protein, Score


def bump(folder: str, name: str) -> int:
    """Append one line to folder/name and return the new count (atomic enough for tests: O_APPEND)."""
    p = Path(folder) / name
    with open(p, "a") as f:
        f.write("x\n")
    return sum(1 for _ in open(p))


def count(folder: str, name: str) -> int:
    p = Path(folder) / name
    return sum(1 for _ in open(p)) if p.exists() else 0


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.task
def add(x: int, y: int) -> int:
    return x + y


@gflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@gflow.task
def merge(d: dict[str, int], extra: list[int]) -> int:
    return sum(d.values()) + sum(extra)


@gflow.flow
def map_reduce(n: int = 10) -> int:
    return total(inc.map(range(n)))


@gflow.flow
def chain(n: int = 5) -> int:
    x = 0
    for _ in range(n):
        x = inc(x)
    return x


@gflow.flow
def nested_futures() -> int:
    a, b = inc(1), inc(2)
    return merge({"a": a, "b": b}, extra=[a, inc(b)])


@gflow.task(retries=2)
def flaky(folder: str, fail_times: int) -> str:
    n = bump(folder, "flaky")
    if n <= fail_times:
        raise RuntimeError(f"flaky failure {n}")
    return f"ok after {n}"


@gflow.flow
def flaky_flow(folder: str, fail_times: int) -> str:
    return flaky(folder, fail_times)


@gflow.task(retries=gflow.Retry(count=3, on=(ConnectionError,)))
def picky(folder: str) -> int:
    bump(folder, "picky")
    raise ValueError("not retryable")


@gflow.flow
def picky_flow(folder: str) -> int:
    return picky(folder)


@gflow.task(timeout=0.5, retries=1)
def sleepy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@gflow.flow
def sleepy_flow(seconds: float) -> float:
    return sleepy(seconds)


@gflow.task
def boom(x: int) -> int:
    raise ValueError(f"boom on {x}")


@gflow.task
def slow_ok(folder: str, x: int) -> int:
    time.sleep(0.3)
    bump(folder, "slow_ok")
    return x


@gflow.flow
def upstream_failure(folder: str) -> dict:
    bad = boom(1)
    downstream = inc(bad)
    further = add(downstream, 1)
    independent = slow_ok(folder, 7)
    return {"bad": bad, "downstream": downstream, "further": further, "independent": independent}


@gflow.task(cache=True)
def cached_square(folder: str, x: int) -> int:
    bump(folder, f"square-{x}")
    return x * x


@gflow.flow
def cached_flow(folder: str, xs: list[int]) -> list[int]:
    return cached_square.map([folder] * len(xs), xs)


@gflow.task
def record(folder: str, x: int) -> int:
    bump(folder, f"record-{x}")
    return x


@gflow.task
def gate(folder: str, xs: list[int]) -> int:
    """Fails unless the folder holds a file named 'allow': the 'fix' a user makes before resume."""
    if not (Path(folder) / "allow").exists():
        raise RuntimeError("gate closed")
    bump(folder, "gate")
    return sum(xs)


@gflow.flow
def resumable(folder: str, n: int = 5) -> int:
    xs = record.map([folder] * n, range(n))
    return gate(folder, xs)


@gflow.flow
def inner(x: int) -> int:
    return add(inc(x), 10)


@gflow.flow
def outer(x: int) -> int:
    a = inner(x)               # a subflow call returns its value
    b = inner.submit(x + 1)    # .submit() returns a future: it runs concurrently
    return add(a * 1, b)


@gflow.flow
def control_flow(n: int) -> str:
    v = inc(n).result()
    if v > 5:
        return "big"
    return "small"


@gflow.task
def score_len(p: Protein) -> Score:
    return Score(name="len", value=len(p))


@gflow.flow
def protein_flow(parent: Protein, n: int = 3) -> list[Score]:
    return score_len.map([parent.mutate(f"{parent.sequence[0]}1{a}") for a in "AGW"[:n]])


_lock = threading.Lock()
_state = {"now": 0, "peak": 0}


@gflow.task(max_concurrency=2)
def limited(x: int) -> int:
    with _lock:
        _state["now"] += 1
        _state["peak"] = max(_state["peak"], _state["now"])
    time.sleep(0.05)
    with _lock:
        _state["now"] -= 1
    return x


@gflow.flow
def limited_flow(n: int) -> list[int]:
    return limited.map(range(n))


def peak_and_reset() -> int:
    peak = _state["peak"]
    _state.update(now=0, peak=0)
    return peak


class Opaque:
    def __init__(self, v: int):
        self.v = v


@gflow.task
def takes_opaque(o: object) -> int:
    return 1


@gflow.task(pickle=True)
def takes_opaque_pickled(o: object) -> int:
    return o.v


@gflow.flow
def opaque_flow(pickled: bool) -> int:
    o = Opaque(3)
    return takes_opaque_pickled(o) if pickled else takes_opaque(o)


@gflow.task
def typed(n: int, p: Protein) -> int:
    return n + len(p)


@gflow.flow
def bad_call_flow() -> int:
    return typed("not a number", Protein(sequence="MKT"))


@gflow.task
def slow_count(folder: str, x: int) -> int:
    time.sleep(float(os.environ.get("GFLOW_TEST_SLOW", "0.2")))
    bump(folder, f"slow-{x}")
    return x


@gflow.flow
def killable(folder: str, n: int = 20) -> int:
    return total(slow_count.map([folder] * n, range(n)))


@gflow.task
def make_list(n: int) -> list[int]:
    return list(range(n))


@gflow.task
def scale(x: int, k: int) -> int:
    if x < 0:
        raise ValueError("negative")
    return x * k


@gflow.flow
def map_over_future(n: int, k: int = 3) -> int:
    xs = make_list(n)                 # a future of a list
    ys = scale.map(xs, k=inc(k - 1))  # fans out when xs resolves; k is a future too
    return total(ys)


@gflow.flow
def map_over_future_bad(kind: str) -> list[int]:
    if kind == "not-iterable":
        return scale.map(inc(1), k=1)
    return scale.map(make_list(2), make_list(3))  # zip of lengths 2 and 3


@gflow.task
def signed_list() -> list[int]:
    return [1, -4, 2]


@gflow.task(cache=True)
def cached_falsy(folder: str, kind: str) -> object:
    bump(folder, f"falsy-{kind}")
    return {"zero": 0, "empty": "", "list": []}[kind]


@gflow.flow
def falsy_twice(folder: str, kind: str) -> list:
    return [cached_falsy(folder, kind), cached_falsy(folder, kind)]


@gflow.flow
def big_subflow(n: int) -> int:
    return total(inc.map(range(n)))


@gflow.flow
def calls_big_subflow(n: int) -> int:
    return big_subflow(n)


@gflow.task
def one_second(x: int) -> int:
    time.sleep(1.0)
    return x


@gflow.flow
def one_second_flow() -> int:
    return one_second(1)


@gflow.task(executor="inline")
def routed_inline(x: int) -> int:
    return x * 2


@gflow.flow
def routed_flow(n: int) -> list[int]:
    return [routed_inline(i) for i in range(n)] + [inc(i) for i in range(n)]


@gflow.task(retries=2)
def marked(folder: str, i: int, seconds: float) -> int:
    """Sleeps, then leaves a mark per finished execution (a side effect a killed worker never makes)."""
    time.sleep(seconds)
    bump(folder, f"done-{i}")
    return i * i


@gflow.flow
def marked_map(folder: str, n: int, seconds: float = 0.2) -> int:
    return total(marked.map([folder] * n, range(n), seconds=seconds))


@gflow.task(timeout=1.0)
def spin(folder: str) -> int:
    Path(folder, f"spin-pid-{os.getpid()}").write_text("")
    while True:
        pass


@gflow.flow
def spin_flow(folder: str) -> int:
    return spin(folder)


@gflow.task
def big_result(folder: str, i: int) -> bytes:
    bump(folder, f"big-{i}")
    return bytes([i % 256]) * 40_000


@gflow.flow
def big_results(folder: str, n: int) -> int:
    return total.map([[len(b)] for b in []]) if n < 0 else _count_bytes(big_result.map([folder] * n, range(n)))


@gflow.task
def _count_bytes(blobs: list[bytes]) -> int:
    return sum(len(b) for b in blobs)
