"""AWS Batch: a map of 10,000 through the aws-batch executor against moto (server mode, no Docker), with
the array path and the naive one-job-per-element path (``array=0``) measured in the same command.

    python benchmarks/bench_aws_batch.py                    # n = 10,000, both paths, one run each
    python benchmarks/bench_aws_batch.py --n 2000 --reps 3  # medians over 3 runs of each

moto runs in its own process (``--serve``), so the driver's numbers are the driver's own. Its Batch
jobs' "containers" run ``gflow.images.worker.run_spec`` in that process (the real worker code over
moto's S3, without the cost of starting 10,000 interpreters); moto itself still creates one job per
array child, moves it through its states and records its exit code, but its per-job ``run()`` goes
to a pool of ``--workers`` threads instead of one thread per job (10,000 threads on 2 cores made a
10,000-child SubmitJob outlive a 60 s read timeout), and each job gets its own copy of the
submission's container overrides (a moto bug shares one environment list among all children, which
made some children run a sibling's call: ``tests/aws_env.py: fix_moto_shared_environment``).

Each run is a fresh driver process (``--drive``) that runs the flow, counts every AWS
request by operation (boto3 ``before-call`` hooks on the executor's and the artifact store's clients)
and reports: driver time from flow start to all calls submitted, SubmitJob latency (moto's own time to
create the children), time to completion, poll cycles, DescribeJobs per cycle, and peak RSS (VmHWM).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from _common import table  # noqa: E402

import gflow  # noqa: E402

QUEUE, BUCKET, REGION, IMAGE = "bench-queue", "bench-artifacts", "us-east-1", "bench/worker:1"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION}


@gflow.task
def square(x: int) -> int:
    return x * x


@gflow.flow
def bench_map(n: int) -> list[int]:
    return square.map(range(n))


# -- the moto side (a separate process) ------------------------------------------------------------------
class _Container:
    """A container that has already run (the worker ran synchronously in ``_Runtime.run``)."""

    def __init__(self, code: int):
        self.code = code
        self.status = "exited"
        self.attrs = {"NetworkSettings": {"Networks": {}, "IPAddress": "127.0.0.1"}}

    def reload(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def wait(self, **_):
        return {"StatusCode": self.code}

    def logs(self, **_) -> bytes:
        return b""

    def remove(self, **_) -> None:
        pass


class _Runtime:
    """moto's Docker client: each container's ``gflow worker`` runs in-process, on the job's own thread."""

    def __init__(self):
        self.stores: dict = {}

    @property
    def containers(self):
        return self

    def run(self, image, command, environment, **_):
        from gflow.artifacts.s3 import S3ArtifactStore
        from gflow.images.worker import array_index, run_spec

        env = dict(environment)
        key = (env["GFLOW_ARTIFACTS"], env.get("AWS_ENDPOINT_URL_S3"))
        if key not in self.stores:
            store = S3ArtifactStore.from_url(env["GFLOW_ARTIFACTS"])
            store.endpoint_url = env.get("AWS_ENDPOINT_URL_S3")
            self.stores[key] = store
        index = int(command[command.index("--index") + 1]) if "--index" in command else None
        try:
            return _Container(run_spec(self.stores[key], command[1], array_index(index, environ=env)))
        except Exception:  # noqa: BLE001 - a crashed worker is a failed container
            return _Container(2)


def serve(port: int, workers: int) -> None:
    import logging

    import moto.batch.models
    from moto.server import ThreadedMotoServer

    logging.disable(logging.CRITICAL)
    sys.path.insert(0, str(ROOT / "tests"))
    from aws_env import fix_moto_shared_environment

    fix_moto_shared_environment()  # else children can read a sibling's AWS_BATCH_JOB_ID (a moto bug)
    runtime = _Runtime()
    pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="moto-job")
    moto.batch.models.Job.docker_client = property(lambda _job: runtime)
    # moto starts a thread per job and per array child: 10,000 threads on 2 cores starve everything
    # (SubmitJob alone outlived a 60 s read timeout). The same Job.run, on a bounded pool instead:
    moto.batch.models.Job.start = lambda job: pool.submit(job.run)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    print("ready", flush=True)
    sys.stdout = open(os.devnull, "w")  # the workers print their outcome lines; nobody reads them here
    sys.stdin.read()  # until the parent closes our stdin
    server.stop()


