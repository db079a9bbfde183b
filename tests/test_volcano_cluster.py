"""The Volcano executor against a fake Kubernetes API server over real HTTP (the real ``kubernetes`` client),
with a test controller playing Volcano and the kubelet: pods run ``gflow worker`` as local processes with
the pod's env; the artifact store is a local folder shared by the driver and the "pods" (the hostPath
case). See tests/k8s_fake for what the stand-ins do."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("jsonschema")

import volcano_flows as vf  # noqa: E402

from gflow.errors import ConfigError, ExecutorError, TaskFailed  # noqa: E402
from gflow.executors.base import Call, CallStarted  # noqa: E402
from gflow.executors.volcano import VolcanoExecutor  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.usage import usage_of
from tests.conftest import RESOURCES, ROOT  # noqa: E402
from tests.k8s_fake import FakeKube, FakeVolcano, job_errors  # noqa: E402

pytestmark = pytest.mark.integration
IMAGE = "registry.test/gflow/flows:1"


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def until(pred, timeout: float = 60.0, what: str = "condition"):
    """Wait for a concurrent system (the fake cluster, the engine) to reach a state."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture
def cluster(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    with FakeKube() as kube, FakeVolcano(kube, extra_env=env) as vc:
        kube.queues.update({"gpu": "Open", "closed": "Closed"})
        yield SimpleNamespace(kube=kube, vc=vc, kubeconfig=kube.kubeconfig(str(tmp_path / "kubeconfig")))


def executor(cluster, **kw) -> VolcanoExecutor:
    return VolcanoExecutor("research", **{"image": IMAGE, "kubeconfig": cluster.kubeconfig, "tick": 0.05, **kw})


def run(flow, *args, cluster, **kw):
    ex = executor(cluster, **kw)
    try:
        return flow.run(*args, executor=ex, return_run=True), ex
    finally:
        ex.close()


def jobs(kube, task=None):
    return [j for j in kube.items("jobs", "research")
            if task is None or j["metadata"]["labels"]["gflow.dev/task"] == task]


def created_jobs(kube):
    return kube.requests[("create", "jobs")]


def in_background(fn):
    box: dict = {}
    t = threading.Thread(target=lambda: box.update(result=fn()), daemon=True)
    t.start()
    return t, box


def test_a_fan_out_is_one_job_whose_pods_find_their_call_by_index(cluster):
    res, ex = run(vf.fan, 6, cluster=cluster)
    assert res.state is State.SUCCEEDED and res.value == sum(i * i for i in range(6))
    assert created_jobs(cluster.kube) == 2  # the map of 6, then total
    (fan,) = jobs(cluster.kube, "square")
    task = fan["spec"]["tasks"][0]
    assert task["replicas"] == 6 and fan["spec"]["minAvailable"] == 1 and fan["spec"]["queue"] == "default"
    assert job_errors({k: fan[k] for k in ("apiVersion", "kind", "metadata", "spec")}) == []
    labels = fan["metadata"]["labels"]
    assert labels["gflow.dev/run"] == res.id and labels["app.kubernetes.io/managed-by"] == "gflow"
    pods = [p for p in cluster.kube.items("pods", "research") if p["metadata"]["labels"]["volcano.sh/job-name"] ==
            fan["metadata"]["name"]]
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(f"{fan['metadata']['name']}-worker-{i}"
                                                                 for i in range(6))
    assert all(p["status"]["phase"] == "Succeeded" and len(p["metadata"]["name"]) <= 63 for p in pods)
    assert ex.api_calls["create_job"] == 2 and ex.tracker.open_calls == 0
    # a single call's Job carries its task-run id; every name is unique in the run
    (tot,) = jobs(cluster.kube, "total")
    assert tot["metadata"]["labels"]["gflow.dev/task-run"].startswith(res.id)
    assert len({j["metadata"]["name"] for j in jobs(cluster.kube)}) == 2


def test_a_fan_out_above_max_replicas_is_chunked_in_order(cluster):
    res, _ = run(vf.fan, 5, cluster=cluster, max_replicas=2)
    assert res.state is State.SUCCEEDED and res.value == 30
    assert sorted(j["spec"]["tasks"][0]["replicas"] for j in jobs(cluster.kube, "square")) == [1, 2, 2]


def test_outcomes_carry_result_ref_and_pod_info(cluster, gflow_home):
    from gflow.artifacts import open_artifacts
    from gflow.serialization import decode

    arts = open_artifacts(str(gflow_home / "arts"))
    done: dict[str, object] = {}
    started: list[str] = []
    ev = threading.Event()

    def listener(event):
        if isinstance(event, CallStarted):
            assert event.ts > 0 and "pod=" in event.description and "node=node-1" in event.description
            started.append(event.call_id)
        else:
            done[event.call_id] = event.outcome
            if len(done) == 3:
                ev.set()

    ex = executor(cluster)
    try:
        ex.attach_artifacts(arts)
        ex.start(listener)
        calls = [Call(f"r1.{i}", "20240101-000000-abc123", vf.square, (i + 2,), {}) for i in range(3)]
        handles = ex.submit(calls)
        assert ev.wait(60)
        for i, (c, h) in enumerate(zip(calls, handles)):
            out = done[c.id]
            assert out.ok and decode(arts.get(out.result_ref), arts.get) == (i + 2) ** 2
            assert out.info["job"] == h.job and out.info["pod"] == f"{h.job}-worker-{i}"
            assert out.info["node"] == "node-1" and out.info["exit_code"] == 0 and out.info["namespace"] == "research"
            assert "pod=" + h.pod_name in ex.describe_handle(h)
        assert set(started) <= set(done)
    finally:
        ex.close()


def test_a_task_error_comes_back_with_its_traceback_and_pod(cluster):
    res, _ = run(vf.fan_fail, 2, cluster=cluster)
    assert res.state is State.FAILED and isinstance(res.error, TaskFailed)
    assert res.error.error_type == "ValueError" and "boom at" in res.error.error_message
    assert "raise ValueError" in res.error.traceback


def test_retries_are_new_attempts_in_new_jobs(cluster, tmp_path):
    res, _ = run(vf.retry_flow, str(tmp_path), cluster=cluster)
    assert res.state is State.SUCCEEDED and res.value == [100, 101]
    # the map's Job, then the retries as new Jobs: one per retried call, or one for both when their
    # retry timers fire in the same engine cycle (timing-dependent under load)
    assert created_jobs(cluster.kube) in (2, 3)


@pytest.mark.parametrize("queue, words", [
    ("missing", ['unable to find job queue: queues.scheduling.volcano.sh "missing" not found',
                 "fix: create the queue"]),
    ("closed", ["can only submit job to queue with state `Open`, queue `closed` status is `Closed`",
                "fix: open the queue"]),
])
def test_admission_rejects_a_missing_or_closed_queue_with_its_reason(cluster, queue, words):
    res, _ = run(vf.fan, 2, cluster=cluster, queue=queue)
    assert res.state is State.FAILED
    msg = res.error.error_message
    assert "\n" not in msg and msg.startswith("creating Volcano Job research/gf-square-")
    assert 'admission webhook "validatejob.volcano.sh" denied the request' in msg
    for w in words:
        assert w in msg
    assert not jobs(cluster.kube)


def test_rbac_refusals_name_the_verb_and_the_fix(cluster):
    cluster.kube.forbid.add(("create", "jobs"))
    res, _ = run(vf.fan, 2, cluster=cluster)
    msg = res.error.error_message
    assert "HTTP 403 Forbidden" in msg and 'cannot create resource "jobs" in API group "batch.volcano.sh"' in msg
    assert "fix: bind the driver's account to a Role" in msg
    cluster.kube.forbid = {("watch", "pods"), ("list", "pods")}
    ex = executor(cluster)
    with pytest.raises(ExecutorError, match=r"listing pods in namespace research: HTTP 403 Forbidden.*Role"):
        ex.submit([Call("r.1", "r", vf.square, (1,), {})])
    ex.close()


def test_bad_credentials_and_a_missing_namespace(cluster, tmp_path):
    bad = cluster.kube.kubeconfig(str(tmp_path / "bad"), token="expired")
    with pytest.raises(ExecutorError, match="HTTP 401.*credentials were refused"):
        executor(cluster, kubeconfig=bad).submit([Call("r.1", "r", vf.square, (1,), {})])
    with pytest.raises(ExecutorError, match='namespaces "nowhere" not found; fix: check the namespace exists'):
        VolcanoExecutor("nowhere", image=IMAGE, kubeconfig=cluster.kubeconfig).submit(
            [Call("r.1", "r", vf.square, (1,), {})])
    with pytest.raises(ConfigError, match="no Kubernetes cluster configured"):
        executor(cluster, kubeconfig=str(tmp_path / "none")).submit([Call("r.1", "r", vf.square, (1,), {})])


def test_an_unschedulable_pod_fails_with_the_schedulers_reason_after_the_set_time(cluster):
    clock = Clock()
    ex = executor(cluster, clock=clock, unschedulable_after=600, tick=3600)  # ticks driven by the test
    t, box = in_background(lambda: vf.gpu_flow.run(2, executor=ex, return_run=True))
    try:
        until(lambda: len([h for h in ex.tracker.timed if h.unsched_since]) == 2, what="pods unschedulable")
        clock.t += 599
        ex.tracker.tick()
        assert all(not h.done for h in ex.tracker.timed)
        clock.t += 2
        ex.tracker.tick()
        t.join(30)
    finally:
        ex.close()
    res = box["result"]
    assert res.state is State.FAILED and res.error.error_type == "gflow.Unschedulable"
    msg = res.error.error_message
    assert "could not be scheduled for 601s: 0/1 nodes are unavailable: 1 Insufficient nvidia.com/gpu." in msg
    assert msg.startswith("pod gf-on-gpu-") and "of Volcano Job research/gf-on-gpu-" in msg and "fix: ask for" in msg
    until(lambda: not jobs(cluster.kube), what="the Job deleted")
    assert cluster.kube.deletes and all(p == "Background" for _, p in cluster.kube.deletes)


def test_progress_elsewhere_keeps_a_waiting_pod_from_being_given_up(cluster):
    clock = Clock()
    cluster.vc.slots = 1  # pods wait for each other: unschedulable ("Too many pods") meanwhile
    ex = executor(cluster, clock=clock, unschedulable_after=10, tick=3600)
    t, box = in_background(lambda: vf.naps.run(3, 0.5, executor=ex, return_run=True))

    def started():
        return sum(h.started for jr in list(ex.tracker.jobs.values()) for h in jr.handles)

    try:
        until(lambda: len([h for h in ex.tracker.timed if h.unsched_since]) == 2, what="two waiting pods")
        clock.t += 9
        until(lambda: started() >= 2, what="a second start")  # progress at +9s
        clock.t += 5  # the third pod has waited 14s, but only 5s since the last start
        ex.tracker.tick()
        assert started() == 3 or all(not h.done or h.outcome.ok for h in ex.tracker.timed)
        t.join(60)
    finally:
        ex.close()
    assert box["result"].state is State.SUCCEEDED and box["result"].value == [0, 1, 2]


def test_an_image_that_cannot_be_pulled_fails_the_calls_and_deletes_the_job(cluster):
    clock = Clock()
    cluster.vc.bad_images.add("registry.test/missing:1")
    ex = executor(cluster, image="registry.test/missing:1", clock=clock, image_pull_after=120, tick=3600)
    t, box = in_background(lambda: vf.fan.run(2, executor=ex, return_run=True))
    try:
        until(lambda: len([h for h in ex.tracker.timed if h.wait_since]) == 2, what="pull errors")
        ex.tracker.tick()
        assert not box
        clock.t += 120
        ex.tracker.tick()
        t.join(30)
    finally:
        ex.close()
    err = box["result"].error
    assert err.error_type == "gflow.ImagePullError"
    assert "cannot pull image registry.test/missing:1 (ErrImagePull: rpc error" in err.error_message
    assert "fix: push the image" in err.error_message
    until(lambda: not jobs(cluster.kube), what="the Job deleted")


@pytest.mark.parametrize("action", ["RestartTask", "RestartPod"])
def test_an_evicted_pod_is_restarted_by_volcanos_policy_and_nothing_is_lost(cluster, action):
    ex = executor(cluster, evict_action=action)
    t, box = in_background(lambda: vf.naps.run(2, 1.0, executor=ex, return_run=True))
    try:
        pods = until(lambda: [p for p in cluster.kube.items("pods", "research") if p["status"]["phase"] == "Running"]
                     if len(cluster.kube.items("pods", "research")) == 2 and all(
                         p["status"]["phase"] == "Running" for p in cluster.kube.items("pods", "research")) else None,
                     what="both pods running")
        first = {p["metadata"]["name"]: p["metadata"]["uid"] for p in pods}
        victim = sorted(first)[0]
        cluster.vc.evict("research", victim)
        t.join(60)
        res = box["result"]
        assert res.state is State.SUCCEEDED and res.value == [0, 1]
        (job,) = jobs(cluster.kube, "nap")
        assert job["status"]["retryCount"] == 1
        after = {p["metadata"]["name"]: p["metadata"]["uid"] for p in cluster.kube.items("pods", "research")}
        other = sorted(first)[1]
        assert after[victim] != first[victim]
        assert (after[other] != first[other]) == (action == "RestartTask")  # RestartTask restarts its siblings
    finally:
        ex.close()


def test_evictions_beyond_max_retry_fail_with_the_count(cluster):
    ex = executor(cluster, max_retry=0, outcome_grace=0.0)
    t, box = in_background(lambda: vf.naps.run(1, 30.0, executor=ex, return_run=True))
    try:
        pod = until(lambda: next((p["metadata"]["name"] for p in cluster.kube.items("pods", "research")
                                  if p["status"]["phase"] == "Running"), None), what="a running pod")
        cluster.vc.evict("research", pod)
        t.join(60)
    finally:
        ex.close()
    err = box["result"].error
    assert f"pod {pod} of Volcano Job research/" in err.error_message
    assert "did not finish after 1 eviction(s): the Job ended Failed" in err.error_message
    assert "fix: raise max_retry" in err.error_message


def test_a_kubelet_eviction_is_a_failed_attempt_with_its_reason(cluster):
    ex = executor(cluster)
    t, box = in_background(lambda: vf.naps.run(1, 30.0, executor=ex, return_run=True))
    try:
        pod = until(lambda: next((p["metadata"]["name"] for p in cluster.kube.items("pods", "research")
                                  if p["status"]["phase"] == "Running"), None), what="a running pod")
        cluster.vc.evict("research", pod, kubelet=True)
        t.join(60)
    finally:
        ex.close()
    err = box["result"].error
    assert err.error_type == "gflow.PodEvicted"
    assert "was evicted by the kubelet (The node was low on resource: memory" in err.error_message


def test_watches_that_expire_resume_from_a_fresh_list(cluster):
    ex = executor(cluster)
    t, box = in_background(lambda: vf.naps.run(3, 0.3, executor=ex, return_run=True))
    try:
        until(lambda: ex._watches and ex._watches[0].events > 0, what="watch events")
        cluster.kube.expire()
        t.join(60)
        assert box["result"].state is State.SUCCEEDED and box["result"].value == [0, 1, 2]
        pods_watch, jobs_watch = ex._watches
        assert pods_watch.expired >= 1 and pods_watch.lists >= 2 and jobs_watch.lists >= 2
    finally:
        ex.close()


def test_cancel_deletes_the_job_with_background_propagation(cluster, gflow_home):
    from gflow.store import open_store

    ex = executor(cluster)
    t, box = in_background(lambda: vf.naps.run(2, 60.0, executor=ex, return_run=True))
    try:
        until(lambda: sum(p["status"]["phase"] == "Running" for p in cluster.kube.items("pods", "research")) == 2,
              what="pods running")
        st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
        (rec,) = st.list_runs()
        st.set_run_state(rec.id, State.CANCELLED, time.time(), error="Cancelled: by the test")
        t.join(60)
        st.close()
    finally:
        ex.close()
    assert box["result"].state is State.CANCELLED
    (name,) = {j for j, _ in cluster.kube.deletes}
    assert cluster.kube.deletes[0] == (name, "Background")
    until(lambda: not cluster.kube.items("pods", "research") and not cluster.vc.runs, what="pods gone")


def test_a_timeout_deletes_a_single_calls_job_and_sets_a_pod_deadline(cluster):
    res, _ = run(vf.naps_with_timeout, cluster=cluster)
    assert res.state is State.FAILED and "TaskTimeout" in res.error.error_type
    (job,) = cluster.kube.created
    assert job["spec"]["tasks"][0]["template"]["spec"]["activeDeadlineSeconds"] == 61  # the kubelet's backstop
    assert cluster.kube.deletes == [(job["metadata"]["name"], "Background")]
    until(lambda: not cluster.vc.runs, what="the pod's process stopped")


def test_a_pod_that_exits_without_an_outcome_record_never_succeeds(cluster):
    res, _ = run(vf.vanish_flow, cluster=cluster, outcome_grace=0.2)
    assert res.state is State.FAILED and res.error.error_type == "gflow.ExecutorError"
    assert "exited 0 but left no outcome record in the artifact store" in res.error.error_message


def test_a_job_deleted_by_someone_else_fails_its_calls(cluster):
    ex = executor(cluster)
    t, box = in_background(lambda: vf.naps.run(1, 60.0, executor=ex, return_run=True))
    try:
        (job,) = until(lambda: jobs(cluster.kube), what="a Job")
        until(lambda: cluster.kube.items("pods", "research"), what="its pod")
        cluster.kube.delete("jobs", "research", job["metadata"]["name"])
        t.join(60)
    finally:
        ex.close()
    assert f"Volcano Job research/{job['metadata']['name']} was deleted while" in box["result"].error.error_message


def test_gang_tasks_start_together(cluster):
    res, _ = run(vf.gang_flow, 3, cluster=cluster)
    assert res.state is State.SUCCEEDED and res.value == [0, 10, 20]
    (job,) = jobs(cluster.kube, "ganged")
    assert job["spec"]["minAvailable"] == job["spec"]["tasks"][0]["minAvailable"] == 3


def test_logs_and_cluster_access_from_kubeconfig(cluster, monkeypatch, gflow_home):
    from gflow.store import open_store

    monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig)
    spec = f"volcano://?image={IMAGE}"  # the namespace comes from the kubeconfig's context
    res = vf.fan.run(2, executor=spec, return_run=True)
    assert res.state is State.SUCCEEDED, str(res.error)[:600]
    st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    run = st.get_run(res.id)
    trs = [tr for tr in st.task_runs(res.id) if tr.name == "square"]
    st.close()
    assert run.executor == spec and trs and all(tr.handle and "pod=" in tr.handle for tr in trs)
    assert all(tr.info and tr.info["pod"] in tr.handle and tr.info["exit_code"] == 0 for tr in trs)
    assert all(usage_of(tr.info)["peak_memory_bytes"] > 0 for tr in trs)  # measured by the worker (issue 22)
    text = VolcanoExecutor.fetch_logs(run.executor, trs[0].handle, trs[0].info)
    assert text and '"gflow.outcome": "ok"' in text
    with pytest.raises(ExecutorError, match="pod research/gone-pod is gone, and its log with it .*raise ttl="):
        VolcanoExecutor.fetch_logs(run.executor, "volcano research/x pod=gone-pod")  # says why there is none
    from tests.conftest import cli

    out = cli("logs", res.id, "--task-run", trs[0].id)  # the CLI reads the pod's log through fetch_logs
    assert out.returncode == 0, out.stderr
    assert "--- backend log (volcano research/" in out.stdout and '"gflow.outcome": "ok"' in out.stdout


