"""gflow on Dask vs raw Dask, side by side on the same LocalCluster (2 worker processes, 1 thread each).

    python benchmarks/bench_dask.py                          # 10,000-task map + reduce, 1,000-task chain
    python benchmarks/bench_dask.py --n 2000 --chain 200 --reps 1
    python benchmarks/bench_dask.py --worker-saturation inf  # Dask without scheduler-side queuing

(a) 10,000 trivial tasks through ``task.map`` + one reduce, every transition recorded in SQLite,
    vs ``client.map`` + ``client.submit(sum, futures)`` + ``result()``.
(b) a chain of 1,000 dependent tasks, vs the same chain in raw Dask (``client.submit(inc, prev_future)``,
    the whole chain on the cluster) and vs raw Dask with one driver round-trip per step
    (``client.submit(inc, x).result()``), which is what gflow does today: the engine resolves each
    value before it hands the next call to the executor.
Driver peak RSS: the 10,000-task gflow flow in a fresh interpreter that connects to the cluster by
address (so the scheduler's memory is not counted), next to raw ``client.map`` in the same setting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # Dask workers, spawned by this process, import the tasks as _flows:*
from _common import median_time, table  # noqa: E402
from _flows import g_chain, g_map, inc  # noqa: E402,F401  (used as bench_dask.g_map; workers import _flows:*)


def raw_map(client, n: int) -> int:
    fs = client.map(inc, range(n), pure=False)
    return client.submit(sum, fs, pure=False).result()


def raw_chain(client, n: int) -> int:
    f = client.submit(inc, 0, pure=False)
    for _ in range(n - 1):
        f = client.submit(inc, f, pure=False)
    return f.result()


def raw_chain_roundtrips(client, n: int) -> int:
    x = 0
    for _ in range(n):
        x = client.submit(inc, x, pure=False).result()
    return x


def peak_rss_subprocess(code: str) -> dict:
    """Run ``code`` in a fresh interpreter and return its own peak RSS (MB).

    Linux's ``ru_maxrss`` carries the parent's high-water mark across fork + exec, so a child of
    this (large) process would report this process's peak; ``VmHWM`` belongs to the child's own
    address space. Elsewhere a psutil sampling thread stands in.
    """
    probe = (
        "import threading, time, psutil, json\n"
        "_peak = [0]\n"
        "def _sample():\n"
        "    p = psutil.Process()\n"
        "    while True:\n"
        "        _peak[0] = max(_peak[0], p.memory_info().rss); time.sleep(0.01)\n"
        "threading.Thread(target=_sample, daemon=True).start()\n")
    report = (
        "\ntry:\n"
        "    hwm = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024\n"
        "except OSError:\n"
        "    hwm = 0\n"
        "print(json.dumps({'peak_rss_mb': max(hwm, _peak[0]) / 2**20}))\n")
    out = subprocess.run([sys.executable, "-c", probe + code + report], capture_output=True, text=True, check=True)
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def run_gflow(flow, n: int, client) -> tuple[int, dict]:
    """One flow run in a fresh store; returns the value and the store's counts for the run."""
    from gflow.executors.dask import DaskExecutor
    from gflow.store import open_store

    home = tempfile.mkdtemp(prefix="gflow-bench-dask-")
    url = f"sqlite:///{home}/gflow.db"
    with DaskExecutor(client=client) as ex:
        r = flow.run(n, executor=ex, store=url, artifacts=f"{home}/artifacts", return_run=True)
    if r.error is not None:
        raise r.error
    return r.value, open_store(url).counts(r.id)


_RSS_GFLOW = """
import os, sys, tempfile
sys.path.insert(0, {here!r})
os.environ['GFLOW_HOME'] = tempfile.mkdtemp()
import bench_dask as b
from gflow.executors.dask import DaskExecutor
ex = DaskExecutor({address!r})
value = b.g_map.run({n}, executor=ex)
ex.close()
assert value == {expected}, value
"""

