"""Docker, issue 23 item 6: a flow's plain image reference (``@gflow.flow(image="REF")``) is run as given, as a
task's is, on the real engine of tests/docker_env.py: the run records the reference as its image tag and the
tasks' cache keys hold it (nothing is built). The local base image stands in for the reference: it has no
gflow in it, so the call itself fails with a clear error, which is all this needs."""

from __future__ import annotations

import docker_env
import pytest

import gflow
from gflow.errors import GflowError
from gflow.states import State

pytestmark = pytest.mark.integration
REF = docker_env.base_tag()


@gflow.task
def double(x: int) -> int:
    return 2 * x


@gflow.flow(image=REF)
def in_plain_image(x: int = 2) -> int:
    return double(x)


@pytest.fixture(scope="module")
def engine():
    yield from docker_env.engine_for_tests()


def test_a_flows_plain_image_reference_is_run_as_given(engine, monkeypatch, store):
    from gflow.executors.docker import DockerExecutor

    monkeypatch.setenv("DOCKER_HOST", engine.env.base_url)
    ex = DockerExecutor()
    try:
        r = in_plain_image.run(2, executor=ex, return_run=True)
    finally:
        ex.close()
    rec = store.get_run(r.id)
    assert rec.image_tag == REF  # recorded as given, nothing built
    (tr,) = store.task_runs(r.id)
    assert tr.handle.startswith(REF) and r.state is State.FAILED and "gflow" in str(r.error)
    assert ex.image_key(double) == REF  # in the cache key
    assert ex.image_key(double.with_options(image="reg.lab/other:2")) == "reg.lab/other:2"
    with pytest.raises(GflowError, match="cannot pull"):
        DockerExecutor(base_url=engine.env.base_url).image_tag_for(
            gflow.flow(image="127.0.0.1:9/absent/image:1")(lambda: None))
