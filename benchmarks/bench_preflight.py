"""How long a broken AWS Batch setup takes to be refused, and whether a run was recorded (issue 23 item 3).

moto in server mode on 127.0.0.1 (tests/aws_env.py), real boto3; each case runs a 3-call flow and times
``flow.run`` until it raises or returns. Run it on two checkouts to compare (the gflow on PYTHONPATH is
the one measured)::

    PYTHONPATH=. python benchmarks/bench_preflight.py
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "resources")]


def main(repeat: int = 3) -> None:
    from aws_env import BUCKET, CREDS, QUEUE, REGION, Moto, setup_batch

    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    m = Moto()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[k]
    os.environ.update({**CREDS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": m.url})
    setup_batch(m)
    import aws_tasks

    from gflow.executors.aws_batch import AwsBatchExecutor
    from gflow.store import open_store
    from gflow.testing import isolated_home

    cases = [("missing bucket", {}, "s3://no-such-bucket/runs"),
             ("local artifact store", {}, "LOCAL"),
             ("region=us-east1", {"region": "us-east1"}, f"s3://{BUCKET}/runs"),
             ("missing queue", {"queue": "nope"}, f"s3://{BUCKET}/runs")]
    print(f"{'case':<22} {'median s':>9} {'runs recorded':>14}  what the user sees")
    try:
        for name, kw, arts in cases:
            times, recorded, said = [], 0, ""
            for _ in range(repeat):
                with tempfile.TemporaryDirectory() as tmp, isolated_home(Path(tmp) / "home") as home:
                    where = str(Path(tmp) / "arts") if arts == "LOCAL" else arts
                    ex = AwsBatchExecutor(kw.get("queue", QUEUE), region=kw.get("region", REGION),
                                          image="gflow-test/worker:1", environment=CREDS)
                    t0 = time.perf_counter()
                    try:
                        r = aws_tasks.squares.run(3, executor=ex, artifacts=where, return_run=True)
                        said = f"run {r.state.value}: {str(r.error).splitlines()[0][:70]}..."
                    except Exception as e:  # noqa: BLE001 - what the user sees is the measurement
                        said = f"{type(e).__name__}: {str(e).splitlines()[0][:70]}..."
                    times.append(time.perf_counter() - t0)
                    ex.close()
                    st = open_store(f"sqlite:///{home / 'gflow.db'}")
                    recorded += len(st.list_runs())
                    st.close()
            print(f"{name:<22} {statistics.median(times):>9.2f} {recorded:>14}  {said}")
    finally:
        m.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
