"""Volcano Job manifests (``batch.volcano.sh/v1alpha1``) for gflow calls, and the checks on every name and
setting that goes into one, so that a bad setting fails before anything is submitted, in one line naming it.

One Job runs one array of calls of one task: a single task spec of N replicas whose pods find their call by
``VC_TASK_INDEX`` (Volcano's ``env`` plugin) and run ``gflow worker ARRAY_SPEC``. The shapes follow the
Volcano Job CRD (``tests/resources/volcano`` keeps the schema the tests validate every manifest against).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gflow.errors import ConfigError

GROUP, VERSION, PLURAL = "batch.volcano.sh", "v1alpha1", "jobs"
TASK = "worker"  # the task spec's name: pods are JOB-worker-INDEX
CONTAINER = "worker"
GPU_RESOURCE = "nvidia.com/gpu"
#: label keys on Jobs and their pods
L_MANAGED, L_RUN, L_TASK, L_TASK_RUN, L_DRIVER = ("app.kubernetes.io/managed-by", "gflow.dev/run", "gflow.dev/task",
                                                  "gflow.dev/task-run", "gflow.dev/driver")
A_IDENTITY, A_ARRAY = "gflow.dev/task-identity", "gflow.dev/array-spec"
JOB_NAME_MAX = 45  # + "-worker-" + a 5-digit index stays within a 63-character pod hostname
#: actions Volcano takes on PodEvicted that keep a fan-out's other pods: RestartPod needs a Volcano whose
#: bus API has it; RestartJob would restart every element of a fan-out, so it is refused
EVICT_ACTIONS = ("RestartTask", "RestartPod")

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")


def check_name(what: str, value: Any, *, subdomain: bool = False) -> str:
    """``value`` if it is a valid DNS-1123 label (or subdomain); else a ConfigError naming ``what``."""
    pattern, limit, kind = (_SUBDOMAIN, 253, "subdomain") if subdomain else (_LABEL, 63, "label")
    chars = "'-' and '.'" if subdomain else "'-'"
    if not isinstance(value, str) or not value or len(value) > limit or not pattern.match(value):
        raise ConfigError(f"volcano executor: {what} {value!r} is not a valid Kubernetes name (a DNS-1123 {kind}: "
                          f"lower-case letters, digits, {chars}, at most {limit} characters, starting and ending "
                          f"with a letter or digit)")
    return value


def check_label(what: str, key: Any, value: Any) -> None:
    """A label key (``[prefix/]name``) and value, as Kubernetes accepts them."""
    prefix, _, name = str(key).rpartition("/")
    if (not isinstance(key, str) or not name or len(name) > 63 or not _LABEL_KEY_NAME.match(name)
            or (prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)))):
        raise ConfigError(f"volcano executor: {what} key {key!r} is not a valid label key ([prefix/]name, name at "
                          f"most 63 characters of letters, digits, '-', '_', '.')")
    if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
        raise ConfigError(f"volcano executor: {what} value {value!r} for {key!r} is not a valid label value (at "
                          f"most 63 characters of letters, digits, '-', '_', '.', starting and ending with one "
                          f"of the first two)")


def check_tolerations(tolerations: Any) -> list[dict[str, Any]]:
    """Tolerations as the pod spec takes them: dicts, or strings ``key[=value]:Effect``."""
    out = []
    for t in tolerations or ():
        if isinstance(t, str):
            kv, _, effect = t.partition(":")
            key, eq, value = kv.partition("=")
            t = {"key": key, "operator": "Equal" if eq else "Exists", "effect": effect}
            if eq:
                t["value"] = value
        if not isinstance(t, dict) or set(t) - _TOLERATION_KEYS:
            raise ConfigError(f"volcano executor: toleration {t!r} must be 'key[=value]:Effect' or a dict with "
                              f"keys {sorted(_TOLERATION_KEYS)}")
        if t.get("operator", "Equal") not in ("Equal", "Exists") or t.get("effect", "") not in _EFFECTS:
            raise ConfigError(f"volcano executor: toleration {t!r}: operator must be Equal or Exists and effect one "
                              f"of {', '.join(e for e in _EFFECTS if e)}")
        out.append({k: v for k, v in t.items() if v != "" or k == "value"})
    return out


def slug(text: str, limit: int) -> str:
    """``text`` as a DNS-1123 label piece: lower case, runs of other characters as '-', at most ``limit``."""
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-")
    return s or "task"


def job_name(task_name: str, run_id: str, seq: int) -> str:
    """``gf-TASK-RUNTAIL-SEQ``: a valid DNS-1123 label, unique per run (the sequence number counts this
    driver's Jobs; the run id's random tail tells runs apart), short enough for pod hostnames."""
    tail = slug(run_id.rsplit("-", 1)[-1], 8)
    suffix = f"-{tail}-{seq}"
    return f"gf-{slug(task_name, JOB_NAME_MAX - 3 - len(suffix))}{suffix}"


def label_value(text: str) -> str:
    """``text`` made a valid label value (run and task-run ids already are)."""
    v = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", v)


def cpu_quantity(cpu: float) -> str:
    return str(int(cpu)) if float(cpu).is_integer() else f"{math.ceil(cpu * 1000)}m"


def memory_quantity(n: int) -> str:
    for unit, size in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


@dataclass
class PodSettings:
    """Everything about a Job that comes from the executor's settings rather than from the calls."""

    namespace: str
    queue: str = "default"
    scheduler_name: str = "volcano"
    priority_class: str | None = None
    service_account: str | None = None
    image_pull_secrets: tuple[str, ...] = ()
    image_pull_policy: str = "IfNotPresent"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    env_from_secrets: tuple[str, ...] = ()
    artifacts_url: str = ""
    #: the local artifact store's folder, mounted at the same path in every pod (None: a remote store)
    artifacts_path: str | None = None
    artifacts_pvc: str | None = None
    max_retry: int = 3
    evict_action: str = "RestartTask"
    ttl: int | None = 3600
    timeout_grace: int = 60


