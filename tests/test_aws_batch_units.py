"""The AWS Batch executor's pure parts: options, job definitions, resources, backoff and the poll cadence.
No service is needed (everything that talks to AWS is tested against moto in test_aws_batch.py)."""

from __future__ import annotations

import pytest

import gflow
from gflow.clouds.aws import Backoff
from gflow.errors import ConfigError
from gflow.executors.aws_batch import _jobs as jobs
from gflow.executors.aws_batch._monitor import Cadence, element_of
from gflow.executors.aws_batch._options import check_keywords, parse_url

pytest.importorskip("boto3")


def test_url_options_become_keywords():
    kw = parse_url("aws-batch://research-gpu?region=us-east-1&chunk=4&array=0&poll_min=0.5&tag.team=design"
                   "&env.MODE=fast&secret.TOKEN=arn:aws:secretsmanager:us-east-1:123456789012:secret:tok"
                   "&job_role=arn:aws:iam::123456789012:role/gflow-job&registry=1.dkr.ecr.us-east-1.amazonaws.com")
    assert kw == {"queue": "research-gpu", "region": "us-east-1", "chunk": 4, "array": False, "poll_min": 0.5,
                  "tags": {"team": "design"}, "environment": {"MODE": "fast"},
                  "secrets": {"TOKEN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:tok"},
                  "job_role_arn": "arn:aws:iam::123456789012:role/gflow-job",
                  "image_registry": "1.dkr.ecr.us-east-1.amazonaws.com"}
    arn = "arn:aws:batch:us-east-1:123456789012:job-queue/research-gpu"
    assert parse_url(f"aws_batch://{arn}?region=us-east-1")["queue"] == arn


@pytest.mark.parametrize("url, words", [
    ("aws-batch://?region=us-east-1", "names no job queue"),
    ("aws-batch://q?regoin=us-east-1", "unknown option 'regoin'"),
    ("aws-batch://q?chunk=many", "chunk='many' is not a number"),
    ("aws-batch://q?array=maybe", "is not a boolean"),
    ("dask://q", "not an AWS Batch executor URL"),
])
def test_bad_urls_say_what_is_wrong(url, words):
    with pytest.raises(ConfigError, match=words):
        parse_url(url)


def test_registry_finds_the_executor_by_both_schemes_and_round_trips_its_url():
    from gflow.executors import get_executor, known_executors
    from gflow.executors.aws_batch import AwsBatchExecutor

    assert {"aws-batch", "aws_batch"} <= set(known_executors())
    ex = get_executor("aws-batch://research-gpu?region=us-east-1&chunk=2&tag.team=x")
    assert isinstance(ex, AwsBatchExecutor) and ex.queue == "research-gpu" and ex.chunk == 2
    assert ex.capabilities.array_jobs and ex.capabilities.reports_start
    again = get_executor(ex.url)
    assert (again.queue, again.region, again.chunk, again.tags) == ("research-gpu", "us-east-1", 2, {"team": "x"})
    assert isinstance(get_executor("aws_batch://q?region=eu-west-1"), AwsBatchExecutor)


def test_profile_settings_under_the_url_which_wins():
    from gflow.executors import get_executor

    settings = {"queue": "q1", "region": "us-east-1", "tags": {"a": "1", "b": "0"}, "job_role": ROLE, "chunk": 2}
    ex = get_executor("aws-batch://q2?region=eu-west-1&tag.b=2", settings)
    assert (ex.queue, ex.region, ex.tags, ex.job_role_arn, ex.chunk) == ("q2", "eu-west-1", {"a": "1", "b": "2"},
                                                                         ROLE, 2)
    assert get_executor("aws-batch", {"queue": "q1"}).queue == "q1"  # the queue from the profile alone
    with pytest.raises(ConfigError, match="names no job queue"):
        get_executor("aws-batch", {"region": "us-east-1"})
    with pytest.raises(ConfigError, match="unknown keys \\['bogus'\\]"):
        get_executor("aws-batch://q", {"bogus": 1})


ROLE = "arn:aws:iam::123456789012:role/gflow-job"


