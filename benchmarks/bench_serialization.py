"""Cost of safe decoding (issue 9): the hardened serializer vs the one before it, in the same process.

The baseline is ``gflow/serialization.py`` as of ``--baseline-ref`` (default: the commit before the
hardening), loaded from git under another module name. Also: a verified artifact read
(``ArtifactStore.get``: read + sha256) vs the raw read (``read``).

    python benchmarks/bench_serialization.py [--reps 15] [--baseline-ref 5fb428e]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import table  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_baseline(ref: str):
    src = subprocess.run(["git", "show", f"{ref}:gflow/serialization.py"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "baseline_serialization.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("baseline_serialization", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def paired_us(fn_a, fn_b, reps: int, min_time: float = 0.1) -> tuple[float, float]:
    """Median µs per call of two functions, sampled alternately (a, b, a, b, ...) so that load from other
    work on the machine hits both alike."""
    n = 1
    while True:  # calibrate the inner loop on the first function
        t0 = time.perf_counter()
        for _ in range(n):
            fn_a()
        if time.perf_counter() - t0 >= min_time:
            break
        n *= 2
    a, b = [], []
    for _ in range(reps):
        for fn, out in ((fn_a, a), (fn_b, b)):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            out.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--baseline-ref", default="5fb428e")
    a = ap.parse_args()
    import gflow.serialization as new
    from gflow.artifacts import LocalArtifactStore
    from gflow.objects import Protein, Score

    old = load_baseline(a.baseline_ref)
    nested: object = 1
    for _ in range(20):
        nested = {"k": [nested]}
    cases = {
        "task kwargs {x, name, xs[3]}": {"x": 3, "name": "abc", "xs": [1, 2, 3]},
        "Protein (300 aa)": Protein(sequence="MKTAYIAKQR" * 30, name="p"),
        "10 Scores in a list": [Score(name=f"s{i}", value=i / 3) for i in range(10)],
        "10,000 floats": [i / 7 for i in range(10_000)],
        "dict nested 40 levels": nested,
        "tuple-key dict + set": {(1, "a"): {1, 2, 3}, (2, "b"): frozenset({"x"})},
    }
    rows = []
    for name, value in cases.items():
        e_new, e_old = new.encode(value), old.encode(value)
        assert e_new.data == e_old.data, f"canonical form changed for {name}"
        enc_old, enc_new = paired_us(lambda v=value: old.encode(v), lambda v=value: new.encode(v), a.reps)
        dec_old, dec_new = paired_us(lambda d=e_old.data: old.decode(d), lambda d=e_new.data: new.decode(d), a.reps)
        rows.append({"value": name, "encode µs (before)": f"{enc_old:.1f}", "encode µs (now)": f"{enc_new:.1f}",
                     "ratio": f"{enc_new / enc_old:.2f}x", "decode µs (before)": f"{dec_old:.1f}",
                     "decode µs (now)": f"{dec_new:.1f}", "ratio ": f"{dec_new / dec_old:.2f}x"})
    print(table(rows, ["value", "encode µs (before)", "encode µs (now)", "ratio", "decode µs (before)",
                       "decode µs (now)", "ratio "]))
    arts = LocalArtifactStore(tempfile.mkdtemp())
    rows = []
    for size in (1_000, 1_000_000, 64_000_000):
        d = arts.put(os.urandom(size))
        raw, ver = paired_us(lambda d=d: arts.read(d), lambda d=d: arts.get(d), a.reps)
        rows.append({"blob": f"{size:,} B", "read µs (unverified)": f"{raw:.1f}", "get µs (verified)": f"{ver:.1f}",
                     "ratio": f"{ver / raw:.2f}x"})
    print()
    print(table(rows, ["blob", "read µs (unverified)", "get µs (verified)", "ratio"]))


if __name__ == "__main__":
    main()