_RSS_RAW = """
import sys
sys.path.insert(0, {here!r})
import bench_dask as b
from distributed import Client
with Client({address!r}) as c:
    assert b.raw_map(c, {n}) == {expected}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--chain", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker-saturation", default=None,
                    help="distributed.scheduler.worker-saturation for the cluster (Dask's default: 1.1)")
    args = ap.parse_args()
    n, c, reps = args.n, args.chain, args.reps
    os.environ["GFLOW_HOME"] = tempfile.mkdtemp(prefix="gflow-bench-dask-")

    import dask
    import distributed

    if args.worker_saturation is not None:
        dask.config.set({"distributed.scheduler.worker-saturation": float(args.worker_saturation)})
    saturation = dask.config.get("distributed.scheduler.worker-saturation")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = distributed.Client(cluster)
    client.wait_for_workers(2)
    try:
        import bench_dask as b  # tasks by an importable name (this file runs as __main__)

        expected = sum(range(1, n + 1))
        b.run_gflow(b.g_map, 10, client)  # warm imports on driver and workers
        raw_map(client, 10)

        t_raw, raw_times = median_time(lambda: raw_map(client, n) == expected or sys.exit("raw: wrong result"), reps)
        counts: dict = {}

        def gflow_map() -> None:
            value, cts = b.run_gflow(b.g_map, n, client)
            if value != expected or cts != {"SUCCEEDED": n + 1}:
                sys.exit(f"gflow: wrong result {value} or counts {cts}")
            counts.update(cts)

        t_g, g_times = median_time(gflow_map, reps)

        t_rc, rc_times = median_time(lambda: raw_chain(client, c) == c or sys.exit("raw chain: wrong"), reps)
        t_rt, rt_times = median_time(lambda: raw_chain_roundtrips(client, c) == c or sys.exit("raw rt: wrong"), reps)
        t_gc, gc_times = median_time(lambda: b.run_gflow(b.g_chain, c, client)[0] == c or sys.exit("gflow chain"), reps)

        addr = cluster.scheduler_address
        fmt = {"here": str(HERE), "address": addr, "n": n, "expected": expected}
        rss = peak_rss_subprocess(_RSS_GFLOW.format(**fmt))
        rss_raw = peak_rss_subprocess(_RSS_RAW.format(**fmt))
    finally:
        client.close()
        cluster.close()

    rows = [
        {"case": f"{n:,} tasks: map + 1 reduce", "gflow s": f"{t_g:.2f}", "baseline": "raw client.map + submit(sum)",
         "baseline s": f"{t_raw:.2f}", "ratio": f"{t_g / t_raw:.2f}x"},
        {"case": f"chain of {c:,} dependent tasks", "gflow s": f"{t_gc:.2f}",
         "baseline": "raw Dask chain of futures", "baseline s": f"{t_rc:.2f}", "ratio": f"{t_gc / t_rc:.1f}x"},
        {"case": f"chain of {c:,} dependent tasks", "gflow s": f"{t_gc:.2f}",
         "baseline": "raw Dask, submit+result per step", "baseline s": f"{t_rt:.2f}", "ratio": f"{t_gc / t_rt:.2f}x"},
    ]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"dask {dask.__version__}; LocalCluster 2 workers x 1 thread (processes), worker-saturation "
          f"{saturation}; medians of {reps}\n")
    print(table(rows, ["case", "gflow s", "baseline", "baseline s", "ratio"]))
    print(f"\ngflow per task: map {t_g / n * 1e6:.0f} µs, chain {t_gc / c * 1e3:.1f} ms/step; "
          f"store counts of the last map run: {counts}")
    print(f"driver peak RSS, {n:,}-task map + reduce (fresh process, cluster by address): gflow "
          f"{rss['peak_rss_mb']:.0f} MB, raw client.map {rss_raw['peak_rss_mb']:.0f} MB")
    print(json.dumps({"n": n, "chain": c, "reps": reps, "worker_saturation": saturation,
                      "map": {"gflow_s": g_times, "raw_s": raw_times, "ratio": t_g / t_raw},
                      "chain_s": {"gflow": gc_times, "raw_futures": rc_times, "raw_roundtrips": rt_times,
                                  "ratio_vs_futures": t_gc / t_rc, "ratio_vs_roundtrips": t_gc / t_rt},
                      "rss_mb": {"gflow": rss["peak_rss_mb"], "raw": rss_raw["peak_rss_mb"]}}))


if __name__ == "__main__":
    main()
