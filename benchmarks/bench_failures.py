"""Figures of issue 19 for docs/RELIABILITY.md: memory escalation on ``local://processes``, a 10,000-element
partial map with 3 bad inputs against the same map with none (same process), and a map throttled to 50.

    PYTHONPATH=.:tests/resources python benchmarks/bench_failures.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "resources")]

import failure_flows as ff  # noqa: E402

import gflow  # noqa: E402
from gflow.testing import isolated_home  # noqa: E402


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--n", type=int, default=10_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, isolated_home(Path(tmp) / "home"):
        esc, ok, part, peaks = [], [], [], []
        for _ in range(a.repeat):
            res = None

            def oom() -> None:
                nonlocal res
                res = ff.hungry_flow.run(executor="local://processes?workers=1", return_run=True)

            esc.append(timed(oom))
            assert res is not None and res.state is gflow.State.SUCCEEDED
            ok.append(timed(lambda: ff.clean_flow.run(n=a.n)))  # baseline: no bad input, no min_success
            part.append(timed(lambda: ff.partial_flow.run(n=a.n, min_success=0.99)))
            folder = Path(tmp) / f"marks-{len(peaks)}"
            folder.mkdir()
            peak, stop = [0], threading.Event()

            def sample(folder: Path = folder, peak: list = peak, stop: threading.Event = stop) -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], len(os.listdir(folder)))
                    stop.wait(0.002)

            th = threading.Thread(target=sample)
            th.start()
            ff.throttled.run(str(folder), n=1000, k=50, seconds=0.01, executor="local://threads?workers=64")
            stop.set()
            th.join()
            peaks.append(peak[0])
        med = statistics.median
        print(f"OOM escalation 64Mi -> 128Mi -> 256Mi (3 attempts, local://processes): median {med(esc):.2f} s")
        print(f"{a.n:,}-element map, no bad input (baseline): median {med(ok):.2f} s")
        print(f"{a.n:,}-element map, 3 bad inputs, min_success=0.99: median {med(part):.2f} s "
              f"(ratio {med(part) / med(ok):.2f})")
        print(f"max_concurrency=50, 1,000 elements on 64 threads: peak running sampled {max(peaks)} "
              f"(per repeat {peaks})")


if __name__ == "__main__":
    main()
