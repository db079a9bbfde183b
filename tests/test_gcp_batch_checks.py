"""Google Cloud Batch: every error before anything is submitted (one line naming the fix), Batch's limits
(tasks per group, parallelism, 1 MB definitions, 429 back-off), what polling costs, and the fake's own
schema check. The real google-cloud-batch client (REST) against the fake Batch v1 server; no task runs
here (the controller, where present, only moves task states)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from gflow.errors import ConfigError, ExecutorError

pytestmark = pytest.mark.integration
pytest.importorskip("google.cloud.batch_v1")
pytest.importorskip("gcp_storage_emulator")

from tests.gcp_fake import tasks  # noqa: E402
from tests.gcp_fake.controller import FakeBatchController  # noqa: E402
from tests.gcp_fake.server import FakeBatch, Fault  # noqa: E402

PROJECT, REGION, IMAGE = "gflow-test", "us-central1", "us-central1-docker.pkg.dev/gflow-test/gflow/app:1"
BUCKET = "gflow-test"
ARTS = f"gs://{BUCKET}/runs"


@pytest.fixture(scope="module")
def emulator():
    from tests.gcp_fake.storage import Emulator

    e = Emulator(buckets=(BUCKET,))
    yield e
    e.stop()


@pytest.fixture
def gcs(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    monkeypatch.delenv("GOOGLE_CLOUD_PROJECT", raising=False)
    return emulator


@pytest.fixture
def fake(gcs):
    with FakeBatch() as f:
        yield f


def executor(fake, **kw):
    from gflow.executors.gcp_batch import GcpBatchExecutor

    base = dict(endpoint=fake.url, image=IMAGE, poll_min=0.05, poll_max=0.2, list_gap=0.2)
    return GcpBatchExecutor(kw.pop("project", PROJECT), kw.pop("region", REGION), **{**base, **kw})


def started(ex, arts=ARTS):
    from gflow.artifacts import open_artifacts

    events: list = []
    ex.start(events.append)
    ex.attach_artifacts(open_artifacts(arts))
    return events


def calls(n, task=None, run="run-1"):
    from gflow.executors.base import Call

    return [Call(f"c{i}", run, task or tasks.square, (i,), {}, index=i) for i in range(n)]


# -- before anything is submitted ------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, message", [
    ("gcp-batch://", "no project given; use gcp-batch://PROJECT/REGION .* or set GOOGLE_CLOUD_PROJECT"),
    ("gcp-batch:///us-central1", "no project given"),
    ("gcp-batch://my-project", "no region given; use gcp-batch://PROJECT/REGION .*'gcloud batch locations list'"),
    ("gcp-batch://my-project/us-central1-a", "'us-central1-a' is not a region \\(that is a zone; its region is "
                                             "us-central1\\)"),
    ("gcp-batch://My_Project/us-central1", "'My_Project' is not a project id"),
    ("gcp-batch://my-project/us-central1?machine=n9-mega-3", "unknown machine type 'n9-mega-3'; list the types of "
                                                             "the region with 'gcloud compute machine-types list"),
    ("gcp-batch://my-project/us-central1?gpu=nvidia-rtx-9090", "unknown GPU type 'nvidia-rtx-9090'"),
    ("gcp-batch://my-project/us-central1?colour=red", "unknown option 'colour'; known: "),
    ("gcp-batch://my-project/us-central1?registry=us-docker.pkg.dev/x", "is not an Artifact Registry repository"),
    ("gcp-batch://a/b/c", "expected gcp-batch://PROJECT/REGION"),
])
def test_bad_settings_are_one_line_naming_the_fix(gcs, spec, message):
    from gflow.executors import get_executor

    with pytest.raises(ConfigError, match=message) as e:
        get_executor(spec)
    assert "\n" not in str(e.value)


def test_the_project_can_come_from_the_environment_and_settings_from_a_profile(gcs, monkeypatch):
    from gflow.executors import get_executor
    from gflow.executors.gcp_batch import GcpBatchExecutor

    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "env-project")
    ex = get_executor("gcp-batch:///europe-west4?spot=1&max_concurrency=50&label.stage=screening")
    assert isinstance(ex, GcpBatchExecutor) and ex.project == "env-project" and ex.region == "europe-west4"
    assert ex.spot and ex.parallelism == 50 and ex.labels == {"stage": "screening"}
    ex2 = get_executor("gcp_batch", settings={"project": "p-from-profile", "region": "us-east1", "machine_type":
                                              "c2-standard-16", "labels": {"team": "Binders"}})
    assert (ex2.project, ex2.region, ex2.machine_type, ex2.labels) == ("p-from-profile", "us-east1", "c2-standard-16",
                                                                       {"team": "binders"})
    assert ex2.url == "gcp-batch://p-from-profile/us-east1?machine=c2-standard-16&label.team=binders"
    with pytest.raises(ConfigError, match="gcp_batch settings: unknown keys \\['queue'\\]"):
        get_executor("gcp-batch", settings={"project": "p-from-profile", "region": "us-east1", "queue": "q"})


def test_an_api_not_enabled_is_refused_before_the_run_is_recorded(gcs, store):
    with FakeBatch(disabled=True) as fake:
        with pytest.raises(ConfigError, match="the Batch API is not enabled in project gflow-test; enable it with "
                                              "'gcloud services enable batch.googleapis.com"):
            tasks.squares.run(3, executor=executor(fake), artifacts=ARTS)
        assert fake.requests["list"] == 1 and fake.requests["create"] == 0
    assert store.list_runs() == []


def test_a_region_batch_does_not_know_is_refused(fake):
    fake.regions.discard("asia-southeast1")
    with pytest.raises(ConfigError, match="Batch does not know region 'asia-southeast1' in project gflow-test"):
        executor(fake, region="asia-southeast1").prepare()


def test_no_permission_on_the_bucket_is_refused_before_any_job(fake, gcs, monkeypatch):
    from tests.gcp_fake.storage import Fault as StorageFault
    from tests.gcp_fake.storage import Proxy

    proxy = Proxy(gcs.url, faults=[StorageFault("GET testIamPermissions", 403, "permission denied")])
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    try:
        ex = executor(fake)
        started(ex)
        with pytest.raises(ConfigError, match="no permission on bucket 'gflow-test'; grant the driver's and the jobs' "
                                              "service accounts roles/storage.objectUser"):
            ex.submit(calls(2))
        assert fake.requests["create"] == 0
    finally:
        proxy.stop()


def test_a_missing_bucket_or_a_local_store_is_refused_before_any_job(fake, tmp_path):
    ex = executor(fake)
    started(ex, "gs://no-such-bucket/runs")
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist; create it \\(gcloud storage"):
        ex.submit(calls(1))
    ex2 = executor(fake)
    started(ex2, str(tmp_path / "local"))
    with pytest.raises(ConfigError, match="the gcp-batch executor needs a gs:// artifact store"):
        ex2.submit(calls(1))
    assert fake.requests["create"] == 0


# -- Batch's limits ----------------------------------------------------------------------------------------------
def test_fan_outs_past_max_tasks_are_split_evenly_and_parallelism_is_capped(fake):
    ex = executor(fake, max_tasks=3, parallelism=9000)
    started(ex)
    hs = ex.submit(calls(7, tasks.square.with_options(per_job=1)))  # per_job=1: one call per task, so 3 jobs
    assert sorted(j.count for j in fake.jobs.values()) == [2, 2, 3]
    assert all(j.body["taskGroups"][0]["parallelism"] == str(j.count) for j in fake.jobs.values())
    assert len({h.job.name for h in hs}) == 3
    ex.close()
    fake.jobs.clear()
    ex = executor(fake, max_tasks=3)
    started(ex)
    hs = ex.submit(calls(7, run="run-2"))  # without per_job the fan-out is packed to fit one job (issue 18)
    assert [j.count for j in fake.jobs.values()] == [3] and [h.job.chunk for h in hs] == [3] * 7
    ex.close()
    assert executor(fake, parallelism=50).parallelism_for(tasks.square.with_options(max_concurrency=20)) == 20
    assert executor(fake).parallelism_for(tasks.square.with_options(max_concurrency=20)) == 20
    assert executor(fake, parallelism=50).parallelism_for(tasks.square) == 50
    from gflow.executors.gcp_batch._jobs import Placement, job_request

    body = job_request(task=tasks.square, image=IMAGE, commands=["worker", "x"], count=100_000, parallelism=9000,
                       environment={}, labels={}, placement=Placement(REGION))
    assert body["taskGroups"][0]["parallelism"] == "5000" and body["taskGroups"][0]["taskCount"] == "100000"
    with pytest.raises(ConfigError, match="a job has 1..100000 tasks, not 100001"):
        job_request(task=tasks.square, image=IMAGE, commands=["worker", "x"], count=100_001, parallelism=None,
                    environment={}, labels={}, placement=Placement(REGION))


def test_a_definition_over_1_mb_is_refused_before_it_is_sent(fake):
    ex = executor(fake, environment={"BIG": "x" * (1 << 20)})
    started(ex)
    with pytest.raises(ConfigError, match="over Batch's 1 MB limit; its environment .* is too large"):
        ex.submit(calls(2))
    assert fake.requests["create"] == 0


def test_429_is_backed_off_with_jitter_and_counted(fake):
    from gflow.clouds.gcp import Backoff

    now = [0.0]
    fake.clock = lambda: now[0]
    fake.limits["mutation"] = 2
    slept: list[float] = []

    def sleep(s):
        slept.append(s)
        now[0] += 61  # the quota's minute passes

    ex = executor(fake, backoff=Backoff(sleep=sleep, rand=lambda: 0.5))
    started(ex)
    for i in range(3):
        ex.submit(calls(2, run=f"run-{i}"))
    assert fake.requests["throttled"] == 1 and ex.api_calls["throttled"] == 1
    assert slept == [0.25] and len(fake.jobs) == 3 and ex.api_calls["jobs.create"] == 4
    ex.close()


def test_a_throttling_storm_is_one_clear_error_and_no_job_is_left(fake):
    from gflow.clouds.gcp import Backoff

    fake.faults.append(Fault("create", 429, "Quota exceeded", "RATE_LIMIT_EXCEEDED", times=None))
    ex = executor(fake, backoff=Backoff(sleep=lambda s: None, tries=4))
    started(ex)
    with pytest.raises(ExecutorError, match="Google kept throttling the requests \\(429 after the retries\\)"):
        ex.submit(calls(2))
    assert fake.requests["create"] == 4 and not fake.jobs


def test_a_create_whose_answer_was_lost_is_not_made_twice(fake):
    from gflow.clouds.gcp import Backoff

    fake.faults.append(Fault("create", 503, "backend unavailable", after=True))
    ex = executor(fake, backoff=Backoff(sleep=lambda s: None))
    started(ex)
    hs = ex.submit(calls(3))
    assert fake.requests["create"] == 2 and len(fake.jobs) == 1  # the second try got 409: that job is ours
    assert hs[0].job.name in fake.jobs
    ex.close()


# -- what polling costs --------------------------------------------------------------------------------------------
def test_status_costs_one_get_per_job_per_cycle_and_lists_only_changed_states(fake):
    with FakeBatchController(fake, runner="none") as ctl:
        ex = executor(fake, poll_min=1000, poll_max=1000)
        events = started(ex)
        hs = ex.submit(calls(2500))
        ex.submit(calls(3, task=tasks.nap, run="run-2"))
        time.sleep(0.5)  # the monitor thread's cycle (each submit wakes it) is over; its next is 1000 s away
        base, cycles = dict(fake.requests), ex.monitor.cycles
        for _ in range(3):
            ex.monitor.cycle()  # quiet: one jobs.get per job, nothing listed
        assert ex.monitor.cycles - cycles == 3
        assert fake.requests["get"] - base["get"] == 6 and fake.requests["tasks.list"] == base.get("tasks.list", 0)
        job = fake.jobs[hs[0].job.name]
        ctl.move(job, range(10), "RUNNING")
        before = dict(fake.requests)
        ex.monitor.cycle()
        assert fake.requests["get"] - before["get"] == 2
        assert fake.requests["tasks.list"] - before.get("tasks.list", 0) == 1
        assert sum(type(e).__name__ == "CallStarted" for e in events) == 10
        ctl.move(job, range(2500), "SUCCEEDED", 0)  # with no outcome records: each a failure that says so
        before = dict(fake.requests)
        ex.monitor.cycle()
        assert fake.requests["tasks.list"] - before["tasks.list"] == 3  # 2,500 listed in pages of 1,000
        done = [e for e in events if type(e).__name__ == "CallDone"]
        assert len(done) == 2500 and not any(e.outcome.ok for e in done)
        c7 = next(e for e in done if e.call_id == "c7").outcome
        assert "SUCCEEDED, but call c7 has no outcome record" in c7.error_message
        ex.close()


# -- the fake refuses what the v1 API refuses ------------------------------------------------------------------------
def _post(fake, body, job_id="j1"):
    req = urllib.request.Request(f"{fake.url}/v1/projects/{PROJECT}/locations/{REGION}/jobs?jobId={job_id}",
                                 data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_fake_refuses_fields_the_v1_api_does_not_have(fake):
    from gflow.executors.gcp_batch._jobs import Placement, job_request, to_message

    good = job_request(task=tasks.square, image=IMAGE, commands=["worker", "x"], count=2, parallelism=None,
                       environment={}, labels={"a": "b"}, placement=Placement(REGION, machine_type="e2-standard-4"))
    to_message(good)  # the client's own types take it
    bad = json.loads(json.dumps(good))
    bad["taskGroups"][0]["taskSpec"]["retries"] = 3  # AWS's name; v1 has maxRetryCount
    code, out = _post(fake, bad)
    assert code == 400 and out["error"]["status"] == "INVALID_ARGUMENT" and "retries" in out["error"]["message"]
    with pytest.raises(Exception, match="retries"):
        to_message(bad)
    wrong_machine = json.loads(json.dumps(good))
    wrong_machine["allocationPolicy"]["instances"][0]["policy"]["machineType"] = "n9-mega-3"
    assert _post(fake, wrong_machine)[0] == 400
    huge = json.loads(json.dumps(good))
    huge["taskGroups"][0]["taskCount"] = "100001"
    assert _post(fake, huge)[1]["error"]["message"].startswith("task_count 100001 exceeds the limit")
    assert _post(fake, good, job_id="Bad_Id")[0] == 400
    assert _post(fake, good)[0] == 200 and _post(fake, good)[0] == 409


def test_missing_credentials_are_one_line_naming_the_fix(monkeypatch, tmp_path):
    from gflow.artifacts.gcs import GcsArtifactStore
    from gflow.executors.gcp_batch import GcpBatchExecutor

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(ConfigError, match="no usable Google credentials .*; run 'gcloud auth application-default "
                                          "login' or set GOOGLE_APPLICATION_CREDENTIALS") as e:
        GcpBatchExecutor(PROJECT, REGION).prepare()  # the real endpoint: nothing is sent without credentials
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="artifact store gs://gflow-test/x\\?project=gflow-test: no usable Google "
                                          "credentials"):
        GcsArtifactStore(BUCKET, "x", project=PROJECT).check()


def test_a_gpu_on_a_machine_family_it_does_not_run_on_is_refused_before_the_job(fake):
    from gflow.executors.gcp_batch._jobs import Placement, job_request

    def body(**kw):
        return job_request(task=tasks.on_gpu, image=IMAGE, commands=["worker", "x"], count=1, parallelism=None,
                           environment={}, labels={}, placement=Placement(REGION, **kw))

    assert body(machine_type="g2-standard-8", gpu_type="nvidia-l4")["allocationPolicy"]["instances"][0]["policy"][
        "accelerators"] == [{"type": "nvidia-l4", "count": "2"}]
    body()  # a T4 on the N1 machine Batch picks
    with pytest.raises(ConfigError, match="GPU type 'nvidia-l4' runs on g2 machines, not the machine Batch would "
                                          "pick; set machine_type to a g2 type"):
        body(gpu_type="nvidia-l4")
    with pytest.raises(ConfigError, match="GPU type 'nvidia-tesla-t4' runs on n1 machines, not e2-standard-4"):
        body(machine_type="e2-standard-4")
    ex = executor(fake, machine_type="e2-standard-4")
    started(ex)
    with pytest.raises(ConfigError, match="runs on n1 machines"):
        ex.submit(calls(1, task=tasks.on_gpu))
    assert fake.requests["create"] == 0