def setup(url: str) -> None:
    import boto3

    kw = dict(endpoint_url=url, region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing")
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=600).read()
    iam, batch, s3 = boto3.client("iam", **kw), boto3.client("batch", **kw), boto3.client("s3", **kw)
    role = iam.create_role(RoleName="bench-job", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    ce = batch.create_compute_environment(computeEnvironmentName="bench-ce", type="UNMANAGED", state="ENABLED",
                                          serviceRole=role)["computeEnvironmentArn"]
    batch.create_job_queue(jobQueueName=QUEUE, state="ENABLED", priority=1,
                           computeEnvironmentOrder=[{"order": 1, "computeEnvironment": ce}])
    s3.create_bucket(Bucket=BUCKET)


# -- the driver (a fresh process per run) ----------------------------------------------------------------
def drive(n: int, array: bool) -> dict:
    from collections import Counter

    from gflow.artifacts import open_artifacts
    from gflow.executors.aws_batch import AwsBatchExecutor

    keys = {k: CREDS[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    ex = AwsBatchExecutor(QUEUE, region=REGION, image=IMAGE, environment=keys, array=array)
    cycles: list[int] = []
    orig_cycle = ex.monitor.cycle

    def cycle() -> bool:  # DescribeJobs per poll cycle
        before = ex.api_calls.get("DescribeJobs", 0)
        try:
            return orig_cycle()
        finally:
            cycles.append(ex.api_calls.get("DescribeJobs", 0) - before)

    ex.monitor.cycle = cycle  # type: ignore[method-assign]
    submit_s: list[float] = []
    orig_submit = ex._submit

    def timed_submit(req):
        t = time.perf_counter()
        try:
            return orig_submit(req)
        finally:
            submit_s.append(time.perf_counter() - t)

    ex._submit = timed_submit  # type: ignore[method-assign]
    arts = open_artifacts(f"s3://{BUCKET}/bench")
    s3_calls: Counter = Counter()
    arts.client.meta.events.register("before-call.*.*", lambda model=None, **_: s3_calls.update([model.name]))
    t0 = time.perf_counter()
    r = bench_map.run(n, executor=ex, artifacts=arts, return_run=True)
    t_end = time.perf_counter()
    assert r.state is gflow.State.SUCCEEDED, r.error
    assert r.value == [i * i for i in range(n)]
    hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM")]
    calls = ex.api_calls
    return {"n": n, "array": array, "calls": calls, "s3_calls": dict(s3_calls),
            "to_submitted_s": ex.submitted_at - t0, "submitjob_s": sum(submit_s), "total_s": t_end - t0,
            "cycles": len(cycles), "describe_per_cycle_max": max(cycles, default=0),
            "describe_per_cycle_median": statistics.median(cycles) if cycles else 0,
            "peak_rss_mb": int(hwm[0].split()[1]) / 1024}


def run_driver(url: str, n: int, array: bool) -> dict:
    env = {**os.environ, **CREDS, "AWS_ENDPOINT_URL": url, "GFLOW_HOME": tempfile.mkdtemp(prefix="bench-aws-")}
    out = subprocess.run([sys.executable, __file__, "--drive", str(n), "--array", "1" if array else "0"],
                         capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--naive-n", type=int, default=None, help="size for the naive path (default: --n)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--workers", type=int, default=8, help="threads running moto's jobs (and their workers)")
    ap.add_argument("--report", default=None, help="print the table from the JSON lines a run wrote to stderr")
    ap.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--array", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve is not None:
        return serve(a.serve, a.workers)
    if a.drive is not None:
        print(json.dumps(drive(a.drive, bool(a.array))))
        return None
    if a.report:
        runs = [json.loads(line) for line in open(a.report) if line.startswith("{")]
        return report({True: [r for r in runs if r["array"]], False: [r for r in runs if not r["array"]]})
    sys.path.insert(0, str(ROOT / "tests"))
    from aws_env import free_port

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **CREDS}
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--workers", str(a.workers)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                              env=env)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        results = {}
        for array, n in ((True, a.n), (False, a.naive_n or a.n)):
            runs = []
            for _ in range(a.reps):
                setup(url)
                runs.append(run_driver(url, n, array))
                print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
            results[array] = runs
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(60)
    report(results)


def _med(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def _calls(runs: list[dict], op: str) -> int:
    return int(statistics.median(r["calls"].get(op, 0) for r in runs))


def report(results: dict) -> None:
    g, b = results[True], results[False]
    rows = []
    for op in ("SubmitJob", "RegisterJobDefinition", "DescribeJobDefinitions", "DescribeJobs", "ListJobs"):
        x, y = _calls(g, op), _calls(b, op)
        note = {"SubmitJob": f"{y / x:,.0f}x fewer" if x else "",
                "DescribeJobs": "totals follow the run's length: see per cycle"}.get(op, "")
        rows.append({"": op + " (total)", "gflow arrays": f"{x:,}", "naive": f"{y:,}", "ratio": note})
    s3g = int(statistics.median(sum(r["s3_calls"].values()) for r in g))
    s3b = int(statistics.median(sum(r["s3_calls"].values()) for r in b))
    rows.append({"": "S3 requests by the driver", "gflow arrays": f"{s3g:,}", "naive": f"{s3b:,}",
                 "ratio": f"{s3b / s3g:.1f}x fewer" if s3g else ""})
    rows.append({"": "poll cycles", "gflow arrays": _med(g, "cycles"), "naive": _med(b, "cycles")})
    gm, bm = _med(g, "describe_per_cycle_max"), _med(b, "describe_per_cycle_max")
    rows.append({"": "DescribeJobs per poll cycle, max (median)",
                 "gflow arrays": f"{gm:g} ({_med(g, 'describe_per_cycle_median'):g})",
                 "naive": f"{bm:g} ({_med(b, 'describe_per_cycle_median'):g})",
                 "ratio": f"{bm / gm:g}x fewer" if gm else ""})
    for key, label in (("to_submitted_s", "driver time, flow start to all submitted (s)"),
                       ("submitjob_s", "  of which SubmitJob calls (moto creating the jobs) (s)"),
                       ("total_s", "flow start to completion (s)"), ("peak_rss_mb", "driver peak RSS (MB)")):
        x, y = _med(g, key), _med(b, key)
        rows.append({"": label, "gflow arrays": f"{x:.1f}", "naive": f"{y:.1f}",
                     "ratio": f"{y / x:.1f}x" if x else ""})
    print(f"\nmap of n={g[0]['n']:,} (naive n={b[0]['n']:,}), {len(g)} run(s) each, medians; "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(table(rows, ["", "gflow arrays", "naive", "ratio"]))
    per = math.ceil(g[0]["n"] / 100)
    print(f"\ngoal: <= 2 SubmitJob: {'met' if _calls(g, 'SubmitJob') <= 2 else 'NOT met'}; DescribeJobs per cycle "
          f"<= ceil(N/100) = {per}: {'met' if _med(g, 'describe_per_cycle_max') <= per else 'NOT met'}")


if __name__ == "__main__":
    main()