def test_profile_settings_are_keywords_and_unknown_ones_are_refused():
    from gflow.executors.aws_batch import AwsBatchExecutor

    ex = AwsBatchExecutor.from_spec("aws-batch", **{"queue": "q", "region": "us-east-1", "platform": "FARGATE",
                                                    "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
                                                    "tags": {"project": "p"}, "log_group": "/gflow/jobs"})
    assert ex.platform == "FARGATE" and ex.log_group == "/gflow/jobs"
    with pytest.raises(ConfigError, match="unknown keys \\['qeue'\\]"):
        check_keywords({"qeue": "q"})


@pytest.mark.parametrize("kw, words", [
    ({"platform": "FARGATE"}, "Fargate jobs need execution_role_arn"),
    ({"platform": "lambda"}, "platform must be EC2 or FARGATE"),
    ({"job_role_arn": "gflow-job"}, "is not an IAM role ARN"),
    ({"secrets": {"TOKEN": "hunter2 plain text!"}}, "passed by reference"),
    ({"environment": {"AWS_BATCH_JOB_ID": "x"}}, "reserved"),
    ({"chunk": 0}, "chunk must be at least 1"),
    ({"max_array_size": 20000}, "2..10000"),
])
def test_bad_settings_fail_at_construction(kw, words):
    from gflow.executors.aws_batch import AwsBatchExecutor

    with pytest.raises(ConfigError, match=words):
        AwsBatchExecutor("q", region="us-east-1", **kw)


def test_region_typo_names_the_closest_region(monkeypatch):
    from gflow.executors.aws_batch import AwsBatchExecutor

    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_BATCH"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="'us-east1' is not an AWS region with batch; did you mean 'us-east-1'"):
        AwsBatchExecutor("q", region="us-east1").prepare()


