"""Volcano, issue 23 items 3 and 6: the cluster is checked before the run is recorded and before any image is
built (no kubeconfig, an API server that refuses, a missing namespace: one line each), and a flow's plain image
reference is run as given. The fake Kubernetes API of tests/k8s_fake over real HTTP (the real client)."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("kubernetes")
pytest.importorskip("jsonschema")

import volcano_flows as vf  # noqa: E402

from gflow.errors import ConfigError, GflowError  # noqa: E402
from gflow.executors.volcano import VolcanoExecutor  # noqa: E402
from gflow.states import State  # noqa: E402
from tests.conftest import RESOURCES, ROOT, cli  # noqa: E402
from tests.k8s_fake import FakeKube, FakeVolcano  # noqa: E402

pytestmark = pytest.mark.integration
IMAGE = "registry.test/gflow/flows:1"


@pytest.fixture
def cluster(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    with FakeKube() as kube, FakeVolcano(kube, extra_env=env) as vc:
        yield SimpleNamespace(kube=kube, vc=vc, kubeconfig=kube.kubeconfig(str(tmp_path / "kubeconfig")))


@pytest.fixture
def no_cluster_no_docker(tmp_path, monkeypatch):
    """No kubeconfig anywhere, not in a pod, and no Docker engine answering."""
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def refused(store, run, words: list[str], error: type[BaseException] = GflowError) -> str:
    t0 = time.monotonic()
    with pytest.raises(error) as ei:
        run()
    msg = str(ei.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    assert "Docker" not in msg and "docker" not in msg  # the cluster is named first, before any image build
    assert store.list_runs() == []
    assert time.monotonic() - t0 < 10
    return msg


def test_no_kubeconfig_is_named_before_the_run_and_before_any_image_build(no_cluster_no_docker, store):
    refused(store, lambda: vf.fan.run(2, executor="volcano://research?registry=reg.lab:5000"),
            ["no Kubernetes cluster configured", "set KUBECONFIG"], ConfigError)


def test_the_cli_says_no_kubeconfig_in_one_line(no_cluster_no_docker, store):
    res = cli("run", "volcano_flows:fan", "-p", "n=2", "-e", "volcano://research", "--no-progress")
    assert res.returncode == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("gflow: ")]
    assert len(lines) == 1 and lines[0].startswith("error: no Kubernetes cluster configured"), res.stderr
    assert store.list_runs() == []


def test_refusals_by_the_cluster_come_before_the_run_and_nothing_is_created(cluster, store, tmp_path):
    def run(**kw):
        ex = VolcanoExecutor(kw.pop("namespace", "research"), **{"kubeconfig": cluster.kubeconfig, **kw})
        try:
            return vf.fan.run(2, executor=ex, return_run=True)
        finally:
            ex.close()

    bad = cluster.kube.kubeconfig(str(tmp_path / "bad"), token="expired")
    refused(store, lambda: run(kubeconfig=bad), ["HTTP 401", "credentials were refused"])
    refused(store, lambda: run(namespace="nowhere"), ['namespaces "nowhere" not found'])
    cluster.kube.forbid.add(("list", "jobs"))
    refused(store, lambda: run(), ["listing Volcano Jobs in namespace research: HTTP 403 Forbidden", "Role"])
    assert cluster.kube.requests[("create", "jobs")] == 0


def test_a_flows_plain_image_reference_is_run_as_given(cluster, store, no_cluster_no_docker):
    ex = VolcanoExecutor("research", kubeconfig=cluster.kubeconfig, tick=0.05)  # nothing pinned, no Docker here
    try:
        r = vf.fan_in_plain_image.run(3, executor=ex, return_run=True)
    finally:
        ex.close()
    assert r.state is State.SUCCEEDED and r.value == 5, r.error
    assert store.get_run(r.id).image_tag == IMAGE
    images = {j["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["image"]
              for j in cluster.kube.items("jobs", "research")}
    assert images == {IMAGE}
    assert ex.image_key(vf.square) == IMAGE  # what the tasks' cache keys hold
