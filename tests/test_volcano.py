"""The Volcano executor's settings, names and Job manifests (no cluster): every manifest is checked against
the Volcano Job CRD schema kept in tests/resources/volcano."""

from __future__ import annotations

import copy
import re

import pytest

pytest.importorskip("kubernetes")

import gflow  # noqa: E402
from gflow.errors import ConfigError  # noqa: E402
from gflow.executors import get_executor  # noqa: E402
from gflow.executors.volcano import VolcanoExecutor  # noqa: E402
from gflow.executors.volcano import _manifest as vm  # noqa: E402
from tests.k8s_fake import job_errors  # noqa: E402

LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def settings(**kw):
    base = dict(namespace="research", queue="gpu", artifacts_url="file:///data/arts", artifacts_path="/data/arts")
    return vm.PodSettings(**{**base, **kw})


def manifest(s=None, *, replicas=3, resources=None, gang=False, timeout=None):
    return vm.job_manifest("gf-score-abc123-1", s or settings(), image="reg:5000/gflow/design:abc", array_spec=
                           "sha256:" + "a" * 64, replicas=replicas, resources=resources or gflow.Resources(),
                           gang=gang, labels={vm.L_RUN: "20240101-000000-abc123", vm.L_TASK: "score"},
                           annotations={vm.A_IDENTITY: "mod:score"}, timeout=timeout)


