"""Issue 19 on the cluster backends: the same OOM escalation and spot accounting on Volcano (the fake cluster
over real HTTP, whose kubelet enforces memory limits), spot placement on AWS Batch / GCP Batch / Volcano, and a
task asking for spot on an executor without it refused at the call."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import failure_flows as ff
import pytest
from conftest import RESOURCES, ROOT
from test_aws_batch import aws, moto  # noqa: F401  (fixtures)
from test_slurm import slurm  # noqa: F401  (fixture)

import gflow
from gflow.states import State

pytestmark = pytest.mark.integration


def test_spot_on_an_executor_without_spot_is_one_line_before_anything_runs(store):
    res = ff.spot_flow.run(3, executor="local", return_run=True)
    assert res.state is State.FAILED
    msg = str(res.error)
    assert "asks for spot capacity (Resources(spot=True)), but executor 'local' has none" in msg and "\n" not in msg
    assert store.task_runs(res.id) == []


def test_aws_batch_spot_queue_and_on_demand_queue():
    pytest.importorskip("boto3")
    from gflow.executors.aws_batch import AwsBatchExecutor

    ex = AwsBatchExecutor("main", region="us-east-1", spot_queue="spot-q", on_demand_queue="od-q", check=False)
    assert ex.capabilities.spot and not AwsBatchExecutor("main", region="us-east-1", check=False).capabilities.spot
    assert ex.queue_for(ff.on_spot) == "spot-q"
    assert ex.queue_for(ff.on_spot.with_options(resources=gflow.Resources(spot=False))) == "od-q"
    assert AwsBatchExecutor.from_spec("aws-batch://main?region=us-east-1&spot_queue=s&check=false").spot_queue == "s"


def test_gcp_batch_spot_tasks_get_spot_vms():
    pytest.importorskip("google.auth", reason="gcp extra not installed")
    from gflow.executors.gcp_batch import GcpBatchExecutor

    assert GcpBatchExecutor.capabilities.spot
    ex = GcpBatchExecutor.__new__(GcpBatchExecutor)
    from gflow.executors.gcp_batch._jobs import Placement

    ex.placement = Placement(region="us-central1")
    pol = ex.placement_for(ff.on_spot).allocation(0)["instances"][0]["policy"]
    assert pol["provisioningModel"] == "SPOT"
    demand = ex.placement_for(ff.on_spot.with_options(resources=gflow.Resources(spot=False))).allocation(0)
    assert "provisioningModel" not in demand["instances"][0]["policy"]


# -- Volcano: the fake cluster ---------------------------------------------------------------------------------

@pytest.fixture
def kube(tmp_path):
    pytest.importorskip("kubernetes")
    from tests.k8s_fake import FakeKube, FakeVolcano

    env = {"PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    with FakeKube() as k, FakeVolcano(k, extra_env=env, labels={"node.gflow.dev/spot": "true"}) as vc:
        yield SimpleNamespace(kube=k, vc=vc, kubeconfig=k.kubeconfig(str(tmp_path / "kubeconfig")))


def _volcano(kube, **kw):
    from gflow.executors.volcano import VolcanoExecutor

    return VolcanoExecutor("research", image="gflow-test:latest", kubeconfig=kube.kubeconfig, tick=0.05, **kw)


def test_volcano_oom_killed_pod_escalates_256_512(kube, store):
    ex = _volcano(kube)
    try:
        res = ff.hungry_pod_flow.run(400_000_000, executor=ex, return_run=True)
    finally:
        ex.close()
    assert res.state is State.SUCCEEDED, res.error
    evs = [(e.state, e.message or "") for e in store.events(res.id) if e.task_run_id]
    assert [m for s, m in evs if s is State.QUEUED] == ["asks memory=256Mi", "asks memory=512Mi"]
    (oom,) = [m for s, m in evs if s is State.RETRYING]
    assert oom.startswith("gflow.OutOfMemory: ") and "killed: out of memory (exit code 137)" in oom
    assert kube.kube.requests[("create", "jobs")] == 2
    limits = sorted(j["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
                    for j in kube.kube.items("jobs", "research"))
    assert limits == ["256Mi", "512Mi"]


def test_volcano_spot_reclaim_is_retried_on_demand_after_spot_n(kube, store):
    ex = _volcano(kube, spot_selector={"node.gflow.dev/spot": "true"}, max_retry=0, outcome_grace=0.0)
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(r=ff.spot_flow.run(1, 3.0, executor=ex, return_run=True)))
    t.start()
    try:
        deadline = time.monotonic() + 60
        pod = None
        while pod is None and time.monotonic() < deadline:
            pod = next((p["metadata"]["name"] for p in kube.kube.items("pods", "research")
                        if p["status"]["phase"] == "Running"), None)
            time.sleep(0.05)
        assert pod, "no pod started"
        kube.vc.evict("research", pod, kubelet=True)  # the node goes away under it: PodEvicted
        t.join(60)
    finally:
        ex.close()
    res = box["r"]
    assert res.state is State.SUCCEEDED, res.error
    assert kube.kube.requests[("create", "jobs")] == 2
    jobs = sorted(kube.kube.items("jobs", "research"), key=lambda j: j["metadata"]["creationTimestamp"])
    selectors = [j["spec"]["tasks"][0]["template"]["spec"].get("nodeSelector") or {} for j in jobs]
    assert selectors == [{"node.gflow.dev/spot": "true"}, {}]
    evs = [(e.state, e.message or "") for e in store.events(res.id) if e.task_run_id]
    assert [m for s, m in evs if s is State.QUEUED] == ["asks spot", ""]
    (reclaim,) = [m for s, m in evs if s is State.RETRYING]
    assert reclaim.startswith("gflow.PodEvicted: ")


# -- AWS Batch: moto in server mode (the fixtures of tests/test_aws_batch.py) ------------------------------------

def test_aws_batch_spot_calls_are_submitted_to_the_spot_queue_end_to_end(request):
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    env = request.getfixturevalue("aws")
    import aws_tasks  # importable by the fake containers' workers
    from aws_env import QUEUE, setup_batch
    from test_aws_batch import ARTS

    sq = aws_tasks.square.with_options(resources=gflow.Resources(cpu=0.5, memory="256Mi", spot=True))

    @gflow.flow
    def squares_on_spot(n: int) -> list:
        return sq.map(range(n))

    setup_batch(env.moto, queue="spot-q")
    ex = env.executor(spot_queue="spot-q")
    try:
        res = squares_on_spot.run(3, executor=ex, artifacts=ARTS, return_run=True)
    finally:
        ex.close()
    assert res.state is State.SUCCEEDED and res.value == [0, 1, 4], res.error
    batch = env.moto.client("batch")
    spot = batch.list_jobs(jobQueue="spot-q", jobStatus="SUCCEEDED")["jobSummaryList"]
    plain = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert spot and plain == [] and ex.api_calls["SubmitJob"] == 1  # one array, on the spot queue


# -- Slurm: the real single-node cluster (tests/slurm_env.py; --mem enforced by OverMemoryKill) ------------------

def test_slurm_out_of_memory_escalates_100_400_and_is_recorded(request):
    env = request.getfixturevalue("slurm")
    import slurm_tasks

    hog = slurm_tasks.hog.with_options(retries=gflow.Retry(2, memory_factor=4.0, max_memory="1Gi"))

    @gflow.flow
    def hog_escalating(mib: int) -> int:
        return hog(mib)

    from gflow.store import open_store

    res = env.run(hog_escalating, env.make(), mib=200, return_run=True)
    assert res.state is State.SUCCEEDED and res.value == 200 << 20, res.error
    st = open_store(env.store)
    evs = [(e.state, e.message or "") for e in st.events(res.id) if e.task_run_id]
    st.close()
    assert [m for s, m in evs if s is State.QUEUED] == ["asks memory=100Mi", "asks memory=400Mi"]
    (oom,) = [m for s, m in evs if s is State.RETRYING]
    assert oom.startswith("gflow.errors.OutOfMemory: ") and "--mem=100M" in oom
