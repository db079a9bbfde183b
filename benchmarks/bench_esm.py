"""ESM-2 scoring through gflow vs a bare torch loop over the same batches, in the same process.

A randomly initialised ESM-2 (``--preset tiny``: 2 layers, hidden 32; ``8M``: the 8M shape; no weights are
downloaded) scores N sequences (PLL by masked marginals + mean embeddings). Bare loop: the same
``esm_batch`` over the same length-sorted batches, model already loaded. gflow: the
``score_fasta`` flow on the thread executor with a fresh SQLite store per rep (``cache`` off by
giving every rep new sequences is not needed: each rep uses a new GFLOW_HOME, so nothing is cached).

    python benchmarks/bench_esm.py --reps 9 --n 384 --length 64
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import esm_scoring as E  # noqa: E402
from _common import table  # noqa: E402

from gflow.testing import isolated_home  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=96)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="tiny")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    work = Path(tempfile.mkdtemp(prefix="bench-esm-"))
    folder = E.save_random_esm(work / "model", preset=args.preset)
    rng = random.Random(0)
    seqs = ["".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(args.length)) for _ in range(args.n)]
    fasta = work / "in.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    batches = E.length_batches([len(s) for s in seqs], args.batch_size)
    bare_t, gflow_t = [], []
    with isolated_home(work / "warm"):
        model = E.resolve_model(folder)
        tok, net, device = E.load_esm(model)  # both sides use the loaded model (loaded once per process)
        E.esm_batch(tok, net, device, seqs[:2])

    def run_bare() -> None:
        t0 = time.perf_counter()
        for b in batches:
            E.esm_batch(tok, net, device, [seqs[i] for i in b])
        bare_t.append(time.perf_counter() - t0)

    def run_gflow(rep: int) -> None:
        with isolated_home(work / f"home{rep}"):
            t0 = time.perf_counter()
            scores = E.score_fasta(str(fasta), model=folder, batch_size=args.batch_size)
            gflow_t.append(time.perf_counter() - t0)
        assert len(scores) == args.n

    for rep in range(args.reps):  # in rotation: a slow spell on a shared box hits both sides
        if rep % 2:
            run_gflow(rep)
            run_bare()
        else:
            run_bare()
            run_gflow(rep)
    bare, flow = median(bare_t), median(gflow_t)
    paired = median([b / g for b, g in zip(bare_t, gflow_t, strict=True)])
    rows = [{"case": f"{args.n} seqs x L={args.length}, ESM-2 {args.preset} shape, {device}",
             "bare seq/s": f"{args.n / bare:.1f}", "gflow seq/s": f"{args.n / flow:.1f}",
             "gflow / bare (medians)": f"{bare / flow:.1%}", "median of paired ratios": f"{paired:.1%}"}]
    print(table(rows, list(rows[0])))
    print(json.dumps({"bare_s": bare, "gflow_s": flow, "ratio": bare / flow, "paired_ratio": paired,
                      "bare_all": bare_t, "gflow_all": gflow_t}))


if __name__ == "__main__":
    main()
