"""Opt-in: the Volcano executor on a real Kubernetes cluster with Volcano installed.

Set ``GFLOW_TEST_KUBECONFIG`` to a kubeconfig whose context may create Volcano Jobs (docs/volcano.md, RBAC),
``GFLOW_TEST_VOLCANO_IMAGE`` to an image the cluster can pull that has gflow and this repository's
``tests/resources`` on its PYTHONPATH (e.g. built with ``gflow build`` from a flow in tests/resources), and
``GFLOW_TEST_VOLCANO_ARTIFACTS`` to a folder that the driver and every pod see at the same path (a single-node
cluster's hostPath, or a shared mount). Optional: ``GFLOW_TEST_VOLCANO_NAMESPACE`` (default ``default``),
``GFLOW_TEST_VOLCANO_QUEUE`` (default ``default``). Skipped otherwise; CI has no cluster.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("kubernetes")

KUBECONFIG = os.environ.get("GFLOW_TEST_KUBECONFIG")
pytestmark = [pytest.mark.integration, pytest.mark.slow,
              pytest.mark.skipif(not KUBECONFIG, reason="GFLOW_TEST_KUBECONFIG is not set (no real cluster)")]


@pytest.fixture
def ex():
    from gflow.executors.volcano import VolcanoExecutor

    image = os.environ.get("GFLOW_TEST_VOLCANO_IMAGE")
    arts = os.environ.get("GFLOW_TEST_VOLCANO_ARTIFACTS")
    if not image or not arts:
        pytest.skip("GFLOW_TEST_VOLCANO_IMAGE and GFLOW_TEST_VOLCANO_ARTIFACTS are needed with a real cluster")
    e = VolcanoExecutor(os.environ.get("GFLOW_TEST_VOLCANO_NAMESPACE", "default"), kubeconfig=KUBECONFIG,
                        queue=os.environ.get("GFLOW_TEST_VOLCANO_QUEUE", "default"), image=image, artifacts=arts,
                        unschedulable_after=120, ttl=300)
    yield e
    e.close()


def test_a_fan_out_runs_as_one_job_on_the_cluster(ex):
    import volcano_flows as vf

    from gflow.states import State

    res = vf.fan.run(4, executor=ex, return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    assert res.value == sum(i * i for i in range(4)) and ex.api_calls["create_job"] == 2


def test_a_missing_queue_is_refused_by_volcanos_admission(ex):
    import volcano_flows as vf

    ex.queue = ex.settings.queue = "gflow-no-such-queue"
    res = vf.fan.run(1, executor=ex, return_run=True)
    assert res.error is not None and "gflow-no-such-queue" in res.error.error_message
