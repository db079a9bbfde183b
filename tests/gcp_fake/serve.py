"""The fake Batch v1 server and gcp-storage-emulator as a process of their own (benchmarks use this so the
driver's memory and CPU are its own): ``python -m tests.gcp_fake.serve [--bucket B]``. Prints
``ready BATCH_URL STORAGE_URL`` and serves until stdin closes. Tasks run nowhere (``runner="none"``): the
benchmark moves them with ``POST /_fake/move`` and reads the request counts at ``/_fake/requests``."""

from __future__ import annotations

import argparse
import sys

from .server import FakeBatch
from .storage import Emulator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bucket", default="gflow-bench")
    args = ap.parse_args()
    storage = Emulator(buckets=(args.bucket,))
    try:
        with FakeBatch() as fake:
            print("ready", fake.url, storage.url, flush=True)
            sys.stdin.read()
    finally:
        storage.stop()


if __name__ == "__main__":
    main()
