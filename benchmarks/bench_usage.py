"""What measuring usage per attempt costs (issue 22 item 1): bench_engine's map of N trivial calls on local threads
(and a smaller map on local://processes), this tree against another gflow tree (main, which measures nothing),
interleaved in fresh subprocesses; medians of wall time and of the driver process's CPU time (less sensitive to
other load on the machine; the store's writer process and pool workers are not in it).

    PYTHONPATH=. python benchmarks/bench_usage.py --n 10000 --reps 7 --baseline /work/main

Per call this tree reads the clock, the thread's CPU time and getrusage() before and after the call (threads), or
resets and reads the process's peak RSS (processes), and records one small dict with the attempt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, tempfile, time
os.environ["GFLOW_HOME"] = tempfile.mkdtemp(prefix="gflow-bench-usage-")
sys.path.insert(0, os.path.join(sys.argv[3], "benchmarks"))
from _flows import g_map

n, executor = int(sys.argv[1]), sys.argv[2]
g_map.run(10, executor=executor)  # warm imports
t0, c0 = time.perf_counter(), time.process_time()
assert g_map.run(n, executor=executor) == sum(range(1, n + 1))
print(json.dumps([time.perf_counter() - t0, time.process_time() - c0]))
"""


def once(tree: str, n: int, executor: str, bench_tree: str) -> list[float]:
    """[wall seconds, the driver process's CPU seconds] of one map in a fresh process."""
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), executor, bench_tree], env=env, capture_output=True,
                         text=True, check=True, cwd=tempfile.gettempdir())
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--proc-n", type=int, default=2_000, help="calls of the local://processes map (0 = skip)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--baseline", default="/work/main", help="another gflow tree to compare with")
    a = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    cases = [("local", a.n)] + ([("local://processes", a.proc_n)] if a.proc_n else [])
    print("| map | wall: baseline | wall: this tree | ratio | driver CPU: baseline | driver CPU: this tree | ratio |\n"
          "|---|---|---|---|---|---|---|")
    for executor, n in cases:
        got: dict[str, list[list[float]]] = {"baseline": [], "this tree": []}
        for _ in range(a.reps):
            got["baseline"].append(once(a.baseline, n, executor, here))
            got["this tree"].append(once(here, n, executor, here))
        (bw, bc), (tw, tc) = ([statistics.median(x[i] for x in got[k]) for i in (0, 1)] for k in got)
        print(f"| {n:,} calls on {executor} | {bw:.3f} s | {tw:.3f} s | {tw / bw:.3f} | {bc:.3f} s | {tc:.3f} s | "
              f"{tc / bc:.3f} |", flush=True)


if __name__ == "__main__":
    main()
