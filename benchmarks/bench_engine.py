"""Engine overhead on the local thread executor, side by side with a bare ThreadPoolExecutor and Prefect 3.

    python benchmarks/bench_engine.py                 # gflow vs ThreadPoolExecutor (+ Prefect if set up)
    python benchmarks/bench_engine.py --prefect-n 0   # skip Prefect

Every gflow task transition is recorded in SQLite (the embedded default store) in a fresh
GFLOW_HOME. Prefect runs in its own venv (benchmarks/prefect/setup.sh) with its temporary local
server, started before its timing begins.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import statistics  # noqa: E402

from _common import interleaved_times, peak_rss_subprocess, round_ratios, table  # noqa: E402

os.environ["GFLOW_HOME"] = tempfile.mkdtemp(prefix="gflow-bench-")


from _flows import g_chain, g_loop, g_map, inc  # noqa: E402


def tpe_independent(n: int) -> int:
    with cf.ThreadPoolExecutor() as pool:
        futs = [pool.submit(inc, i) for i in range(n)]
        return sum(f.result() for f in futs)


def tpe_chain(n: int) -> int:
    with cf.ThreadPoolExecutor() as pool:
        x = 0
        for _ in range(n):
            x = pool.submit(inc, x).result()
        return x


def prefect(mode: str, n: int) -> dict | None:
    py = HERE / ".venv-prefect" / "bin" / "python"
    if not py.exists():
        print("prefect venv missing: run benchmarks/prefect/setup.sh (skipping Prefect)", file=sys.stderr)
        return None
    out = subprocess.run([str(py), str(HERE / "prefect" / "bench_prefect.py"), "--mode", mode, "--n", str(n),
                          "--settle-timeout", "0"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    print(out.stderr[-2000:], file=sys.stderr)
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--chain", type=int, default=1_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prefect-n", type=int, default=10_000, help="tasks for the Prefect map (0 = skip)")
    ap.add_argument("--big", type=int, default=100_000, help="tasks of the large map + reduce (0 = skip)")
    args = ap.parse_args()
    n, reps = args.n, args.reps
    g_map(10, executor="local")  # warm imports

    rows = []
    expected = sum(range(1, n + 1))

    def check(fl):  # noqa: ANN001, ANN202
        return lambda: (fl.run(n, executor="local") == expected) or sys.exit("wrong result")

    raw = interleaved_times({"tpe": lambda: tpe_independent(n), "map": check(g_map), "loop": check(g_loop)}, reps)
    t = {k: statistics.median(v) for k, v in raw.items()}
    each: dict[str, list[float]] = {}  # the ratio of every round (gflow and the bare pool ran back to back)
    for label, k in (("map", "map"), ("loop of calls", "loop")):
        each[k] = round_ratios(raw, k, "tpe")
        rows.append({"case": f"{n:,} independent tasks ({label}) + reduce", "gflow µs/task": f"{t[k] / n * 1e6:.1f}",
                     "baseline": "ThreadPoolExecutor", "baseline µs/task": f"{t['tpe'] / n * 1e6:.1f}",
                     "ratio": f"{t[k] / t['tpe']:.2f}x", "worst round": f"{max(each[k]):.2f}x"})
    c = args.chain
    rawc = interleaved_times({"tpe": lambda: tpe_chain(c), "gflow": lambda: g_chain.run(c, executor="local")}, reps)
    tc = {k: statistics.median(v) for k, v in rawc.items()}
    each["chain"] = round_ratios(rawc, "gflow", "tpe")
    rows.append({"case": f"chain of {c:,} dependent tasks", "gflow µs/task": f"{tc['gflow'] / c * 1e6:.1f}",
                 "baseline": "ThreadPoolExecutor", "baseline µs/task": f"{tc['tpe'] / c * 1e6:.1f}",
                 "ratio": f"{tc['gflow'] / tc['tpe']:.2f}x", "worst round": f"{max(each['chain']):.2f}x"})

    rss = peak_rss_subprocess(
        "import os, tempfile, json; os.environ['GFLOW_HOME'] = tempfile.mkdtemp()\n"
        f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
        "import _flows as b\n"
        f"assert b.g_map.run({n}, executor='local') == {expected}\n")
    rss_tpe = peak_rss_subprocess(
        f"import sys; sys.path.insert(0, {str(HERE)!r})\nimport bench_engine as b\nb.tpe_independent({n})\n")

    big = None
    if args.big:  # in a fresh process, for its peak RSS; per-task time beside the 10k figure of the same process
        big = peak_rss_subprocess(
            "import os, tempfile, json, time; os.environ['GFLOW_HOME'] = tempfile.mkdtemp()\n"
            f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
            "import _flows as b\n"
            "b.g_map.run(1000, executor='local')\n"
            "t = time.perf_counter()\n"
            f"assert b.g_map.run({n}, executor='local') == {expected}\n"
            "small = time.perf_counter() - t\n"
            "t = time.perf_counter()\n"
            f"assert b.g_map.run({args.big}, executor='local') == {sum(range(1, args.big + 1))}\n"
            "print(json.dumps({'small_us': small / %d * 1e6, 'big_us': (time.perf_counter() - t) / %d * 1e6}))\n"
            % (n, args.big))
        rows.append({"case": f"{args.big:,}-task map + reduce (its own process)",
                     "gflow µs/task": f"{big['big_us']:.1f}", "baseline": f"gflow, {n:,} tasks, same process",
                     "baseline µs/task": f"{big['small_us']:.1f}",
                     "ratio": f"{big['big_us'] / big['small_us']:.2f}x"})

    pf = prefect("map", args.prefect_n) if args.prefect_n else None
    if pf:
        t_map = next(r for r in rows if "(map)" in r["case"])
        g_us = float(t_map["gflow µs/task"])
        rows.append({"case": f"{pf['n']:,}-task map + reduce", "gflow µs/task": f"{g_us:.1f}",
                     "baseline": f"Prefect {pf['version']} (default runner)",
                     "baseline µs/task": f"{pf['per_task_us']:.0f}",
                     "ratio": f"{pf['per_task_us'] / g_us:.0f}x faster"})

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"medians of {reps}\n")
    print(table(rows, ["case", "gflow µs/task", "baseline", "baseline µs/task", "ratio", "worst round"]))
    for k, rs in each.items():
        print(f"ratio per round, {k}: " + " ".join(f"{r:.2f}" for r in rs))
    print(f"load average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"\ndriver peak RSS, {n:,}-task map + reduce: gflow {rss['peak_rss_mb']:.0f} MB "
          f"(bare ThreadPoolExecutor process: {rss_tpe['peak_rss_mb']:.0f} MB"
          + (f"; Prefect {pf['peak_rss_mb']:.0f} MB + server {pf.get('children_rss_mb', 0):.0f} MB)" if pf else ")"))
    if big:
        print(f"driver peak RSS, {args.big:,}-task map + reduce: gflow {big['peak_rss_mb']:.0f} MB")
    print(json.dumps({"rows": rows, "each": each, "rss_mb": rss["peak_rss_mb"], "rss_tpe_mb": rss_tpe["peak_rss_mb"],
                      "big": big, "prefect": pf}))


if __name__ == "__main__":
    main()
