"""GraphQL server under churn, with many dashboards open (issues 5 and 24).

Stores ``--stored`` task runs (finished runs of 10,000 plus one live run per scenario), starts
``gflow server --workers W`` in its own processes, and for each W in ``--workers`` (side by side, the
same load) runs, all at once:

- a writer process driving the live run's task runs QUEUED -> RUNNING (1 s later) -> SUCCEEDED (2 s
  later) in batches every 50 ms (like the engine's recorder) at ``--rate`` transitions/s for
  ``--duration`` seconds;
- ``--batched`` ``runEventBatches`` and ``--per-event`` ``runEvents`` websocket subscribers, spread over
  ``--listener-procs`` processes (asyncio): lag from a transition's timestamp (taken just before
  ``store.apply``) to its arrival, and every seq checked against the event log: lost, duplicated, out
  of order (events a slow subscriber had coalesced count as lost here, and are reported apart);
- ``--pollers`` clients polling a run's counts and a page of 100 task runs (keyset cursor) every
  ``--poll-interval`` seconds each, from one process (asyncio, one connection each).

and reports counts p95, page p95, subscription lag p95, lost/out of order per client, and the server's
CPU (all its processes) per 1,000 transitions/s. Goals: counts p95 <= 20 ms, page p95 <= 50 ms, lag p95
<= 250 ms, 0 lost or out of order.

    python benchmarks/bench_server.py [--rate 4000] [--duration 60] [--stored 100000] [--workers 1,4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import table  # noqa: E402

from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Transition, open_store  # noqa: E402

HISTORY_RUN_SIZE = 10_000
BATCH_INTERVAL = 0.05

COUNTS_Q = "query($id: ID!) { run(id: $id) { countsByState { state count } } }"
PAGE_Q = """query($id: ID!, $after: String) { taskRuns(runId: $id, first: 100, after: $after) {
  items { id name state attempt started ended } nextCursor } }"""
SUBS = {
    "runEvents": "subscription($id: ID!, $after: Int!) { runEvents(runId: $id, after: $after) { seq taskRunId ts } }",
    "runEventBatches": "subscription($id: ID!, $after: Int!) { runEventBatches(runId: $id, after: $after) "
                       "{ seq taskRunId ts } }",
}


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def build(url: str, stored: int, live_sizes: list[int]) -> list[str]:
    """Finished history runs up to ``stored`` task runs in all, then one PENDING live run per size."""
    st = open_store(url)
    now = time.time()
    history = max(0, stored - sum(live_sizes))
    r = 0
    while history > 0:
        n = min(HISTORY_RUN_SIZE, history)
        run_id = f"hist-{r:04d}"
        st.create_run(RunRecord(id=run_id, flow="bench", created=now + r, params='{"n": 10000}', executor="local",
                                tags=["bench"]))
        st.set_run_state(run_id, State.RUNNING, now + r)
        for k in range(0, n, 10_000):  # a finished task run: its PENDING and its end, merged into one row
            batch = []
            for i in range(k + 1, min(k + 10_000, n) + 1):
                batch.append(Transition(f"{run_id}.{i}", run_id, State.PENDING, 1, now, task="bench:work",
                                        name="work", map_index=i - 1))
                batch.append(Transition(f"{run_id}.{i}", run_id, State.SUCCEEDED if i % 50 else State.FAILED, 1,
                                        now + 0.3, result_ref="sha256:" + "0" * 64 if i % 50 else None,
                                        error=None if i % 50 else "ValueError: bench"))
            st.apply(batch)
        st.set_run_state(run_id, State.SUCCEEDED, now + r + 1)
        history -= n
        r += 1
    live = []
    for j, size in enumerate(live_sizes):
        run_id = f"live-{j}"
        st.create_run(RunRecord(id=run_id, flow="bench", created=now + r + j, params="{}", executor="local"))
        st.set_run_state(run_id, State.RUNNING, now + r + j)
        for k in range(0, size, 20_000):
            st.apply([Transition(f"{run_id}.{i}", run_id, State.PENDING, 1, now, task="bench:work", name="work",
                                 map_index=i - 1) for i in range(k + 1, min(k + 20_000, size) + 1)])
        live.append(run_id)
    st.close()
    return live


def writer(url: str, run_id: str, size: int, rate: int, go: mp.Event, out: mp.Queue) -> None:
    """Drive one live run: a pipeline of QUEUED, RUNNING (1 s later), SUCCEEDED (2 s later) batches."""
    st = open_store(url)
    per_step = max(1, int(rate * BATCH_INTERVAL / 3))  # tasks entering each phase per batch
    lag_steps = round(1.0 / BATCH_INTERVAL)
    n_steps = -(-size // per_step) + 2 * lag_steps  # ceil, plus the pipeline's drain
    go.wait()
    written = 0
    apply_s: list[float] = []
    t_start = time.perf_counter()
    for step in range(n_steps):
        delay = t_start + step * BATCH_INTERVAL - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        batch = []
        for phase, state in enumerate((State.QUEUED, State.RUNNING, State.SUCCEEDED)):
            s = step - phase * lag_steps
            if s < 0:
                continue
            for i in range(s * per_step + 1, min((s + 1) * per_step, size) + 1):
                batch.append(Transition(f"{run_id}.{i}", run_id, state, 1, 0.0))
        if not batch:
            continue
        ts = time.time()
        for t in batch:
            t.ts = ts
        t0 = time.perf_counter()
        refused = st.apply(batch)
        apply_s.append(time.perf_counter() - t0)
        assert not refused, refused[:3]
        written += len(batch)
    st.set_run_state(run_id, State.SUCCEEDED, time.time())
    elapsed = time.perf_counter() - t_start
    out.put({"written": written, "seconds": elapsed, "rate": written / elapsed,
             "apply_p50_ms": pct(apply_s, 50) * 1000, "apply_p95_ms": pct(apply_s, 95) * 1000})


def listeners(ws_url: str, run_id: str, after: int, kinds: list[str], ready: mp.Queue, out: mp.Queue) -> None:
    """Several subscribers in one process (asyncio): each records its seqs and lags until its stream completes."""
    from websockets.asyncio.client import connect

    async def one(kind: str) -> dict:
        lags: list[float] = []
        seqs: list[int] = []
        async with connect(ws_url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(await ws.recv())["type"] == "connection_ack"
            await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                      "payload": {"query": SUBS[kind], "variables": {"id": run_id, "after": after}}}))
            ready.put(1)
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
                if msg["type"] == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                    continue
                if msg["type"] != "next":
                    break
                now = time.time()
                if msg["payload"].get("errors"):
                    return {"kind": kind, "error": msg["payload"]["errors"][0]["message"], "seqs": seqs, "lags": lags}
                evs = msg["payload"]["data"][kind]
                for e in evs if isinstance(evs, list) else [evs]:
                    seqs.append(e["seq"])
                    if e["taskRunId"]:
                        lags.append(now - e["ts"])
        return {"kind": kind, "seqs": seqs, "lags": lags}

    async def main() -> None:
        for res in await asyncio.gather(*(one(k) for k in kinds)):
            out.put(res)

    asyncio.run(main())


def pollers(base: str, live: str, hist: str, cursors: list[str | None], n: int, interval: float, go: mp.Event,
            stop: mp.Event, out: mp.Queue) -> None:
    """``n`` clients, each asking the live run's counts and a page of 100 task runs (of a 10,000-task run, at a
    random depth) every ``interval`` s until ``stop``."""
    import httpx

    async def one(k: int) -> dict[str, list[float]]:
        got: dict[str, list[float]] = {"counts": [], "page": [], "failed": []}
        rnd = random.Random(k)
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            await asyncio.sleep(rnd.random() * interval)  # spread the clients over the interval
            while not stop.is_set():
                t_next = time.perf_counter() + interval
                page = {"query": PAGE_Q, "variables": {"id": hist, "after": rnd.choice(cursors)}}
                for kind, body in (("counts", {"query": COUNTS_Q, "variables": {"id": live}}), ("page", page)):
                    t0 = time.perf_counter()
                    try:
                        r = await client.post("/graphql", json=body)
                        ok = r.status_code == 200 and "errors" not in r.json()
                    except httpx.HTTPError:  # a timeout (10 s) under overload: counted, not fatal
                        ok = False
                    got[kind if ok else "failed"].append(time.perf_counter() - t0)
                await asyncio.sleep(max(0.0, t_next - time.perf_counter()))
        return got

    async def main() -> None:
        go.wait()
        try:
            res = await asyncio.gather(*(one(k) for k in range(n)))
        except Exception as e:  # noqa: BLE001 - reported to the main process instead of hanging it
            out.put({"error": repr(e)[:500]})
            return
        out.put({k: [x for r in res for x in r[k]] for k in ("counts", "page", "failed")})

    asyncio.run(main())


def _server_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process and all its children (the workers)."""
    import psutil

    p = psutil.Process(pid)
    total = 0.0
    for q in [p, *p.children(recursive=True)]:
        try:
            t = q.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def counts_read_times(url: str, run_id: str, reps: int = 30) -> dict[str, float]:
    """Median ms of a run's counts read from the summary table (what the store does now) and aggregated with
    GROUP BY over its task runs (what it did before issue 24), in this process, on the idle store."""
    import sqlite3
    import statistics

    path = url[len("sqlite:///"):]
    conn = sqlite3.connect(path)
    out = {}
    for name, sql in (("summary", "SELECT state, sum(n) FROM task_counts WHERE run_id=? GROUP BY state"),
                      ("group_by", "SELECT state, count(*) FROM task_runs WHERE run_id=? GROUP BY state")):
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            conn.execute(sql, (run_id,)).fetchall()
            times.append(time.perf_counter() - t0)
        out[name] = round(statistics.median(times) * 1000, 3)
    conn.close()
    return out


