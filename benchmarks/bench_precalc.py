"""Precalc of a 10,000-entry library: gflow on the local process pool and on Dask vs a bare loop over the same chunks.

A random library (lengths 40-80) and a tiny random ESM-2 (no weights downloaded). The bare loop runs
``precalc.predict`` over the same 50 chunks one after another in this process (model loaded once).
gflow runs the ``precalc`` flow (``workers=50``: 50 chunks) with a fresh GFLOW_HOME per rep (nothing
cached), on ``local://processes?workers=2`` and on a Dask LocalCluster (2 worker processes, 1 thread each).

    python benchmarks/bench_precalc.py --entries 10000 --reps 3
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import tempfile
import time
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
    entries = P.read_library(lib)
    chunks = P.split(entries, args.workers)
    model = E.resolve_model(folder)
    P.predict(chunks[0][:4], model)
    bare_t = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        for i, chunk in enumerate(chunks):
            P.predict(chunk, model, i)
        bare_t.append(time.perf_counter() - t0)
    results = {"bare loop (1 process)": bare_t}
    executors = {"local://processes?workers=2": "local://processes?workers=2"}
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
                assert res.entries == args.entries and len(res.chunks) == len(chunks)
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
    print(json.dumps({k: v for k, v in results.items()}))


if __name__ == "__main__":
    main()
