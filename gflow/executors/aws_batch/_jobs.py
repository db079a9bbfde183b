"""AWS Batch job definitions and submissions, as plain functions over plain data.

A job definition is registered per (image, resources, timeout, retry policy, roles, platform, log
group, environment, secrets): its name carries a hash of its canonical properties
(``<prefix>-<label>-<hash>``) and the same hash is a tag, so an identical definition that already
exists is found by name and reused; gflow never registers one new revision per run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gflow.errors import ConfigError

_MIB = 1 << 20
DEFAULT_MEMORY_MIB = 2048
#: Fargate's valid (vCPU, memory MiB) combinations
FARGATE = [(0.25, (512, 1024, 2048)), (0.5, tuple(range(1024, 4097, 1024))), (1, tuple(range(2048, 8193, 1024))),
           (2, tuple(range(4096, 16385, 1024))), (4, tuple(range(8192, 30721, 1024))),
           (8, tuple(range(16384, 61441, 4096))), (16, tuple(range(32768, 122881, 8192)))]
ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
SECRET_ARN = re.compile(r"^arn:aws[a-z-]*:(secretsmanager:[a-z0-9-]+:\d{12}:secret:.+"
                        r"|ssm:[a-z0-9-]+:\d{12}:parameter/.+)$")
SSM_NAME = re.compile(r"^/?[\w.-]+(/[\w.-]+)*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: status reasons of infrastructure failures that Batch retries itself (spot reclaim, host terminated)
INFRA_RETRY = [{"onStatusReason": "Host EC2*", "action": "RETRY"},
               {"onReason": "CannotInspectContainerError*", "action": "RETRY"},
               {"onReason": "*", "action": "EXIT"}]


def check_role(arn: str | None, what: str) -> None:
    if arn is not None and not ROLE_ARN.match(arn):
        raise ConfigError(f"{what} {arn!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME)")


def check_env(environment: Mapping[str, str], secrets: Mapping[str, str]) -> None:
    for name in [*environment, *secrets]:
        if not ENV_NAME.match(name) or name.startswith("AWS_BATCH"):
            raise ConfigError(f"environment variable name {name!r} is not allowed (letters, digits, '_'; "
                              f"AWS_BATCH* is reserved by Batch)")
    for name, ref in secrets.items():
        if not (SECRET_ARN.match(ref) or SSM_NAME.match(ref)):
            raise ConfigError(f"secret {name}: {ref!r} is not a Secrets Manager or SSM parameter ARN (or an SSM "
                              f"parameter name); secrets are passed by reference, never by value")


def resource_requirements(resources: Any, platform: str, *, task: str) -> list[dict[str, str]]:
    """Batch ``resourceRequirements`` of a task's :class:`gflow.Resources`.

    EC2: whole vCPUs (rounded up), memory in MiB (default 2048), GPUs. Fargate: the smallest valid
    (vCPU, memory) combination that covers the request; no GPUs.

    Raises:
        ConfigError: GPUs on Fargate, or more than Fargate's largest size.
    """
    cpu = float(getattr(resources, "cpu", 1) or 1)
    mem_b = getattr(resources, "memory", None)
    gpu = int(getattr(resources, "gpu", 0) or 0)
    mem = math.ceil(mem_b / _MIB) if mem_b else None
    if platform == "FARGATE":
        if gpu:
            raise ConfigError(f"task '{task}' asks for {gpu} GPU(s), but Fargate has none: use an EC2 job queue "
                              f"with GPU instances (platform=EC2)")
        for vcpu, mems in FARGATE:
            if vcpu < cpu:
                continue
            fit = [m for m in mems if m >= (mem or 0)]
            if fit:
                return [{"type": "VCPU", "value": f"{vcpu:g}"}, {"type": "MEMORY", "value": str(fit[0])}]
        raise ConfigError(f"task '{task}' asks for {cpu:g} vCPU and {mem} MiB, more than a Fargate job can have "
                          f"(16 vCPU, 120 GiB); use platform=EC2")
    out = [{"type": "VCPU", "value": str(max(1, math.ceil(cpu)))},
           {"type": "MEMORY", "value": str(max(4, mem or DEFAULT_MEMORY_MIB))}]
    if gpu:
        out.append({"type": "GPU", "value": str(gpu)})
    return out


@dataclass(frozen=True)
class DefinitionSpec:
    """Everything a job definition depends on (its hash names it)."""

    image: str
    resources: tuple[tuple[str, str], ...]
    platform: str = "EC2"
    timeout: int | None = None
    attempts: int = 3
    job_role_arn: str | None = None
    execution_role_arn: str | None = None
    log_group: str | None = None
    environment: tuple[tuple[str, str], ...] = ()
    secrets: tuple[tuple[str, str], ...] = ()
    assign_public_ip: bool = False
    tags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def container_properties(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "image": self.image,
            "resourceRequirements": [{"type": t, "value": v} for t, v in self.resources],
            "environment": [{"name": k, "value": v} for k, v in self.environment],
            "command": ["worker", "--help"],  # every submission overrides it
        }
        if self.secrets:
            props["secrets"] = [{"name": k, "valueFrom": v} for k, v in self.secrets]
        if self.job_role_arn:
            props["jobRoleArn"] = self.job_role_arn
        if self.execution_role_arn:
            props["executionRoleArn"] = self.execution_role_arn
        if self.log_group:
            props["logConfiguration"] = {"logDriver": "awslogs",
                                         "options": {"awslogs-group": self.log_group,
                                                     "awslogs-stream-prefix": "gflow"}}
        if self.platform == "FARGATE":
            props["networkConfiguration"] = {"assignPublicIp": "ENABLED" if self.assign_public_ip else "DISABLED"}
            props["fargatePlatformConfiguration"] = {"platformVersion": "LATEST"}
        return props

    def request(self, name: str, digest: str) -> dict[str, Any]:
        """The RegisterJobDefinition request."""
        req: dict[str, Any] = {
            "jobDefinitionName": name, "type": "container", "containerProperties": self.container_properties(),
            "retryStrategy": {"attempts": self.attempts, "evaluateOnExit": INFRA_RETRY},
            "platformCapabilities": [self.platform], "propagateTags": True,
            "tags": {**dict(self.tags), "gflow:definition": digest},
        }
        if self.timeout:
            req["timeout"] = {"attemptDurationSeconds": self.timeout}
        return req

    def digest(self) -> str:
        body = self.request("-", "-")
        body.pop("tags")
        body.pop("jobDefinitionName")
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def definition_name(prefix: str, label: str, digest: str) -> str:
    """``<prefix>-<label>-<digest>``, within Batch's 128 characters of ``[A-Za-z0-9_-]``."""
    safe = re.sub(r"[^A-Za-z0-9_-]", "-", label).strip("-_") or "task"
    return f"{prefix}-{safe}"[: 128 - len(digest) - 1] + f"-{digest}"