def scenario(args: argparse.Namespace, url: str, tmp: str, workers: int, run_id: str, size: int) -> dict:
    import httpx

    from gflow.server.loaders import last_event_seq

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GFLOW_HOME": tmp}
    cmd = [sys.executable, "-m", "gflow", "server", "--store", url, "--port", str(port), "--log-level", "warning",
           "--workers", str(workers), "--max-subscriptions-per-token", "0"]
    if args.events:
        cmd += ["--events", args.events]
    server = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    ctx = mp.get_context("spawn")
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < workers:
            try:
                pids.add(httpx.get(f"{base}/healthz", timeout=1).json()["pid"])
            except (httpx.TransportError, ValueError, KeyError):
                time.sleep(0.1)
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
        hist = "hist-0000"
        cursors: list[str | None] = [None]
        with httpx.Client(base_url=base, timeout=30) as client:
            after = None
            for _ in range(20):  # cursors spread over a finished 10,000-task run: pages at random depths
                page = client.post("/graphql", json={"query": PAGE_Q, "variables": {"id": hist, "after": after}})
                after = page.json()["data"]["taskRuns"]["nextCursor"]
                cursors.append(after)
        st = open_store(url)
        after_seq = last_event_seq(st, run_id)
        go, stop = ctx.Event(), ctx.Event()
        q_w, q_l, q_p, ready = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
        kinds = ["runEventBatches"] * args.batched + ["runEvents"] * args.per_event
        procs = max(1, min(args.listener_procs, len(kinds)))
        lst = [ctx.Process(target=listeners, args=(base.replace("http", "ws") + "/graphql", run_id, after_seq,
                                                   kinds[i::procs], ready, q_l)) for i in range(procs)] if kinds else []
        pol = ctx.Process(target=pollers, args=(base, run_id, hist, cursors, args.pollers, args.poll_interval, go,
                                                stop, q_p))
        wr = ctx.Process(target=writer, args=(url, run_id, size, args.rate, go, q_w))
        for p in [*lst, pol, wr]:
            p.start()
        for _ in kinds:
            ready.get(timeout=120)
        time.sleep(1.0)  # every backlog read
        cpu0, t0 = _server_cpu(server.pid), time.perf_counter()
        go.set()
        w = q_w.get(timeout=args.duration * 10 + 300)
        cpu1, t1 = _server_cpu(server.pid), time.perf_counter()
        subs = [q_l.get(timeout=600) for _ in kinds]
        stop.set()
        polled = q_p.get(timeout=120)
        cpu2, t2 = _server_cpu(server.pid), time.perf_counter()  # every event delivered: the load's whole cost
        assert "error" not in polled, polled
        for p in [*lst, pol, wr]:
            p.join(30)
        expected = [e.seq for e in st.events(run_id, after=after_seq)]
        counts = st.counts(run_id)
        st.close()
        assert counts == {"SUCCEEDED": size}, counts
    finally:
        server.terminate()
        server.wait(30)
    exp_set = set(expected)
    per_kind: dict[str, dict] = {}
    for sub in subs:
        seqs = sub["seqs"]
        k = per_kind.setdefault(sub["kind"], {"clients": 0, "lags": [], "lost": [], "dup": 0, "out_of_order": 0,
                                              "errors": []})
        k["clients"] += 1
        k["lags"] += sub["lags"]
        k["lost"].append(len(exp_set - set(seqs)))
        k["dup"] += len(seqs) - len(set(seqs))
        k["out_of_order"] += sum(1 for a, b in zip(seqs, seqs[1:]) if b <= a)
        if sub.get("error"):
            k["errors"].append(sub["error"])
    seconds = t1 - t0
    cpu_s = cpu1 - cpu0
    res = {"workers": workers, "written": w["written"], "writer_rate": round(w["rate"]),
           "writer_apply_p95_ms": round(w["apply_p95_ms"], 1), "seconds": round(seconds, 1),
           "events_expected": len(expected), "polls": len(polled["counts"]), "polls_failed": len(polled["failed"]),
           "counts_p50_ms": round(pct(polled["counts"], 50) * 1000, 1),
           "counts_p95_ms": round(pct(polled["counts"], 95) * 1000, 1),
           "page_p50_ms": round(pct(polled["page"], 50) * 1000, 1),
           "page_p95_ms": round(pct(polled["page"], 95) * 1000, 1),
           "server_cpu_s": round(cpu_s, 1), "server_cores": round(cpu_s / seconds, 2),
           "server_cores_per_1k_tps": round(cpu_s / seconds / (w["rate"] / 1000), 3),
           # CPU seconds from the start until every subscriber had every event, per 1,000 transitions: the cores
           # 1,000 transitions/s need at steady state, even where a starved server finished late
           "drain_s": round(t2 - t0, 1), "server_cpu_total_s": round(cpu2 - cpu0, 1),
           "server_cpu_s_per_1k_transitions": round((cpu2 - cpu0) / (w["written"] / 1000), 3)}
    for kind, k in per_kind.items():
        res[kind] = {"clients": k["clients"], "lag_p50_ms": round(pct(k["lags"], 50) * 1000),
                     "lag_p95_ms": round(pct(k["lags"], 95) * 1000), "lost_max_per_client": max(k["lost"]),
                     "lost_total": sum(k["lost"]), "duplicates": k["dup"], "out_of_order": k["out_of_order"],
                     "errors": k["errors"][:3]}
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=4000, help="transitions per second the writer records")
    ap.add_argument("--duration", type=float, default=60, help="seconds of writing per scenario")
    ap.add_argument("--stored", type=int, default=100_000, help="task runs stored in all")
    ap.add_argument("--workers", default="1,4", help="server worker counts to compare, comma-separated")
    ap.add_argument("--batched", type=int, default=10, help="runEventBatches subscribers")
    ap.add_argument("--per-event", type=int, default=10, help="runEvents subscribers")
    ap.add_argument("--pollers", type=int, default=20, help="clients polling counts + a page")
    ap.add_argument("--poll-interval", type=float, default=1.0, help="seconds between one poller's rounds")
    ap.add_argument("--listener-procs", type=int, default=4, help="processes the subscribers are spread over")
    ap.add_argument("--events", default=None, help="redis:// URL of a Redis layer for the server and writer")
    args = ap.parse_args()
    worker_counts = [int(x) for x in args.workers.split(",")]
    size = -(-int(args.rate * args.duration) // 3)

    tmp = tempfile.mkdtemp(prefix="gflow-bench-server-")
    url = f"sqlite:///{tmp}/gflow.db"
    t0 = time.perf_counter()
    live = build(url, args.stored, [size] * len(worker_counts))
    build_s = time.perf_counter() - t0
    reads = counts_read_times(url, live[0])
    print(json.dumps({"counts_read_ms": reads, "run_task_runs": size}), flush=True)
    results = []
    try:
        for workers, run_id in zip(worker_counts, live):
            results.append(scenario(args, url, tmp, workers, run_id, size))
            print(json.dumps({"scenario": results[-1]}), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{args.stored:,} task runs stored (built in {build_s:.0f}s); writer target {args.rate} transitions/s for "
          f"{args.duration:g}s ({size:,} task runs x 3 transitions); {args.batched} runEventBatches + {args.per_event} "
          f"runEvents subscribers, {args.pollers} pollers every {args.poll_interval:g}s; {os.cpu_count()} CPUs "
          f"shared by server, writer, clients (and other users of the machine)\n")
    rows = []
    for r in results:
        row = {"workers": r["workers"], "writer trans/s": r["writer_rate"],
               "polls ok/failed": f"{r['polls']}/{r['polls_failed']}",
               "counts p95 ms": r["counts_p95_ms"], "page100 p95 ms": r["page_p95_ms"],
               "server cores (window)": r["server_cores"],
               "server CPU s per 1k transitions": r["server_cpu_s_per_1k_transitions"], "drained s": r["drain_s"]}
        for kind, short in (("runEventBatches", "batched"), ("runEvents", "per-event")):
            if kind in r:
                k = r[kind]
                row[f"{short} lag p95 ms"] = k["lag_p95_ms"]
                row[f"{short} lost/dup/ooo"] = f"{k['lost_max_per_client']}/{k['duplicates']}/{k['out_of_order']}"
        rows.append(row)
    print(table(rows, list(rows[0])))
    print("\ngoals: counts p95 <= 20 ms, page p95 <= 50 ms, lag p95 <= 250 ms, 0 lost/dup/out of order "
          "(lost = max per client; a slow subscriber's coalesced events count as lost)")
    print(f"a run's counts ({size:,} task runs), idle store, median: summary table {reads['summary']} ms, "
          f"GROUP BY over its task runs {reads['group_by']} ms")
    print(json.dumps({"bench": "server", "rate_target": args.rate, "counts_read_ms": reads, "duration": args.duration,
                      "stored": args.stored, "build_s": round(build_s, 1), "cpus": os.cpu_count(),
                      "results": results}))


if __name__ == "__main__":
    main()