def test_resources_map_to_batch_requirements():
    res = gflow.Resources(cpu=1.5, memory="3Gi", gpu=2)
    assert jobs.resource_requirements(res, "EC2", task="t") == [
        {"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "3072"}, {"type": "GPU", "value": "2"}]
    assert jobs.resource_requirements(gflow.Resources(), "EC2", task="t")[1]["value"] == str(jobs.DEFAULT_MEMORY_MIB)
    # Fargate: the smallest valid combination that covers the request
    assert jobs.resource_requirements(gflow.Resources(cpu=0.3, memory="600Mi"), "FARGATE", task="t") == [
        {"type": "VCPU", "value": "0.5"}, {"type": "MEMORY", "value": "1024"}]
    assert jobs.resource_requirements(gflow.Resources(cpu=1, memory="9Gi"), "FARGATE", task="t") == [
        {"type": "VCPU", "value": "2"}, {"type": "MEMORY", "value": "9216"}]
    with pytest.raises(ConfigError, match="Fargate has none"):
        jobs.resource_requirements(gflow.Resources(gpu=1), "FARGATE", task="score")
    with pytest.raises(ConfigError, match="more than a Fargate job can have"):
        jobs.resource_requirements(gflow.Resources(cpu=32), "FARGATE", task="t")


def test_job_definitions_are_named_by_their_content():
    def spec(**kw):
        base = dict(image="reg/gflow-x:1", resources=(("VCPU", "1"), ("MEMORY", "2048")), timeout=120)
        return jobs.DefinitionSpec(**{**base, **kw})

    a, b = spec(), spec(tags=(("team", "x"),))
    assert a.digest() == b.digest()  # tags are labels, not part of what the job runs
    for other in (spec(image="reg/gflow-x:2"), spec(timeout=60), spec(attempts=1),
                  spec(resources=(("VCPU", "2"), ("MEMORY", "2048"))), spec(environment=(("A", "1"),))):
        assert other.digest() != a.digest()
    name = jobs.definition_name("gflow", "score.v2 (gpu)", a.digest())
    assert name == f"gflow-score-v2--gpu-{a.digest()}" and len(jobs.definition_name("g", "x" * 300, "d" * 16)) <= 128
    req = a.request(name, a.digest())
    assert req["timeout"] == {"attemptDurationSeconds": 120} and req["tags"]["gflow:definition"] == a.digest()
    assert req["retryStrategy"]["evaluateOnExit"][0] == {"onStatusReason": "Host EC2*", "action": "RETRY"}
    assert req["retryStrategy"]["evaluateOnExit"][-1] == {"onReason": "*", "action": "EXIT"}
    fargate = spec(platform="FARGATE", execution_role_arn="arn:aws:iam::1:role/x").request(name, "d")
    assert fargate["platformCapabilities"] == ["FARGATE"]
    assert fargate["containerProperties"]["networkConfiguration"] == {"assignPublicIp": "DISABLED"}


def test_timeouts_names_and_tags_fit_batch_limits():
    assert jobs.attempt_seconds(None, 1) is None
    assert jobs.attempt_seconds(5, 1) == 60  # Batch's minimum
    assert jobs.attempt_seconds(100, 4) == 400  # a child runs chunk calls
    name = jobs.job_name("gflow", "étude/score", "20261130-072118-d19205", "sha256:" + "ab12" * 16)
    assert name == "gflow--tude-score-20261130-072118-d19205-ab12ab12ab12"
    assert jobs.job_name("_x", "t", "r")[0].isalnum()
    assert jobs.job_name("g", "t" * 300, "r", "sha256:" + "c" * 64).endswith("-cccccccccccc")
    assert len(jobs.job_name("g", "t" * 300, "r", "sha256:" + "c" * 64)) == 128
    with pytest.raises(ConfigError, match="at most 45"):
        jobs.clean_tags({str(i): i for i in range(46)})


def test_backoff_is_exponential_with_full_jitter_and_capped():
    slept: list[float] = []
    b = Backoff(base=0.25, cap=2.0, sleep=slept.append, rand=lambda: 1.0)
    for n in range(6):
        b.wait(n)
    assert slept == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    import random

    r = random.Random(7)
    b = Backoff(base=0.25, cap=20.0, rand=r.random, sleep=lambda s: None)
    delays = [b.delay(n) for n in range(8)]
    assert all(0 <= d <= 0.25 * 2 ** n for n, d in enumerate(delays)) and len(set(delays)) == 8


def test_cadence_backs_off_while_quiet_and_snaps_back_on_change():
    c = Cadence(low=1.0, high=30.0)
    assert [c.next(False) for _ in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert c.next(True) == 1.0
    # polling for an hour with nothing changing costs a handful of cycles, not 3,600
    c.reset()
    t, cycles = 0.0, 0
    while t < 3600:
        t += c.next(False)
        cycles += 1
    assert cycles <= 3600 / 30 + 5


def test_child_index_from_array_properties_or_job_id():
    assert element_of({"jobId": "abc:7"}) == 7
    assert element_of({"jobId": "abc:7", "arrayProperties": {"index": 3}}) == 3



def test_a_backend_table_registry_wins_over_the_profile_under_either_name(tmp_path, monkeypatch):
    """``registry`` is AWS Batch's alias of ``image_registry``: the profile's default must not override it."""
    from gflow.config import load_profile
    from gflow.executors.aws_batch._options import merge

    monkeypatch.chdir(tmp_path)
    (tmp_path / "gflow.toml").write_text('[profiles.default]\nimage_registry = "profile.example.com"\n'
                                         '[profiles.default.aws_batch]\nregistry = "table.example.com"\n')
    prof = load_profile()
    assert merge("aws-batch://q", prof.backends["aws_batch"])["image_registry"] == "table.example.com"
    assert prof.backends["volcano"]["registry"] == "profile.example.com"  # no table of its own: the profile's


def test_server_errors_that_outlast_the_retries_are_not_called_throttling():
    """A 5xx answered on every try is retried (idempotent calls), then reported as what it was."""
    import botocore.exceptions as bx

    from gflow.clouds.aws import call
    from gflow.errors import ExecutorError

    class Client:
        def __init__(self, code, status):
            self.code, self.status, self.tries = code, status, 0

        def describe_jobs(self, **_):
            self.tries += 1
            raise bx.ClientError({"Error": {"Code": self.code, "Message": "m"},
                                  "ResponseMetadata": {"HTTPStatusCode": self.status}}, "DescribeJobs")

    busy = Client("InternalError", 500)
    with pytest.raises(ExecutorError, match="describe_jobs failed after 3 tries") as e:
        call(busy, "describe_jobs", Backoff(tries=3, sleep=lambda s: None), what="polling", jobs=["j"])
    assert busy.tries == 3 and "throttling" not in str(e.value)
    slow = Client("TooManyRequestsException", 429)
    with pytest.raises(ExecutorError, match="kept answering TooManyRequestsException.*throttling storm"):
        call(slow, "describe_jobs", Backoff(tries=3, sleep=lambda s: None), what="polling", jobs=["j"])
    assert slow.tries == 3


class _FakeBatch:
    """DescribeJobs answers set by the test (the real API is exercised against moto in test_aws_batch.py)."""

    def __init__(self):
        self.jobs = {}
        self.describes = 0
        self.terminated = []

    def describe(self, ids):
        self.describes += 1
        return [self.jobs[i] for i in ids if i in self.jobs]

    def children(self, array_id, status):
        return []

    def terminate(self, ids, reason):
        self.terminated += ids


@pytest.mark.parametrize("detail, cls, etype", [
    ({"statusReason": "CannotPullContainerError: pull access denied"}, gflow.errors.ImagePullFailed,
     "gflow.errors.ImagePullFailed"),
    ({"statusReason": "Host EC2 (instance i-0abc) terminated."}, gflow.Preempted, "gflow.errors.Preempted"),
    ({"statusReason": "Essential container in task exited",
      "container": {"exitCode": 137, "reason": "OutOfMemoryError: Container killed due to memory usage"}},
     gflow.OutOfMemory, "gflow.errors.OutOfMemory"),
    ({"statusReason": "Job attempt duration exceeded timeout"}, gflow.TaskTimeout, "gflow.errors.TaskTimeout"),
    ({"statusReason": "Essential container in task exited", "container": {"exitCode": 1}}, gflow.ExecutorError,
     "gflow.errors.ExecutorError"),
])
def test_batch_failures_without_a_record_carry_their_class(tmp_path, detail, cls, etype):
    """The AWS Batch handler on the shared monitor, cycled by hand with a fake clock: a job that FAILED
    without an outcome record is reported once, with the class of the one failure map."""
    import flows_basic as fb

    from gflow.artifacts import open_artifacts
    from gflow.executors.aws_batch._monitor import BatchHandler, BatchMonitor, Handle, Job
    from gflow.executors.base import Call, CallDone, CallStarted

    api = _FakeBatch()
    handler = BatchHandler(api, open_artifacts(str(tmp_path / "arts")), log_group="/aws/batch/job", queue="q")
    now = [100.0]
    mon = BatchMonitor(handler, clock=lambda: now[0])
    events = []
    mon.start(events.append)
    task = fb.inc.with_options(resources=gflow.Resources(memory="2Gi"))
    job = Job("job-1", "gflow-inc", 0, "img:1", None)
    h = Handle(Call("c1", "r1", task, (1,), {}), job, 0, 0, "sha256:" + "0" * 64)
    job.elements[0] = [h]
    mon.add(job)
    mon.track([h], thread=False)
    api.jobs["job-1"] = {"jobId": "job-1", "status": "RUNNING", "startedAt": 5000}
    mon.cycle()
    assert events == [CallStarted("c1", 1, 5.0, None)]
    api.jobs["job-1"] = {"jobId": "job-1", "status": "FAILED", "startedAt": 5000, "stoppedAt": 9000, **detail}
    now[0] += 10
    mon.cycle()
    mon.cycle()
    assert len(events) == 2 and isinstance(events[1], CallDone)
    out = events[1].outcome
    assert not out.ok and out.error_class is cls and out.error_type == etype
    assert out.info["job_id"] == "job-1" and out.started == 5.0 and out.ended == 9.0
    if cls is gflow.OutOfMemory:
        assert out.exc.requested == 2 << 30
    assert api.describes == 2  # nothing left to ask about after the outcome
    mon.close()
