"""Shared helpers for the benchmarks: medians, peak RSS in a fresh process, markdown tables."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable


def median_time(fn: Callable[[], object], reps: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, list[float]]:
    """Seconds of each function per round, run in rotation (one of each per round): a slow spell on a shared
    machine then hits every side alike instead of whichever happened to be measured during it."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def interleaved_medians(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function, run in rotation (see :func:`interleaved_times`)."""
    return {k: statistics.median(v) for k, v in interleaved_times(fns, reps).items()}


def round_ratios(times: dict[str, list[float]], num: str, den: str) -> list[float]:
    """The ratio ``num / den`` of each round (the two ran back to back in it)."""
    return [a / b for a, b in zip(times[num], times[den])]


def peak_rss_subprocess(code: str, env: dict | None = None) -> dict:
    """Run ``code`` in a fresh interpreter; it must print one JSON line. Adds peak_rss_mb of that process."""
    # VmHWM, not ru_maxrss: on Linux ru_maxrss survives fork+exec and reports the parent's peak
    wrapper = code + "\nimport json as _j\n_hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n" \
                     "print(_j.dumps({'peak_rss_mb': int(_hwm[0].split()[1]) / 1024}))\n"
    out = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})})
    result: dict = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            result.update(json.loads(line))
    return result


def table(rows: list[dict], cols: list[str]) -> str:
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)
