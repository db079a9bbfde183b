"""Fault figures for docs/RELIABILITY.md: a driver killed with SIGKILL mid-run, then resumed; and 8 concurrent
writers on one store.

    python benchmarks/bench_faults.py --trials 10

Driver kill: `gflow run` of a 160-task map (each task 50 ms, 4 threads) is killed with SIGKILL at a random moment;
then `gflow resume` finishes it. Each task leaves a mark with the time it finished. Reported per trial: how many
finished tasks the resume computed again (it must be only those whose success was not yet recorded), and the
*window*: how long before the kill the oldest of those had finished (work lost to the kill).

Writers: 8 processes (SQLite; MongoDB through mongomock: 8 threads, each with its own client, since mongomock
lives in one process, and only 1,000 transitions each: it scans instead of using indexes) each apply 10,000
transitions (2,500 task runs x 4) in batches of 250, 1,000 of them to task runs shared by all writers; then
every task run is checked: nothing lost, nothing moved backwards.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FLOW = '''
import os, time
from pathlib import Path
import gflow

@gflow.task
def work(folder: str, i: int) -> int:
    time.sleep(0.05)
    Path(folder, f"done-{i}").write_text(repr(time.time()))
    return i

@gflow.task
def total(xs: list) -> int:
    return sum(xs)

@gflow.flow
def killed(folder: str, n: int = 160) -> int:
    return total(work.map([folder] * n, range(n)))
'''


def driver_kill_trial(tmp: Path, rng: random.Random) -> dict:
    home, work = tmp / "home", tmp / "work"
    work.mkdir(parents=True)
    flow = tmp / "killflow.py"
    flow.write_text(FLOW)
    env = {**os.environ, "GFLOW_HOME": str(home), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "gflow", "run", f"{flow}:killed", "-p", f"folder={work}", "-e",
           "local://threads?workers=4", "--no-progress", "--output", "none"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.7 + rng.random() * 1.2)  # start-up, then somewhere in the 2 s of work
    proc.send_signal(signal.SIGKILL)
    t_kill = time.time()
    proc.wait()
    from gflow.store import open_store

    st = open_store(f"sqlite:///{home / 'gflow.db'}")
    run = st.list_runs(limit=1)[0]
    recorded = {t.map_index for t in st.task_runs(run.id) if t.name == "work" and t.state.value == "SUCCEEDED"}
    finished = {int(p.name.split("-")[1]): float(p.read_text()) for p in work.glob("done-*")}
    done_already = run.state.value == "SUCCEEDED"
    st.close()
    if done_already:
        return {"skipped": "the run finished before the kill"}
    r = subprocess.run([sys.executable, "-m", "gflow", "resume", run.id, "--no-progress"], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    again = {int(p.name.split("-")[1]) for p in work.glob("done-*") if float(p.read_text()) > t_kill}
    lost = {i: finished[i] for i in finished if i not in recorded}
    wrongly = again & recorded  # a recorded success computed again: must never happen
    return {"finished_before_kill": len(finished), "recorded": len(recorded), "recomputed_finished": len(lost),
            "recomputed_recorded": len(wrongly),
            "window_ms": round((t_kill - min(lost.values())) * 1000, 1) if lost else 0.0}


def _writer(url: str, w: int, n_task_runs: int, shared: int) -> None:
    from gflow.states import State
    from gflow.store import Transition, open_store

    if url.startswith("mongomock"):
        import gflow.testing  # noqa: F401 - registers mongomock://
    st = open_store(url)
    rng = random.Random(w)
    ids = [f"w{w}.{i}" for i in range(n_task_runs - shared)] + [f"shared.{i}" for i in range(shared)]
    rng.shuffle(ids)
    seq = [State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED]
    batch: list = []
    for tid in ids:
        run = tid.split(".")[0]
        for k, s in enumerate(seq):
            batch.append(Transition(tid, run, s, 1, time.time() + k * 1e-6, task="m:t", name="t"))
            if len(batch) >= 250:
                st.apply(batch)
                batch = []
    if batch:
        st.apply(batch)
    st.close()


def writers(url: str, n_writers: int = 8, per_writer: int = 10_000, shared: int = 250, threads: bool = False) -> dict:
    from gflow.store import RunRecord, open_store

    if url.startswith("mongomock"):
        import gflow.testing  # noqa: F401
    st = open_store(url)
    for w in [*(f"w{i}" for i in range(n_writers)), "shared"]:
        st.create_run(RunRecord(id=w, flow="load", created=time.time()))
    n_task_runs = per_writer // 4
    t0 = time.perf_counter()
    if threads:
        ts = [threading.Thread(target=_writer, args=(url, w, n_task_runs, shared)) for w in range(n_writers)]
    else:
        ctx = mp.get_context("spawn")
        ts = [ctx.Process(target=_writer, args=(url, w, n_task_runs, shared)) for w in range(n_writers)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    took = time.perf_counter() - t0
    lost = backwards = 0
    for w in range(n_writers):
        c = st.counts(f"w{w}")
        lost += (n_task_runs - shared) - c.get("SUCCEEDED", 0)
    c = st.counts("shared")
    lost += shared - c.get("SUCCEEDED", 0)
    for run in [*(f"w{i}" for i in range(n_writers)), "shared"]:
        last: dict[str, int] = {}
        for e in st.events(run):
            r = (e.attempt, e.state.rank)
            if e.task_run_id in last and r <= last[e.task_run_id]:
                backwards += 1
            last[e.task_run_id] = r
    st.close()
    total = n_writers * per_writer
    return {"writers": n_writers, "transitions": total, "seconds": round(took, 2),
            "transitions_per_s": round(total / took), "lost_task_runs": lost, "backward_events": backwards}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=10)
    args = ap.parse_args()
    rng = random.Random(7)
    rows = []
    for i in range(args.trials):
        with tempfile.TemporaryDirectory() as d:
            row = driver_kill_trial(Path(d), rng)
        print(json.dumps({"trial": i, **row}), flush=True)
        if "skipped" not in row:
            rows.append(row)
    windows = [r["window_ms"] for r in rows if r["recomputed_finished"]]
    print(json.dumps({"driver_kill_trials": len(rows), "recomputed_recorded_total": sum(r["recomputed_recorded"]
                                                                                         for r in rows),
                      "recomputed_finished_total": sum(r["recomputed_finished"] for r in rows),
                      "window_ms_median": statistics.median(windows) if windows else 0.0,
                      "window_ms_max": max(windows) if windows else 0.0}))
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps({"store": "sqlite", **writers(f"sqlite:///{d}/w.db")}), flush=True)
    # mongomock is an in-process emulator without real indexes (every lookup scans): 1,000 transitions a writer
    print(json.dumps({"store": "mongomock (threads)", **writers("mongomock://faults/gflow", per_writer=1000,
                                                               shared=25, threads=True)}), flush=True)


if __name__ == "__main__":
    main()
