"""GraphQL server latency under write load (issue 5).

With 100,000 task runs stored (8 finished runs of 10,000 and 2 live runs of 10,000), a writer
process drives one live run's 10,000 task runs QUEUED -> RUNNING -> SUCCEEDED in batches (like
the engine's recorder) while this process measures, over real HTTP (httpx) against ``gflow server``
in its own process:

- a run's counts by state (goal p95 <= 20 ms);
- a page of 100 task runs (goal p95 <= 50 ms);

and a listener process measures the subscription lag from a transition's write (its timestamp,
taken just before ``store.apply``) to its arrival at a websocket client (goal p95 <= 250 ms), with
``runEvents`` (one message per event) in the first scenario and ``runEventBatches`` in the second.
The same queries on the idle server, before the writer starts, are the baseline.

    python benchmarks/bench_server.py [--rate 2000] [--requests 300]
"""

from __future__ import annotations

import argparse
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

TASKS_PER_RUN = 10_000
HISTORY_RUNS = 8
LIVE_RUNS = 2
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


def build(url: str) -> list[str]:
    """100,000 task runs: history runs finished, live runs all PENDING. Returns the live run ids."""
    st = open_store(url)
    now = time.time()
    live = []
    for r in range(HISTORY_RUNS + LIVE_RUNS):
        run_id = f"bench-{r:02d}"
        is_live = r >= HISTORY_RUNS
        st.create_run(RunRecord(id=run_id, flow="bench", created=now + r, params='{"n": 10000}', executor="local",
                                tags=["bench"]))
        st.set_run_state(run_id, State.RUNNING, now + r)
        batch: list[Transition] = []
        for i in range(1, TASKS_PER_RUN + 1):
            tid = f"{run_id}.{i}"
            batch.append(Transition(tid, run_id, State.PENDING, 1, now, task="bench:work", name="work",
                                    map_index=i - 1))
            if not is_live:
                batch.append(Transition(tid, run_id, State.QUEUED, 1, now + 0.1))
                batch.append(Transition(tid, run_id, State.RUNNING, 1, now + 0.2, handle=f"h{i}"))
                batch.append(Transition(tid, run_id, State.SUCCEEDED if i % 50 else State.FAILED, 1, now + 0.3,
                                        result_ref="sha256:" + "0" * 64 if i % 50 else None,
                                        error=None if i % 50 else "ValueError: bench"))
            if len(batch) >= 20_000:
                st.apply(batch)
                batch = []
        st.apply(batch)
        if is_live:
            live.append(run_id)
        else:
            st.set_run_state(run_id, State.SUCCEEDED, now + r + 1)
    st.close()
    return live


