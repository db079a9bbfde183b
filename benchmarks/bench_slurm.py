"""Slurm: a map of 1,000 trivial elements through ``slurm://`` on a real single-node Slurm cluster (the
tests' cluster, tests/slurm_env.py: 16 declared CPUs on this machine's cores), against a raw
``sbatch --array=0-999`` of the same trivial command, in the same command.

    python benchmarks/bench_slurm.py                 # n = 1,000, one run of each
    python benchmarks/bench_slurm.py --n 200 --reps 3

"The same trivial command": each raw element runs, in the same Python, what a gflow element runs as
the task's body: it imports this module (so gflow, the task's own import) and calls ``trivial(i)``.
The difference is gflow's own work: the manifest, the worker reading its call and writing its outcome
record, the driver's polling and recording. Reported: sbatch calls for the map, squeue calls per poll
cycle, time from flow start to all submitted, wall time of each path and their ratio. The cluster's
daemons and so every element run at nice 10 (the machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(ROOT), str(ROOT / "tests"), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import gflow  # noqa: E402


@gflow.task
def trivial(i: int) -> int:
    return i * i


@gflow.flow
def trivial_map(n: int) -> int:
    return len(trivial.map(range(n)))


def raw(cluster, n: int, work: Path) -> float:
    """A hand-written array of the same command; seconds from sbatch to every element done."""
    logs = work / "raw-logs"
    logs.mkdir(exist_ok=True)
    cmd = ("import bench_slurm, os; print(bench_slurm.trivial.fn(int(os.environ['SLURM_ARRAY_TASK_ID'])))")
    script = work / "raw.sh"
    script.write_text(f"#!/bin/bash\nexport PYTHONPATH={HERE}:{ROOT}\nexec {sys.executable} -c \"{cmd}\"\n")
    t0 = time.perf_counter()
    job = cluster.run(["sbatch", "--parsable", f"--array=0-{n - 1}", "--partition=debug", "--cpus-per-task=1",
                       f"--output={logs}/%A_%a.out", str(script)]).stdout.strip()
    while True:
        out = cluster.run(["squeue", "--noheader", "--states=all", "--jobs", job, "-o", "%T|%K"]).stdout
        done = sum(len(_indices(k)) for t, k in (ln.split("|") for ln in out.split())
                   if t in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"))
        if done >= n:
            return time.perf_counter() - t0
        time.sleep(0.5)


def _indices(k: str) -> list[int]:
    from gflow.executors.slurm._commands import parse_indices

    return parse_indices(k)


def via_gflow(n: int, work: Path, rep: int) -> dict:
    import resource

    from gflow.executors.slurm import SlurmExecutor

    ex = SlurmExecutor("debug", log_dir=str(work / f"logs-{rep}"))  # the default cadence: 1 s, up to 15 s
    cpu0 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    t0 = time.time()
    got = trivial_map.run(n=n, executor=ex, artifacts=str(work / "arts"), store=f"sqlite:///{work}/gflow-{rep}.db")
    wall = time.time() - t0
    cpu1 = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    driver_cpu = cpu1[0].ru_utime + cpu1[0].ru_stime - cpu0[0].ru_utime - cpu0[0].ru_stime
    commands_cpu = cpu1[1].ru_utime + cpu1[1].ru_stime - cpu0[1].ru_utime - cpu0[1].ru_stime
    ex.close()
    assert got == n, got
    per_cycle = ex.handler.squeue_calls_per_cycle
    return {"wall": wall, "submitted": (ex.submitted_at or t0) - t0, "sbatch_map": ex.submissions["array"],
            "sbatch_all": ex.slurm.calls["sbatch"], "squeue_per_cycle": max(per_cycle), "cycles": len(per_cycle),
            "driver_cpu": driver_cpu, "commands_cpu": commands_cpu}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    import slurm_env

    os.nice(10)  # the daemons inherit it, and so every element
    with tempfile.TemporaryDirectory(prefix="gflow-bench-slurm-") as d:
        work = Path(d)
        cluster = slurm_env.SlurmCluster(work / "cluster", min_job_age=3600).start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        try:
            raws, runs = [], []
            for rep in range(args.reps):
                raws.append(raw(cluster, args.n, work))
                runs.append(via_gflow(args.n, work, rep))
                print(f"rep {rep}: raw {raws[-1]:.1f} s, gflow {runs[-1]}, load average {os.getloadavg()}",
                      flush=True)
        finally:
            cluster.stop()
    g = statistics.median(r["wall"] for r in runs)
    r = statistics.median(raws)
    print(f"\nmap of {args.n} trivial elements, {args.reps} rep(s), medians:")
    print(f"  sbatch calls for the map: {runs[0]['sbatch_map']} (all sbatch calls incl. the --test-only check and "
          f"none other: {runs[0]['sbatch_all']})")
    print(f"  squeue calls per poll cycle: {max(x['squeue_per_cycle'] for x in runs)} "
          f"({runs[0]['cycles']} cycles)")
    print(f"  flow start -> all submitted: {statistics.median(x['submitted'] for x in runs):.2f} s")
    print(f"  wall: gflow {g:.1f} s, raw sbatch --array {r:.1f} s, ratio {g / r:.2f}x")
    print(f"  driver CPU: {statistics.median(x['driver_cpu'] for x in runs):.1f} s in the driver process, "
          f"{statistics.median(x['commands_cpu'] for x in runs):.1f} s in the Slurm commands it ran")


if __name__ == "__main__":
    main()
