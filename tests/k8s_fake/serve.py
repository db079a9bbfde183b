"""Run the fake API server and the Volcano/kubelet stand-in as a process of its own (benchmarks use this so the
driver's memory and CPU are its own): ``python -m tests.k8s_fake.serve KUBECONFIG [--runner inline] [--slots N]
[--path DIR ...]``. Writes the kubeconfig, prints ``ready URL``, serves until stdin closes."""

from __future__ import annotations

import argparse
import os
import sys

from .controller import FakeVolcano
from .server import FakeKube


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kubeconfig")
    ap.add_argument("--runner", default="process", choices=["process", "inline"])
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--path", action="append", default=[], help="put on sys.path (the 'image' holds this code)")
    args = ap.parse_args()
    sys.path[:0] = args.path
    with FakeKube(history=1_000_000) as kube, FakeVolcano(kube, runner=args.runner, slots=args.slots):
        kube.kubeconfig(args.kubeconfig)
        print("ready", kube.url, flush=True)
        sys.stdout = open(os.devnull, "w")  # in-process workers print their outcome lines: nobody reads them
        sys.stdin.read()


if __name__ == "__main__":
    main()