def test_a_profiles_volcano_table_configures_the_executor(cluster, tmp_path):
    (tmp_path / "gflow.toml").write_text(f'''
[profiles.k8s]
executor = "volcano://research?queue=gpu"

[profiles.k8s.volcano]
image = "{IMAGE}"
kubeconfig = "{cluster.kubeconfig}"
max_replicas = 2
queue = "default"
tolerations = ["nvidia.com/gpu:NoSchedule"]
''')
    res = vf.fan.run(3, profile="k8s", return_run=True)
    assert res.state is State.SUCCEEDED and res.value == 5
    square_jobs = jobs(cluster.kube, "square")
    assert sorted(j["spec"]["tasks"][0]["replicas"] for j in square_jobs) == [1, 2]
    assert {j["spec"]["queue"] for j in square_jobs} == {"gpu"}  # the URL's own value wins
    pod = square_jobs[0]["spec"]["tasks"][0]["template"]["spec"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_an_invalid_object_is_translated_into_one_line(cluster):
    from kubernetes import client

    from gflow.executors.volcano._k8s import k8s_error, load_api_client

    api, ns = load_api_client(kubeconfig=cluster.kubeconfig)
    body = {"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "metadata": {"name": "Bad_Name"},
            "spec": {"tasks": [{"name": "worker", "replicas": 1, "template": {"spec": {"containers": []}}}]}}
    with pytest.raises(client.ApiException) as ei:
        client.CustomObjectsApi(api).create_namespaced_custom_object("batch.volcano.sh", "v1alpha1", ns, "jobs", body)
    api.close()
    err = k8s_error(ei.value, "creating Volcano Job research/Bad_Name")
    assert isinstance(err, ExecutorError) and "\n" not in str(err)
    assert 'HTTP 422 Invalid: Job.batch.volcano.sh "Bad_Name" is invalid: metadata.name' in str(err)
    assert "fix: the object is invalid as shown" in str(err)
