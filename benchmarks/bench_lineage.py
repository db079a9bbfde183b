"""What recording provenance costs a flow (issue 22 items 4-5): a map of N trivial calls, plain and cache=True,
with this tree against another gflow tree (e.g. main, which records none), interleaved in subprocesses.

    PYTHONPATH=. python benchmarks/bench_lineage.py --n 10000 --reps 5 --baseline /work/main

Per run this tree notes each task once (code version, parts, image, options: one row) and, for cache=True
calls made with known arguments, each argument's digest (one row per call, written per batch of the map).
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
os.environ["GFLOW_HOME"] = tempfile.mkdtemp(prefix="gflow-bench-lineage-")
import gflow

@gflow.task
def plain(x: int) -> int:
    return x + 1

@gflow.task(cache=True)
def cached(x: int) -> int:
    return x + 1

@gflow.flow
def fan(n: int, kind: str) -> int:
    t = cached if kind == "cached" else plain
    return sum(f.result() for f in t.map(range(n)))

n, kind = int(sys.argv[1]), sys.argv[2]
t0 = time.perf_counter()
assert fan.run(n, kind, executor="local") == n * (n + 1) // 2
print(json.dumps(time.perf_counter() - t0))
"""


def once(tree: str, n: int, kind: str) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", CHILD, str(n), kind], env=env, capture_output=True, text=True,
                         check=True, cwd=tempfile.gettempdir())
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--baseline", default="/work/main", help="another gflow tree to compare with")
    a = ap.parse_args()
    here = str(Path(__file__).resolve().parents[1])
    for kind in ("plain", "cached"):
        times: dict[str, list[float]] = {"baseline": [], "this tree": []}
        for _ in range(a.reps):
            times["baseline"].append(once(a.baseline, a.n, kind))
            times["this tree"].append(once(here, a.n, kind))
        b, t = statistics.median(times["baseline"]), statistics.median(times["this tree"])
        print(f"| map of {a.n:,} {kind} | {b:.2f} s | {t:.2f} s | {t / b:.3f} |")


if __name__ == "__main__":
    main()
