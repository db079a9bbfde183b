"""Cost of pending reasons in the polling monitor: one cycle over 10,000 queued calls whose handler gives no
reason (the baseline), the same reason every cycle (steady state: nothing reported), and a new reason for all
(10,000 CallPending events). Prints medians and ratios against the baseline.

    PYTHONPATH=. python benchmarks/pending_reasons.py
"""

from __future__ import annotations

import statistics
import time

from gflow.executors.base import Call
from gflow.executors.polling import Cadence, PollingHandler, PollingMonitor, Tracked

N, REPEAT = 10_000, 15


class Handler(PollingHandler):
    name = "bench"

    def __init__(self, reason):
        self.reason = reason
        self.flip = 0

    def check_if_running(self, t):
        return None

    def check_if_completed(self, t):
        return None

    def pending_reason(self, t):
        if self.reason == "changing":
            return f"Priority: round {self.flip}"
        return self.reason

    def outcome(self, t, detail):
        raise AssertionError

    def kill(self, tracked):
        pass


def median_cycle(reason):
    h = Handler(reason)
    events = []
    mon = PollingMonitor(h, cadence=Cadence(1, 8))
    mon.start(events.append)
    mon.track([Tracked(Call(id=f"c{i}", run_id="r", task=None, args=(), kwargs={})) for i in range(N)], thread=False)
    mon.cycle()
    times = []
    for _ in range(REPEAT):
        h.flip += 1
        events.clear()
        t0 = time.perf_counter()
        mon.cycle()
        times.append(time.perf_counter() - t0)
    mon.close()
    return statistics.median(times), len(events)


if __name__ == "__main__":
    base, _ = median_cycle(None)
    print(f"{N} queued calls, median of {REPEAT} cycles")
    print(f"  no reason (baseline):      {base * 1e3:7.2f} ms")
    cases = (("same reason every cycle:", "Resources: waiting"), ("a new reason every cycle:", "changing"))
    for label, reason in cases:
        t, n = median_cycle(reason)
        print(f"  {label:<26} {t * 1e3:7.2f} ms  x{t / base:.2f}  ({n} CallPending per cycle)")
