"""The scheduling core alone: CPU per call (thread time, so other load on the machine does not count), fed
events as the engine would, with no threads, executors or store.

    python benchmarks/bench_core.py                    # this tree
    PYTHONPATH=../other-tree python benchmarks/bench_core.py   # another gflow, for a before/after

Cases: a map of 10,000 independent calls (added, dispatched in batches of 1,024, submitted, started,
finished) and a chain of 1,000 calls (each waits for the one before: one outcome and the next dispatch per
step, as the engine batches them).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _flows import g_inc  # noqa: E402

from gflow.executors.base import Capabilities, Outcome  # noqa: E402
from gflow.flows import _events as E  # noqa: E402
from gflow.flows._core import Core  # noqa: E402
from gflow.flows._future import Future  # noqa: E402
from gflow.flows._keys import compute_keys  # noqa: E402
from gflow.store import RunRecord  # noqa: E402

_HAS_VERSION = "version" in E.TaskState.__slots__  # older cores computed code versions themselves


def _core() -> Core:
    core = Core()
    core.handle(E.ExecutorAdded("open", "ex", Capabilities(reports_start=True)), 0.0)
    core.handle(E.RunStarted("start", RunRecord(id="r", flow="f")), 0.0)
    return core


def _ts(i: int, args: dict, deps: list[str]) -> E.TaskState:
    key = ikey = None
    if not deps:
        key, ikey = compute_keys(g_inc, args, None)
    extra = {"version": g_inc.code_version} if _HAS_VERSION else {}
    return E.TaskState(f"r.{i}", "r", g_inc, args, deps, key=key, ikey=ikey, executor="ex", index=i, **extra)


def _drive(core: Core, n: int, out: list) -> None:
    done = 0
    while done < n:
        calls = [c for x in out if type(x) is E.Submit for c in x.calls]
        if not calls:
            out = core.handle(E.Dispatch("capacity", "ex", 1024), 0.0)
            continue
        core.handle(E.Submitted("submitted", "ex", calls, calls, None, 0), 0.0)
        core.handle_many([E.Started("started", c.id, 1, 0.0) for c in calls], 0.0)
        out = core.handle_many([E.Finished("done", c.id, 1, Outcome(True, c.args[0] + 1, started=0.0, ended=0.0))
                                for c in calls] + [E.Dispatch("capacity", "ex", 1024)], 0.0)
        done += len(calls)


def map_case(n: int) -> float:
    core = _core()
    tss = [_ts(i, {"x": i}, []) for i in range(n)]
    t0 = time.thread_time()
    _drive(core, n, core.handle(E.CallsAdded("add", tss), 0.0))
    return (time.thread_time() - t0) / n * 1e6


def chain_case(n: int) -> float:
    core = _core()
    tss = [_ts(0, {"x": 0}, [])]
    for i in range(1, n):
        tss.append(_ts(i, {"x": Future(tss[-1].id, "r", "g_inc", None)}, [tss[-1].id]))
    t0 = time.thread_time()
    _drive(core, n, core.handle(E.CallsAdded("add", tss), 0.0))
    return (time.thread_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    g_inc.code_version if _HAS_VERSION else None  # noqa: B018 - computed once, outside the timing
    res = {"map of 10,000": [], "chain of 1,000": []}
    for _ in range(args.reps):
        res["map of 10,000"].append(map_case(10_000))
        res["chain of 1,000"].append(chain_case(1_000))
    for k, v in res.items():
        print(f"core CPU per call, {k}: median {statistics.median(v):.1f} µs (min {min(v):.1f}, "
              f"max {max(v):.1f}; {args.reps} runs)")


if __name__ == "__main__":
    main()
