"""Paying for a model once (issue 18): ``@gflow.warm``, ``batch_size``, ``per_job`` and ``gflow serve``.

    python benchmarks/bench_warm.py                       # every part, default sizes
    python benchmarks/bench_warm.py --part warm --n 2000  # one part
    python benchmarks/bench_warm.py --part aws --aws-n 10000 --big-n 20000

Parts:
- ``warm``: a task whose model takes 2 s to load and 5 ms per item, a map of ``--n`` on
  ``local://processes`` (2 workers) and a Dask LocalCluster (2 workers): loads counted (one file per load,
  from every process), wall time against ``load + n x 5 ms / workers``; the same map without
  ``@gflow.warm`` side by side on ``--cold-n`` elements (it pays 2 s per element).
- ``esm``: ESM-2 (tiny config, random weights, CPU) over ``--esm-n`` sequences: the wild-type marginal
  score through a ``batch_size=32`` task on the local executor vs a bare batched loop in one process
  (both sorted by length, batches of 32, the network loaded once), in rotation.
- ``aws``: AWS Batch against moto (server mode, as in bench_aws_batch.py): a map of ``--aws-n`` with
  ``per_job=100`` (SubmitJob calls, array size, elements recorded), then a map of ``--big-n`` with the
  default packing (one array within 10,000 children; driver time to all submitted, driver peak RSS,
  every element's state in the store vs the store's counts).
- ``serve``: ``gflow serve`` of a ``batch_size=32`` task with a 20 ms fixed cost per call, ``--clients``
  concurrent clients, throughput and p50/p99 latency vs the same server with ``--max-batch 1``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT), str(ROOT / "examples")):
    if p not in sys.path:
        sys.path.insert(0, p)
os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])

from _common import interleaved_times, table  # noqa: E402

import gflow  # noqa: E402


def _loads(folder: str) -> int:
    return len(os.listdir(folder))


# -- warm ---------------------------------------------------------------------------------------------------
def part_warm(n: int, cold_n: int) -> list[dict]:
    import _warm_tasks as W

    rows: list[dict] = []

    def run(label: str, flow: gflow.Flow, size: int, executor: object) -> None:
        loads = os.environ["BENCH_WARM_LOADS"]  # every process of the executor writes one file per load there
        before = _loads(loads)
        t0 = time.perf_counter()
        r = flow.run(size, executor=executor, return_run=True)
        wall = time.perf_counter() - t0
        assert r.state is gflow.State.SUCCEEDED, r.error
        ideal_here = W.LOAD_S * (1 if flow is W.warm_map else size / 2) + size * W.ITEM_S / 2
        rows.append({"case": label, "n": size, "loads": _loads(loads) - before, "wall_s": f"{wall:.2f}",
                     "ideal_s": f"{ideal_here:.2f}", "ratio": f"{wall / ideal_here:.2f}x"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    os.environ["BENCH_WARM_LOADS"] = tempfile.mkdtemp(prefix="bench-warm-loads-")
    run("@gflow.warm, local://processes (2 workers)", W.warm_map, n, "local://processes?workers=2")
    run("no warm, local://processes (2 workers)", W.cold_map, cold_n, "local://processes?workers=2")
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        print("dask not installed: Dask part skipped", file=sys.stderr)
        return rows
    os.environ["BENCH_WARM_LOADS"] = tempfile.mkdtemp(prefix="bench-warm-loads-")  # inherited by the workers
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        addr = client.scheduler.address
        run("@gflow.warm, Dask LocalCluster (2 workers)", W.warm_map, n, f"dask://{addr.split('://')[-1]}")
        run("no warm, Dask LocalCluster (2 workers)", W.cold_map, cold_n, f"dask://{addr.split('://')[-1]}")
    return rows


# -- esm ----------------------------------------------------------------------------------------------------
def part_esm(n: int, reps: int, preset: str) -> list[dict]:
    import esm_scoring as E

    from gflow.models import resolve_model

    folder = E.save_random_esm(tempfile.mkdtemp(prefix="bench-esm-"), preset=preset)
    model = resolve_model(folder)
    rng = random.Random(0)
    aa = "ACDEFGHIKLMNPQRSTVWY"
    seqs = ["".join(rng.choice(aa) for _ in range(rng.randint(50, 300))) for _ in range(n)]
    order = sorted(range(n), key=lambda i: len(seqs[i]))
    ordered = [seqs[i] for i in order]

    @gflow.task(batch_size=32)
    def esm_score(sequences: list[str], model: object) -> list[float]:
        tok, net, device = E.load_esm(model)  # type: ignore[arg-type]
        return E.esm_unmasked(tok, net, device, sequences)

    @gflow.flow
    def esm_flow(sequences: list[str]) -> list[float]:
        return esm_score.map(sequences, model=model)

    def bare() -> list[float]:
        tok, net, device = E.load_esm(model)
        out: list[float] = []
        for s in range(0, n, 32):
            out += E.esm_unmasked(tok, net, device, ordered[s:s + 32])
        return out

    def bare_in_a_thread() -> list[float]:
        # torch on this box runs ~8x slower in the main thread than in any other (OpenMP under load); gflow's
        # pool runs the task in a thread, so the fair bare loop runs in one too (main-thread time reported)
        out: list[list[float]] = []
        t = threading.Thread(target=lambda: out.append(bare()))
        t.start()
        t.join()
        return out[0]

    def through_gflow() -> list[float]:
        r = esm_flow.run(ordered, executor="local://threads?workers=1", return_run=True)
        assert r.state is gflow.State.SUCCEEDED, r.error
        return list(r.value)

    assert [round(x, 4) for x in bare()] == [round(x, 4) for x in through_gflow()]  # warms both, checks equality
    times = interleaved_times({"bare": bare_in_a_thread, "gflow": through_gflow, "bare_main": bare}, reps)
    b, g = statistics.median(times["bare"]), statistics.median(times["gflow"])
    row = {"case": f"ESM-2 {preset} (random weights), CPU, {n} sequences L 50-300, batch 32", "bare_s": f"{b:.2f}",
           "gflow_s": f"{g:.2f}", "gflow_throughput_vs_bare": f"{100 * b / g:.1f}%",
           "bare_main_thread_s": f"{statistics.median(times['bare_main']):.2f}",
           "rounds": ", ".join(f"{100 * x / y:.0f}%" for x, y in zip(times["bare"], times["gflow"], strict=True))}
    print(json.dumps(row), file=sys.stderr, flush=True)
    return [row]


# -- aws ----------------------------------------------------------------------------------------------------
def drive_aws(n: int, per_job: int | None) -> dict:
    import _warm_tasks as W
    from bench_aws_batch import CREDS, IMAGE, QUEUE, REGION

    from gflow.executors.aws_batch import AwsBatchExecutor
    from gflow.store import open_store

    keys = {k: CREDS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    ex = AwsBatchExecutor(QUEUE, region=REGION, image=IMAGE, environment=keys)
    t0 = time.perf_counter()
    r = W.packed_map.run(n, per_job, executor=ex, artifacts="s3://bench-artifacts/warm", return_run=True)
    t_end = time.perf_counter()
    assert r.state is gflow.State.SUCCEEDED, r.error
    assert r.value == [i * i for i in range(n)]
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    arrays = [j for j in ex.monitor.jobs.values() if j.size]
    store = open_store(f"sqlite:///{os.environ['GFLOW_HOME']}/gflow.db")
    recorded = [t for t in store.task_runs(r.id) if t.name == "square"]
    counts = store.counts(r.id) if hasattr(store, "counts") else {}
    return {"n": n, "per_job": per_job, "submit_job": ex.api_calls.get("SubmitJob", 0),
            "arrays": len(arrays), "children": sum(j.size for j in arrays),
            "calls_per_child": arrays[0].chunk if arrays else None,
            "recorded_succeeded": sum(1 for t in recorded if t.state is gflow.State.SUCCEEDED),
            "store_counts": {str(k): v for k, v in dict(counts).items()} if counts else None,
            "to_submitted_s": ex.submitted_at - t0, "total_s": t_end - t0,
            "peak_rss_mb": int(hwm[0].split()[1]) / 1024}


def part_aws(n: int, big_n: int, workers: int) -> list[dict]:
    from aws_env import free_port  # tests/ helper
    from bench_aws_batch import CREDS, setup

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, str(HERE / "bench_aws_batch.py"), "--serve", str(port), "--workers",
                               str(workers)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env={**os.environ, **CREDS})
    rows = []
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        for size, per_job in ((n, 100), (big_n, None)):
            if size <= 0:
                continue
            setup(url)
            env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": url, "GFLOW_HOME": tempfile.mkdtemp(prefix="bw-")}
            out = subprocess.run([sys.executable, __file__, "--drive-aws", str(size), "--per-job", str(per_job or 0)],
                                 capture_output=True, text=True, env=env, timeout=3600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-3000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(120)
    return rows


# -- serve --------------------------------------------------------------------------------------------------
def _serve_once(max_batch: int, clients: int, per_client: int) -> dict:
    import _warm_tasks as W

    from gflow.serve import TaskServer

    srv = TaskServer(W.fixed_cost, port=0, max_batch=max_batch, max_wait_ms=5).start()
    lat: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        mine = []
        for i in range(per_client):
            req = urllib.request.Request(srv.url + "/", data=json.dumps({"xs": i}).encode(), method="POST")
            t = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as r:
                assert json.loads(r.read())["result"] == i * 2
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    srv.close()
    lat.sort()
    return {"max_batch": max_batch, "requests": len(lat), "wall_s": wall, "rps": len(lat) / wall,
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))],
            "batches": srv.metrics.batches}


def part_serve(clients: int, per_client: int) -> list[dict]:
    rows = []
    for mb in (32, 1):
        r = _serve_once(mb, clients, per_client)
        rows.append({"server": f"--max-batch {mb}", "clients": clients, "requests": r["requests"],
                     "batches": r["batches"], "req_per_s": f"{r['rps']:.0f}", "p50_ms": f"{r['p50_ms']:.1f}",
                     "p99_ms": f"{r['p99_ms']:.1f}"})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    ratio = float(rows[0]["req_per_s"]) / float(rows[1]["req_per_s"])
    rows.append({"server": "throughput ratio", "req_per_s": f"{ratio:.1f}x"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=["warm", "esm", "aws", "serve", "all"], default="all")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--cold-n", type=int, default=20)
    ap.add_argument("--esm-n", type=int, default=1000)
    ap.add_argument("--esm-preset", default="tiny")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--aws-n", type=int, default=10_000)
    ap.add_argument("--big-n", type=int, default=1_000_000)
    ap.add_argument("--moto-workers", type=int, default=8)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--per-client", type=int, default=10)
    ap.add_argument("--drive-aws", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--per-job", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    if a.drive_aws is not None:
        print(json.dumps(drive_aws(a.drive_aws, a.per_job or None)))
        return
    os.environ.setdefault("GFLOW_HOME", tempfile.mkdtemp(prefix="bench-warm-home-"))
    if a.part in ("warm", "all"):
        rows = part_warm(a.n, a.cold_n)
        print(table(rows, ["case", "n", "loads", "wall_s", "ideal_s", "ratio"]))
    if a.part in ("esm", "all"):
        rows = part_esm(a.esm_n, a.reps, a.esm_preset)
        print(table(rows, ["case", "bare_s", "gflow_s", "gflow_throughput_vs_bare", "rounds", "bare_main_thread_s"]))
    if a.part in ("serve", "all"):
        rows = part_serve(a.clients, a.per_client)
        print(table(rows, ["server", "clients", "requests", "batches", "req_per_s", "p50_ms", "p99_ms"]))
    if a.part in ("aws", "all"):
        rows = part_aws(a.aws_n, a.big_n, a.moto_workers)
        print(table(rows, ["n", "per_job", "submit_job", "arrays", "children", "calls_per_child",
                           "recorded_succeeded", "to_submitted_s", "total_s", "peak_rss_mb"]))


if __name__ == "__main__":
    main()
