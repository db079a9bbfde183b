"""The Google Cloud Batch executor: a fan-out of N calls is ``ceil(N / (100,000 x chunk))`` Batch jobs.

``executor="gcp-batch://PROJECT/REGION"`` (extra ``gflow[gcp]``; building images also needs
``gflow[docker]``), or the same settings as keyword arguments (a profile's ``[profiles.NAME.gcp_batch]``
table). Credentials are Application Default Credentials. Guide: ``docs/gcp-batch.md``.

- Before the run is recorded (``preflight``, then ``image_tag_for``): project and region (the constructor),
  the Batch API enabled and the region known (one ``jobs.list`` of one job), the machine and GPU types, the
  ``gs://`` artifact store's bucket and permissions, and the image (built and pushed to Artifact Registry when absent,
  or a plain ``image`` reference; dev mode: a deps-only image and the code as a bundle).
- Each batch of calls of one task: one paged manifest in the artifact store (:mod:`gflow.executors._batch`)
  and one ``jobs.create`` per 100,000 tasks (``taskCount``, ``parallelism`` from ``parallelism`` /
  ``max_concurrency``, at most 5,000). Task ``i`` runs ``gflow worker MANIFEST`` and finds its call(s) by
  ``BATCH_TASK_INDEX``. The job id is derived from the manifest, so a create whose answer was lost is
  retried safely (409: the job is there already).
- Status and outcomes: :mod:`.._monitor` on the shared polling monitor (``jobs.get`` per job per cycle,
  ``tasks.list`` only for counts that changed). Every request backs off on 429 with jittered exponential
  waits (Batch allows 6,000 mutations and 15,000 reads per minute per region).
- Cancel: ``jobs.delete`` once every unfinished call of a job is cancelled.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import Any

from gflow.clouds import gcp as g
from gflow.errors import ConfigError, GflowError
from gflow.executors._batch import CloudBatch, group_by_task, per_job, split_sizes, write_paged_manifest
from gflow.executors.base import Call, Capabilities, Executor, Listener
from gflow.executors.events import CallDone, CallEvent
from gflow.executors.gcp_batch._images import Images
from gflow.executors.gcp_batch._jobs import (
    MAX_TASKS,
    Placement,
    check_accelerator,
    check_machine_type,
    clean_labels,
    job_id,
    job_request,
    label,
    to_message,
)
from gflow.executors.gcp_batch._monitor import BatchHandler, BatchMonitor, Handle, Job
from gflow.executors.gcp_batch._options import EXAMPLE, merge, parse_url, render_url
from gflow.executors.polling import Cadence

log = logging.getLogger("gflow.executors.gcp_batch")
_REGION = re.compile(r"^[a-z]+-[a-z]+\d+$")
_PROJECT = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$|^[a-z0-9.-]+:[a-z][a-z0-9-]{4,28}[a-z0-9]$")


class GcpBatchExecutor(CloudBatch, Executor):
    """Runs calls as Google Cloud Batch jobs (one job per fan-out). Arguments are described in docs/gcp-batch.md.

    Args:
        project, region: Where the jobs run (``gcp-batch://PROJECT/REGION``); the project defaults to
            ``GOOGLE_CLOUD_PROJECT``.
        machine_type, spot, gpu_type, install_gpu_drivers, boot_disk_gb: The VMs (default: Batch picks a machine
            that fits each task's cpu/memory; GPUs from the task's ``Resources.gpu``).
        service_account, network, subnetwork, no_external_ip: The VMs' identity and network.
        image: A prebuilt image reference (nothing is built); image_registry: Artifact Registry repository built
            images are pushed to; build: build missing images; dev: deps-only image plus a code bundle.
        labels, environment: Job labels (added to ``gflow-run`` and ``gflow-task``); the containers' environment.
        parallelism: Tasks of a job running at once (at most 5,000; ``max_concurrency`` in a URL).
        chunk: Calls per task (for very short tasks); max_tasks: tasks per job (at most 100,000).
        infra_retries: Batch's own retries of a task whose VM failed or was preempted (``maxRetryCount``).
        endpoint: The Batch API endpoint (a test server); artifacts_host: the storage emulator the containers use.
    """

    name = "gcp-batch"
    capabilities = Capabilities(reports_start=True, array_jobs=True, spot=True)

    _label = "gcp-batch"
    _store_scheme = "gs://"
    _store_refused = ("the gcp-batch executor needs a gs:// artifact store "
                      "(artifacts='gs://BUCKET/PREFIX' or GFLOW_ARTIFACTS): Batch tasks cannot reach {url}")
    _handle_type = Handle

    def __init__(self, project: str | None = None, region: str | None = None, *, machine_type: str | None = None,
                 spot: bool = False, gpu_type: str = "nvidia-tesla-t4", install_gpu_drivers: bool = True,
                 boot_disk_gb: int | None = None, service_account: str | None = None, network: str | None = None,
                 subnetwork: str | None = None, no_external_ip: bool = False, image: str | None = None,
                 image_registry: str | None = None, build: bool = True, docker_host: str | None = None,
                 dev: bool = False, bundle: str | None = None, labels: dict[str, str] | None = None,
                 environment: dict[str, str] | None = None, parallelism: int | None = None, chunk: int = 1,
                 max_tasks: int = MAX_TASKS, infra_retries: int = 2, job_prefix: str = "gflow",
                 artifacts: Any = None, artifacts_host: str | None = None, endpoint: str | None = None,
                 poll_min: float = 1.0, poll_max: float = 30.0, list_gap: float = 15.0, max_poll_errors: int = 10,
                 max_in_flight: int | None = None, check: bool = True, backoff: g.Backoff | None = None,
                 clock: Any = None, client: Any = None):
        project = project or os.environ.get("GOOGLE_CLOUD_PROJECT") or None
        if not project:
            raise ConfigError(f"gcp-batch executor: no project given; use {EXAMPLE} or set GOOGLE_CLOUD_PROJECT")
        if not _PROJECT.match(project):
            raise ConfigError(f"gcp-batch executor: {project!r} is not a project id (6-30 lowercase letters, digits "
                              f"and dashes; 'gcloud projects list' shows yours)")
        if not region:
            raise ConfigError(f"gcp-batch executor: no region given; use {EXAMPLE} ('gcloud batch locations list' "
                              f"shows where Batch runs)")
        if not _REGION.match(region):
            zone = re.match(r"^[a-z]+-[a-z]+\d+-[a-z]$", region)
            hint = f" (that is a zone; its region is {region.rsplit('-', 1)[0]})" if zone else ""
            raise ConfigError(f"gcp-batch executor: {region!r} is not a region{hint}; use e.g. us-central1")
        check_machine_type(machine_type, region)
        check_accelerator(gpu_type)
        if chunk < 1:
            raise ConfigError(f"gcp-batch executor: chunk must be at least 1, got {chunk}")
        if not 1 <= max_tasks <= MAX_TASKS:
            raise ConfigError(f"gcp-batch executor: max_tasks must be 1..{MAX_TASKS} (Batch's limit), got {max_tasks}")
        if parallelism is not None and parallelism < 1:
            raise ConfigError(f"gcp-batch executor: parallelism (max_concurrency) must be at least 1, got "
                              f"{parallelism}")
        if not 0 < poll_min <= poll_max:
            raise ConfigError(f"gcp-batch executor: need 0 < poll_min <= poll_max, got {poll_min}, {poll_max}")
        self.project, self.region = project, region
        self.parent = f"projects/{project}/locations/{region}"
        self.machine_type, self.spot = machine_type, spot
        self.placement = Placement(region=region, machine_type=machine_type, spot=spot, gpu_type=gpu_type,
                                   install_gpu_drivers=install_gpu_drivers, boot_disk_gb=boot_disk_gb,
                                   service_account=service_account, network=network, subnetwork=subnetwork,
                                   no_external_ip=no_external_ip)
        self.image, self.dev, self.bundle = image, dev, bundle
        self.labels = clean_labels(labels or {})
        self.environment = {str(k): str(v) for k, v in (environment or {}).items()}
        self.parallelism = parallelism
        self.chunk, self.max_tasks = chunk, max_tasks
        self.infra_retries = max(0, infra_retries)
        self.job_prefix = job_prefix
        self.artifacts_host = artifacts_host
        self.endpoint = endpoint
        self.max_in_flight = max_in_flight or 1_000_000
        self.check = check
        self.backoff = backoff or g.Backoff()
        self.counter = g.ApiCounter()
        self.images = Images(registry=image_registry, build=build, docker_host=docker_host, dev=dev)
        self._use_artifacts(artifacts)
        self._artifacts_ok: Any = None
        self._client = client
        self._lock = threading.RLock()
        self._prepared = False
        self._flow_ref: str | None = image
        self._flow_tag: str | None = image
        self._flow_name = "flow"
        self._in_flight = 0
        self.cadence = Cadence(poll_min, poll_max)
        self.handler = BatchHandler(self._Api(self), None, project=project, region=region, list_gap=list_gap)
        self.monitor = BatchMonitor(self.handler, cadence=self.cadence, max_errors=max_poll_errors,
                                    fatal=(ConfigError,), **({"clock": clock} if clock else {}))
        self.submitted_at: float | None = None  # when the last jobs.create of the last batch returned (benchmarks)
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> GcpBatchExecutor:
        """``gcp-batch://PROJECT/REGION?...`` over ``settings``, a profile's ``[profiles.X.gcp_batch]`` table
        (keywords of the constructor; the URL's own values win)."""
        return cls(**merge(spec, settings))

    @property
    def url(self) -> str:
        """This executor as a ``gcp-batch://`` URL (what a run records; environment values are left out)."""
        return render_url(self)

    # -- Google plumbing ---------------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                from google.api_core.client_options import ClientOptions
                from google.cloud import batch_v1

                opts = ClientOptions(api_endpoint=self.endpoint) if self.endpoint else None
                try:
                    self._client = batch_v1.BatchServiceClient(credentials=g.credentials(self.endpoint),
                                                               transport="rest", client_options=opts)
                except Exception as e:  # noqa: BLE001 - no credentials: one line naming the fix
                    raise g.translate(e, "Google Cloud Batch", project=self.project, error=ConfigError) from None
            return self._client

    def _call(self, method: str, op: str, *, idempotent: bool = True, passthrough: tuple[int, ...] = (),
              **kw: Any) -> Any:
        return g.call(getattr(self.client, method), self.backoff, what=f"Google Cloud Batch ({self.parent})", op=op,
                      counter=self.counter, idempotent=idempotent, project=self.project, passthrough=passthrough,
                      retry=None, timeout=60, **kw)

    class _Api:
        """The handler's view of Batch (through the executor's client, counting and backoff)."""

        def __init__(self, ex: GcpBatchExecutor):
            self.ex = ex

        def get(self, name: str) -> dict | None:
            from google.cloud import batch_v1

            try:
                job = self.ex._call("get_job", "jobs.get", passthrough=(404,), name=name)
            except GflowError:
                raise
            except Exception:  # noqa: BLE001 - 404 (passed through): the job is gone
                return None
            return dict(batch_v1.Job.to_dict(job, preserving_proto_field_name=False, use_integers_for_enums=False))

        def tasks(self, name: str, state: str) -> list[dict]:
            from google.cloud import batch_v1

            out: list[dict] = []
            token = ""
            while True:
                page = self.ex._call("list_tasks", "tasks.list", request={
                    "parent": f"{name}/taskGroups/group0", "filter": f"State={state}", "page_size": 1000,
                    "page_token": token})
                out += [batch_v1.Task.to_dict(t, preserving_proto_field_name=False, use_integers_for_enums=False)
                        for t in page.tasks]
                token = page.next_page_token
                if not token:
                    return out

        def delete(self, name: str) -> None:
            try:
                self.ex._call("delete_job", "jobs.delete", passthrough=(404,), name=name)
            except GflowError as e:
                log.warning("could not delete Batch job %s: %s", name, e)
            except Exception:  # noqa: BLE001 - 404: gone already
                pass

    @property
    def api_calls(self) -> dict[str, int]:
        """Batch API requests this executor made, by operation (``jobs.create``, ``jobs.get``, ``tasks.list``, ...)."""
        return self.counter.snapshot()

    # -- checks before anything is submitted -------------------------------------------------------------------
    def prepare(self) -> None:
        """Check once that the Batch API is enabled in the project and knows the region (ConfigError with the fix)."""
        with self._lock:
            if self._prepared:
                return
            if self.check:
                try:
                    self._call("list_jobs", "jobs.list", passthrough=(403, 404),
                               request={"parent": self.parent, "page_size": 1})
                except GflowError:
                    raise
                except Exception as e:  # noqa: BLE001 - translated here, with the fix
                    raise self._setup_error(e) from None
            self._prepared = True

    def preflight(self) -> None:
        """Before the run is recorded: the Batch API, the project and region (:meth:`prepare`), then the gs://
        artifact store and its bucket. One line each (ConfigError)."""
        self.prepare()
        self._check_artifacts()

    def _setup_error(self, e: BaseException) -> ConfigError:
        status, _, message = g.status_of(e)
        first = message.splitlines()[0][:200]
        if g.api_disabled(e):
            return ConfigError(f"gcp-batch: the Batch API is not enabled in project {self.project}; enable it with "
                               f"'gcloud services enable batch.googleapis.com compute.googleapis.com "
                               f"logging.googleapis.com --project {self.project}'")
        if status == 404:
            return ConfigError(f"gcp-batch: Batch does not know region {self.region!r} in project {self.project} "
                               f"({first}); 'gcloud batch locations list' shows where it runs")
        return ConfigError(f"gcp-batch: project {self.project} refused listing Batch jobs ({first}); grant the "
                           f"driver's account roles/batch.jobsEditor and roles/iam.serviceAccountUser "
                           f"(docs/gcp-batch.md)")

    def job_environment(self) -> dict[str, str]:
        """What every task gets in its environment: where the artifact store is (never credentials)."""
        arts = self._check_artifacts()
        env = {**self.environment, "GFLOW_ARTIFACTS": arts.url}
        host = self.artifacts_host or g.emulator_host()
        if host:
            env[g.STORAGE_EMULATOR] = host
        return env

    # -- images -------------------------------------------------------------------------------------------------
    def image_tag_for(self, flow: Any) -> str:
        """Check the setup, then build and push the flow's image if needed; the run records the reference
        (``REF#bundle=DIGEST`` in dev mode)."""
        from gflow.executors.docker import BUNDLE_SEP
        from gflow.images.context import flow_image_ref

        self.prepare()
        self._flow_name = flow.name
        plain = flow_image_ref(flow) if self.image is None else None
        if plain is not None:  # the flow's plain reference is run as given (code and all), as a task's is
            self._flow_tag = self._flow_ref = plain
            self.bundle = None
        elif self.image is None:
            self._flow_tag, self._flow_ref, code = self.images.flow_ref(flow)
            if code is not None:
                self.bundle = self._check_artifacts().put(code)
        elif self.dev and self.bundle is None:
            self.bundle = self._check_artifacts().put(self.images.bundle_of(flow))
        ref: str = self._flow_ref  # type: ignore[assignment]  # given, or just built
        return ref + (f"{BUNDLE_SEP}{self.bundle}" if self.bundle else "")

    def pin(self, image: str, bundle: str | None = None) -> None:
        """Run this image reference (and code bundle) for every flow instead of building (replay)."""
        self.image = self._flow_ref = self._flow_tag = image
        self.bundle = bundle

    # -- the executor interface ---------------------------------------------------------------------------------
    def start(self, listener: Listener) -> None:
        self._listener = listener
        self.monitor.start(self._report)

    def _report(self, ev: CallEvent) -> None:
        if isinstance(ev, CallDone):
            with self._lock:
                self._in_flight -= 1
        self._listener(ev)

    def placement_for(self, task: Any) -> Placement:
        """The executor's placement, on SPOT VMs when the task's resources ask for spot (the executor's own
        ``spot`` puts every job on SPOT; a task's ``Resources(spot=True)`` only its own, which its retries move to
        STANDARD after ``Retry(spot=N)`` reclaims)."""
        if task.options.resources.spot and not self.placement.spot:
            return dataclasses.replace(self.placement, spot=True)
        return self.placement

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        if not calls:
            return []
        self.prepare()
        arts = self._check_artifacts()
        env = self.job_environment()
        handles: dict[str, Handle] = {}
        jobs: list[Job] = []
        try:
            for group in group_by_task(calls):
                jobs += self._submit_group(group, self._image_for(group[0].task), env, arts, handles)
        except BaseException:
            for j in jobs:
                self.handler.api.delete(j.name)
            raise
        self.submitted_at = time.perf_counter()
        with self._lock:
            self._in_flight += len(calls)
        for j in jobs:
            self.monitor.add(j)
        self.monitor.track([handles[c.id] for c in calls])
        return [handles[c.id] for c in calls]

    def _submit_group(self, group: list[Call], image: str, env: dict[str, str], arts: Any,
                      handles: dict[str, Handle]) -> list[Job]:
        task = group[0].task
        k = per_job(task, len(group), self.chunk, self.max_tasks)
        labels = {**self.labels, "gflow-run": label(group[0].run_id), "gflow-task": label(task.name)}
        jobs = []
        start = 0
        for size in split_sizes(-(-len(group) // k), self.max_tasks):
            part = group[start * k:(start + size) * k]
            start += size
            m = write_paged_manifest(arts, part, image=image, bundle=self.bundle, chunk=k)
            body = job_request(task=task, image=image, commands=["worker", m.array], count=m.elements,
                               parallelism=self.parallelism_for(task), environment=env, labels=labels,
                               placement=self.placement_for(task), chunk=k, infra_retries=self.infra_retries)
            name = self._create(job_id(self.job_prefix, task.name, m.array), body)
            job = Job(name, m.elements, image, m.array, k)
            for pos, call in enumerate(part):
                h = Handle(call, job, pos // k, pos % k, m.specs[pos])
                job.elements.setdefault(h.element, []).append(h)
                handles[call.id] = h
            jobs.append(job)
        return jobs

    def reattach(self, calls: Sequence[Call], records: Sequence[Any]) -> list[Any]:
        """Follow the dead driver's Batch jobs of ``calls`` (found by the ``gflow-run`` label, each task by the
        call id its call spec names); None for calls whose job or task failed or is gone. See ``_reattach``."""
        from gflow.executors.gcp_batch._reattach import reattach

        self.prepare()
        return reattach(self, calls, records)

    def parallelism_for(self, task: Any) -> int | None:
        """Tasks of one job running at once: the executor's ``parallelism`` and the task's ``max_concurrency``,
        whichever is lower (None: as many as the job has, up to Batch's 5,000)."""
        limits = [x for x in (self.parallelism, task.options.max_concurrency) if x]
        return min(limits) if limits else None

    def _create(self, jid: str, body: dict[str, Any]) -> str:
        """jobs.create. The id is the submission's own, so a create whose answer was lost (a dropped
        connection, a 5xx) is sent again safely: 409 means the first one made the job."""
        try:
            job = self._call("create_job", "jobs.create", passthrough=(409,), parent=self.parent,
                             job=to_message(body), job_id=jid)
            return str(job.name)
        except GflowError:
            raise
        except Exception:  # noqa: BLE001 - 409 (passed through): it exists, made by this very submission
            log.info("Batch job %s exists already (an earlier try of this create went through)", jid)
            return f"{self.parent}/jobs/{jid}"

    def describe_handle(self, handle: Any) -> str:
        h: Handle = handle
        return f"{h.job.image} job={h.job.id} task={h.element}" + (f" call={h.pos}" if h.job.chunk > 1 else "")

    @classmethod
    def fetch_logs(cls, spec: str, handle: str, info: dict[str, Any] | None = None) -> str | None:
        """The Cloud Logging entries of a task run's Batch task (needs ``google-cloud-logging`` and
        roles/logging.viewer); where they cannot be read, an ExecutorError says why."""
        from gflow.executors.gcp_batch._logs import fetch

        kw = parse_url(spec) if "://" in spec else {}
        return fetch(kw.get("project") or (info or {}).get("project"), info or {})

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        live = [h for h in self.monitor.live() if isinstance(h, Handle)]
        self.monitor.close()
        if live:
            log.warning("closing with %d Google Cloud Batch calls unfinished: deleting their jobs", len(live))
            self.monitor.cancel(live)