def resource_block(resources: Any) -> dict[str, dict[str, Any]]:
    """Requests and limits of a task's ``Resources``: CPU as a request (no CPU limit: no throttling),
    memory as request and limit (an overrun is a clear OOMKilled), GPUs as ``nvidia.com/gpu`` in both."""
    requests: dict[str, Any] = {"cpu": cpu_quantity(resources.cpu)}
    limits: dict[str, Any] = {}
    if resources.memory:
        requests["memory"] = limits["memory"] = memory_quantity(int(resources.memory))
    if resources.gpu:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = int(resources.gpu)
    return {"requests": requests, "limits": limits} if limits else {"requests": requests}


def job_manifest(name: str, s: PodSettings, *, image: str, array_spec: str, replicas: int, resources: Any,
                 gang: bool, labels: dict[str, str], annotations: dict[str, str],
                 timeout: float | None = None) -> dict[str, Any]:
    """The Volcano Job running ``replicas`` elements of the array spec ``array_spec`` in ``image``.

    ``minAvailable`` is 1 (elements are independent: the Job starts as soon as one pod fits) unless ``gang``
    (all pods start together or none). ``PodEvicted`` restarts per ``s.evict_action`` up to ``maxRetry``;
    a call that fails is retried by gflow as a new attempt, not by Volcano (``restartPolicy: Never``).
    """
    args = ["worker", array_spec, "--artifacts", s.artifacts_url]
    if replicas == 1:
        args += ["--index", "0"]  # a single call runs even where the env plugin is off
    container: dict[str, Any] = {
        "name": CONTAINER, "image": image, "imagePullPolicy": s.image_pull_policy, "command": ["gflow"],
        "args": args, "env": [{"name": "HOME", "value": "/tmp"}, *({"name": k, "value": str(v)}
                                                                   for k, v in sorted(s.env.items()))],
        "resources": resource_block(resources), "terminationMessagePolicy": "FallbackToLogsOnError"}
    if s.env_from_secrets:
        container["envFrom"] = [{"secretRef": {"name": n}} for n in s.env_from_secrets]
    pod: dict[str, Any] = {"restartPolicy": "Never", "schedulerName": s.scheduler_name, "containers": [container]}
    if s.artifacts_path:
        container["volumeMounts"] = [{"name": "gflow-artifacts", "mountPath": s.artifacts_path}]
        source: dict[str, Any] = ({"persistentVolumeClaim": {"claimName": s.artifacts_pvc}} if s.artifacts_pvc
                                  else {"hostPath": {"path": s.artifacts_path, "type": "DirectoryOrCreate"}})
        pod["volumes"] = [{"name": "gflow-artifacts", **source}]
    if s.service_account:
        pod["serviceAccountName"] = s.service_account
    else:
        pod["automountServiceAccountToken"] = False  # the worker never talks to the API server
    if s.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in s.image_pull_secrets]
    if s.node_selector:
        pod["nodeSelector"] = dict(s.node_selector)
    if s.tolerations:
        pod["tolerations"] = [dict(t) for t in s.tolerations]
    if s.priority_class:
        pod["priorityClassName"] = s.priority_class
    if timeout:
        pod["activeDeadlineSeconds"] = int(math.ceil(timeout)) + s.timeout_grace  # the kubelet's backstop
    min_available = replicas if gang else 1
    spec: dict[str, Any] = {
        "schedulerName": s.scheduler_name, "queue": s.queue, "minAvailable": min_available,
        "maxRetry": s.max_retry, "plugins": {"env": []},
        "tasks": [{"name": TASK, "replicas": replicas, "minAvailable": min_available, "maxRetry": s.max_retry,
                   "policies": [{"event": "PodEvicted", "action": s.evict_action}],
                   "template": {"metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                                "spec": pod}}]}
    if s.priority_class:
        spec["priorityClassName"] = s.priority_class
    if s.ttl is not None:
        spec["ttlSecondsAfterFinished"] = int(s.ttl)
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Job",
            "metadata": {"name": name, "namespace": s.namespace, "labels": dict(labels),
                         "annotations": dict(annotations)},
            "spec": spec}


def pod_index(pod_name: str, job: str) -> int | None:
    """The replica index of a pod of ``job`` (Volcano names them ``JOB-TASK-INDEX``)."""
    prefix = f"{job}-{TASK}-"
    if not pod_name.startswith(prefix):
        return None
    rest = pod_name[len(prefix):]
    return int(rest) if rest.isdigit() else None
