"""Precalc of a 10,000-entry library: gflow on threads, the process pool and Dask vs a bare loop over the same chunks.

A random library (lengths 40-80) and a tiny random ESM-2 (no weights downloaded). The bare loop runs
``precalc.predict`` over the same 50 chunks one after another **in a fresh process of its own** (torch and
transformers imported and the model loaded before the clock starts; that start-up is reported beside it).
It runs in its own process because torch's OpenMP matmuls measured ~1.7x slower in a thread other than the
one that first used torch in a process (this machine, torch 2.13 CPU), so a bare loop in this process's main
thread would slow the thread executor's tasks that follow it. This process never runs torch itself.
gflow runs the ``precalc`` flow (``workers=50``: 50 chunks) with a fresh state store per rep (nothing
cached) on ``local`` (threads; and on one thread), on ``local://processes?workers=2`` (a new pool per
run: each worker process imports torch and transformers, ~3-4 s) and on a Dask LocalCluster (2 worker
processes, 1 thread each; warm after its first run).

    python benchmarks/bench_precalc.py --entries 10000 --reps 3
"""

from __future__ import annotations

import time

_START = time.perf_counter()  # this module's imports (gflow, the examples) count in the bare loop's start-up

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "examples"), os.environ.get("PYTHONPATH", "")])

import esm_scoring as E  # noqa: E402
import precalc as P  # noqa: E402
from _common import table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-precalc-"))
    # one artifact store for the driver and every worker (workers started before a GFLOW_HOME change would
    # not see it; see the report on the run's artifact store for workers); a fresh state store per run
    os.environ["GFLOW_HOME"] = str(work / "home")
    folder = E.save_random_esm(work / "model", preset="tiny")
    rng = random.Random(0)
    lib = work / "library.csv"
    with lib.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "sequence"])
        for i in range(args.entries):
            w.writerow([f"e{i}", "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(rng.randint(40, 80)))])
    n_chunks = len(P.split(P.read_library(lib), args.workers))
    import torch  # noqa: F401 - imported (not used) here, as the bare loop's process imports it before timing
    import transformers  # noqa: F401

    bare = subprocess.run([sys.executable, __file__, "--bare", str(lib), folder, str(args.workers), str(args.reps)],
                          check=True, capture_output=True, text=True, env=os.environ)
    bare_out = json.loads(bare.stdout.strip().splitlines()[-1])
    bare_t = bare_out["times"]
    results = {"bare loop (its own process, model loaded)": bare_t}
    executors = {"local (threads)": "local", "local://threads?workers=1": "local://threads?workers=1",
                 "local://processes?workers=2": "local://processes?workers=2"}
    cluster = None
    if not args.no_dask:
        from distributed import LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        executors["dask (LocalCluster, 2 workers)"] = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
    try:
        for label, executor in executors.items():
            times = []
            for rep in range(args.reps):
                store = f"sqlite:///{work / f'state-{len(results)}-{rep}.db'}"  # nothing cached between runs
                t0 = time.perf_counter()
                res = P.precalc.run(str(lib), folder, workers=args.workers, executor=executor, store=store)
                times.append(time.perf_counter() - t0)
                assert res.entries == args.entries and len(res.chunks) == n_chunks
            results[label] = times
    finally:
        if cluster is not None:
            cluster.close()
    bare = sorted(bare_t)[len(bare_t) // 2]
    rows = []
    for label, times in results.items():
        med = sorted(times)[len(times) // 2]
        rows.append({"case": label, "median s": f"{med:.2f}", "inputs/s": f"{args.entries / med:,.0f}",
                     "vs bare loop": f"{bare / med:.2f}x"})
    print(table(rows, list(rows[0])))
    print(f"bare loop's process: start + imports + model load {bare_out['startup_s']:.2f} s (not in its time)")
    print(json.dumps({k: v for k, v in results.items()} | {"bare_startup_s": bare_out["startup_s"]}))


def bare_main(lib: str, folder: str, workers: int, reps: int) -> None:
    """The baseline, in a process of its own: imports and model load first, then the timed loops."""
    entries = P.read_library(lib)
    chunks = P.split(entries, workers)
    model = E.resolve_model(folder)
    P.predict(chunks[0][:4], model)
    startup = time.perf_counter() - _START
    times = []
    for _ in range(reps):
        t1 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            P.predict(chunk, model, i)
        times.append(time.perf_counter() - t1)
    print(json.dumps({"times": times, "startup_s": startup}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--bare":
        bare_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
