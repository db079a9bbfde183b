"""Reattach after a lost driver on Volcano (issue 19 item 4), against the fake Kubernetes API server and its
Volcano/kubelet stand-in (tests/k8s_fake) over the real ``kubernetes`` client.

The driver is a real ``gflow run`` process, SIGKILLed once its fan-out's Job is created and every element is
recorded queued or running (the pods wait for a gate file); then ``gflow resume RUN_ID`` follows the Job instead
of creating it again. Job creates are counted by the fake API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("jsonschema")

import test_volcano_cluster as shared  # noqa: E402
from reattach_support import queued_run  # noqa: E402

from gflow.states import State  # noqa: E402
from tests.conftest import RESOURCES, ROOT, cli  # noqa: E402

pytestmark = pytest.mark.integration
cluster, IMAGE = shared.cluster, shared.IMAGE  # the fake cluster fixture of tests/test_volcano_cluster.py
N = int(os.environ.get("GFLOW_REATTACH_N", "40"))
TRIALS = int(os.environ.get("GFLOW_REATTACH_TRIALS", "2"))


def _url(cluster) -> str:
    return f"volcano://research?image={IMAGE}&kubeconfig={cluster.kubeconfig}"


def _successes(store, run_id: str) -> Counter:
    by_id = {t.id: t for t in store.task_runs(run_id) if t.name == "gated_square"}
    return Counter(by_id[e.task_run_id].ikey for e in store.events(run_id)
                   if e.task_run_id in by_id and e.state is State.SUCCEEDED)


def test_resume_after_the_driver_is_killed_follows_the_job_instead_of_creating_it_again(cluster, store, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    took = []
    for trial in range(TRIALS):
        gate = tmp_path / f"gate{trial}"
        gate.mkdir()
        before = {r.id for r in store.list_runs()}
        creates0 = cluster.kube.requests[("create", "jobs")]
        drv = subprocess.Popen([sys.executable, "-m", "gflow", "run", "volcano_flows:gated_fan", "-p", f"n={N}",
                                "-p", f"folder={gate}", "-e", _url(cluster), "--no-progress"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            run_id = queued_run(store, N, before, name="gated_square")
            assert cluster.kube.requests[("create", "jobs")] - creates0 == 1
            drv.send_signal(signal.SIGKILL)
            drv.wait(30)
        finally:
            if drv.poll() is None:
                drv.kill()
        (gate / "open").touch()
        if trial % 2:  # let the pods finish with no driver: their outcomes wait in the old slots
            time.sleep(2)
        t0 = time.monotonic()
        res = cli("resume", run_id, "-e", _url(cluster), "--no-progress", timeout=300)
        took.append(time.monotonic() - t0)
        assert res.returncode == 0, res.stderr
        new = store.get_run(run_id).resumed_by
        assert new is not None and store.get_run(new).state is State.SUCCEEDED
        creates = cluster.kube.requests[("create", "jobs")] - creates0
        assert creates == 2, f"trial {trial}: {creates} Job creates (the fan-out's Job, then total's)"
        trs = [t for t in store.task_runs(new) if t.name == "gated_square"]
        assert len(trs) == N and all(t.state is State.SUCCEEDED for t in trs)
        adopted = [e for e in store.events(new) if e.state is State.QUEUED and "adopted" in (e.message or "")]
        assert len(adopted) == N
        succ = _successes(store, run_id) + _successes(store, new)
        assert set(succ.values()) == {1} and len(succ) == N  # no element's success recorded twice
    print(f"\nVolcano (fake cluster) reattach: {TRIALS} trial(s) of {N} elements: 1 Job create for the fan-out each, "
          f"resume took {sorted(took)[len(took) // 2]:.1f} s (median)")
