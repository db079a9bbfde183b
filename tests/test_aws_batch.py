"""The AWS Batch executor against moto in server mode over real boto3 (127.0.0.1), without Docker.

moto runs the Batch side (queues, job definitions, array jobs and their children, states, TerminateJob,
CloudWatch Logs); each job's container is a real ``gflow worker`` subprocess with exactly the job's
environment (tests/aws_env.py: ``Runtime``), reading its call from moto's S3 and writing its outcome
there. Calls are counted by the executor (a boto3 event hook) and by an HTTP proxy; faults
(throttling, expired credentials) are injected by the proxy.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time

import aws_tasks
import pytest
from aws_env import BUCKET, CREDS, QUEUE, REGION, Fault, Moto, Proxy, Runtime, setup_batch, wait_for
from conftest import cli

from gflow.errors import ConfigError, TaskFailed
from gflow.executors.base import Call, CallStarted
from gflow.states import State
from gflow.usage import usage_of

pytestmark = pytest.mark.integration
IMAGE, NOOP = "gflow-test/worker:1", "gflow-test/noop:1"
ARTS = f"s3://{BUCKET}/runs"


@pytest.fixture(scope="module")
def moto():
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    m = Moto()
    yield m
    m.stop()


@pytest.fixture
def aws(moto, monkeypatch, tmp_path):
    moto.reset()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in {**CREDS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto.url}.items():
        monkeypatch.setenv(k, v)
    setup = setup_batch(moto)
    runtime = Runtime(tmp_path, {IMAGE, NOOP}, noop={NOOP})
    runtime.install(monkeypatch)
    proxies: list[Proxy] = []

    class Aws:
        def __init__(self):
            self.moto, self.runtime, self.role = moto, runtime, setup["role"]

        def proxy(self, *faults: Fault) -> Proxy:
            """Route Batch calls through a counting, fault-injecting proxy."""
            p = Proxy(moto.url, faults=list(faults))
            proxies.append(p)
            monkeypatch.setenv("AWS_ENDPOINT_URL_BATCH", p.url)
            return p

        def executor(self, **kw):
            from gflow.executors.aws_batch import AwsBatchExecutor

            base = dict(region=REGION, image=IMAGE, environment=CREDS, poll_min=0.05, poll_max=0.3, list_gap=0.2)
            return AwsBatchExecutor(kw.pop("queue", QUEUE), **{**base, **kw})

    yield Aws()
    runtime.kill_all()
    for p in proxies:
        p.stop()


def url(**extra):
    q = {"region": REGION, "image": IMAGE, "poll_min": 0.05, "poll_max": 0.3, "list_gap": 0.2, **extra,
         **{f"env.{k}": v for k, v in CREDS.items()}}
    return f"aws-batch://{QUEUE}?" + "&".join(f"{k}={v}" for k, v in q.items())


def objects(moto, prefix="runs/") -> int:
    pages = moto.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sum(len(p.get("Contents", [])) for p in pages)


# -- end to end ------------------------------------------------------------------------------------------
def test_a_flow_runs_on_batch_by_url_and_its_logs_come_from_cloudwatch(aws, store):
    from gflow.executors.aws_batch import AwsBatchExecutor

    spec = url()
    r = aws_tasks.squares.run(5, executor=spec, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == sum(i * i for i in range(5))
    rec = store.get_run(r.id)
    assert rec.executor == spec and rec.image_tag == IMAGE
    trs = store.task_runs(r.id)
    squares = sorted((t for t in trs if t.name == "square"), key=lambda t: t.map_index)
    assert len(squares) == 5 and all(t.state is State.SUCCEEDED for t in trs)
    parent = squares[0].handle.split("job=")[1].split(":")[0]
    assert [t.handle for t in squares] == [f"{IMAGE} job={parent}:{i}" for i in range(5)]
    info = squares[4].info  # what the engine recorded from the outcome
    assert info["job_id"] == f"{parent}:4" and info["array_index"] == 4 and info["exit_code"] == 0
    assert all(usage_of(t.info)["peak_memory_bytes"] > 0 for t in squares)  # measured by the worker (issue 22)
    assert squares[4].result_ref and squares[4].result_ref.startswith("sha256:")
    log = AwsBatchExecutor.fetch_logs(rec.executor, squares[4].handle, squares[4].info)
    assert '"gflow.outcome": "ok"' in log  # the worker's own output, from moto's CloudWatch Logs
    res = cli("logs", r.id, "--task-run", squares[4].id)
    assert res.returncode == 0 and "--- backend log" in res.stdout and '"gflow.outcome": "ok"' in res.stdout


def test_a_profile_table_configures_the_executor(aws, tmp_path):
    (tmp_path / "gflow.toml").write_text(f"""
