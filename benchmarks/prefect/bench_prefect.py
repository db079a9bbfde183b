#!/usr/bin/env python
"""Prefect 3 baseline for the gflow benchmarks.

Run with the venv made by ``benchmarks/prefect/setup.sh``::

    benchmarks/.venv-prefect/bin/python benchmarks/prefect/bench_prefect.py \
        --mode map --n 10000 --runner default

Exactly one JSON line goes to stdout; every other byte (Prefect logs, the
temporary server's output, Dask logs) goes to stderr. Exit status is 0 only if
the flow ran and its result was correct.

Timed region: only the benchmark flow call (flow-run creation, all task runs,
result retrieval). Not timed, reported separately: the temporary Prefect
server's start-up (``server_start_s``), a small warm-up flow (``warmup_s``),
and, for ``--runner dask``, the LocalCluster start-up (``cluster_start_s``).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import traceback

# --------------------------------------------------------------------------
# stdout hygiene: keep the real stdout for the single JSON line and point
# fd 1 at stderr, so Prefect/uvicorn/Dask output (including that of child
# processes, which inherit fd 1) can never corrupt the JSON stream.
# --------------------------------------------------------------------------
_JSON_FD = os.dup(1)
os.dup2(2, 1)


def emit(record: dict) -> None:
    os.write(_JSON_FD, (json.dumps(record) + "\n").encode())


def log(msg: str) -> None:
    print(f"[bench_prefect] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10000, help="number of trivial tasks (default 10000)")
    p.add_argument("--mode", choices=["map", "loop", "chain"], default="map")
    p.add_argument("--runner", choices=["default", "dask"], default="default")
    p.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="ThreadPoolTaskRunner max_workers (default: Prefect's default, i.e. unbounded)",
    )
    p.add_argument("--dask-workers", type=int, default=2, help="LocalCluster n_workers (default 2)")
    p.add_argument(
        "--prefect-home",
        default=None,
        help="PREFECT_HOME to use (default: a fresh temp dir, removed afterwards)",
    )
    p.add_argument(
        "--settle-timeout",
        type=float,
        default=300,
        help="after the timed run, wait up to this many seconds for the server to "
        "record all task runs as COMPLETED and report it as settle_s (0 = skip)",
    )
    p.add_argument("--keep-home", action="store_true", help="do not delete the temp PREFECT_HOME")
    p.add_argument(
        "--server-timeout",
        type=int,
        default=300,
        help="seconds to wait for the temporary Prefect server to start (default 300)",
    )
    a = p.parse_args(argv)
    if a.n < 1:
        p.error("--n must be >= 1")
    return a


def configure_env(args) -> str:
    """Set Prefect env vars. Must run before ``import prefect``."""
    home = args.prefect_home or tempfile.mkdtemp(prefix="bench-prefect-home-")
    os.makedirs(home, exist_ok=True)
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    # Always use a private temporary server, never a server from the caller's env.
    for var in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_PROFILES_PATH", "PREFECT_PROFILE"):
        os.environ.pop(var, None)
    os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "true"
    os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = str(args.server_timeout)
    # Generous client-side timeouts so a long 10k-task run is never cut short
    # (these only matter if something is actually stuck; they cost nothing).
    os.environ.setdefault("PREFECT_API_REQUEST_TIMEOUT", "300")
    if not args.prefect_home and not args.keep_home:
        # Registered before Prefect registers its own atexit hooks, so it runs
        # last: after the log/event workers drained and the server stopped.
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    return home


# --------------------------------------------------------------------------
# Workload. Defined at import time of the module, after env configuration
# (see the bottom of the file), so Dask workers can unpickle them too.
# --------------------------------------------------------------------------
def build_workload():
    from prefect import flow, task
    from prefect.futures import wait

    @task
    def inc(x):
        return x + 1

    @task
    def total(xs):
        return sum(xs)

    @flow
    def bench_map(n: int):
        futures = inc.map(range(n))
        return total.submit(futures).result()

    @flow
    def bench_loop(n: int):
        futures = []
        for i in range(n):
            futures.append(inc.submit(i))
        wait(futures)
        return sum(f.result() for f in futures)

    @flow
    def bench_chain(n: int):
        fut = inc.submit(0)
        for _ in range(n - 1):
            fut = inc.submit(fut)  # depends on the previous task's result
        return fut.result()

    @flow
    def warmup(k: int):
        futures = [inc.submit(i) for i in range(k)]
        return total.submit(futures).result()

    flows = {"map": bench_map, "loop": bench_loop, "chain": bench_chain}
    return flows, warmup


def expected_result(mode: str, n: int) -> int:
    if mode == "chain":
        return n  # 0 -> 1 -> ... -> n
    return n * (n + 1) // 2  # sum(i + 1 for i in range(n))


def peak_rss_mb() -> float:
    # Linux: ru_maxrss is in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def children_rss_mb() -> float:
    """Current RSS of child processes (temporary server, Dask nanny/workers)."""
    try:
        import psutil

        total = 0
        for c in psutil.Process().children(recursive=True):
            try:
                total += c.memory_info().rss
            except psutil.Error:
                pass
        return total / (1024.0 * 1024.0)
    except Exception:  # pragma: no cover - psutil missing
        return float("nan")


def wait_for_server_settle(api_url: str, flow_run_id, n_tasks: int, timeout: float):
    """Return (seconds, count): seconds until the server holds ``n_tasks``
    COMPLETED task runs for the flow run (None if not within ``timeout``) and
    the last count seen."""
    import httpx

    body = {
        "task_runs": {
            "flow_run_id": {"any_": [str(flow_run_id)]},
            "state": {"type": {"any_": ["COMPLETED"]}},
        }
    }
    t0 = time.perf_counter()
    count = -1
    with httpx.Client(base_url=api_url, timeout=60) as client:
        while True:
            try:
                resp = client.post("/task_runs/count", json=body)
                resp.raise_for_status()
                count = int(resp.json())
            except Exception as exc:  # keep polling; the server may be busy
                log(f"settle poll failed: {exc!r}")
            elapsed = time.perf_counter() - t0
            if count >= n_tasks:
                return round(elapsed, 3), count
            if elapsed > timeout:
                log(f"server had {count}/{n_tasks} completed task runs after {elapsed:.1f} s")
                return None, count
            time.sleep(0.2)


def main(argv=None) -> int:
    args = parse_args(argv)
    home = configure_env(args)
    record = {
        "tool": "prefect",
        "version": None,
        "mode": args.mode,
        "runner": args.runner,
        "n": args.n,
        "wall_s": None,
        "per_task_us": None,
        "peak_rss_mb": None,
        "server_start_s": None,
        "correct": False,
    }
    server = None
    cluster = None
    rc = 1
    try:
        import prefect
        from prefect.server.api.server import SubprocessASGIServer
        from prefect.settings import PREFECT_API_URL, temporary_settings
        from prefect.task_runners import ThreadPoolTaskRunner

        record["version"] = prefect.__version__
        log(f"prefect {prefect.__version__}, PREFECT_HOME={home}, python {sys.version.split()[0]}")
        flows, warmup = build_workload()

        if args.runner == "dask":
            # Fail fast (before the ~10-16 s server start) if prefect-dask is broken.
            try:
                import distributed
                import prefect_dask
                from prefect_dask import DaskTaskRunner
            except Exception as exc:
                record["error"] = f"prefect-dask unavailable: {type(exc).__name__}: {exc}"
                log(record["error"])
                emit(record)
                return 2
            record["prefect_dask_version"] = getattr(prefect_dask, "__version__", None)
            record["distributed_version"] = distributed.__version__

        # ---- 1. temporary local server (not timed) ----------------------
        # This is the same singleton that Prefect's client would start lazily
        # on the first flow run; starting it here lets us time it separately.
        t0 = time.perf_counter()
        server = SubprocessASGIServer()
        server.start(timeout=args.server_timeout)
        record["server_start_s"] = round(time.perf_counter() - t0, 3)
        log(f"temporary server at {server.api_url} started in {record['server_start_s']} s")

        # ---- 2. task runner ---------------------------------------------
        settings_cm = None
        if args.runner == "default":
            runner = ThreadPoolTaskRunner(max_workers=args.max_workers)
        else:
            # Task runs execute in the Dask worker processes and receive the
            # flow's serialized settings; point those at our server explicitly
            # so workers do not try to start temporary servers of their own.
            os.environ["PREFECT_API_URL"] = server.api_url
            settings_cm = temporary_settings(updates={PREFECT_API_URL: server.api_url})
            t0 = time.perf_counter()
            cluster = distributed.LocalCluster(
                n_workers=args.dask_workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",  # random free port, avoids clashes
            )
            record["cluster_start_s"] = round(time.perf_counter() - t0, 3)
            record["dask_workers"] = args.dask_workers
            log(f"Dask LocalCluster {cluster.scheduler_address} started in {record['cluster_start_s']} s")
            runner = DaskTaskRunner(address=cluster.scheduler_address)

        bench = flows[args.mode].with_options(task_runner=runner)
        warm = warmup.with_options(task_runner=runner)

        from contextlib import nullcontext

        with settings_cm or nullcontext():
            # ---- 3. warm-up flow (not timed) ----------------------------
            k = max(2, 2 * args.dask_workers) if args.runner == "dask" else 2
            t0 = time.perf_counter()
            got = warm(k)
            record["warmup_s"] = round(time.perf_counter() - t0, 3)
            if got != expected_result("map", k):
                raise RuntimeError(f"warm-up flow returned {got!r}, expected {expected_result('map', k)}")
            log(f"warm-up flow done in {record['warmup_s']} s")

            # ---- 4. timed benchmark flow --------------------------------
            log(f"running mode={args.mode} runner={args.runner} n={args.n}")
            t0 = time.perf_counter()
            state = bench(args.n, return_state=True)
            wall = time.perf_counter() - t0
            result = state.result()  # raises if the flow run failed

        # ---- 5. server catch-up (not timed) -----------------------------
        # Prefect 3 records task-run states on the server asynchronously
        # (from events), so the server may still be persisting task runs when
        # the flow call returns. Report how long until it has all of them.
        if args.settle_timeout > 0:
            n_tasks = args.n + (1 if args.mode == "map" else 0)
            record["settle_s"], record["settle_task_runs"] = wait_for_server_settle(
                server.api_url, state.state_details.flow_run_id, n_tasks, args.settle_timeout
            )

        record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        record["children_rss_mb"] = round(children_rss_mb(), 1)
        record["wall_s"] = round(wall, 4)
        record["per_task_us"] = round(wall / args.n * 1e6, 1)
        want = expected_result(args.mode, args.n)
        record["correct"] = result == want
        if not record["correct"]:
            record["error"] = f"wrong result {result!r}, expected {want}"
            log(record["error"])
        rc = 0 if record["correct"] else 1
        log(f"done: wall {record['wall_s']} s, {record['per_task_us']} us/task")
    except BaseException as exc:  # noqa: BLE001 - report every failure as JSON
        traceback.print_exc(file=sys.stderr)
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        if record["peak_rss_mb"] is None:
            record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        rc = 130 if isinstance(exc, KeyboardInterrupt) else 1

    emit(record)

    # ---- teardown (after the JSON line; errors here do not change rc) ----
    try:
        if cluster is not None:
            cluster.close()
    except Exception as exc:
        log(f"cluster close failed: {exc!r}")
    # The temporary server is stopped by Prefect's own atexit hook, which runs
    # after Prefect's log/event workers have flushed to it.
    return rc


if __name__ == "__main__":
    sys.exit(main())