def writer(url: str, run_id: str, rate: int, ready: mp.Event, out: mp.Queue) -> None:
    """Drive one live run: a pipeline of QUEUED, RUNNING (1 s later), SUCCEEDED (2 s later) batches."""
    st = open_store(url)
    per_step = max(1, int(rate * BATCH_INTERVAL / 3))  # tasks entering each phase per batch
    lag_steps = round(1.0 / BATCH_INTERVAL)
    n_steps = -(-TASKS_PER_RUN // per_step) + 2 * lag_steps  # ceil, plus the pipeline's drain
    ready.wait()
    written = 0
    apply_s: list[float] = []
    t_start = time.perf_counter()
    for step in range(n_steps):
        target = t_start + step * BATCH_INTERVAL
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        batch = []
        for phase, state in enumerate((State.QUEUED, State.RUNNING, State.SUCCEEDED)):
            s = step - phase * lag_steps
            if s < 0:
                continue
            for i in range(s * per_step + 1, min((s + 1) * per_step, TASKS_PER_RUN) + 1):
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


def listener(ws_url: str, run_id: str, after: int, kind: str, ready: mp.Event, out: mp.Queue) -> None:
    """Subscribe, then record (arrival - transition timestamp) for every task event until completion."""
    from websockets.sync.client import connect

    lags: list[float] = []
    received = 0
    with connect(ws_url, subprotocols=["graphql-transport-ws"], max_size=None) as ws:
        ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        assert json.loads(ws.recv(10))["type"] == "connection_ack"
        ws.send(json.dumps({"id": "1", "type": "subscribe",
                            "payload": {"query": SUBS[kind], "variables": {"id": run_id, "after": after}}}))
        ready.set()
        while True:
            msg = json.loads(ws.recv(120))
            if msg["type"] == "ping":
                ws.send(json.dumps({"type": "pong"}))
                continue
            if msg["type"] != "next":
                break
            now = time.time()
            data = msg["payload"]["data"]
            evs = data["runEvents"] if kind == "runEvents" else data["runEventBatches"]
            evs = evs if isinstance(evs, list) else [evs]
            for e in evs:
                received += 1
                if e["taskRunId"]:
                    lags.append(now - e["ts"])
    out.put({"received": received, "lag_p50_ms": pct(lags, 50) * 1000, "lag_p95_ms": pct(lags, 95) * 1000,
             "lag_max_ms": max(lags) * 1000 if lags else float("nan")})


def measure(client, run_id: str, n: int, cursors: list[str | None]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"counts": [], "page": []}
    for _ in range(n):
        t0 = time.perf_counter()
        r = client.post("/graphql", json={"query": COUNTS_Q, "variables": {"id": run_id}})
        out["counts"].append(time.perf_counter() - t0)
        assert r.status_code == 200 and "errors" not in r.json(), r.text
        t0 = time.perf_counter()
        variables = {"id": run_id, "after": random.choice(cursors)}
        r = client.post("/graphql", json={"query": PAGE_Q, "variables": variables})
        out["page"].append(time.perf_counter() - t0)
        body = r.json()
        assert r.status_code == 200 and len(body["data"]["taskRuns"]["items"]) == 100, r.text[:300]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000, help="transitions per second the writer records")
    ap.add_argument("--requests", type=int, default=300, help="requests of each query per scenario (at most)")
    args = ap.parse_args()
    import httpx

    tmp = tempfile.mkdtemp(prefix="gflow-bench-server-")
    url = f"sqlite:///{tmp}/gflow.db"
    t0 = time.perf_counter()
    live = build(url)
    build_s = time.perf_counter() - t0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GFLOW_HOME": tmp}
    server = subprocess.Popen([sys.executable, "-m", "gflow", "server", "--store", url, "--port", str(port),
                               "--log-level", "warning"], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    rows, result = [], {"rate_target": args.rate, "tasks_stored": (HISTORY_RUNS + LIVE_RUNS) * TASKS_PER_RUN,
                        "build_s": round(build_s, 1), "cpus": os.cpu_count()}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        client = httpx.Client(base_url=base, timeout=30)
        st = open_store(url)
        # cursors spread over a live run: pages at random offsets
        cursors: list[str | None] = [None]
        after = None
        for _ in range(20):
            page = client.post("/graphql", json={"query": PAGE_Q, "variables": {"id": live[0], "after": after}}).json()
            after = page["data"]["taskRuns"]["nextCursor"]
            cursors.append(after)
        measure(client, live[0], 20, cursors)  # warm-up
        idle = measure(client, live[0], args.requests, cursors)
        rows.append(_row("idle (no writer)", idle, None, None))
        result["idle"] = _summary(idle)
        for run_id, kind in zip(live, ("runEvents", "runEventBatches")):
            ctx = mp.get_context("spawn")
            ready, q_w, q_l = ctx.Event(), ctx.Queue(), ctx.Queue()
            from gflow.server.loaders import last_event_seq

            lst = ctx.Process(target=listener, args=(base.replace("http", "ws") + "/graphql", run_id,
                                                     last_event_seq(st, run_id), kind, ready, q_l))
            wr = ctx.Process(target=writer, args=(url, run_id, args.rate, ready, q_w))
            lst.start()
            wr.start()
            ready.wait(30)
            time.sleep(0.5)  # the writer is going
            loaded: dict[str, list[float]] = {"counts": [], "page": []}
            page_cursors = [None] + [c for c in cursors if c][:10]
            while wr.is_alive() and len(loaded["counts"]) < args.requests:
                part = measure(client, run_id, 10, page_cursors)
                loaded["counts"] += part["counts"]
                loaded["page"] += part["page"]
            w = q_w.get(timeout=300)
            lres = q_l.get(timeout=300)
            wr.join(30)
            lst.join(30)
            assert st.counts(run_id) == {"SUCCEEDED": TASKS_PER_RUN}, st.counts(run_id)
            rows.append(_row(f"under load, subscription {kind}", loaded, w, lres))
            result[kind] = {**_summary(loaded), "writer": {k: round(v, 1) for k, v in w.items()},
                            "subscription": {k: round(v, 1) for k, v in lres.items()},
                            "events_expected": 3 * TASKS_PER_RUN + 1}
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n100,000 task runs stored (built in {build_s:.1f}s); writer target {args.rate} transitions/s; "
          f"{os.cpu_count()} CPUs shared by server, writer, listener and client\n")
    print(table(rows, ["scenario", "requests", "counts p50 ms", "counts p95 ms", "page100 p50 ms", "page100 p95 ms",
                       "writer trans/s", "sub events", "sub lag p50 ms", "sub lag p95 ms"]))
    idle_c, load_c = result["idle"]["counts_p95_ms"], result["runEvents"]["counts_p95_ms"]
    print(f"\ngoals: counts p95 <= 20 ms, page p95 <= 50 ms, subscription lag p95 <= 250 ms; "
          f"counts p95 under load / idle = {load_c / idle_c:.2f}x")
    print(json.dumps({"bench": "server", **result}))


def _summary(m: dict[str, list[float]]) -> dict[str, float]:
    return {"requests": len(m["counts"]),
            "counts_p50_ms": round(pct(m["counts"], 50) * 1000, 2),
            "counts_p95_ms": round(pct(m["counts"], 95) * 1000, 2),
            "page_p50_ms": round(pct(m["page"], 50) * 1000, 2), "page_p95_ms": round(pct(m["page"], 95) * 1000, 2)}


def _row(name: str, m: dict[str, list[float]], w: dict | None, lres: dict | None) -> dict:
    s = _summary(m)
    row = {"scenario": name, "requests": s["requests"], "counts p50 ms": s["counts_p50_ms"],
           "counts p95 ms": s["counts_p95_ms"], "page100 p50 ms": s["page_p50_ms"], "page100 p95 ms": s["page_p95_ms"]}
    if w:
        row["writer trans/s"] = f"{w['rate']:.0f}"
    if lres:
        row["sub events"] = f"{lres['received']}/{3 * TASKS_PER_RUN + 1}"
        row["sub lag p50 ms"] = f"{lres['lag_p50_ms']:.0f}"
        row["sub lag p95 ms"] = f"{lres['lag_p95_ms']:.0f}"
    return row


if __name__ == "__main__":
    main()
