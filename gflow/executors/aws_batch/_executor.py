"""The AWS Batch executor: a fan-out of N calls is ``ceil(N / (10,000 x chunk))`` array jobs.

``executor="aws-batch://JOB_QUEUE?region=us-east-1"`` (extra ``gflow[aws]``; building images also
needs ``gflow[docker]``), or the same settings as keyword arguments (a profile's
``[profiles.NAME.aws_batch]`` table). boto3's configuration is honoured (``AWS_PROFILE``,
``AWS_REGION``, the credentials chain, ``AWS_ENDPOINT_URL[_BATCH|_S3|...]``), so the same code
targets AWS, moto or LocalStack. Guide: ``docs/aws-batch.md``.

- Before the run is recorded (``preflight``, then ``image_tag_for``): the region, the queue (it exists, is
  enabled, its compute environments fit the platform), the roles, the S3 artifact store, and the image
  (built and pushed to ``image_registry`` when absent, or a plain reference checked in its registry).
- Each batch of calls of one task: one job definition (registered once per distinct
  image/resources/timeout/retry policy, found again by its hashed name), one paged array manifest in
  the S3 artifact store (``gflow.executors._batch``), one SubmitJob per 10,000 children. Child ``i``
  runs ``gflow worker MANIFEST`` and finds its call(s) by its array index.
- Status and outcomes: :mod:`gflow.executors.aws_batch._monitor` (DescribeJobs in batches of 100, array
  summaries, children listed only when they changed, adaptive polling, backoff with jitter on
  throttling). Outcomes carry ``result_ref`` and ``info`` (job id, array index, attempts, exit code,
  status reason, log stream).
- Cancel: TerminateJob (Batch cancels what has not started and stops what runs): once for a whole
  job or array; per child for the rest of a partly finished array (up to 100 children, else once).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from gflow.clouds import aws
from gflow.errors import ConfigError, GflowError
from gflow.executors._batch import CloudBatch, group_by_task, per_job, split_sizes, write_paged_manifest
from gflow.executors.aws_batch._checks import check_queue, check_roles
from gflow.executors.aws_batch._images import Images
from gflow.executors.aws_batch._jobs import (
    DefinitionSpec,
    attempt_seconds,
    check_env,
    check_role,
    clean_tags,
    definition_name,
    job_name,
    resource_requirements,
    submit_request,
)
from gflow.executors.aws_batch._monitor import DEFAULT_LOG_GROUP, BatchHandler, BatchMonitor, Handle, Job
from gflow.executors.aws_batch._options import merge, parse_url, render_url
from gflow.executors.base import Call, CallDone, CallEvent, Capabilities, Executor, Listener
from gflow.executors.polling import Cadence

log = logging.getLogger("gflow.executors.aws_batch")


class AwsBatchExecutor(CloudBatch, Executor):
    """Runs calls as AWS Batch jobs (arrays for fan-outs). Arguments are described in docs/aws-batch.md.

    Args:
        queue: Job queue name or ARN.
        region, profile, endpoint_url: AWS region, profile and endpoint (default: boto3's configuration).
        job_role_arn: Role the containers run as (their S3 access); execution_role_arn: role that pulls
            images and writes logs (required on Fargate).
        platform: ``EC2`` or ``FARGATE``.
        image: A prebuilt image reference to run (nothing is built); image_registry: where built images
            are pushed and pulled from; build: build missing images.
        log_group: CloudWatch Logs group of the jobs (default: Batch's ``/aws/batch/job``).
        tags, environment, secrets: Job tags; environment of the containers; secrets by reference
            (``{"NAME": "arn:aws:secretsmanager:..."}`` or SSM parameters).
        chunk: Calls per array child (for very short tasks).
        array: False submits one job per call (the naive path, kept as a baseline).
        infra_retries: Batch retries of infrastructure failures (spot reclaim, host terminated).
        artifacts_endpoint: S3 endpoint the containers use (default: the driver's, when it is not AWS's).
        poll_min, poll_max: Bounds of the adaptive poll interval (seconds).
        spot_queue: The job queue (on a SPOT compute environment) of calls with ``Resources(spot=True)``;
            on_demand_queue: the queue of the others (default: ``queue``). Without spot_queue, spot is refused.
    """

    name = "aws-batch"
    capabilities = Capabilities(reports_start=True, array_jobs=True)

    _label = "aws-batch"
    _store_scheme = "s3://"
    _store_refused = ("the aws-batch executor needs an S3 artifact store "
                      "(artifacts='s3://BUCKET/PREFIX' or GFLOW_ARTIFACTS): Batch jobs cannot reach {url}")
    _handle_type = Handle

    def __init__(self, queue: str, *, region: str | None = None, profile: str | None = None,
                 endpoint_url: str | None = None, job_role_arn: str | None = None,
                 execution_role_arn: str | None = None, platform: str = "EC2", image: str | None = None,
                 image_registry: str | None = None, build: bool = True, docker_host: str | None = None,
                 log_group: str | None = None, tags: dict[str, str] | None = None,
                 environment: dict[str, str] | None = None, secrets: dict[str, str] | None = None,
                 chunk: int = 1, max_array_size: int = 10000, array: bool = True, job_name_prefix: str = "gflow",
                 infra_retries: int = 2, artifacts: Any = None, artifacts_endpoint: str | None = None,
                 poll_min: float = 1.0, poll_max: float = 30.0, sweep: float = 60.0, list_gap: float = 15.0,
                 describe: str = "failed", max_in_flight: int | None = None, assign_public_ip: bool = False,
                 check: bool = True, max_poll_errors: int = 5, backoff: aws.Backoff | None = None,
                 clock: Any = None, spot_queue: str | None = None, on_demand_queue: str | None = None):
        if not queue:
            raise ConfigError("aws-batch executor: no job queue given (aws-batch://JOB_QUEUE?region=R)")
        self.platform = platform.upper()
        if self.platform not in ("EC2", "FARGATE"):
            raise ConfigError(f"aws-batch executor: platform must be EC2 or FARGATE, got {platform!r}")
        if self.platform == "FARGATE" and not execution_role_arn:
            raise ConfigError("aws-batch executor: Fargate jobs need execution_role_arn (a role with "
                              "AmazonECSTaskExecutionRolePolicy) to pull images and write logs")
        check_role(job_role_arn, "job_role_arn")
        check_role(execution_role_arn, "execution_role_arn")
        self.environment = {str(k): str(v) for k, v in (environment or {}).items()}
        self.secrets = {str(k): str(v) for k, v in (secrets or {}).items()}
        check_env(self.environment, self.secrets)
        if chunk < 1:
            raise ConfigError(f"aws-batch executor: chunk must be at least 1, got {chunk}")
        if not 2 <= max_array_size <= 10000:
            raise ConfigError(f"aws-batch executor: max_array_size must be 2..10000 (Batch's limits), got "
                              f"{max_array_size}")
        if describe not in ("failed", "all"):
            raise ConfigError(f"aws-batch executor: describe must be 'failed' or 'all', got {describe!r}")
        if not 0 < poll_min <= poll_max:
            raise ConfigError(f"aws-batch executor: need 0 < poll_min <= poll_max, got {poll_min}, {poll_max}")
        self.queue = queue
        #: Resources(spot=True) calls go to spot_queue; the others (and a reclaimed call's on-demand retry) to
        #: on_demand_queue, else to queue
        self.spot_queue, self.on_demand_queue = spot_queue or None, on_demand_queue or None
        if self.spot_queue:
            self.capabilities = dataclasses.replace(type(self).capabilities, spot=True)
        self.region, self.profile, self.endpoint_url = region, profile, endpoint_url
        self.job_role_arn, self.execution_role_arn = job_role_arn, execution_role_arn
        self.image = image
        self.log_group = log_group
        self.tags = clean_tags(tags or {})
        self.chunk, self.max_array_size, self.array = chunk, max_array_size, array
        self.job_name_prefix = job_name_prefix
        self.infra_retries = max(0, infra_retries)
        self.artifacts_endpoint = artifacts_endpoint
        self.max_in_flight = max_in_flight or 1_000_000
        self.assign_public_ip = assign_public_ip
        self.check = check
        self.max_poll_errors = max_poll_errors
        self.backoff = backoff or aws.Backoff()
        self.counter = aws.ApiCounter()
        self.images = Images(registry=image_registry, build=build, docker_host=docker_host,
                             ecr=lambda: self._client("ecr"))
        self._use_artifacts(artifacts)
        self._artifacts_ok: Any = None
        self._session: Any = None
        self._clients: dict[str, Any] = {}
        self._prepared = False
        self._defs: dict[str, str] = {}
        self._flow_ref: str | None = image
        self._flow_tag: str | None = image
        self._flow_name = "flow"
        self._lock = threading.RLock()
        self._in_flight = 0
        self.cadence = Cadence(poll_min, poll_max)
        self.handler = BatchHandler(self._Api(self), None, log_group=log_group or DEFAULT_LOG_GROUP, queue=queue,
                                    sweep=sweep, list_gap=list_gap, describe_all=describe == "all")
        self.monitor = BatchMonitor(self.handler, cadence=self.cadence, max_errors=max_poll_errors,
                                    fatal=(ConfigError,), **({"clock": clock} if clock else {}))
        self.submitted_at: float | None = None  # when the last SubmitJob of the last batch returned (benchmarks)
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> AwsBatchExecutor:
        """``aws-batch://QUEUE?...`` over ``settings``, a profile's ``[profiles.X.aws_batch]`` table (keywords
        of the constructor; the URL's own values win)."""
        return cls(**merge(spec, settings))

    @property
    def url(self) -> str:
        """This executor as an ``aws-batch://`` URL (what a run records; environment values are left out)."""
        return render_url(self)

    # -- AWS plumbing ----------------------------------------------------------------------------------
    class _Api:
        """The monitor's view of Batch (through the executor's clients, counting and backoff)."""

        def __init__(self, ex: AwsBatchExecutor):
            self.ex = ex

        def describe(self, ids: list[str]) -> list[dict]:
            return list(self.ex._call("describe_jobs", jobs=ids)["jobs"])

        def children(self, array_id: str, status: str) -> list[dict]:
            out: list[dict] = []
            kw: dict[str, Any] = {"arrayJobId": array_id, "jobStatus": status, "maxResults": 1000}
            while True:
                page = self.ex._call("list_jobs", **kw)
                out.extend(page.get("jobSummaryList", []))
                token = page.get("nextToken")
                if not token:
                    return out
                kw["nextToken"] = token

        def terminate(self, ids: list[str], reason: str) -> None:
            self.ex._terminate_ids(ids, reason)

    @property
    def session(self) -> Any:
        if self._session is None:
            self._session = aws.session(self.region, self.profile)
        return self._session

    def _client(self, service: str) -> Any:
        with self._lock:
            c = self._clients.get(service)
            if c is None:
                c = self._clients[service] = aws.client(self.session, service, endpoint_url=self.endpoint_url,
                                                        botocore_retries=service != "batch", counter=self.counter)
            return c

    def _call(self, op: str, *, idempotent: bool = True, **kw: Any) -> Any:
        return aws.call(self._client("batch"), op, self.backoff, what=f"AWS Batch ({self.queue})",
                        idempotent=idempotent, **kw)

    @property
    def api_calls(self) -> dict[str, int]:
        """AWS API calls this executor made, by operation (``SubmitJob``, ``DescribeJobs``, ...)."""
        return self.counter.snapshot()

    # -- checks before anything is submitted ---------------------------------------------------------
    def prepare(self) -> None:
        """Check region, credentials, queue, platform and roles once (ConfigError with the fix)."""
        with self._lock:
            if self._prepared:
                return
            self.region = aws.check_region(self.session, self.region, "batch", self.endpoint_url)
            if self.check:
                for q in dict.fromkeys(x for x in (self.queue, self.spot_queue, self.on_demand_queue) if x):
                    check_queue(self._call, q, self.region, self.platform)
                check_roles(self._client("iam"), {"job_role_arn": self.job_role_arn,
                                                  "execution_role_arn": self.execution_role_arn})
            self._prepared = True

    def preflight(self) -> None:
        """Before the run is recorded: region, credentials, queue, platform, roles, then the artifact store
        (S3, and its bucket reachable). One line each (ConfigError)."""
        self.prepare()
        self._check_artifacts()

    def job_environment(self) -> dict[str, str]:
        """What every job gets in its environment: where the artifact store is (never credentials)."""
        arts = self._check_artifacts()
        env = {"GFLOW_ARTIFACTS": arts.url}
        endpoint = self.artifacts_endpoint
        if endpoint is None:
            resolved = arts.resolved_endpoint
            if "amazonaws.com" not in resolved:
                endpoint = resolved
        if endpoint:
            env["AWS_ENDPOINT_URL_S3"] = endpoint
        region = arts.client.meta.region_name
        if region:
            env["AWS_DEFAULT_REGION"] = region
        return env

    # -- images ----------------------------------------------------------------------------------------
    def image_tag_for(self, flow: Any) -> str:
        """Check the setup, then build and push the flow's image if needed; the run records the reference."""
        from gflow.images.context import flow_image_ref

        self.prepare()
        self._flow_name = flow.name
        if self.image is not None:
            self.images.check_ref(self.image)
            return self.image
        plain = flow_image_ref(flow)
        if plain is not None:  # the flow's plain reference is run as given, as a task's is
            self.images.check_ref(plain)
            self._flow_tag = self._flow_ref = plain
            return plain
        self._flow_tag, self._flow_ref = self.images.flow_ref(flow)
        return self._flow_ref

    # -- job definitions -------------------------------------------------------------------------------
    def definition(self, task: Any, image: str, chunk: int) -> str:
        """The ARN of the job definition for ``task``'s calls in ``image`` (registered only if new)."""
        res = resource_requirements(task.options.resources, self.platform, task=task.name)
        spec = DefinitionSpec(
            image=image, resources=tuple((r["type"], r["value"]) for r in res), platform=self.platform,
            timeout=attempt_seconds(task.options.timeout, chunk), attempts=1 + self.infra_retries,
            job_role_arn=self.job_role_arn, execution_role_arn=self.execution_role_arn, log_group=self.log_group,
            environment=tuple(sorted(self.environment.items())), secrets=tuple(sorted(self.secrets.items())),
            assign_public_ip=self.assign_public_ip, tags=tuple(sorted(self.tags.items())))
        digest = spec.digest()
        name = definition_name(self.job_name_prefix, task.name, digest)
        with self._lock:
            arn = self._defs.get(name)
            if arn is None:
                found = self._call("describe_job_definitions", jobDefinitionName=name, status="ACTIVE")
                active = [d for d in found.get("jobDefinitions", []) if d.get("status", "ACTIVE") == "ACTIVE"]
                if active:
                    arn = max(active, key=lambda d: d.get("revision", 0))["jobDefinitionArn"]
                else:
                    arn = self._call("register_job_definition", idempotent=False,
                                     **spec.request(name, digest))["jobDefinitionArn"]
                self._defs[name] = arn
        return arn

    # -- the executor interface ------------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        self.prepare()
        arts = self._check_artifacts()
        env = self.job_environment()
        handles: dict[str, Handle] = {}
        jobs: list[Job] = []
        try:
            for group in group_by_task(calls):
                task = group[0].task
                image = self._image_for(task)
                if self.array and len(group) > 1:
                    jobs += self._submit_arrays(group, image, env, arts, handles)
                else:
                    for c in group:
                        jobs.append(self._submit_one(c, image, env, arts, handles))
        except BaseException:
            self._terminate_ids([j.id for j in jobs], "gflow: the rest of its batch could not be submitted")
            raise
        self.submitted_at = time.perf_counter()
        with self._lock:
            self._in_flight += len(calls)
        for j in jobs:
            self.monitor.add(j)
        self.monitor.track([handles[c.id] for c in calls])
        return [handles[c.id] for c in calls]

    def reattach(self, calls: Sequence[Call], records: Sequence[Any]) -> list[Any]:
        """Follow the dead driver's jobs of ``calls`` (found by the run id in their names and ``gflow:run`` tag);
        None for calls whose job or array child failed or is gone. See ``_reattach``."""
        from gflow.executors.aws_batch._reattach import reattach

        self.prepare()
        return reattach(self, calls, records)

    def queue_for(self, task: Any) -> str:
        """The job queue of ``task``'s calls: spot_queue when its resources ask for spot, else on_demand_queue
        (else queue)."""
        if task.options.resources.spot and self.spot_queue:
            return self.spot_queue
        return self.on_demand_queue or self.queue

    def _tags(self, call: Call) -> dict[str, str]:
        return {**self.tags, "gflow:run": call.run_id, "gflow:task": call.task.name[:256]}

    def _submit(self, req: dict[str, Any]) -> str:
        """SubmitJob. An answer lost on the way (timeout, dropped connection) is ambiguous: the job is
        looked up by its name (unique per submission) before submitting again, so none runs twice."""
        for n in range(3):
            try:
                return str(self._call("submit_job", idempotent=False, **req)["jobId"])
            except aws.AmbiguousRequest as e:
                log.warning("%s; looking for job %s before submitting again", e, req["jobName"])
                found = self._call("list_jobs", jobQueue=req["jobQueue"],
                                   filters=[{"name": "JOB_NAME", "values": [req["jobName"]]}])["jobSummaryList"]
                if found:
                    return str(found[0]["jobId"])
                if n == 2:
                    raise
        raise AssertionError("unreachable")

    def _submit_one(self, call: Call, image: str, env: dict[str, str], arts: Any, handles: dict) -> Job:
        from gflow.images.protocol import write_call_spec

        spec = write_call_spec(arts, call, image=image)
        name = job_name(self.job_name_prefix, call.task.name, call.run_id, spec)
        req = submit_request(name=name, queue=self.queue_for(call.task),
                             definition=self.definition(call.task, image, 1),
                             command=["worker", spec], environment=env, size=0, tags=self._tags(call))
        job = Job(self._submit(req), name, 0, image, None)
        job.elements[0] = [h := Handle(call, job, 0, 0, spec)]
        handles[call.id] = h
        return job

    def _submit_arrays(self, group: list[Call], image: str, env: dict[str, str], arts: Any, handles: dict) -> list[Job]:
        k = per_job(group[0].task, len(group), self.chunk, self.max_array_size)
        jobs = []
        start = 0
        for size in split_sizes(-(-len(group) // k), self.max_array_size):
            part = group[start * k:(start + size) * k]
            start += size
            m = write_paged_manifest(arts, part, image=image, chunk=k)
            name = job_name(self.job_name_prefix, part[0].task.name, part[0].run_id, m.array)
            command = ["worker", m.array] if m.elements >= 2 else ["worker", m.array, "--index", "0"]
            req = submit_request(name=name, queue=self.queue_for(part[0].task),
                                 definition=self.definition(part[0].task, image, k),
                                 command=command, environment=env, size=m.elements, tags=self._tags(part[0]))
            job = Job(self._submit(req), name, m.elements if m.elements >= 2 else 0, image, m.array, k)
            for pos, call in enumerate(part):
                h = Handle(call, job, pos // k if job.size else 0, pos % k, m.specs[pos])
                job.elements.setdefault(h.element, []).append(h)
                handles[call.id] = h
            jobs.append(job)
        return jobs

    def start(self, listener: Listener) -> None:
        super().start(listener)
        self.monitor.start(self._report)

    def _report(self, event: CallEvent) -> None:
        if type(event) is CallDone:
            with self._lock:
                self._in_flight -= 1
        self._listener(event)

    def _terminate_ids(self, ids: list[str], reason: str) -> None:
        for job_id in ids:
            try:
                self._call("terminate_job", jobId=job_id, reason=reason)
            except GflowError as e:
                log.warning("could not terminate AWS Batch job %s: %s", job_id, e)

    def describe_handle(self, handle: Any) -> str:
        h: Handle = handle
        return f"{h.job.image} job={h.job_id}" + (f" call={h.pos}" if h.job.chunk > 1 else "")

    @classmethod
    def fetch_logs(cls, spec: str, handle: str, info: dict[str, Any] | None = None) -> str | None:
        """The CloudWatch log of a task run's Batch job (by its recorded log stream, or its job id); where there
        is none, an ExecutorError (ConfigError for permissions) says why."""
        from gflow.executors.aws_batch._logs import fetch

        kw = parse_url(spec, require_queue=False) if "://" in spec else {}
        ex = cls(**{"queue": "-", **kw, "check": False})  # a run given an executor object records only its name
        return fetch(ex, handle, info or {})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.monitor.close()
        live = self.monitor.live()
        if live:
            log.warning("closing with %d AWS Batch calls unfinished: terminating their jobs", len(live))
            self.cancel(live)
