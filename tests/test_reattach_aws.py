"""Reattach after a lost driver on AWS Batch (issue 19 item 4), against moto in server mode over real boto3.

The driver is a real ``gflow run`` process, SIGKILLed once its array is submitted (the jobs' containers are
held back by the runtime's gate, so every element is still queued or running when it dies); then
``gflow resume RUN_ID`` follows the array instead of submitting it again. SubmitJob is counted by the HTTP
proxy in front of moto's Batch. Fixtures are those of tests/test_aws_batch.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
import test_aws_batch as shared
from aws_env import wait_for
from conftest import ROOT, cli
from reattach_support import queued_run

from gflow.states import State

pytestmark = pytest.mark.integration
moto, aws = shared.moto, shared.aws
ARTS, url = shared.ARTS, shared.url
FLOW = f"{ROOT}/tests/aws_tasks.py:squares"
N = int(os.environ.get("GFLOW_REATTACH_N", "40"))
TRIALS = int(os.environ.get("GFLOW_REATTACH_TRIALS", "2"))


def _driver(n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    return subprocess.Popen([sys.executable, "-m", "gflow", "run", FLOW, "-p", f"n={n}", "-e", url(), "--artifacts",
                             ARTS, "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _successes(store, run_id: str) -> Counter:
    """SUCCEEDED events of ``square`` calls by input key (a call recorded twice would count 2)."""
    by_id = {t.id: t for t in store.task_runs(run_id) if t.name == "square"}
    return Counter(by_id[e.task_run_id].ikey for e in store.events(run_id)
                   if e.task_run_id in by_id and e.state is State.SUCCEEDED)


def test_resume_after_the_driver_is_killed_follows_the_array_instead_of_resubmitting(aws, store):
    proxy = aws.proxy()
    stats = []
    for trial in range(TRIALS):
        before = {r.id for r in store.list_runs()}
        submits0 = proxy.counts["submitjob"]
        started0 = len(aws.runtime.started)
        aws.runtime.gate.clear()  # containers wait: the elements stay queued/starting while the driver dies
        drv = _driver(N)
        try:
            run_id = queued_run(store, N, before)
            assert proxy.counts["submitjob"] - submits0 == 1
            drv.send_signal(signal.SIGKILL)
            drv.wait(30)
        finally:
            if drv.poll() is None:
                drv.kill()
        aws.runtime.gate.set()
        if trial % 2:  # let part of the array finish with no driver: those outcomes wait in the old slots
            wait_for(lambda s0=started0: sum(c.status == "exited" for c in aws.runtime.started) >= s0 + N // 2,
                     timeout=120, what="half the elements finished")
        t0 = time.monotonic()
        res = cli("resume", run_id, "-e", url(), "--artifacts", ARTS, "--no-progress", timeout=300)
        took = time.monotonic() - t0
        assert res.returncode == 0, res.stderr
        new = store.get_run(run_id).resumed_by
        assert new is not None and store.get_run(new).state is State.SUCCEEDED
        submits = proxy.counts["submitjob"] - submits0
        # the array, and the reducing ``total`` call that never ran: nothing submitted twice
        assert submits == 2, f"trial {trial}: {submits} SubmitJob calls (the array was submitted again)"
        trs = [t for t in store.task_runs(new) if t.name == "square"]
        assert len(trs) == N and all(t.state is State.SUCCEEDED for t in trs)
        adopted = [e for e in store.events(new) if e.state is State.QUEUED and "adopted" in (e.message or "")]
        assert len(adopted) == N
        assert all(t.handle and ":" in t.handle.rsplit("job=", 1)[-1] for t in trs)  # the old array's children
        succ = _successes(store, run_id) + _successes(store, new)
        assert set(succ.values()) == {1} and len(succ) == N  # no element's success recorded twice
        stats.append(took)
    print(f"\nAWS Batch (moto) reattach: {TRIALS} trial(s) of {N} elements: SubmitJob 1 array each, "
          f"resume took {sorted(stats)[len(stats) // 2]:.1f} s (median)")
