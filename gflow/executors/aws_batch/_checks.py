"""Checks of an AWS Batch setup before anything is submitted: the queue, its platform, the roles."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from gflow.clouds import aws
from gflow.errors import ConfigError

log = logging.getLogger("gflow.executors.aws_batch")


def check_queue(call: Callable[..., Any], queue: str, region: str, platform: str) -> None:
    """The queue exists, is enabled and valid, and its compute environments fit ``platform``.

    Args:
        call: ``call(operation, **kwargs)`` on the Batch client (with the executor's backoff).

    Raises:
        ConfigError: naming the queue and the fix.
    """
    queues = call("describe_job_queues", jobQueues=[queue])["jobQueues"]
    if not queues:
        raise ConfigError(f"job queue {queue!r} does not exist in {region}; list them with "
                          f"'aws batch describe-job-queues --region {region}' or create one (docs/aws-batch.md, Setup)")
    q = queues[0]
    if q.get("state") != "ENABLED":
        raise ConfigError(f"job queue {queue!r} is {q.get('state')}: enable it with 'aws batch update-job-queue "
                          f"--job-queue {queue} --state ENABLED'")
    if q.get("status") == "INVALID":
        raise ConfigError(f"job queue {queue!r} is INVALID ({q.get('statusReason')}); fix or recreate it")
    names = [c["computeEnvironment"] for c in q.get("computeEnvironmentOrder", [])]
    if not names:
        return
    envs = call("describe_compute_environments", computeEnvironments=names)["computeEnvironments"]
    kinds = {(e.get("computeResources") or {}).get("type") for e in envs if e.get("type") == "MANAGED"}
    fargate = {k for k in kinds if k and k.startswith("FARGATE")}
    if kinds and platform == "EC2" and kinds == fargate:
        raise ConfigError(f"job queue {queue!r} runs on Fargate compute environments: use platform=FARGATE "
                          f"(with execution_role_arn) or an EC2 queue")
    if kinds and platform == "FARGATE" and not fargate:
        raise ConfigError(f"job queue {queue!r} runs on EC2 compute environments: use platform=EC2 or a Fargate queue")


def check_roles(iam: Any, roles: dict[str, str | None]) -> None:
    """Each role exists (where ``iam:GetRole`` is allowed; without it, roles are not checked).

    Raises:
        ConfigError: a role that does not exist, or credentials AWS rejects.
    """
    import botocore.exceptions as bx

    for what, arn in roles.items():
        if not arn:
            continue
        try:
            iam.get_role(RoleName=arn.rsplit("/", 1)[1])
        except bx.ClientError as e:
            code, _ = aws.error_code(e)
            if code == "NoSuchEntity":
                raise ConfigError(f"{what} {arn}: no such IAM role; create it (docs/aws-batch.md, Setup) or fix "
                                  f"the ARN") from None
            if code in aws.CREDENTIAL_CODES:
                raise aws.translate(e, f"checking {what}") from None
            log.debug("cannot check %s %s (%s); going on", what, arn, code)
