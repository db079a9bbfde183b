"""A Google Cloud Batch v1 Job for one fan-out, as the JSON the API takes, checked before it is sent.

One fan-out of N calls is one Job (``taskGroups[0].taskCount`` = number of elements, at most 100,000 per
task group); element ``i`` runs ``gflow worker MANIFEST`` and finds its call(s) by ``BATCH_TASK_INDEX``.
The call list lives in the artifact store (the paged manifest of :mod:`gflow.executors._batch`), so the job
definition stays far below Batch's 1 MB whatever N is.

Retries: gflow's engine retries a *task failure* (a new attempt, with its own call spec), so the worker's
exit codes 1 (the task raised) and 2 (the worker could not run it) fail the Batch task at once
(``FAIL_TASK`` lifecycle policy); everything else (a Spot VM preempted: exit code 50001, a VM that stopped
answering: 50002-50004, 50006) is retried by Batch itself, ``infra_retries`` times (``maxRetryCount``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from gflow.errors import ConfigError

#: Batch's limits (https://cloud.google.com/batch/quotas)
MAX_TASKS = 100_000
MAX_PARALLEL = 5_000
MAX_JOB_BYTES = 1 << 20
MAX_RETRIES = 10
#: worker exit codes that are a task's own failure (gflow.images.protocol: EXIT_TASK_FAILED, EXIT_WORKER_ERROR)
WORKER_FAILURES = (1, 2)
#: Compute Engine machine families (predefined ``FAMILY-TYPE-N`` and ``FAMILY-custom-CPUS-MIB``)
_MACHINE = re.compile(
    r"^(?:(?:e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|c4|c4a|c4d|t2d|t2a|m1|m2|m3|a2|a3|a4|g2|h3|z3)-"
    r"(?:standard|highmem|highcpu|highgpu|ultragpu|megagpu|edgegpu|hpc|medium|small|micro)(?:-\d+)?(?:-lssd)?"
    r"|(?:e2-|n1-|n2-|n2d-)?custom-\d+-\d+(?:-ext)?)$")
ACCELERATORS = ("nvidia-tesla-t4", "nvidia-tesla-v100", "nvidia-tesla-p100", "nvidia-tesla-p4", "nvidia-tesla-a100",
                "nvidia-a100-80gb", "nvidia-l4", "nvidia-h100-80gb", "nvidia-h100-mega-80gb", "nvidia-h200-141gb",
                "nvidia-b200")
#: GPUs that come built into a machine family (the others attach to N1 machines)
GPU_FAMILY = {"nvidia-l4": "g2", "nvidia-tesla-a100": "a2", "nvidia-a100-80gb": "a2", "nvidia-h100-80gb": "a3",
              "nvidia-h100-mega-80gb": "a3", "nvidia-h200-141gb": "a3", "nvidia-b200": "a4"}
_LABEL_BAD = re.compile(r"[^a-z0-9_-]")
_JOB_BAD = re.compile(r"[^a-z0-9-]+")


def check_machine_type(machine_type: str | None, region: str) -> None:
    """Refuse a name that is no Compute Engine machine type (one line naming where to look)."""
    if machine_type is not None and not _MACHINE.match(machine_type):
        raise ConfigError(f"gcp-batch executor: unknown machine type {machine_type!r}; list the types of the region "
                          f"with 'gcloud compute machine-types list --filter=\"zone~{region}\"' (e.g. e2-standard-4, "
                          f"n2-highmem-8, g2-standard-8 for an L4 GPU)")


def check_accelerator(gpu_type: str) -> None:
    if gpu_type not in ACCELERATORS:
        raise ConfigError(f"gcp-batch executor: unknown GPU type {gpu_type!r}; use one of {', '.join(ACCELERATORS)} "
                          f"(gcloud compute accelerator-types list)")


def check_gpu_machine(gpu_type: str, machine_type: str | None) -> None:
    """Refuse a GPU type on a machine family it does not run on (Batch would refuse the job)."""
    family = GPU_FAMILY.get(gpu_type, "n1")
    if machine_type is None and family == "n1":
        return
    if machine_type is None or not machine_type.startswith(f"{family}-"):
        raise ConfigError(f"gcp-batch executor: GPU type {gpu_type!r} runs on {family} machines, not "
                          f"{machine_type or 'the machine Batch would pick'}; set machine_type to a {family} type "
                          f"(e.g. {family}-{'standard-8' if family in ('n1', 'g2') else 'highgpu-1g'})")


def label(value: str, *, key: bool = False) -> str:
    """``value`` as a GCP label key or value: lowercase letters, digits, ``_`` and ``-``, at most 63 characters
    (a key starts with a letter)."""
    v = _LABEL_BAD.sub("-", value.lower())[:63]
    if key and not v[:1].isalpha():
        v = ("k" + v)[:63]
    return v


def clean_labels(labels: dict[str, str]) -> dict[str, str]:
    out = {label(str(k), key=True): label(str(v)) for k, v in labels.items()}
    if len(out) > 60:
        raise ConfigError(f"gcp-batch executor: {len(labels)} labels given; Batch allows 64 and gflow adds its own")
    return out


def job_id(prefix: str, task_name: str, digest: str) -> str:
    """A job id unique to the submission (``digest``: its manifest's), so that creating it again after a lost
    answer finds the job instead of starting a second one: ``[a-z][a-z0-9-]{0,62}``."""
    head = _JOB_BAD.sub("-", f"{prefix}-{task_name}".lower()).strip("-")[:44].rstrip("-")
    if not head[:1].isalpha():
        head = ("g" + head)[:44]
    return f"{head}-{digest.partition(':')[2][:16]}"


def run_seconds(timeout: float | None, chunk: int) -> int | None:
    """``maxRunDuration`` of a task that runs ``chunk`` calls of a task with ``timeout`` seconds each."""
    return None if timeout is None else max(1, math.ceil(timeout * chunk))


@dataclass(frozen=True)
class Placement:
    """Where and on what the tasks run (the executor's options, the same for every job)."""

    region: str
    machine_type: str | None = None
    spot: bool = False
    gpu_type: str = "nvidia-tesla-t4"
    install_gpu_drivers: bool = True
    boot_disk_gb: int | None = None
    service_account: str | None = None
    network: str | None = None
    subnetwork: str | None = None
    no_external_ip: bool = False

    def allocation(self, gpus: int) -> dict[str, Any]:
        policy: dict[str, Any] = {}
        if self.machine_type:
            policy["machineType"] = self.machine_type
        if self.spot:
            policy["provisioningModel"] = "SPOT"
        if gpus:
            check_gpu_machine(self.gpu_type, self.machine_type)
            policy["accelerators"] = [{"type": self.gpu_type, "count": str(gpus)}]
        if self.boot_disk_gb:
            policy["bootDisk"] = {"sizeGb": str(self.boot_disk_gb)}
        inst: dict[str, Any] = {"policy": policy}
        if gpus and self.install_gpu_drivers:
            inst["installGpuDrivers"] = True
        out: dict[str, Any] = {"location": {"allowedLocations": [f"regions/{self.region}"]}, "instances": [inst]}
        if self.service_account:
            out["serviceAccount"] = {"email": self.service_account}
        if self.network or self.subnetwork or self.no_external_ip:
            nic: dict[str, Any] = {"noExternalIpAddress": self.no_external_ip}
            if self.network:
                nic["network"] = self.network
            if self.subnetwork:
                nic["subnetwork"] = self.subnetwork
            out["network"] = {"networkInterfaces": [nic]}
        return out


def job_request(*, task: Any, image: str, commands: list[str], count: int, parallelism: int | None,
                environment: dict[str, str], labels: dict[str, str], placement: Placement, chunk: int = 1,
                infra_retries: int = 2) -> dict[str, Any]:
    """The v1 Job (JSON) running ``count`` tasks of ``commands`` in ``image``.

    Raises:
        ConfigError: it would break one of Batch's limits (tasks per group, definition size).
    """
    if not 1 <= count <= MAX_TASKS:
        raise ConfigError(f"gcp-batch: a job has 1..{MAX_TASKS} tasks, not {count}")
    res = task.options.resources
    compute: dict[str, Any] = {"cpuMilli": str(max(1, int(round(res.cpu * 1000))))}
    if res.memory:
        compute["memoryMib"] = str(max(1, math.ceil(res.memory / (1 << 20))))
    spec: dict[str, Any] = {
        "runnables": [{"container": {"imageUri": image, "commands": list(commands)}}],
        "computeResource": compute,
        "maxRetryCount": max(0, min(MAX_RETRIES, infra_retries)),
        "lifecyclePolicies": [{"action": "FAIL_TASK", "actionCondition": {"exitCodes": list(WORKER_FAILURES)}}],
        "environment": {"variables": dict(environment)},
    }
    secs = run_seconds(task.options.timeout, chunk)
    if secs is not None:
        spec["maxRunDuration"] = f"{secs}s"
    group: dict[str, Any] = {"taskSpec": spec, "taskCount": str(count)}
    par = min(parallelism or count, count, MAX_PARALLEL)
    group["parallelism"] = str(par)
    alloc = placement.allocation(res.gpu)
    if labels:
        alloc["labels"] = dict(labels)  # on the VMs too: billing reports by run and task
    body = {"taskGroups": [group], "allocationPolicy": alloc, "labels": labels,
            "logsPolicy": {"destination": "CLOUD_LOGGING"}}
    size = len(json.dumps(body))
    if size > MAX_JOB_BYTES:
        raise ConfigError(f"gcp-batch: the job for task '{task.name}' is {size} bytes, over Batch's 1 MB limit; its "
                          f"environment ({len(json.dumps(environment))} bytes) is too large: pass large values as task "
                          f"inputs instead")
    return body


def to_message(body: dict[str, Any]) -> Any:
    """``body`` as the client's ``batch_v1.Job`` (a field the v1 API does not have is an error here, before
    anything is sent)."""
    from google.cloud import batch_v1

    return batch_v1.Job.from_json(json.dumps(body))