def job_name(prefix: str, label: str, run_id: str, digest: str = "") -> str:
    """A job name Batch accepts (``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``), unique per submission through the
    first 12 hex digits of its spec or manifest ``digest`` (so a lost answer can be looked up by name)."""
    suffix = f"-{digest.partition(':')[2][:12]}" if digest else ""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", f"{prefix}-{label}-{run_id}")
    if not name[:1].isalnum():
        name = "g" + name
    return name[:128 - len(suffix)] + suffix


def attempt_seconds(timeout: float | None, chunk: int) -> int | None:
    """``attemptDurationSeconds`` for a task timeout and ``chunk`` calls per child (Batch's minimum is 60)."""
    if not timeout:
        return None
    return max(60, math.ceil(timeout * chunk))


def submit_request(*, name: str, queue: str, definition: str, command: list[str], environment: dict[str, str],
                   size: int, tags: dict[str, str]) -> dict[str, Any]:
    """A SubmitJob request: an array job of ``size`` children (``size`` >= 2) or a plain job."""
    req: dict[str, Any] = {
        "jobName": name, "jobQueue": queue, "jobDefinition": definition,
        "containerOverrides": {"command": command,
                               "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())]},
        "tags": tags, "propagateTags": True,
    }
    if size >= 2:
        req["arrayProperties"] = {"size": size}
    return req


def clean_tags(tags: Mapping[str, Any]) -> dict[str, str]:
    """Tags as Batch takes them: at most 50, keys up to 128 and values up to 256 characters."""
    out = {str(k)[:128]: str(v)[:256] for k, v in tags.items()}
    if len(out) > 45:
        raise ConfigError(f"{len(out)} tags: AWS allows 50 per resource and gflow adds up to 5; use at most 45")
    return out
