"""The shared polling monitor's own cost per cycle (gflow.executors.polling), with a handler that answers
from memory, so only the monitor is measured: a quiet cycle (nothing changed), a cycle where every call
started, and one where every call ended (outcomes read in the monitor's pool).

    python benchmarks/bench_polling.py            # 10,000 tracked calls, median of 5 rounds
    python benchmarks/bench_polling.py --n 1000 --reps 9

The baseline in the same rounds is a bare loop over the same calls doing the same dictionary lookups.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import interleaved_medians, table  # noqa: E402

from gflow.executors.base import Call, Outcome  # noqa: E402
from gflow.executors.polling import Cadence, PollingHandler, PollingMonitor, Tracked  # noqa: E402


class Memory(PollingHandler):
    name = "memory"

    def __init__(self) -> None:
        self.running: dict[str, float] = {}
        self.done: dict[str, bool] = {}

    def check_if_running(self, t: Tracked) -> float | None:
        return self.running.get(t.call.id)

    def check_if_completed(self, t: Tracked) -> bool | None:
        return self.done.get(t.call.id)

    def outcome(self, t: Tracked, detail: bool) -> Outcome:
        return Outcome(True, value=1)

    def kill(self, tracked: object) -> None:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    n = args.n
    calls = [Call(f"c{i}", "r", None, (), {}) for i in range(n)]

    def fresh(state: str) -> PollingMonitor:
        h = Memory()
        mon = PollingMonitor(h, cadence=Cadence(1, 30))
        mon.start(lambda ev: None)
        mon.track([Tracked(c) for c in calls], thread=False)
        if state in ("started", "done"):
            h.running = {c.id: 1.0 for c in calls}
        if state == "done":
            h.done = {c.id: True for c in calls}
        return mon

    monitors: dict[str, PollingMonitor] = {}

    def timed(state: str):
        def run() -> None:
            monitors[state].cycle()
        return run

    def bare() -> None:
        running: dict[str, float] = {}
        done: dict[str, bool] = {}
        for c in calls:
            if done.get(c.id) is None:
                running.get(c.id)

    results: dict[str, list[float]] = {}
    for _ in range(args.reps):  # each round: fresh monitors (a started or done cycle changes them)
        for s in ("quiet", "started", "done"):
            monitors[s] = fresh(s)
        got = interleaved_medians({"bare loop": bare, "quiet": timed("quiet"), "started": timed("started"),
                                   "done": timed("done")}, 1)
        for k, v in got.items():
            results.setdefault(k, []).append(v)
        for m in monitors.values():
            m.close()
    import statistics

    med = {k: statistics.median(v) for k, v in results.items()}
    rows = [{"cycle": k, "ms": f"{v * 1e3:.2f}", "us per call": f"{v / n * 1e6:.2f}",
             "x bare loop": f"{v / med['bare loop']:.1f}"} for k, v in med.items()]
    print(f"{n} tracked calls, median of {args.reps} rounds")
    print(table(rows, ["cycle", "ms", "us per call", "x bare loop"]))


if __name__ == "__main__":
    main()
