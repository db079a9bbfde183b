"""AWS Batch, issue 23 items 3, 6 and 9, against moto in server mode over real boto3 (127.0.0.1): setup errors
are one line before the run is recorded (the bucket, a local store, a region that is not one), a flow's plain
image reference is run as given, and ``gflow logs --task-run`` prints the CloudWatch log or says why there is
none. Fixtures are those of tests/test_aws_batch.py."""

from __future__ import annotations

import time

import aws_tasks
import pytest
import test_aws_batch as shared
from conftest import ROOT, cli

from gflow.errors import ConfigError
from gflow.states import State

pytestmark = pytest.mark.integration
moto, aws = shared.moto, shared.aws  # the fixtures of tests/test_aws_batch.py
ARTS, IMAGE, url = shared.ARTS, shared.IMAGE, shared.url


def one_line_before_the_run(store, proxy, words: list[str], run) -> str:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as ei:
        run()
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert store.list_runs() == [] and proxy.counts["submitjob"] == 0 and proxy.counts["registerjobdefinition"] == 0
    assert time.monotonic() - t0 < 10  # no retries
    return msg


@pytest.mark.parametrize("artifacts, words", [
    ("s3://no-such-bucket/runs", ["bucket 'no-such-bucket' does not exist; create it (aws s3 mb s3://no-such-bucket)"]),
    ("LOCAL", ["needs an S3 artifact store", "Batch jobs cannot reach"]),
])
def test_a_missing_bucket_or_a_local_store_is_refused_before_the_run_is_recorded(aws, store, tmp_path, artifacts,
                                                                                  words):
    proxy = aws.proxy()
    arts = str(tmp_path / "arts") if artifacts == "LOCAL" else artifacts
    one_line_before_the_run(store, proxy, words,
                            lambda: aws_tasks.squares.run(3, executor=aws.executor(), artifacts=arts))


def test_the_cli_says_a_missing_bucket_in_one_line_and_records_no_run(aws, store):
    proxy = aws.proxy()
    res = cli("run", f"{ROOT}/tests/aws_tasks.py:squares", "-p", "n=3", "-e", url(), "--artifacts",
              "s3://no-such-bucket/runs", "--no-progress")
    assert res.returncode == 1, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("gflow: ")]
    assert lines == ["error: artifact store s3://no-such-bucket/runs: bucket 'no-such-bucket' does not exist; create "
                     "it (aws s3 mb s3://no-such-bucket) or fix the URL"], res.stderr
    assert "Traceback" not in res.stderr and "more task(s) failed" not in res.stderr
    assert store.list_runs() == [] and proxy.counts["submitjob"] == 0


def test_a_region_that_is_not_an_aws_region_is_refused_at_once_with_a_did_you_mean(aws, store):
    """With an endpoint (moto here, LocalStack), 'us-east1' used to reach the endpoint, fail with HTTP 500 and be
    retried for 36 s before a raw HTML page was printed."""
    proxy = aws.proxy()
    one_line_before_the_run(store, proxy, ["'us-east1' is not an AWS region with batch; did you mean 'us-east-1'?"],
                            lambda: aws_tasks.squares.run(2, executor=aws.executor(region="us-east1"), artifacts=ARTS))
    assert proxy.counts["describejobqueues"] == 0  # refused before asking AWS anything


def test_a_flows_plain_image_reference_is_run_as_given_and_recorded(aws, store):
    ex = aws.executor(image=None)  # nothing pinned on the executor: the flow names its image
    r = aws_tasks.squares_in_plain_image.run(3, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == 5, r.error
    assert store.get_run(r.id).image_tag == IMAGE
    assert {t.handle.split(" job=")[0] for t in store.task_runs(r.id)} == {IMAGE}
    assert ex.image_key(aws_tasks.square) == IMAGE  # what the tasks' cache keys hold
    assert ex.image_key(aws_tasks.square.with_options(image="reg.lab/other:2")) == "reg.lab/other:2"


def test_logs_print_the_cloudwatch_log_or_say_why_there_is_none(aws, store):
    r = aws_tasks.squares.run(2, executor=url(), artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED
    child = next(t for t in store.task_runs(r.id) if t.name == "square")
    assert not child.info.get("log_stream")  # successful children are not described: found through DescribeJobs
    res = cli("logs", r.id, "--task-run", child.id)
    assert res.returncode == 0 and "--- backend log (" in res.stdout and '"gflow.outcome": "ok"' in res.stdout

    aws.moto.client("logs").delete_log_group(logGroupName="/aws/batch/job")
    res = cli("logs", r.id, "--task-run", child.id)
    assert res.returncode == 0, res.stderr
    job = child.info["job_id"]
    assert f"--- no backend log: CloudWatch Logs has no log of job {job}: log group /aws/batch/job does not exist" \
        in res.stdout, res.stdout

    # a job that never ran a container has no log stream: said, with Batch's reason
    r = aws_tasks.one_square.run(2, executor=url(image="gflow-test/absent:1"), artifacts=ARTS, return_run=True)
    assert r.state is State.FAILED
    t = next(t for t in store.task_runs(r.id) if t.name == "square")
    res = cli("logs", r.id, "--task-run", t.id)
    assert res.returncode == 0, res.stderr
    assert "--- no backend log: AWS Batch job " in res.stdout and "has no log stream: it never ran a container " \
        "(status FAILED" in res.stdout, res.stdout
