"""Issue 16 items 1 and 4: what the limits on SMILES and structure files cost, and what they refuse.

    python benchmarks/bench_object_limits.py [--bomb-mb 2048] [--baseline-tree DIR]

Molecules: RDKit's 5K NCI SMILES validated as ``Molecule`` (syntax check, limits, canonical form) against
the bare work (syntax check + RDKit canonical form in this process), alternately, medians of 5 rounds;
the hostile SMILES of the issue (time to refuse); a 300-atom molecule in the helper process against the
same in this process. Structures: a ``.pdb.gz`` that inflates to ``--bomb-mb`` MB read by
``Structure.from_file`` in a subprocess (wall time, peak RSS); ``--baseline-tree`` (a checkout of the code
before the fix) runs the same file through that tree's ``from_file`` for comparison.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rdkit import Chem, RDConfig  # noqa: E402

from gflow.objects import Molecule  # noqa: E402
from gflow.objects._rdkit_canon import canonical  # noqa: E402
from gflow.objects._smiles import check_smiles_syntax  # noqa: E402

ATOM = "ATOM      1  N   MET A   1      11.104   6.134  -6.504  1.00  0.00           N\n"
HOSTILE = {"C x 20,000": "C" * 20_000, "[Fe] x 25,000": "[Fe]" * 25_000,
           "nested branches x 25,000": "C(C" * 25_000 + ")" * 25_000,
           "C1CC1 x 20,000": "C1CC1" * 20_000, "c x 100,000": "c" * 100_000}
CHILD = """
import resource, sys, time
sys.path.insert(0, sys.argv[1])
from gflow.objects import Structure
t = time.perf_counter()
try:
    Structure.from_file(sys.argv[2])
    outcome = "read"
except Exception as exc:
    outcome = type(exc).__name__ + ": " + str(exc)[:90]
print(f"{time.perf_counter() - t:.2f}", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, outcome, sep="|")
"""


def nci() -> list[str]:
    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def bare(smiles: str) -> str | None:
    check_smiles_syntax(smiles)
    try:
        return canonical(Chem, smiles)
    except ValueError:
        return None


def validated(smiles: str) -> str | None:
    try:
        return Molecule(smiles=smiles).smiles
    except ValueError:
        return None


def molecules() -> None:
    sample = nci()
    times: dict[str, list[float]] = {"bare": [], "Molecule": []}
    for _ in range(5):
        for name, fn in (("bare", bare), ("Molecule", validated)):
            t = time.perf_counter()
            for s in sample:
                fn(s)
            times[name].append((time.perf_counter() - t) / len(sample) * 1e6)
    b, m = statistics.median(times["bare"]), statistics.median(times["Molecule"])
    print(f"NCI 5K: bare {b:.1f} us/molecule, Molecule {m:.1f} us/molecule, ratio {m / b:.2f}x")
    for name, smiles in HOSTILE.items():
        t = time.perf_counter()
        outcome = validated(smiles)
        print(f"hostile {name}: refused={outcome is None} in {(time.perf_counter() - t) * 1e3:.1f} ms")
    big = "OCC" * 100
    t = time.perf_counter()
    Molecule(smiles=big)
    first = time.perf_counter() - t
    helper, here = [], []
    for _ in range(20):
        t = time.perf_counter()
        Molecule(smiles=big)
        helper.append(time.perf_counter() - t)
        t = time.perf_counter()
        canonical(Chem, big)
        here.append(time.perf_counter() - t)
    print(f"300 atoms: helper process {statistics.median(helper) * 1e3:.2f} ms (first call, starting it, "
          f"{first * 1e3:.0f} ms), in this process {statistics.median(here) * 1e3:.2f} ms")


def bomb(size_mb: int, baseline: str | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bomb.pdb.gz"
        block = (ATOM * ((1 << 20) // len(ATOM))).encode()
        with gzip.open(path, "wb", compresslevel=9) as out:
            for _ in range(size_mb * (1 << 20) // len(block)):
                out.write(block)
        print(f"bomb: {path.stat().st_size / 1e6:.1f} MB gzip inflating to {size_mb:,} MB")
        for label, tree in (("now", str(ROOT)), ("before", baseline)):
            if tree is None:
                continue
            done = subprocess.run([sys.executable, "-c", CHILD, tree, str(path)], capture_output=True, text=True,
                                  env={**os.environ, "PYTHONPATH": tree})
            seconds, rss, outcome = (done.stdout.strip() or f"-|-|exit {done.returncode}").split("|", 2)
            print(f"  {label}: {seconds} s, peak RSS {rss} MB, {outcome}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bomb-mb", type=int, default=2048)
    parser.add_argument("--baseline-tree", default=None)
    args = parser.parse_args()
    molecules()
    bomb(args.bomb_mb, args.baseline_tree)


if __name__ == "__main__":
    main()
