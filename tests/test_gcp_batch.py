"""The Google Cloud Batch executor end to end: the real google-cloud-batch client (REST transport) against the
fake Batch v1 server on 127.0.0.1, whose controller runs each task's ``gflow worker`` as a local process with
``BATCH_TASK_INDEX``; artifacts through gcp-storage-emulator (gs://)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from gflow.errors import Preempted
from gflow.states import State
from gflow.usage import usage_of

pytestmark = pytest.mark.integration
pytest.importorskip("google.cloud.batch_v1")
pytest.importorskip("gcp_storage_emulator")

from tests.gcp_fake import tasks  # noqa: E402
from tests.gcp_fake.controller import FakeBatchController  # noqa: E402
from tests.gcp_fake.server import FakeBatch  # noqa: E402

PROJECT, REGION, IMAGE = "gflow-test", "us-central1", "us-central1-docker.pkg.dev/gflow-test/gflow/app:1"
BUCKET = "gflow-test"
ARTS = f"gs://{BUCKET}/runs"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def emulator():
    from tests.gcp_fake.storage import Emulator

    e = Emulator(buckets=(BUCKET,))
    yield e
    e.stop()


@pytest.fixture
def gcp(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    with FakeBatch() as fake, FakeBatchController(fake, python_path=[ROOT]) as ctl:
        fake.controller = ctl
        yield fake


def executor(fake, **kw):
    from gflow.executors.gcp_batch import GcpBatchExecutor

    base = dict(endpoint=fake.url, image=IMAGE, poll_min=0.05, poll_max=0.2, list_gap=0.2)
    return GcpBatchExecutor(kw.pop("project", PROJECT), kw.pop("region", REGION), **{**base, **kw})


def url(fake, **extra):
    q = {"image": IMAGE, "endpoint": fake.url, "poll_min": 0.05, "poll_max": 0.2, **extra}
    return f"gcp-batch://{PROJECT}/{REGION}?" + "&".join(f"{k}={v}" for k, v in q.items())


# -- end to end ------------------------------------------------------------------------------------------------
def test_map_and_reduce_run_by_url_one_job_per_fan_out(gcp, store):
    spec = url(gcp, **{"label.team": "binders", "max_concurrency": 3})
    r = tasks.squares.run(5, executor=spec, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == sum(i * i for i in range(5))
    rec = store.get_run(r.id)
    assert rec.executor == spec and rec.image_tag == IMAGE
    assert gcp.requests["create"] == 2  # the map (5 tasks) and the reduce (1)
    jobs = sorted(gcp.jobs.values(), key=lambda j: -j.count)
    assert [j.count for j in jobs] == [5, 1]
    big = jobs[0].body
    assert big["labels"] == {"team": "binders", "gflow-run": r.id.lower(), "gflow-task": "square"}
    assert big["allocationPolicy"]["labels"] == big["labels"]  # the VMs carry them too (billing by run)
    group = big["taskGroups"][0]
    assert group["parallelism"] == "3" and group["taskSpec"]["computeResource"] == {"cpuMilli": "500",
                                                                                    "memoryMib": "256"}
    runnable = group["taskSpec"]["runnables"][0]["container"]
    assert runnable["imageUri"] == IMAGE and runnable["commands"][0] == "worker"
    env = group["taskSpec"]["environment"]["variables"]
    assert env["GFLOW_ARTIFACTS"] == ARTS and "STORAGE_EMULATOR_HOST" in env
    assert gcp.controller.images.count(IMAGE) == 2
    assert sorted(int(e["BATCH_TASK_INDEX"]) for e in gcp.controller.envs if e["BATCH_TASK_COUNT"] == "5") == \
        [0, 1, 2, 3, 4]
    trs = sorted((t for t in store.task_runs(r.id) if t.name == "square"), key=lambda t: t.map_index)
    assert all(t.state is State.SUCCEEDED for t in trs)
    job_id = jobs[0].name.rsplit("/", 1)[1]
    assert [t.handle for t in trs] == [f"{IMAGE} job={job_id} task={i}" for i in range(5)]
    info = trs[4].info
    assert info["job_id"] == job_id and info["task_index"] == 4 and info["exit_code"] == 0
    assert all(usage_of(t.info)["peak_memory_bytes"] > 0 for t in trs)  # measured by the worker (issue 22)
    assert trs[4].result_ref.startswith("sha256:")


def test_a_task_failure_is_retried_by_the_engine_with_a_new_job(gcp, tmp_path):
    ex = executor(gcp)
    marker = str(tmp_path / "marker")
    assert tasks.retried.run(marker, executor=ex, artifacts=ARTS) == 101
    assert gcp.requests["create"] == 2  # attempt 1 failed (exit 1: FAIL_TASK, not retried by Batch), attempt 2
    first = min(gcp.jobs.values(), key=lambda j: j.created)
    t0 = first.tasks[0]
    assert t0.retries == 0 and t0.exit_code == 1 and t0.state == "FAILED"


def test_batch_retries_a_preempted_spot_task_and_the_call_succeeds(gcp):
    ex = executor(gcp, spot=True, infra_retries=1)
    ex.start(lambda ev: events.append(ev))
    events: list = []
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex.attach_artifacts(open_artifacts(ARTS))
    call = Call("c1", "run-spot", tasks.nap, (1.0,), {})
    [h] = ex.submit([call])
    job = h.job
    fake_job = gcp.jobs[job.name]
    assert fake_job.body["allocationPolicy"]["instances"][0]["policy"]["provisioningModel"] == "SPOT"
    assert fake_job.body["taskGroups"][0]["taskSpec"]["maxRetryCount"] == 1
    gcp.controller.wait_running(fake_job)
    gcp.controller.preempt(fake_job, 0)
    _wait(lambda: any(type(e).__name__ == "CallDone" for e in events), 60)
    done = [e for e in events if type(e).__name__ == "CallDone"][0]
    assert done.outcome.ok and fake_job.tasks[0].retries == 1
    ex.close()


def test_a_spot_task_preempted_past_its_retries_is_a_preempted_error(gcp):
    ex = executor(gcp, spot=True, infra_retries=0)
    events: list = []
    ex.start(events.append)
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex.attach_artifacts(open_artifacts(ARTS))
    [h] = ex.submit([Call("c1", "run-spot", tasks.nap, (30.0,), {})])
    fake_job = gcp.jobs[h.job.name]
    gcp.controller.wait_running(fake_job)
    gcp.controller.preempt(fake_job, 0)
    _wait(lambda: events and type(events[-1]).__name__ == "CallDone", 60)
    out = events[-1].outcome
    assert not out.ok and isinstance(out.exc, Preempted) and out.error_class is Preempted
    assert "Spot VM was preempted in each of 1 attempt(s); raise the executor's infra_retries" in out.error_message
    assert out.info["exit_code"] == 50001
    ex.close()


def test_cancel_deletes_the_job_and_stops_its_tasks(gcp):
    ex = executor(gcp, parallelism=2)
    events: list = []
    ex.start(events.append)
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex.attach_artifacts(open_artifacts(ARTS))
    hs = ex.submit([Call(f"c{i}", "run-cancel", tasks.nap, (60.0,), {}, index=i) for i in range(4)])
    fake_job = gcp.jobs[hs[0].job.name]
    gcp.controller.wait_running(fake_job, 2)
    ex.cancel(hs[:2])
    time.sleep(0.3)
    assert gcp.requests["delete"] == 0  # two calls of the job are still wanted
    ex.cancel(hs[2:])
    assert gcp.requests["delete"] == 1
    _wait(lambda: fake_job.name not in gcp.jobs, 10)
    assert all(t.proc is None or t.proc.poll() is not None for t in fake_job.tasks.values())
    assert not [e for e in events if type(e).__name__ == "CallDone"]  # cancelled calls are never reported
    ex.close()


def test_a_job_deleted_outside_gflow_fails_its_calls_with_the_reason(gcp):
    ex = executor(gcp)
    events: list = []
    ex.start(events.append)
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex.attach_artifacts(open_artifacts(ARTS))
    [h] = ex.submit([Call("c1", "run-x", tasks.nap, (60.0,), {})])
    gcp.controller.wait_running(gcp.jobs[h.job.name])
    gcp._delete(gcp.jobs[h.job.name])
    _wait(lambda: events and type(events[-1]).__name__ == "CallDone", 30)
    out = events[-1].outcome
    assert not out.ok and "the job was deleted outside gflow" in out.error_message
    ex.close()


def test_success_without_an_outcome_record_is_a_failure_naming_the_cause(gcp):
    ex = executor(gcp)
    events: list = []
    ex.start(events.append)
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex.attach_artifacts(open_artifacts(ARTS))
    ex.submit([Call("c1", "run-x", tasks.exit_quietly, (0,), {})])
    _wait(lambda: events and type(events[-1]).__name__ == "CallDone", 60)
    out = events[-1].outcome
    assert not out.ok and "SUCCEEDED, but call c1 has no outcome record" in out.error_message
    assert "the image's entrypoint is not 'gflow'" in out.error_message
    ex.close()


def test_a_timeout_becomes_max_run_duration_and_gpus_accelerators(gcp):
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call

    ex = executor(gcp, machine_type="n1-standard-8", gpu_type="nvidia-tesla-t4", boot_disk_gb=100,
                  service_account="runner@gflow-test.iam.gserviceaccount.com", no_external_ip=True)
    ex.start(lambda ev: None)
    ex.attach_artifacts(open_artifacts(ARTS))
    [h] = ex.submit([Call("c1", "run-gpu", tasks.on_gpu, (1,), {})])
    body = gcp.jobs[h.job.name].body
    spec = body["taskGroups"][0]["taskSpec"]
    assert spec["maxRunDuration"] == "90s" and spec["computeResource"]["memoryMib"] == "8192"
    assert spec["lifecyclePolicies"] == [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": [1, 2]}}]
    inst = body["allocationPolicy"]["instances"][0]
    assert inst["installGpuDrivers"] is True
    assert inst["policy"] == {"machineType": "n1-standard-8", "accelerators": [{"type": "nvidia-tesla-t4",
                                                                                "count": "2"}],
                              "bootDisk": {"sizeGb": "100"}}
    assert body["allocationPolicy"]["serviceAccount"]["email"].startswith("runner@")
    assert body["allocationPolicy"]["network"]["networkInterfaces"][0]["noExternalIpAddress"] is True
    assert body["allocationPolicy"]["location"]["allowedLocations"] == [f"regions/{REGION}"]
    ex.close()


def _wait(cond, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_threads_do_not_leak(gcp):
    before = threading.active_count()
    ex = executor(gcp)
    ex.close()
    assert threading.active_count() <= before + 1


def test_dev_mode_ships_the_code_as_a_bundle_with_a_prebuilt_deps_image(gcp, store):
    from gflow.artifacts import open_artifacts
    from gflow.executors.docker import split_image_record

    ex = executor(gcp, dev=True)
    r = tasks.squares.run(2, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == 1
    tag, bundle = split_image_record(store.get_run(r.id).image_tag)
    assert tag == IMAGE and bundle and bundle.startswith("sha256:")
    assert open_artifacts(ARTS).exists(bundle)  # the workers fetched their code from it
    ex2 = executor(gcp)
    ex2.pin(IMAGE, bundle)  # what replay does: the recorded image and bundle, nothing rebuilt
    assert tasks.squares.run(2, executor=ex2, artifacts=ARTS) == 1


def test_logs_are_looked_up_by_job_uid_and_task(gcp):
    from gflow.errors import ExecutorError
    from gflow.executors.gcp_batch import GcpBatchExecutor
    from gflow.executors.gcp_batch._logs import log_filter

    assert log_filter("p", {"job_uid": "gflow-square-1", "task_index": 3}) == (
        'logName="projects/p/logs/batch_task_logs" AND labels.job_uid="gflow-square-1" AND '
        'labels.task_id:"task/gflow-square-1-group0-3/"')
    assert log_filter("p", {}) is None
    with pytest.raises(ExecutorError, match="recorded no Batch job uid and task index"):  # says why there is none
        GcpBatchExecutor.fetch_logs(f"gcp-batch://{PROJECT}/{REGION}", "h", {})


def test_chunks_run_several_calls_per_task(gcp, store):
    ex = executor(gcp, chunk=3)
    r = tasks.squares.run(7, executor=ex, artifacts=ARTS, return_run=True)
    assert r.value == sum(i * i for i in range(7))
    big = max(gcp.jobs.values(), key=lambda j: j.count)
    assert big.count == 3 and big.body["taskGroups"][0]["taskCount"] == "3"  # 7 calls in tasks of 3, 3, 1
    trs = sorted((t for t in store.task_runs(r.id) if t.name == "square"), key=lambda t: t.map_index)
    assert [t.info["task_index"] for t in trs] == [0, 0, 0, 1, 1, 1, 2]
    assert [t.info["call_in_chunk"] for t in trs[:3]] == [0, 1, 2]
