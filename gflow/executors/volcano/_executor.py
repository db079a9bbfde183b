"""The Volcano executor: task calls as Volcano batch Jobs on Kubernetes (``batch.volcano.sh/v1alpha1``).

``executor="volcano://NAMESPACE?queue=Q"`` (extra ``gflow[k8s]``). A batch of calls of one task (a fan-out)
becomes one Job whose single task spec has one replica per call (chunked above ``max_replicas``); pod ``i``
runs ``gflow worker ARRAY_SPEC`` and finds its call by ``VC_TASK_INDEX`` (the ``env`` plugin). Calls travel
through the artifact store (:mod:`gflow.executors._batch`): a shared volume mounted at the same path in every
pod (a PVC, else a hostPath), or an S3-compatible URL. Status comes from two watches (pods and Jobs of this
driver, by label) that resume from a fresh list when they expire; outcomes are the workers' outcome records.
Pods stuck unschedulable or unable to pull their image fail with the scheduler's or kubelet's reason after a
set time; evicted pods are restarted by Volcano per the Job's policy. ``cancel`` deletes the Job (propagation
Background). Cluster access: ``KUBECONFIG`` / the current context, or the in-cluster service account.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from gflow.errors import ConfigError, ExecutorError
from gflow.executors._batch import RunArtifacts, chunk, group_by_task, write_manifest
from gflow.executors.base import Call, Capabilities, Executor, JobStatus
from gflow.executors.volcano import _manifest as vm
from gflow.executors.volcano._k8s import ListWatch, is_status, k8s_error, load_api_client
from gflow.executors.volcano._runtime import Handle, JobRec, Tracker

log = logging.getLogger("gflow.executors.volcano")
BUNDLE_SEP = "#bundle="
_BOOL = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}
#: URL query keys -> (keyword argument, type); lists are comma-separated, maps are k=v,k=v
_QUERY: dict[str, tuple[str, Any]] = {
    "queue": ("queue", str), "image": ("image", str), "bundle": ("bundle", str), "registry": ("registry", str),
    "build": ("build", bool), "priority_class": ("priority_class", str), "service_account": ("service_account", str),
    "image_pull_secrets": ("image_pull_secrets", list), "pull_policy": ("image_pull_policy", str),
    "node_selector": ("node_selector", dict), "tolerations": ("tolerations", list), "artifacts": ("artifacts", str),
    "artifacts_pvc": ("artifacts_pvc", str), "env_from_secrets": ("env_from_secrets", list),
    "max_replicas": ("max_replicas", int), "gang": ("gang", bool), "max_retry": ("max_retry", int),
    "evict_action": ("evict_action", str), "ttl": ("ttl", int), "unschedulable_after": ("unschedulable_after", float),
    "image_pull_after": ("image_pull_after", float), "scheduler": ("scheduler_name", str),
    "max_in_flight": ("max_in_flight", int), "context": ("context", str), "kubeconfig": ("kubeconfig", str),
    "in_cluster": ("in_cluster", bool), "spot_selector": ("spot_selector", dict),
    "spot_tolerations": ("spot_tolerations", list),
}


def _convert(spec: str, key: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            return _BOOL[raw.lower()]
        if kind is list:
            return [x for x in raw.split(",") if x]
        if kind is dict:
            return dict(kv.split("=", 1) for kv in raw.split(",") if kv)
        return kind(raw)
    except (KeyError, ValueError):
        raise ConfigError(f"volcano executor {spec!r}: {key}={raw!r} is not a valid {kind.__name__}") from None


class VolcanoExecutor(RunArtifacts, Executor):
    """Runs calls as Volcano Jobs (one Job per fan-out). Keyword arguments are the profile keys too.

    Args:
        namespace: Where Jobs are created (default: the kubeconfig context's namespace, else ``default``).
        queue: The Volcano queue. ``priority_class``, ``service_account``, ``image_pull_secrets``,
            ``image_pull_policy``, ``node_selector``, ``tolerations`` (dicts or ``key[=value]:Effect``), ``env``,
            ``env_from_secrets`` (secrets whose keys become the pods' environment, e.g. S3 credentials) and
            ``scheduler_name`` go into every pod. ``spot_selector`` / ``spot_tolerations``: added to the pods of
            calls with ``Resources(spot=True)`` (spot nodes' labels and taints); without them spot is refused.
        image: Run this image reference instead of building the flow's image (``bundle``: its code bundle).
        registry: Where the flow's built image is pushed for the cluster to pull (``build=False``: it is
            expected there already).
        artifacts: The artifact store (default: the run's): a folder on a volume every pod mounts at the same
            path (``artifacts_pvc`` names its PersistentVolumeClaim; without one, a hostPath of that folder, as on
            single-node clusters), or an S3-compatible URL.
        max_replicas: Most calls in one Job; a larger fan-out is split into several.
        gang: Start all pods of a Job together or none (minAvailable = replicas); per task: the tag ``gang``.
        max_retry: Restarts Volcano makes after evictions; ``evict_action`` ``RestartTask`` or ``RestartPod``.
        ttl: ``ttlSecondsAfterFinished`` of each Job (None: keep finished Jobs).
        unschedulable_after: Seconds a pod may stay unschedulable while nothing of this driver starts before
            its call fails with the scheduler's reason (None: wait forever). ``image_pull_after``: the same
            for image pull and container config errors.
        kubeconfig, context, in_cluster, api_client: Cluster access (``api_client``: a configured client).
        clock: Time source of those limits (tests pass a fake clock).
    """

    name = "volcano"
    capabilities = Capabilities(reports_start=True, array_jobs=True)

    def __init__(self, namespace: str | None = None, *, queue: str = "default", image: str | None = None,
                 bundle: str | None = None, registry: str | None = None, build: bool = True,
                 docker_host: str | None = None, priority_class: str | None = None,
                 service_account: str | None = None, image_pull_secrets: Sequence[str] = (),
                 image_pull_policy: str = "IfNotPresent", node_selector: dict[str, str] | None = None,
                 tolerations: Sequence[Any] = (), env: dict[str, str] | None = None,
                 env_from_secrets: Sequence[str] = (), artifacts: Any = None, artifacts_pvc: str | None = None,
                 max_replicas: int = 1000, gang: bool = False, max_retry: int = 3, evict_action: str = "RestartTask",
                 ttl: int | None = 3600, unschedulable_after: float | None = 600.0, image_pull_after: float = 120.0,
                 outcome_grace: float = 5.0, scheduler_name: str = "volcano", max_in_flight: int = 100_000,
                 kubeconfig: str | None = None, context: str | None = None, in_cluster: bool | None = None,
                 api_client: Any = None, watch_timeout: int = 60, clock: Callable[[], float] = time.time,
                 tick: float = 0.5, spot_selector: dict[str, str] | None = None,
                 spot_tolerations: Sequence[Any] = ()):
        if namespace is not None:
            vm.check_name("namespace", namespace)
        vm.check_name("queue", queue, subdomain=True)
        for what, v in (("priority_class", priority_class), ("service_account", service_account),
                        ("artifacts_pvc", artifacts_pvc), ("scheduler_name", scheduler_name)):
            if v is not None:
                vm.check_name(what, v, subdomain=True)
        for n in (*image_pull_secrets, *env_from_secrets):
            vm.check_name("secret", n, subdomain=True)
        for k, v in (node_selector or {}).items():
            vm.check_label("node_selector", k, v)
        for k, v in (spot_selector or {}).items():
            vm.check_label("spot_selector", k, v)
        #: the pods of Resources(spot=True) calls also get these (spot nodes' labels and taints)
        self.spot_selector = dict(spot_selector or {})
        self.spot_tolerations = vm.check_tolerations(spot_tolerations)
        if self.spot_selector:
            self.capabilities = dataclasses.replace(type(self).capabilities, spot=True)
        if evict_action not in vm.EVICT_ACTIONS:
            raise ConfigError(f"volcano executor: evict_action {evict_action!r} must be one of "
                              f"{', '.join(vm.EVICT_ACTIONS)} (RestartJob would rerun every element of a fan-out)")
        if image_pull_policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(f"volcano executor: image_pull_policy {image_pull_policy!r} must be Always, "
                              f"IfNotPresent or Never")
        if max_replicas < 1 or max_retry < 0 or max_in_flight < 1 or (ttl is not None and ttl < 0):
            raise ConfigError("volcano executor: max_replicas and max_in_flight must be at least 1; max_retry and "
                              "ttl not negative")
        if image is not None and BUNDLE_SEP in image:
            image, bundle = image.split(BUNDLE_SEP, 1)
        self.namespace = namespace
        self.queue = queue
        self.image, self.bundle, self._pinned = image, bundle, image is not None
        self.registry, self.build, self.docker_host = registry, build, docker_host
        self.gang = gang
        self.max_replicas = max_replicas
        self.max_in_flight = max_in_flight
        self.settings = vm.PodSettings(
            namespace=namespace or "default", queue=queue, scheduler_name=scheduler_name,
            priority_class=priority_class, service_account=service_account,
            image_pull_secrets=tuple(image_pull_secrets), image_pull_policy=image_pull_policy,
            node_selector=dict(node_selector or {}), tolerations=vm.check_tolerations(tolerations),
            env=dict(env or {}), env_from_secrets=tuple(env_from_secrets), artifacts_pvc=artifacts_pvc,
            max_retry=max_retry, evict_action=evict_action, ttl=ttl)
        self._use_artifacts(artifacts)
        self._access: dict[str, Any] = {"kubeconfig": kubeconfig, "context": context, "in_cluster": in_cluster}
        self._api = api_client
        self._owns_api = api_client is None
        self.watch_timeout = watch_timeout
        self.task_images: dict[str, str] = {}
        self.driver_id = secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._flow_name: str | None = None
        self._lock = threading.RLock()
        self.tracker = Tracker(self, clock=clock, unschedulable_after=unschedulable_after,
                               image_pull_after=image_pull_after, outcome_grace=outcome_grace, tick=tick)
        self._watches: list[ListWatch] = []
        self._connected = False
        self._closed = False
        self.api_calls: dict[str, int] = {"create_job": 0, "delete_job": 0}

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> VolcanoExecutor:
        """``volcano://NAMESPACE?queue=Q&...`` (query keys: ``_QUERY``) over ``settings``, a profile's
        ``[profiles.X.volcano]`` table (keyword arguments of the constructor): the URL's own values win."""
        parsed = urllib.parse.urlparse(spec if "://" in spec else "volcano://")
        if parsed.path not in ("", "/"):
            raise ConfigError(f"volcano executor {spec!r}: give the namespace as the host: volcano://NAMESPACE?queue=Q")
        kw: dict[str, Any] = {}
        for key, values in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items():
            if key not in _QUERY:
                known = ", ".join(sorted(_QUERY))
                raise ConfigError(f"volcano executor {spec!r}: unknown option {key!r}; known: {known}")
            arg, kind = _QUERY[key]
            kw[arg] = _convert(spec, key, values[-1], kind)
        merged = {**settings, **kw}
        namespace = parsed.netloc or merged.pop("namespace", None)  # netloc keeps case: a bad name shows as given
        merged.pop("namespace", None)
        try:
            return cls(namespace, **merged)
        except TypeError as e:
            raise ConfigError(f"volcano executor: unknown setting ({e}); see docs/volcano.md for the keys") from None

    # -- cluster access -----------------------------------------------------------------------------
    def _connect(self) -> None:
        """Open the API client and start the watches (their first list runs here, so errors surface now)."""
        if self._connected:
            return
        from kubernetes import client

        if self._api is None:
            self._api, ns = load_api_client(**self._access)
            if self.namespace is None and ns:
                self.settings.namespace = ns
        self.namespace = self.settings.namespace
        self.core = client.CoreV1Api(self._api)
        self.custom = client.CustomObjectsApi(self._api)
        self._watch_driver(self.driver_id)
        self.tracker.start()
        self._connected = True

    def _watch_driver(self, driver_id: str) -> None:
        """Watch the pods and Jobs labelled with ``driver_id`` (this driver's, or a dead one's being adopted)."""
        selector = f"{vm.L_DRIVER}={driver_id}"
        ns = self.namespace or "default"
        # a dead driver's Jobs were seen gone before only if this driver created them: no relist-vanish for those
        own = driver_id == self.driver_id
        pods = ListWatch(partial(self.core.list_namespaced_pod, ns), self.tracker.on_pod, label_selector=selector,
                         on_relist=self.tracker.on_pod_relist if own else None, timeout_seconds=self.watch_timeout,
                         name="volcano-pods")
        jobs = ListWatch(partial(self.custom.list_namespaced_custom_object, vm.GROUP, vm.VERSION, ns, vm.PLURAL),
                         self.tracker.on_job, label_selector=selector,
                         on_relist=self.tracker.on_job_relist if own else None,
                         timeout_seconds=self.watch_timeout, name="volcano-jobs")
        for w, what in ((jobs, "listing Volcano Jobs"), (pods, "listing pods")):
            try:
                w.relist()
            except Exception as e:  # noqa: BLE001 - translated at the boundary
                raise k8s_error(e, f"volcano executor: {what} in namespace {ns}") from None
        self._watches += [pods, jobs]
        for w in (pods, jobs):
            w.start()

    def preflight(self) -> None:
        """Before the run is recorded (and before any image is built): the kubeconfig or in-cluster account, the
        API server answering, the credentials, the namespace, the Job CRD and the RBAC to list Jobs and pods
        (the watches' first list), and an artifact store the pods reach (a remote one: its bucket answers)."""
        if self._closed:
            raise ExecutorError("volcano executor is closed")
        self._connect()
        arts = self.artifacts
        check = getattr(arts, "check", None)
        if callable(check):
            check()

    def _pod_settings(self) -> vm.PodSettings:
        from gflow.artifacts import LocalArtifactStore

        arts = self.artifacts
        s = self.settings
        s.artifacts_url = arts.url
        s.artifacts_path = arts.root if isinstance(arts, LocalArtifactStore) else None
        return s

    # -- images -------------------------------------------------------------------------------------
    def image_tag_for(self, flow: Any) -> str:
        """Build and push the flow's image if needed (or take ``image=`` as is); the tag the run records."""
        from gflow.images.context import flow_context, flow_image_ref

        self._flow_name = flow.name
        plain = None if self._pinned else flow_image_ref(flow)
        if plain is not None:  # the flow's plain reference is run as given, as a task's is
            self.image = plain
        elif not self._pinned:
            self.image = self._ensure(flow_context(flow))
        assert self.image is not None
        return self.image + (f"{BUNDLE_SEP}{self.bundle}" if self.bundle else "")

    def _ensure(self, ctx: Any) -> str:
        from gflow.images.builders import DockerBuilder, with_registry

        if self.build:
            DockerBuilder(base_url=self.docker_host).ensure(ctx, registry=self.registry, push=bool(self.registry))
        return with_registry(ctx.tag, self.registry)

    def image_key(self, task: Any) -> str | None:
        img = task.options.image
        if isinstance(img, str):
            return img
        if img is not None:
            found = self.task_images.get(task.identity)
            if found is None:
                from gflow.images.context import task_context

                ctx = task_context(task, self._flow_name or "flow")
                found = ctx.tag if ctx is not None else None
            return found
        return self.image

    def _image_for(self, call: Call) -> str:
        img = call.task.options.image
        if isinstance(img, str):
            return img
        if img is not None:
            ident = call.task.identity
            if ident not in self.task_images:
                from gflow.images.context import task_context

                ctx = task_context(call.task, self._flow_name or "flow")
                assert ctx is not None  # the task has an Image
                self.task_images[ident] = self._ensure(ctx)
            return self.task_images[ident]
        if self.image is None:
            raise ExecutorError("volcano executor: no image to run: run a flow (its image is built and pushed to "
                                "registry=) or give image=REF")
        return self.image

    # -- the executor interface ---------------------------------------------------------------------
    def _wants_gang(self, task: Any) -> bool:
        opts = task.options
        return self.gang or "gang" in opts.tags or bool(getattr(opts.resources, "gang", False))

    def submit(self, calls: Sequence[Call]) -> list[Any]:
        if self._closed:
            raise ExecutorError("volcano executor is closed")
        self._connect()
        by_id: dict[str, Handle] = {}
        created: list[JobRec] = []
        try:
            for group in group_by_task(calls):
                task = group[0].task
                gang = self._wants_gang(task)
                if gang and len(group) > self.max_replicas:
                    raise ConfigError(f"volcano executor: a gang of {len(group)} calls of task '{task.name}' does not "
                                      f"fit one Job (max_replicas={self.max_replicas}); raise max_replicas")
                image = self._image_for(group[0])
                bundle = self.bundle if task.options.image is None else None
                for piece in chunk(group, len(group) if gang else self.max_replicas):
                    manifest = write_manifest(self.artifacts, piece, image=image, bundle=bundle)
                    jr = self._create(piece, manifest, image, gang)
                    created.append(jr)
                    by_id.update((h.call.id, h) for h in jr.handles)
        except BaseException:
            for jr in created:
                self.tracker.drop(jr)
                self._delete(jr.name)
            raise
        return [by_id[c.id] for c in calls]

    def reattach(self, calls: Sequence[Call], records: Sequence[Any]) -> list[Any]:
        """Follow the dead driver's Volcano Jobs of ``calls`` (found by the ``gflow.dev/run`` label, each replica
        by the call id its call spec names); None for calls whose Job ended failed or is gone. See ``_reattach``."""
        from gflow.executors.volcano._reattach import reattach

        if self._closed:
            raise ExecutorError("volcano executor is closed")
        self._connect()
        return reattach(self, calls, records)

    def _create(self, calls: list[Call], manifest: Any, image: str, gang: bool) -> JobRec:
        task, first = calls[0].task, calls[0]
        labels = {vm.L_MANAGED: "gflow", vm.L_RUN: vm.label_value(first.run_id), vm.L_TASK: vm.slug(task.name, 63),
                  vm.L_DRIVER: self.driver_id}
        if len(calls) == 1:
            labels[vm.L_TASK_RUN] = vm.label_value(first.id)
        annotations = {vm.A_IDENTITY: task.identity, vm.A_ARRAY: manifest.array}
        settings = self._pod_settings()
        if task.options.resources.spot and self.spot_selector:
            settings = dataclasses.replace(settings, node_selector={**settings.node_selector, **self.spot_selector},
                                           tolerations=[*settings.tolerations, *self.spot_tolerations])
        for _ in range(5):
            name = vm.job_name(task.name, first.run_id, next(self._seq))
            body = vm.job_manifest(name, settings, image=image, array_spec=manifest.array, replicas=len(calls),
                                   resources=task.options.resources, gang=gang, labels=labels,
                                   annotations=annotations, timeout=task.options.timeout)
            jr = self.tracker.add(name, calls, manifest.specs, image)  # before the create: no event is missed
            try:
                self.api_calls["create_job"] += 1
                self.custom.create_namespaced_custom_object(vm.GROUP, vm.VERSION, self.settings.namespace,
                                                            vm.PLURAL, body, _preload_content=False)
                return jr
            except Exception as e:  # noqa: BLE001 - translated at the boundary
                self.tracker.drop(jr)
                if is_status(e, 409):
                    continue  # a Job of that name exists (another driver of this run): take the next number
                raise k8s_error(e, f"creating Volcano Job {self.namespace}/{name} ({len(calls)} call(s) of task "
                                   f"'{task.name}', queue {self.queue})") from None
        raise ExecutorError(f"volcano executor: no free Job name for task '{task.name}' in {self.namespace}")

    def _delete(self, job: str) -> None:
        """Delete a Job and, in the background, its pods; a Job already gone is fine."""
        from kubernetes import client

        try:
            self.api_calls["delete_job"] += 1
            self.custom.delete_namespaced_custom_object(
                vm.GROUP, vm.VERSION, self.settings.namespace, vm.PLURAL, job,
                body=client.V1DeleteOptions(propagation_policy="Background"), _preload_content=False)
        except Exception as e:  # noqa: BLE001 - a cancel is best effort; say why it failed
            if not is_status(e, 404):
                log.warning("%s", k8s_error(e, f"deleting Volcano Job {self.namespace}/{job}"))

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(h.state, h.outcome) for h in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        for job in self.tracker.cancel([h for h in handles if h is not None]):
            self._delete(job)

    def capacity(self) -> int:
        return self.max_in_flight - self.tracker.open_calls

    def describe_handle(self, handle: Any) -> str:
        return f"volcano {self.namespace}/{handle.job} pod={handle.pod_name}"

    @classmethod
    def fetch_logs(cls, spec: str, handle: str, info: dict[str, Any] | None = None) -> str | None:
        """The log of the pod that ran a task run.

        Raises:
            ExecutorError: there is none, saying why: no pod recorded (the call never got one), or the pod is
                gone (Jobs are deleted ``ttl`` seconds after they finish); cluster errors in one line.
        """
        from kubernetes import client

        info = info or {}
        pod = info.get("pod") or (handle.split("pod=", 1)[1].split()[0] if "pod=" in (handle or "") else None)
        if not pod or pod == "None":
            raise ExecutorError(f"no pod recorded for this task run (handle {handle!r}): its call never got a pod "
                                f"(not scheduled, or cancelled before it started)")
        ex = cls.from_spec(spec) if isinstance(spec, str) else spec
        api, ns = ex._api, info.get("namespace") or ex.namespace
        if api is None:
            api, ctx_ns = load_api_client(**ex._access)
            ns = ns or ctx_ns
        ns = ns or "default"
        try:
            resp: Any = client.CoreV1Api(api).read_namespaced_pod_log(pod, ns, container=vm.CONTAINER,
                                                                      _preload_content=False)
            return str(resp.data.decode(errors="replace"))
        except Exception as e:  # noqa: BLE001 - translated at the boundary
            if is_status(e, 404):
                raise ExecutorError(f"pod {ns}/{pod} is gone, and its log with it (Volcano Jobs are deleted ttl "
                                    f"seconds after they finish: raise ttl= to keep them longer)") from None
            raise k8s_error(e, f"reading the log of pod {ns}/{pod}") from None
        finally:
            if ex._owns_api and api is not ex._api:
                api.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self._connected:
            return
        for job in self.tracker.unfinished_jobs():
            self._delete(job)
        self.tracker.stop()
        for w in self._watches:
            w.stop()
        if self._owns_api and self._api is not None:
            self._api.close()


__all__ = ["VolcanoExecutor"]
