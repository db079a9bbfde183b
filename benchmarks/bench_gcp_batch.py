"""Google Cloud Batch executor at scale: a map of N (default 100,000) calls submitted through the real
google-cloud-batch client (REST) to the fake Batch v1 server, with the paged manifest in gcp-storage-emulator
(both in a process of their own, tests/gcp_fake/serve.py), then polled.

What is measured is **submission and status**, not execution: the fake runs no task here (100,000 worker
processes do not fit this machine); the benchmark moves tasks itself (``/_fake/move``) and times the driver's
poll cycles. Reported: job creates for the map, time to submitted (from ``submit`` to the last ``jobs.create``
answer: encoding N call specs, uploading the manifest pages, creating the job), Batch read requests per poll
cycle while quiet / while 5,000 tasks start / while 1,000 finish (each finishing call also reads its outcome
slot from the store: one GCS request when there is none, two when there is), against the baseline of listing
every task every cycle, and the driver's RSS.

    python benchmarks/bench_gcp_batch.py [--n 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]

import gflow  # noqa: E402

BUCKET = "gflow-bench"


@gflow.task
def inc(x: int) -> int:
    return x + 1


def rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    vals = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                vals[line.split(":")[0]] = int(line.split()[1]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def _post(url: str, body: dict) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=120).read()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    args = ap.parse_args()
    n = args.n
    server = subprocess.Popen([sys.executable, "-m", "tests.gcp_fake.serve", "--bucket", BUCKET], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().split()  # type: ignore[union-attr]
        assert line and line[0] == "ready", line
        batch_url, storage_url = line[1], line[2]
        os.environ["STORAGE_EMULATOR_HOST"] = storage_url
        run(n, batch_url)
    finally:
        server.stdin.close()  # type: ignore[union-attr]
        server.wait(30)


def run(n: int, batch_url: str) -> None:
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call
    from gflow.executors.gcp_batch import GcpBatchExecutor

    ex = GcpBatchExecutor("gflow-bench", "us-central1", endpoint=batch_url, image="bench:1", parallelism=5000,
                          poll_min=3600, poll_max=3600, list_gap=15)
    events: list = []
    ex.start(events.append)
    arts = open_artifacts(f"gs://{BUCKET}/bench")
    upload = [0.0, 0]
    real_put_many = arts.put_many

    def put_many(blobs):  # the manifest's upload, timed apart from encoding the call specs
        t = time.perf_counter()
        real_put_many(blobs)
        upload[0] += time.perf_counter() - t
        upload[1] += len(blobs)

    arts.put_many = put_many  # type: ignore[method-assign]
    ex.attach_artifacts(arts)
    ex.prepare()
    ex._check_artifacts()
    calls = [Call(f"c{i}", "bench-run", inc, (i,), {}, index=i) for i in range(n)]
    rss0, _ = rss_mb()
    t0 = time.perf_counter()
    handles = ex.submit(calls)
    submitted = (ex.submitted_at or time.perf_counter()) - t0
    creates = ex.api_calls.get("jobs.create", 0)
    job = handles[0].job
    time.sleep(1.0)  # the cycle the submit woke is over; the next is an hour away: cycles below run by hand

    def cycle() -> tuple[dict[str, int], float]:
        before = ex.api_calls
        t = time.perf_counter()
        ex.monitor.cycle()
        dt = time.perf_counter() - t
        after = ex.api_calls
        return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}, dt

    quiet = [cycle() for _ in range(5)]
    move = f"{batch_url}/_fake/move"
    _post(move, {"job": job.name, "start": 0, "stop": min(n, 5000), "state": "RUNNING"})
    starting, starting_s = cycle()
    started = sum(type(e).__name__ == "CallStarted" for e in events)
    _post(move, {"job": job.name, "start": 0, "stop": min(n, 1000), "state": "SUCCEEDED",
                 "exitCode": 0})
    finishing, finishing_s = cycle()
    finished = sum(type(e).__name__ == "CallDone" for e in events)
    t = time.perf_counter()
    everything = ex.handler.api.tasks(job.name, "PENDING") + ex.handler.api.tasks(job.name, "RUNNING")
    list_all_s = time.perf_counter() - t
    pages_all = -(-n // 1000)
    rss1, hwm = rss_mb()
    ex.close()

    rows = [
        ("job creates for the map", f"{creates} (naive one job per call: {n:,}; ratio {n / max(1, creates):,.0f}x)"),
        ("time to submitted", f"{submitted:.1f} s ({submitted / n * 1e6:.0f} us per call), of which uploading "
                              f"{upload[1]:,} manifest blobs to the emulator {upload[0]:.1f} s"),
        ("Batch reads per quiet poll cycle", f"{quiet[-1][0]} in {quiet[-1][1] * 1000:.1f} ms"),
        ("cycle where 5,000 tasks start", f"{starting} in {starting_s:.2f} s; {started} starts reported"),
        ("cycle where 1,000 tasks finish", f"{finishing} in {finishing_s:.2f} s; {finished} outcomes "
                                           f"(no records here: each read 1 GCS request)"),
        ("baseline: list every task every cycle", f"{pages_all} tasks.list pages ({len(everything):,} tasks) in "
                                                  f"{list_all_s:.2f} s, every cycle"),
        ("driver RSS", f"{rss0:.0f} MB before submit, {rss1:.0f} MB after (peak {hwm:.0f} MB)"),
    ]
    print(f"## Google Cloud Batch: a map of {n:,} (fake Batch v1 + gcp-storage-emulator, submission and status)\n")
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    print(json.dumps({"n": n, "creates": creates, "submitted_s": round(submitted, 2),
                      "upload_s": round(upload[0], 2), "quiet_cycle": quiet[-1][0],
                      "starting_cycle": starting, "finishing_cycle": finishing, "list_all_pages": pages_all,
                      "rss_before_mb": round(rss0), "rss_after_mb": round(rss1), "peak_mb": round(hwm)}))


if __name__ == "__main__":
    main()
