"""State ingest: 10,000 concurrent task runs driven through their transitions by several writer processes.

    python benchmarks/bench_state.py                      # SQLite, Redis layer over SQLite, naive baseline
    python benchmarks/bench_state.py --tasks 2000 --reps 1
    python benchmarks/bench_state.py --mongo mongodb://127.0.0.1:27017/gflow_bench   # adds a MongoDB row

All task runs of one run are in flight at once: each writer process owns a slice of them and moves
the whole slice PENDING -> QUEUED -> RUNNING -> SUCCEEDED, one state at a time, in batches of
``--batch`` transitions (one ``store.apply(batch)`` each, as the engine's recorder writes). The
naive baseline sends the same transitions one ``apply([t])`` at a time. Every mode starts on a fresh
database; the Redis layer talks to a redis-server this script starts on a free loopback port (or
``--redis URL``). After each run the script checks, rather than assumes: every task run ended
SUCCEEDED, the durable event log has exactly one event per transition sent, no task run's events
go backwards, no transition was refused, and for the Redis layer that its live counters and stream
agree with the durable store.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import table  # noqa: E402

from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Store, Transition  # noqa: E402
from gflow.store.sqlite import SQLiteStore  # noqa: E402

STATES = (State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED)
RUN = "bench"


def open_for(mode: str, target: str, redis_url: str | None) -> Store:
    if mode == "mongo":
        from gflow.store.mongo import MongoStore

        return MongoStore.from_url(target)
    durable = SQLiteStore(target, timeout=300)
    if mode == "redis":
        from gflow.store.redis import RedisLayer

        return RedisLayer(durable, redis_url)
    return durable


def writer(mode: str, target: str, redis_url: str | None, wid: int, writers: int, tasks: int, batch: int,
           naive: bool, barrier, out) -> None:
    st = open_for(mode, target, redis_url)
    mine = [f"{RUN}.{i}" for i in range(wid, tasks, writers)]
    refused = 0
    barrier.wait()
    t0 = time.perf_counter()
    for state in STATES:
        extra = {"task": "bench:work", "name": "work"} if state is State.PENDING else {}
        if naive:
            for tr in mine:
                refused += len(st.apply([Transition(tr, RUN, state, 1, time.time(), **extra)]))
        else:
            for i in range(0, len(mine), batch):
                now = time.time()
                refused += len(st.apply([Transition(tr, RUN, state, 1, now, **extra) for tr in mine[i:i + batch]]))
    t1 = time.perf_counter()
    out.put((wid, t0, t1, refused, getattr(st, "degraded", False)))
    st.close()


def check(st: Store, tasks: int, redis_url: str | None, mode: str) -> dict:
    """Verify the end state; returns what was found (raises AssertionError on a violation)."""
    sent = tasks * len(STATES)
    durable = getattr(st, "durable", st)
    counts = durable.counts(RUN)
    assert counts == {"SUCCEEDED": tasks}, f"{mode}: not every task run SUCCEEDED: {counts}"
    evs = [e for e in durable.events(RUN) if e.task_run_id]
    assert len(evs) == sent, f"{mode}: {len(evs)} events for {sent} transitions sent"
    last: dict[str, tuple[int, int]] = {}
    for e in evs:
        pos = (e.attempt, e.state.rank)
        prev = last.get(e.task_run_id)
        assert prev is None or pos > prev, f"{mode}: task run {e.task_run_id} went backwards"
        last[e.task_run_id] = pos
    assert len(last) == tasks
    found = {"succeeded": counts["SUCCEEDED"], "events": len(evs), "backward": 0}
    if mode == "redis":
        import redis

        from gflow.store.redis import _keys

        r = redis.Redis.from_url(redis_url, decode_responses=True)
        _, counts_k, live_k, stream_k = _keys(RUN)
        live = {k: int(v) for k, v in r.hgetall(counts_k).items() if int(v)}
        assert r.exists(live_k) and live == {"SUCCEEDED": tasks}, f"redis live counters: {live}"
        assert st.counts(RUN) == {"SUCCEEDED": tasks}
        found["redis_counts"] = live
        found["stream_len"] = r.xlen(stream_k)
        r.close()
    return found


def one(mode: str, tasks: int, writers: int, batch: int, naive: bool, redis_url: str | None,
        mongo_url: str | None) -> dict:
    tmp = tempfile.mkdtemp(prefix="gflow-bench-state-")
    try:
        if mode == "mongo":
            target = mongo_url.split("?")[0].rstrip("/") + f"_{int(time.time() * 1000)}"
        else:
            target = os.path.join(tmp, "state.db")
        if mode == "redis":
            import redis

            redis.Redis.from_url(redis_url).flushall()
        st = open_for(mode, target, redis_url)
        st.create_run(RunRecord(id=RUN, flow="bench", created=time.time()))
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(writers), ctx.Queue()
        procs = [ctx.Process(target=writer, args=(mode, target, redis_url, w, writers, tasks, batch, naive,
                                                  barrier, out)) for w in range(writers)]
        for p in procs:
            p.start()
        results = [out.get(timeout=1800) for _ in procs]
        for p in procs:
            p.join(60)
            assert p.exitcode == 0, f"writer exited with {p.exitcode}"
        start = min(r[1] for r in results)
        end = max(r[2] for r in results)
        refused = sum(r[3] for r in results)
        assert refused == 0, f"{mode}: {refused} transitions refused"
        assert not any(r[4] for r in results), "the Redis layer degraded during the run"
        found = check(st, tasks, redis_url, mode)
        if mode == "mongo":
            st.client.drop_database(st.runs.database.name)
        st.close()
        seconds = end - start
        sent = tasks * len(STATES)
        return {"seconds": seconds, "transitions": sent, "per_s": sent / seconds, **found}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class RedisServer:
    """A redis-server on a free loopback port, without persistence, for the duration of the benchmark."""

    def __enter__(self) -> str:
        exe = shutil.which("redis-server")
        if exe is None:
            raise SystemExit("redis-server not found: apt-get install redis-server, or pass --redis URL")
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        self.dir = tempfile.mkdtemp(prefix="gflow-bench-redis-")
        self.proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        r = redis.Redis(port=port)
        for _ in range(300):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        r.close()
        return f"redis://127.0.0.1:{port}/0"

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000, help="task runs in flight at once")
    ap.add_argument("--writers", type=int, default=4, help="writer processes")
    ap.add_argument("--batch", type=int, default=500, help="transitions per apply() (batched modes)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each mode (median reported)")
    ap.add_argument("--naive-tasks", type=int, default=None,
                    help="task runs for the naive baseline (default: --tasks); its rate is per transition")
    ap.add_argument("--redis", default=None, help="use this Redis instead of starting a redis-server")
    ap.add_argument("--mongo", default=None, help="also measure MongoStore on this server (mongodb://...)")
    ap.add_argument("--skip-redis", action="store_true")
    args = ap.parse_args()

    naive_tasks = args.naive_tasks or args.tasks
    modes = [("sqlite", "SQLite", False, args.tasks, args.reps)]
    if not args.skip_redis:
        modes.append(("redis", "Redis layer over SQLite", False, args.tasks, args.reps))
    if args.mongo:
        modes.append(("mongo", "MongoDB", False, args.tasks, args.reps))
    modes.append(("sqlite", "SQLite, naive (one apply per transition)", True, naive_tasks, args.reps))

    load_before = os.getloadavg()[0]
    server = RedisServer() if not args.redis and not args.skip_redis else None
    redis_url = server.__enter__() if server else args.redis
    rows, out = [], {}
    try:
        for mode, label, naive, tasks, reps in modes:
            runs = [one(mode, tasks, args.writers, args.batch, naive, redis_url, args.mongo) for _ in range(reps)]
            med = statistics.median(r["per_s"] for r in runs)
            key = f"{mode}_naive" if naive else mode
            out[key] = {"per_s": round(med), "runs_per_s": [round(r["per_s"]) for r in runs], "tasks": tasks,
                        "transitions": runs[0]["transitions"], "checks": {k: v for k, v in runs[-1].items()
                                                                         if k not in ("seconds", "per_s")}}
            rows.append({"store": label, "writers": args.writers, "batch": 1 if naive else args.batch,
                         "task runs": tasks, "transitions": runs[0]["transitions"],
                         "seconds (median)": f"{statistics.median(r['seconds'] for r in runs):.2f}",
                         "transitions/s (median)": f"{med:,.0f}",
                         "range": f"{min(r['per_s'] for r in runs):,.0f}-{max(r['per_s'] for r in runs):,.0f}",
                         "reps": reps,
                         "checks": "all SUCCEEDED, events == sent, 0 backward, 0 refused"
                         + (", Redis counters == durable" if mode == "redis" else "")})
            print(f"  {label}: {med:,.0f} transitions/s", file=sys.stderr, flush=True)
    finally:
        if server:
            server.__exit__(None, None, None)

    ratio = out["sqlite"]["per_s"] / out["sqlite_naive"]["per_s"]
    out["ratio_batched_vs_naive_sqlite"] = round(ratio, 1)
    if "redis" in out:
        out["ratio_redis_layer_vs_sqlite"] = round(out["redis"]["per_s"] / out["sqlite"]["per_s"], 2)
    out["machine"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform(),
                      "loadavg_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    print(table(rows, ["store", "writers", "batch", "task runs", "transitions", "seconds (median)",
                       "transitions/s (median)", "range", "reps", "checks"]))
    print()
    print(f"Batched SQLite vs the naive baseline (one write per transition): {ratio:.1f}x")
    if "redis" in out:
        print(f"Redis layer over SQLite vs SQLite alone: {out['ratio_redis_layer_vs_sqlite']:.2f}x")
    print(json.dumps({"bench": "state_ingest", **out}))


if __name__ == "__main__":
    main()
