"""Volcano executor at scale: a fan-out of N (default 10,000) trivial calls through the fake API server and
the Volcano/kubelet stand-in (tests/k8s_fake, in a process of its own, running each pod's ``gflow worker``
in-process), as one Job (gflow) against the naive path of one Job per element (``max_replicas=1``), both in
the same command.

Reported per variant (each in a fresh driver process): API calls to create the fan-out, submit time, pod
watch events the driver handled, their rate over the run and the driver's handling capacity (events per
second of time spent in the handler), the run's wall time, and the driver's peak RSS (VmHWM).

    python benchmarks/bench_volcano.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import gflow  # noqa: E402


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.flow
def fan(n: int) -> int:
    return len(inc.map(range(n)))


DRIVER = r"""
import json, sys, time, urllib.request
sys.path[:0] = [{root!r}, {here!r}]
from gflow.executors.volcano import VolcanoExecutor
import bench_volcano as b

ex = VolcanoExecutor("research", queue="default", image="bench:1", kubeconfig={kc!r}, max_replicas={maxr},
                     max_in_flight=1_000_000, tick=0.5)
busy = [0.0]
real_on_pod = ex.tracker.on_pod
def on_pod(etype, pod):
    t = time.perf_counter()
    real_on_pod(etype, pod)
    busy[0] += time.perf_counter() - t
ex.tracker.on_pod = on_pod
real_submit = ex.submit
submit_s = [0.0]
def submit(calls):
    t = time.perf_counter()
    try:
        return real_submit(calls)
    finally:
        submit_s[0] += time.perf_counter() - t
ex.submit = submit
t0 = time.perf_counter()
res = b.fan.run({n}, executor=ex, store="sqlite:///{tmp}/gflow.db", artifacts="{tmp}/arts", return_run=True)
wall = time.perf_counter() - t0
ex.close()
events = ex.tracker.pod_events
print(json.dumps({{"state": res.state.value, "value": res.value, "creates": ex.api_calls["create_job"],
                  "submit_s": round(submit_s[0], 2), "wall_s": round(wall, 1), "pod_events": events,
                  "events_per_s_run": round(events / wall), "events_per_s_handler": round(events / busy[0])}}))
"""


def run_variant(n: int, max_replicas: int) -> dict:
    from _common import peak_rss_subprocess

    with tempfile.TemporaryDirectory(prefix="bench-volcano-") as tmp:
        kc = os.path.join(tmp, "kubeconfig")
        server = subprocess.Popen([sys.executable, "-m", "tests.k8s_fake.serve", kc, "--runner", "inline",
                                   "--slots", str(n), "--path", HERE], cwd=ROOT, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().startswith("ready")
            code = DRIVER.format(root=ROOT, here=HERE, kc=kc, maxr=max_replicas, n=n, tmp=tmp)
            out = peak_rss_subprocess(code)
        finally:
            server.stdin.close()  # type: ignore[union-attr]
            server.wait(30)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    rows = []
    for label, maxr in (("gflow: one Job per fan-out", args.n), ("naive: one Job per element", 1)):
        t = time.perf_counter()
        r = run_variant(args.n, maxr)
        r["variant"] = label
        r["peak_rss_mb"] = round(r["peak_rss_mb"])
        r["total_s"] = round(time.perf_counter() - t, 1)
        rows.append(r)
        print(json.dumps(r), flush=True)
    g, naive = rows
    print()
    print(f"fan-out of {args.n:,} calls, fake API server + Volcano/kubelet stand-in in another process")
    cols = ["variant", "state", "creates", "submit_s", "wall_s", "pod_events", "events_per_s_run",
            "events_per_s_handler", "peak_rss_mb"]
    from _common import table

    print(table(rows, cols))
    fewer, faster = naive["creates"] / g["creates"], naive["submit_s"] / g["submit_s"]
    print(f"\ncreate calls: {fewer:.0f}x fewer; submit {faster:.1f}x faster; peak RSS {g['peak_rss_mb']} MB vs "
          f"{naive['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