def test_url_and_keywords_build_the_same_settings():
    ex = get_executor("volcano://research?queue=gpu&priority_class=high&service_account=gflow-runner"
                      "&image_pull_secrets=regcred,other&node_selector=pool=gpu,zone=a"
                      "&tolerations=nvidia.com/gpu:NoSchedule,spot=true:NoExecute&max_replicas=500&gang=1"
                      "&unschedulable_after=90&ttl=600&max_retry=5&evict_action=RestartPod&artifacts_pvc=shared")
    assert isinstance(ex, VolcanoExecutor)
    kw = VolcanoExecutor("research", queue="gpu", priority_class="high", service_account="gflow-runner",
                         image_pull_secrets=["regcred", "other"], node_selector={"pool": "gpu", "zone": "a"},
                         tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                      "spot=true:NoExecute"], max_replicas=500, gang=True,
                         unschedulable_after=90, ttl=600, max_retry=5, evict_action="RestartPod",
                         artifacts_pvc="shared")
    assert ex.settings == kw.settings
    assert ex.settings.tolerations[1] == {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute"}
    assert (ex.max_replicas, ex.gang, ex.tracker.unschedulable_after) == (500, True, 90.0)
    # the URL's own values win over a profile's settings (keyword arguments)
    ex = VolcanoExecutor.from_spec("volcano://research?queue=gpu", queue="cpu", namespace="other", max_retry=1)
    assert (ex.queue, ex.namespace, ex.settings.max_retry) == ("gpu", "research", 1)
    assert VolcanoExecutor.from_spec("volcano://", namespace="lab").namespace == "lab"
    with pytest.raises(ConfigError, match="unknown setting"):
        VolcanoExecutor.from_spec("volcano://research", queues="gpu")
    assert VolcanoExecutor.from_spec("volcano://").namespace is None  # from the kubeconfig context later


@pytest.mark.parametrize("spec, words", [
    ("volcano://Research_NS", ["namespace 'Research_NS'", "DNS-1123 label"]),
    ("volcano://research?queue=GPU%20queue", ["queue 'GPU queue'", "DNS-1123 subdomain"]),
    ("volcano://research?priority_class=High", ["priority_class 'High'"]),
    ("volcano://research?node_selector=pool=gpu%20a", ["node_selector value 'gpu a'"]),
    ("volcano://research?tolerations=gpu:Sometimes", ["toleration", "effect one of"]),
    ("volcano://research?evict_action=RestartJob", ["evict_action 'RestartJob'", "every element of a fan-out"]),
    ("volcano://research?max_replicas=many", ["max_replicas='many' is not a valid int"]),
    ("volcano://research?max_replicas=0", ["max_replicas and max_in_flight must be at least 1"]),
    ("volcano://research?queues=gpu", ["unknown option 'queues'", "known:"]),
    ("volcano://research/jobs", ["give the namespace as the host"]),
])
def test_bad_settings_fail_before_anything_is_submitted(spec, words):
    with pytest.raises(ConfigError) as ei:
        get_executor(spec)
    msg = str(ei.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


def test_job_names_are_valid_labels_unique_per_run_and_short_enough_for_pod_names():
    names = {vm.job_name("Score Protein_Structures (v2) " * 3, "20240101-120000-9f3a1c", i) for i in range(1, 2000)}
    assert len(names) == 1999
    for n in names:
        assert LABEL.match(n) and len(n) <= vm.JOB_NAME_MAX
        assert len(f"{n}-{vm.TASK}-99999") <= 63
    other_run = vm.job_name("score", "20240101-120000-000001", 1)
    assert other_run != vm.job_name("score", "20240101-120000-9f3a1c", 1)
    assert vm.label_value("-a b/c:d-") == "a-b-c-d" and vm.pod_index("gf-x-1-worker-12", "gf-x-1") == 12


def test_manifest_maps_a_fan_out_to_one_job_with_replicas_and_is_valid_volcano():
    tolerations = vm.check_tolerations(["nvidia.com/gpu:NoSchedule"])
    m = manifest(settings(priority_class="high", service_account="runner", image_pull_secrets=("regcred",),
                          node_selector={"pool": "gpu"}, tolerations=tolerations,
                          env={"OMP_NUM_THREADS": "1"}, env_from_secrets=("s3-credentials",), ttl=600),
                 replicas=7, resources=gflow.Resources(cpu=0.5, memory="3Gi", gpu=2), timeout=100)
    assert job_errors(m) == []
    spec = m["spec"]
    (task,) = spec["tasks"]
    assert (task["replicas"], spec["minAvailable"], task["minAvailable"]) == (7, 1, 1)
    assert spec["plugins"] == {"env": []} and spec["queue"] == "gpu" and spec["ttlSecondsAfterFinished"] == 600
    assert task["policies"] == [{"event": "PodEvicted", "action": "RestartTask"}]
    assert spec["priorityClassName"] == "high" and spec["schedulerName"] == "volcano"
    pod = task["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["gflow"] and c["args"] == ["worker", "sha256:" + "a" * 64, "--artifacts",
                                                        "file:///data/arts"]
    assert c["resources"] == {"requests": {"cpu": "500m", "memory": "3Gi", "nvidia.com/gpu": 2},
                              "limits": {"memory": "3Gi", "nvidia.com/gpu": 2}}
    assert pod["restartPolicy"] == "Never" and pod["activeDeadlineSeconds"] == 160
    assert pod["volumes"] == [{"name": "gflow-artifacts", "hostPath": {"path": "/data/arts",
                                                                        "type": "DirectoryOrCreate"}}]
    assert c["volumeMounts"] == [{"name": "gflow-artifacts", "mountPath": "/data/arts"}]
    assert pod["serviceAccountName"] == "runner" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert task["template"]["metadata"]["labels"][vm.L_RUN] == "20240101-000000-abc123"


def test_manifest_variants_stay_valid():
    gang = manifest(replicas=4, gang=True)
    assert gang["spec"]["minAvailable"] == gang["spec"]["tasks"][0]["minAvailable"] == 4
    pvc = manifest(settings(artifacts_pvc="gflow-artifacts"))
    assert pvc["spec"]["tasks"][0]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"] == \
        {"claimName": "gflow-artifacts"}
    s3 = manifest(settings(artifacts_url="s3://bucket/arts", artifacts_path=None, ttl=None), replicas=1)
    pod = s3["spec"]["tasks"][0]["template"]["spec"]
    assert "volumes" not in pod and pod["automountServiceAccountToken"] is False
    assert pod["containers"][0]["args"][-2:] == ["--index", "0"]  # a single call runs without the env plugin
    assert "ttlSecondsAfterFinished" not in s3["spec"]
    for m in (gang, pvc, s3, manifest(settings(evict_action="RestartPod"))):
        assert job_errors(m) == []


@pytest.mark.parametrize("break_it, where", [
    (lambda m: m["spec"]["tasks"][0].update(replicas=-1), "spec.tasks.0.replicas"),
    (lambda m: m["spec"]["tasks"][0]["policies"][0].update(event="PodEvict"), "spec.tasks.0.policies.0.event"),
    (lambda m: m["spec"].update(queueName="gpu"), "spec: Additional properties"),
    (lambda m: m["spec"]["tasks"][0]["template"]["spec"]["containers"][0].pop("name"), "containers.0: 'name'"),
    (lambda m: m["spec"]["tasks"][0]["template"]["spec"]["containers"][0]["resources"]["requests"].update(
        cpu="lots"), "requests.cpu"),
    (lambda m: m["spec"].update(tasks=[]), "spec.tasks: [] should be non-empty"),
    (lambda m: m["spec"]["tasks"][0].update(name="Worker"), "spec.tasks.0.name"),
])
def test_the_schema_check_catches_what_volcano_would_refuse(break_it, where):
    m = copy.deepcopy(manifest())
    break_it(m)
    errors = job_errors(m)
    assert errors and any(where in e for e in errors), errors


def test_resource_quantities():
    assert vm.cpu_quantity(2) == "2" and vm.cpu_quantity(0.25) == "250m" and vm.cpu_quantity(1.0005) == "1001m"
    assert vm.memory_quantity(2 * 2**30) == "2Gi" and vm.memory_quantity(1536 * 2**20) == "1536Mi"
    assert vm.memory_quantity(10**9) == "1000000000"
    assert vm.resource_block(gflow.Resources()) == {"requests": {"cpu": "1"}}


def test_capabilities_are_declared():
    caps = VolcanoExecutor.capabilities
    assert caps.array_jobs and caps.reports_start
    assert caps.reports_start and not caps.accepts_refs


def test_the_image_a_run_records_and_the_one_each_task_runs_in():
    import volcano_flows as vf

    pushed = VolcanoExecutor("research", build=False, registry="reg.lab:5000")
    tag = pushed.image_tag_for(vf.fan)
    assert re.fullmatch(r"reg\.lab:5000/gflow-fan:[0-9a-f]{16}", tag)
    assert pushed.image_key(vf.square) == tag  # tasks without their own image run in the flow's
    assert pushed.image_key(vf.square.with_options(image="ghcr.io/lab/fold:2")) == "ghcr.io/lab/fold:2"
    pinned = VolcanoExecutor("research", image="ghcr.io/lab/flows:1#bundle=sha256:" + "b" * 64)
    assert pinned.image_tag_for(vf.fan) == "ghcr.io/lab/flows:1#bundle=sha256:" + "b" * 64
    assert (pinned.image, pinned.bundle) == ("ghcr.io/lab/flows:1", "sha256:" + "b" * 64)