[profiles.batch]
executor = "aws-batch"
artifacts = "{ARTS}"

[profiles.batch.aws_batch]
queue = "{QUEUE}"
region = "{REGION}"
image = "{IMAGE}"
environment = {{ AWS_ACCESS_KEY_ID = "testing", AWS_SECRET_ACCESS_KEY = "testing" }}
tags = {{ project = "binders" }}
poll_min = 0.05
poll_max = 0.3
""")
    r = aws_tasks.one_square.run(4, profile="batch", return_run=True)
    assert r.state is State.SUCCEEDED and r.value == 16
    jobs = aws.moto.client("batch").list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    tags = aws.moto.client("batch").describe_jobs(jobs=[jobs[0]["jobId"]])["jobs"][0]["tags"]
    assert tags["project"] == "binders" and tags["gflow:run"] == r.id


def test_one_array_job_per_fan_out_and_one_definition_per_task(aws):
    ex = aws.executor(max_array_size=3)
    r = aws_tasks.squares.run(7, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == sum(i * i for i in range(7))
    calls = ex.api_calls
    assert calls["SubmitJob"] == 2  # 7 calls packed 3 per child into one array of 3, and `total` as a plain job
    assert calls["RegisterJobDefinition"] == 2  # square and total
    batch = aws.moto.client("batch")
    jobs = batch.describe_jobs(jobs=list(ex.monitor.jobs))["jobs"]
    sizes = sorted(j.get("arrayProperties", {}).get("size", 1) for j in jobs)
    assert sizes == [1, 3]
    array = next(j for j in jobs if j.get("arrayProperties"))
    cmd = array["container"]["command"]
    assert cmd[0] == "worker" and cmd[1].startswith("sha256:") and len(cmd) == 2
    env = {e["name"]: e["value"] for e in array["container"]["environment"]}
    assert env["GFLOW_ARTIFACTS"] == ARTS and env["AWS_ENDPOINT_URL_S3"] == aws.moto.url
    assert array["tags"]["gflow:run"] == r.id and array["tags"]["gflow:task"] == "square"
    defs = batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]
    square_def = next(d for d in defs if d["jobDefinitionName"].startswith("gflow-square-"))
    req = {x["type"]: x["value"] for x in square_def["containerProperties"]["resourceRequirements"]}
    assert req == {"VCPU": "1", "MEMORY": "256"} and square_def["containerProperties"]["image"] == IMAGE
    # a second run (another executor, same settings) finds the definitions instead of registering new revisions
    ex2 = aws.executor(max_array_size=3)
    assert aws_tasks.squares.run(2, executor=ex2, artifacts=ARTS) == 1
    assert "RegisterJobDefinition" not in ex2.api_calls and ex2.api_calls["DescribeJobDefinitions"] == 2
    assert len(batch.describe_job_definitions(status="ACTIVE")["jobDefinitions"]) == 2


def test_chunks_run_several_calls_per_child(aws):
    ex = aws.executor(chunk=4)
    assert aws_tasks.squares.run(10, executor=ex, artifacts=ARTS) == sum(i * i for i in range(10))
    parent = next(j for j in ex.monitor.jobs.values() if j.size)
    assert parent.size == 3 and [len(parent.elements[e]) for e in range(3)] == [4, 4, 2]
    assert len(aws.runtime.started) == 3 + 1  # three children ran ten calls; `total` ran alone


def test_per_job_packs_a_map_into_one_array_and_each_element_is_its_own_task_run(aws, store):
    ex = aws.executor()
    r = aws_tasks.packed.run(10, 5, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED
    assert r.value == 2  # two children, one process each: the @gflow.warm value was loaded once per child
    parent = next(j for j in ex.monitor.jobs.values() if j.size)
    assert parent.size == 2 and [len(parent.elements[e]) for e in range(2)] == [5, 5]
    trs = [t for t in store.task_runs(r.id) if t.name == "warm_pid"]
    assert len(trs) == 10 and all(t.state is State.SUCCEEDED for t in trs)
    assert len({t.id for t in trs}) == 10 and sorted(t.map_index for t in trs) == list(range(10))


def test_without_per_job_a_map_over_the_array_limit_is_packed_into_one_array(aws):
    ex = aws.executor(max_array_size=4)
    assert aws_tasks.squares.run(10, executor=ex, artifacts=ARTS) == sum(i * i for i in range(10))
    parent = next(j for j in ex.monitor.jobs.values() if j.size)
    assert parent.size == 4 and sum(len(v) for v in parent.elements.values()) == 10  # 3 per child, not 3 arrays
    assert ex.api_calls["SubmitJob"] == 2


def test_direct_use_reports_result_refs_and_per_child_info(aws):
    ex = aws.executor()
    done: dict[str, object] = {}
    started: set[str] = set()
    ev = threading.Event()

    def listener(event):
        if isinstance(event, CallStarted):
            started.add(event.call_id)
        else:
            done[event.call_id] = event.outcome
            if len(done) == 5:
                ev.set()

    from gflow.artifacts import open_artifacts

    arts = open_artifacts(ARTS)
    ex.attach_artifacts(arts)
    ex.start(listener)
    calls = [Call(f"r.{i}", "r", aws_tasks.square, (i,), {}, 1, f"k{i}", i) for i in range(2)]
    calls += [Call(f"r.{i}", "r", aws_tasks.boom, ("bad input",), {}, 1, f"k{i}", i - 2) for i in (2, 3)]
    calls.append(Call("r.4", "r", aws_tasks.nap, (0.0,), {}, 1, "k4", None))  # another task: its own job
    handles = ex.submit(calls)
    assert ev.wait(60), done
    ok1, bad, single = done["r.1"], done["r.3"], done["r.4"]
    assert ok1.ok and ok1.value == 1 and arts.get(ok1.result_ref) == b"1"
    assert ok1.info["job_id"] == f"{ok1.info['array_job_id']}:1" and ok1.info["array_index"] == 1
    assert ok1.info["status"] == "SUCCEEDED" and ok1.info["exit_code"] == 0 and ok1.info["image"] == IMAGE
    assert not bad.ok and bad.error_type == "ValueError" and bad.error_message == "bad input"
    assert "raise ValueError(message)" in bad.traceback
    assert bad.info["exit_code"] == 1 and bad.info["attempts"] == 1 and bad.info["status"] == "FAILED"
    assert bad.info["log_stream"] and bad.info["array_index"] == 1 and bad.info["job_id"].endswith(":1")
    assert single.ok and single.value == 0.0 and "array_index" not in single.info  # a single call: a plain job
    assert single.info["log_stream"] and single.info["job_id"] == handles[4].job.id
    assert ex.describe_handle(handles[0]) == f"{IMAGE} job={ok1.info['array_job_id']}:0"
    assert [h.state for h in handles] == [State.SUCCEEDED] * 2 + [State.FAILED] * 2 + [State.SUCCEEDED]
    ex.close()


# -- call counts -----------------------------------------------------------------------------------------
def test_status_costs_one_describe_per_100_jobs_and_nothing_more_while_quiet(aws):
    """205 calls held running (the runtime's gate is closed): the array path polls one parent, the naive
    path 205 jobs in batches of 100; a quiet cycle lists no children."""
    from gflow.artifacts import open_artifacts

    aws.runtime.gate.clear()
    batch = aws.moto.client("batch")
    for array in (True, False):
        ex = aws.executor(array=array, poll_min=3600, poll_max=3600)
        ex.attach_artifacts(open_artifacts(ARTS))
        starts: list[str] = []
        ex.start(lambda ev, starts=starts: starts.append(ev.call_id) if isinstance(ev, CallStarted) else None)
        ex.submit([Call(f"r{array}.{i}", "r", aws_tasks.square, (i,), {}, 1, None, i) for i in range(205)])
        assert ex.api_calls["SubmitJob"] == (1 if array else 205)
        wait_for(lambda: len(batch.list_jobs(jobQueue=QUEUE, jobStatus="RUNNING")["jobSummaryList"]) >= 205,
                 what="all children running", timeout=60)
        ex.monitor.cycle()  # learns that they started (if the first automatic cycle did not)
        assert sorted(starts) == sorted(f"r{array}.{i}" for i in range(205))
        before = ex.api_calls
        ex.monitor.cycle()  # nothing changed
        after = ex.api_calls
        quiet = {op: after.get(op, 0) - before.get(op, 0) for op in ("DescribeJobs", "ListJobs")}
        assert quiet == {"DescribeJobs": 1 if array else math.ceil(205 / 100), "ListJobs": 0}
        # every cycle cost exactly ceil(jobs / 100) DescribeJobs; children were listed only while starts were seen
        assert after["DescribeJobs"] == ex.monitor.cycles * (1 if array else 3)
        assert (1 <= after["ListJobs"] < ex.monitor.cycles) if array else "ListJobs" not in after
        ex.close()
        aws.runtime.closed = True  # let the held children end (as no-ops) before the next round
        aws.runtime.gate.set()
        wait_for(lambda: not batch.list_jobs(jobQueue=QUEUE, jobStatus="RUNNING")["jobSummaryList"], timeout=60,
                 what="the held children ended")
        aws.runtime.closed = False
        aws.runtime.gate.clear()


# -- throttling ------------------------------------------------------------------------------------------
def test_throttled_submissions_are_retried_with_jittered_backoff(aws):
    from gflow.clouds.aws import Backoff

    proxy = aws.proxy(Fault("submitjob", times=3))
    slept: list[float] = []
    ex = aws.executor(backoff=Backoff(base=0.25, sleep=slept.append, rand=lambda: 0.5))
    assert aws_tasks.one_square.run(7, executor=ex, artifacts=ARTS) == 49
    assert proxy.counts["submitjob"] == ex.api_calls["SubmitJob"] == 4  # 3 refused, then accepted
    assert slept == [0.125, 0.25, 0.5]


def test_a_lost_submit_answer_is_looked_up_not_submitted_twice(aws):
    proxy = aws.proxy(Fault("submitjob", times=1, drop=True))
    ex = aws.executor()
    assert aws_tasks.one_square.run(6, executor=ex, artifacts=ARTS) == 36
    assert proxy.counts["submitjob"] == 1 and proxy.counts["listjobs"] >= 1
    jobs = aws.moto.client("batch").list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    assert len(jobs) == 1  # the job moto created is the one gflow followed; none was submitted twice


def test_a_throttling_storm_is_one_clear_error_and_stored_inputs_stay(aws):
    from gflow.clouds.aws import Backoff

    proxy = aws.proxy(Fault("submitjob", times=None))
    ex = aws.executor(backoff=Backoff(tries=5, sleep=lambda s: None))
    r = aws_tasks.one_square.run(7, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.FAILED and isinstance(r.error, TaskFailed)
    assert "AWS kept answering TooManyRequestsException to submit_job after 5 tries" in r.error.error_message
    assert "throttling storm" in r.error.error_message and proxy.counts["submitjob"] == 5
    assert objects(aws.moto) >= 2  # the call's inputs and spec are still in the store


def test_throttled_polling_still_completes(aws):
    from gflow.clouds.aws import Backoff

    proxy = aws.proxy(Fault("describejobs", times=4), Fault("listjobs", times=2))
    ex = aws.executor(backoff=Backoff(base=0.01))
    assert aws_tasks.squares.run(3, executor=ex, artifacts=ARTS) == 5
    assert proxy.counts["describejobs"] == ex.api_calls["DescribeJobs"] >= 5  # 4 refused, then answered


def test_credentials_expiring_mid_run_fail_the_calls_instead_of_hanging(aws):
    proxy = aws.proxy()
    ex = aws.executor()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=aws_tasks.naps.run(
        2, 60.0, executor=ex, artifacts=ARTS, return_run=True)))
    t.start()
    wait_for(lambda: ex.submitted_at is not None, what="the array submitted")
    proxy.faults.append(Fault("describejobs", None, 403, "ExpiredTokenException", "The security token has expired"))
    t.join(60)
    msg = str(result["r"].error)
    assert "gflow lost track of the job" in msg and "AWS rejected the credentials (ExpiredTokenException" in msg
    assert "aws batch describe-jobs" in msg


# -- bad input, caught before anything is submitted ------------------------------------------------------
def test_a_missing_queue_is_refused_before_the_run_is_recorded(aws, store):
    proxy = aws.proxy()
    with pytest.raises(ConfigError, match=f"job queue 'nope' does not exist in {REGION}.*describe-job-queues"):
        aws_tasks.squares.run(3, executor=aws.executor(queue="nope"), artifacts=ARTS)
    assert proxy.counts["submitjob"] == 0 and store.list_runs() == []


def test_expired_credentials_are_a_clear_error_up_front(aws, store):
    aws.proxy(Fault("describejobqueues", None, 403, "ExpiredTokenException", "The security token has expired"))
    with pytest.raises(ConfigError, match="AWS rejected the credentials \\(ExpiredTokenException.*refresh them"):
        aws_tasks.squares.run(3, executor=aws.executor(), artifacts=ARTS)
    assert store.list_runs() == []


def test_a_missing_role_is_refused(aws):
    with pytest.raises(ConfigError, match="job_role_arn arn:aws:iam::123456789012:role/nope: no such IAM role"):
        aws.executor(job_role_arn="arn:aws:iam::123456789012:role/nope").prepare()
    aws.executor(job_role_arn=aws.role).prepare()


def test_a_fargate_queue_with_an_ec2_platform_is_refused(aws):
    setup_batch(aws.moto, queue="gflow-fargate", fargate=True)
    with pytest.raises(ConfigError, match="runs on Fargate compute environments: use platform=FARGATE"):
        aws.executor(queue="gflow-fargate").prepare()
    aws.executor(queue="gflow-fargate", platform="FARGATE", execution_role_arn=aws.role).prepare()


def test_gpu_tasks_on_fargate_are_refused_before_submission(aws):
    proxy = aws.proxy()
    ex = aws.executor(platform="FARGATE", execution_role_arn=aws.role, check=False)
    r = aws_tasks.gpu_flow.run(executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.FAILED and "Fargate has none" in str(r.error) and proxy.counts["submitjob"] == 0


def test_a_plain_image_missing_from_its_registry_is_refused_up_front(aws, store):
    import http.server

    class NoImages(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *a):
            pass

    reg = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoImages)
    threading.Thread(target=reg.serve_forever, daemon=True).start()
    ref = f"127.0.0.1:{reg.server_address[1]}/gflow-missing:1"
    try:
        with pytest.raises(ConfigError, match=f"image {ref} is not in its registry .*push it first"):
            aws_tasks.squares.run(2, executor=aws.executor(image=ref), artifacts=ARTS)
    finally:
        reg.shutdown()
    assert store.list_runs() == []


def test_ecr_images_are_looked_up_and_repositories_created_through_the_ecr_api(aws):
    from gflow.executors.aws_batch._images import Images, is_ecr

    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com/team"
    assert is_ecr(registry) and not is_ecr("127.0.0.1:5000") and not is_ecr("ghcr.io/org")
    ecr = aws.moto.client("ecr")
    images = Images(registry=registry, ecr=lambda: ecr)
    assert not images.in_registry("gflow-design:0123456789abcdef", registry)  # no repository yet
    assert images.ensure_repository("gflow-design:0123456789abcdef") == "team/gflow-design"
    assert images.ensure_repository("gflow-design:0123456789abcdef") == "team/gflow-design"  # exists: fine
    assert not images.in_registry("gflow-design:0123456789abcdef", registry)  # repository, no image
    manifest = '{"schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json"}'
    ecr.put_image(repositoryName="team/gflow-design", imageManifest=manifest, imageTag="0123456789abcdef")
    assert images.in_registry("gflow-design:0123456789abcdef", registry)
    images.check_ref(f"{registry}/gflow-design:0123456789abcdef")
    with pytest.raises(ConfigError, match="is not in its registry 123456789012.dkr.ecr.us-east-1.amazonaws.com"):
        images.check_ref(f"{registry}/gflow-design:fedcba9876543210")


# -- failures of jobs ------------------------------------------------------------------------------------
def _failure(aws, flow, *args, **kw) -> str:
    r = flow.run(*args, executor=aws.executor(**kw), artifacts=ARTS, return_run=True)
    assert r.state is State.FAILED, r
    return str(r.error)


def test_a_task_error_carries_the_workers_traceback(aws):
    r = aws_tasks.failing.run("no luck", executor=aws.executor(), artifacts=ARTS, return_run=True)
    assert isinstance(r.error, TaskFailed) and r.error.error_type == "ValueError"
    assert r.error.error_message == "no luck" and "raise ValueError(message)" in r.error.traceback


def test_a_child_that_exits_without_an_outcome_is_named_with_its_index(aws):
    msg = _failure(aws, aws_tasks.exits, [3, 3])
    assert "FAILED without an outcome record" in msg and "(child 0 of array " in msg and "exit code 3" in msg
    assert "see the job's log" in msg


def test_a_killed_child_says_out_of_memory_or_sigkill(aws):
    msg = _failure(aws, aws_tasks.kills, 2)
    assert "exit code 137" in msg and "raise the task's Resources.memory" in msg


def test_succeeded_without_an_outcome_record_is_a_failure(aws):
    msg = _failure(aws, aws_tasks.squares, 2, image=NOOP)
    assert "SUCCEEDED, but call" in msg and "has no outcome record" in msg and "entrypoint is 'gflow'" in msg


def test_an_image_the_queue_cannot_pull(aws):
    msg = _failure(aws, aws_tasks.one_square, 2, image="gflow-test/absent:1")
    assert "FAILED without an outcome record" in msg and "can pull image gflow-test/absent:1" in msg


def test_a_manifest_missing_from_s3_is_named(aws):
    ex = aws.executor()
    aws.runtime.gate.clear()
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=aws_tasks.squares.run(
        3, executor=ex, artifacts=ARTS, return_run=True)))
    t.start()
    wait_for(lambda: any(j.size for j in list(ex.monitor.jobs.values())), what="the array submitted")
    job = next(j for j in ex.monitor.jobs.values() if j.size)
    from gflow.artifacts.s3 import S3ArtifactStore

    arts = S3ArtifactStore(BUCKET, "runs")
    aws.moto.client("s3").delete_object(Bucket=BUCKET, Key=arts.key(job.manifest))
    aws.runtime.gate.set()
    t.join(90)
    msg = str(result["r"].error)
    assert f"array manifest {job.manifest} is missing from {ARTS}" in msg and "(child " in msg
    assert "nothing of the stored results is lost" in msg


# -- cancel and timeouts ---------------------------------------------------------------------------------
def test_cancel_terminates_a_whole_array_with_one_call(aws):
    ex = aws.executor()
    engines = []
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=aws_tasks.naps.run(
        3, 60.0, executor=ex, artifacts=ARTS, return_run=True, observer=lambda rid, e: engines.append(e))))
    t.start()
    wait_for(lambda: aws.runtime.running() == 3, timeout=60, what="3 children running")
    engines[0].cancel(None, "test cancel")
    t.join(30)
    assert result["r"].state is State.CANCELLED
    assert ex.api_calls["TerminateJob"] == 1
    parent = next(j for j in ex.monitor.jobs.values() if j.size)
    d = aws.moto.client("batch").describe_jobs(jobs=[parent.id])["jobs"][0]
    assert d["statusReason"] == "gflow: cancelled"


def test_a_timed_out_child_is_terminated_alone(aws):
    ex = aws.executor()
    t0 = time.monotonic()
    r = aws_tasks.limited.run([0.1, 60.0], executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.FAILED and "exceeded its timeout of 6s" in str(r.error)
    assert time.monotonic() - t0 < 30 and ex.api_calls["TerminateJob"] == 1
    parent = next(j for j in ex.monitor.jobs.values() if j.size)
    batch = aws.moto.client("batch")
    wait_for(lambda: batch.describe_jobs(jobs=[f"{parent.id}:1"])["jobs"][0]["status"] == "FAILED",
             what="the child terminated")
    assert batch.describe_jobs(jobs=[f"{parent.id}:1"])["jobs"][0]["statusReason"] == "gflow: cancelled"
    assert batch.describe_jobs(jobs=[f"{parent.id}:0"])["jobs"][0]["status"] == "SUCCEEDED"

