"""AWS Batch end to end with real containers: moto (server mode, real boto3 over HTTP) runs each job's
container on the private dockerd of tests/docker_env.py; ``gflow worker`` inside the flow's image (built
from the example project, with boto3, and pushed to a real local registry) reads its call from moto's
S3 and writes its outcome there; the run completes with the right values.

moto starts job containers with ``network_mode=host`` here (``MOTO_DOCKER_NETWORK_MODE``): the test
dockerd has no bridge, and on the host network the container reaches moto's S3 at the same
127.0.0.1 endpoint as the driver (passed to the job as ``AWS_ENDPOINT_URL_S3``).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import docker_env
import pytest
from aws_env import BUCKET, CREDS, QUEUE, REGION, Moto, fix_moto_shared_environment, setup_batch
from conftest import RESOURCES

from gflow.states import State

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ARTS = f"s3://{BUCKET}/e2e"


@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("moto")
    for eng in docker_env.engine_for_tests():
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto = Moto()
        try:
            yield eng.env, eng.base, eng.registry, eng.wheel, moto
        finally:
            moto.stop()


@pytest.fixture
def aws(engine, monkeypatch, tmp_path):
    env, base, registry, wheel, moto = engine
    moto.reset()
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in {**CREDS, "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL": moto.url, "DOCKER_HOST": env.base_url,
                 "MOTO_DOCKER_NETWORK_MODE": "host", "GFLOW_TEST_BASE_IMAGE": base, "GFLOW_WHEEL": wheel}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("GFLOW_TEST_PACKAGES", raising=False)
    fix_moto_shared_environment(monkeypatch)
    setup_batch(moto)
    project = tmp_path / "docker_flow"
    shutil.copytree(RESOURCES / "docker_flow", project, ignore=shutil.ignore_patterns("__pycache__"))
    return registry, moto, project


def load(project: Path, name: str):
    from gflow._loader import load_target
    from gflow.flows import Flow

    for mod in ("docker_flow", "helpers"):
        sys.modules.pop(mod, None)
    return load_target(f"{project}/docker_flow.py:{name}", Flow)


def executor(registry: str):
    from gflow.executors.aws_batch import AwsBatchExecutor

    return AwsBatchExecutor(QUEUE, region=REGION, image_registry=registry, environment=CREDS,
                            poll_min=0.1, poll_max=1.0, list_gap=0.5)


def test_real_containers_run_the_flow_and_write_outcomes_to_s3(aws, store):
    from gflow.executors.aws_batch import AwsBatchExecutor
    from gflow.images.builders import registry_has

    registry, moto, project = aws
    ex = executor(registry)
    r = load(project, "squares").run(4, executor=ex, artifacts=ARTS, return_run=True)
    assert r.state is State.SUCCEEDED, r.error
    assert r.value.value == 14.0  # 0 + 1 + 4 + 9, computed in containers of the flow's image
    rec = store.get_run(r.id)
    ref = rec.image_tag
    assert ref.startswith(f"{registry}/gflow-squares:") and registry_has(registry, ref[len(registry) + 1:])
    assert ex.api_calls["SubmitJob"] == 2 and ex.api_calls["RegisterJobDefinition"] == 2
    trs = {t.map_index: t for t in store.task_runs(r.id) if t.name == "square"}
    assert sorted(trs) == [0, 1, 2, 3] and all(t.state is State.SUCCEEDED for t in trs.values())
    # the worker's output, from the container's log in moto's CloudWatch Logs
    log = AwsBatchExecutor.fetch_logs(ex.url, trs[3].handle, None)
    assert '"gflow.outcome": "ok"' in log

    failing = load(project, "failing").run("no luck", executor=executor(registry), artifacts=ARTS,
                                           return_run=True)
    assert failing.state is State.FAILED and failing.error.error_type == "ValueError"
    assert failing.error.error_message == "no luck" and "docker_flow.py" in failing.error.traceback
