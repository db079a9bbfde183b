"""The Docker executor: each task call runs as a container of the flow's (or the task's) image.

``executor="docker"`` builds the flow's :class:`gflow.Image` (only if its tag is absent) when the
run starts, and records that tag on the run (``image_tag_for``). Every call is written as a call
spec to the artifact store, which is mounted into the container at the same path; the container
runs ``gflow worker SPEC`` and writes its outcome record there; this executor reads it back like
any remote executor does (:mod:`gflow.images.protocol`). Resource limits come from the task's
``Resources`` (CPUs, memory, GPUs). Containers run with ``--network none`` by default: a call needs
nothing but the mounted artifact store.

Spec: ``docker://?image=TAG&dev=1&host=unix:///run/docker.sock&registry=HOST:PORT&push=1
&max=4&network=none&keep=1``. ``dev=1`` builds a deps-only image once and ships the code as a
content-addressed bundle (runs record ``TAG#bundle=sha256:...``).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
import traceback
import urllib.parse
from collections.abc import Sequence
from typing import Any

from gflow.errors import ConfigError, ExecutorError, OutOfMemory
from gflow.executors._batch import RunArtifacts
from gflow.executors.base import Call, CallDone, CallStarted, Capabilities, Executor, JobStatus, Outcome
from gflow.executors.polling import failed
from gflow.states import State

log = logging.getLogger("gflow.executors.docker")
BUNDLE_SEP = "#bundle="


def split_image_record(record: str | None) -> tuple[str | None, str | None]:
    """``(tag, bundle digest)`` of a run's recorded ``image_tag`` (``TAG`` or ``TAG#bundle=DIGEST``)."""
    if not record:
        return None, None
    tag, sep, bundle = record.partition(BUNDLE_SEP)
    return tag, (bundle or None) if sep else None


class _Handle:
    __slots__ = ("call", "cancelled", "container", "state", "tag")

    def __init__(self, call: Call):
        self.call = call
        self.state = State.QUEUED
        self.container: Any = None
        self.tag: str | None = None
        self.cancelled = False

    def __repr__(self) -> str:
        return f"<docker {self.call.id} {self.state.value}>"


def _truthy(v: str | None) -> bool:
    return (v or "").lower() in ("1", "true", "yes", "on")


class DockerExecutor(RunArtifacts, Executor):
    """Runs calls as containers on one Docker Engine.

    Args:
        image: Run this tag instead of building the flow's image (replay does this).
        bundle: With ``image``: the code bundle to inject (dev-mode replay).
        base_url: The engine (``unix:///path/docker.sock``); default ``DOCKER_HOST`` or the default socket.
        dev: Dev mode: a deps-only image, the code shipped as a bundle at each start.
        build: Build missing images (False: a missing tag is an error).
        registry: ``host:port`` that may already hold the image; ``push`` pushes built images there.
        max_containers: Containers running at once (default: CPU count).
        network: Network mode of the containers (``none``; ``host`` for remote artifact stores).
        artifacts: The artifact store (default: the run's, or the profile's).
        task_images: ``{task identity: tag}`` for tasks with their own image (replay).
        keep: Keep finished containers (for debugging).
    """

    name = "docker"
    capabilities = Capabilities()

    def __init__(self, image: str | None = None, *, bundle: str | None = None, base_url: str | None = None,
                 client: Any = None, dev: bool = False, build: bool = True, registry: str | None = None,
                 push: bool = False, max_containers: int | None = None, network: str = "none",
                 artifacts: Any = None, task_images: dict[str, str] | None = None, keep: bool = False,
                 refresh_lock: bool = False):
        self.image = image
        self.bundle = bundle
        self._pinned = image is not None  # a given tag is run as is; otherwise each flow's image is built
        self.base_url = base_url
        self._client = client
        self.dev = dev
        self.build = build
        self.registry = registry
        self.push = push
        self.max_containers = max_containers or os.cpu_count() or 1
        self.network = network
        self._use_artifacts(artifacts)
        self.task_images: dict[str, str] = dict(task_images or {})
        self.keep = keep
        self.refresh_lock = refresh_lock
        self._bundle_bytes: bytes | None = None
        self._bundle_checked = False
        self._flow_name: str | None = None
        self._flow_plain: str | None = None  # the flow's plain image reference, for this run
        self._builder: Any = None
        self._build_lock = threading.Lock()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._running: set[_Handle] = set()
        self._pool = cf.ThreadPoolExecutor(self.max_containers, thread_name_prefix="gflow-docker")
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> DockerExecutor:
        """``docker://?image=TAG&dev=1...``; a profile's ``[profiles.X.docker]`` table gives the same
        options (``host``, ``registry``, ``max``, ``network``, ...), the URL's own win."""
        parsed = urllib.parse.urlparse(spec if "://" in spec else "docker://")
        q = {k: str(v) for k, v in settings.items()}
        q.update({k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()})
        known = {"image", "bundle", "host", "dev", "build", "registry", "push", "max", "network", "keep"}
        bad = set(q) - known
        if bad:
            raise ConfigError(f"docker executor {spec!r}: unknown options {sorted(bad)}; known: {sorted(known)}")
        try:
            max_containers = int(q["max"]) if "max" in q else None
        except ValueError:
            raise ConfigError(f"docker executor {spec!r}: max must be an integer") from None
        return cls(q.get("image"), bundle=q.get("bundle"), base_url=q.get("host"), dev=_truthy(q.get("dev")),
                   build=q.get("build", "1") != "0", registry=q.get("registry"), push=_truthy(q.get("push")),
                   max_containers=max_containers, network=q.get("network", "none"), keep=_truthy(q.get("keep")))

    # -- plumbing -----------------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        if self._client is None:
            from gflow.images.builders import docker_client

            try:
                self._client = docker_client(self.base_url)
            except Exception as e:  # noqa: BLE001 - translated at the boundary
                raise ExecutorError(str(e)) from None
        return self._client

    @property
    def builder(self) -> Any:
        if self._builder is None:
            from gflow.images.builders import DockerBuilder

            self._builder = DockerBuilder(self.client)
        return self._builder

    # -- images -------------------------------------------------------------------------------------
    def pin(self, image: str, bundle: str | None = None) -> None:
        """Run this tag (and code bundle) for every flow instead of building (replay does this)."""
        self.image, self.bundle, self._pinned = image, bundle, True

    def image_tag_for(self, flow: Any) -> str:
        """Build the flow's image if needed (before the run is recorded) and return what the run records."""
        from gflow.images.context import flow_context, flow_image_ref

        self._flow_name = flow.name
        self._flow_plain = None
        plain = None if self._pinned else flow_image_ref(flow)
        if plain is not None:  # a plain reference is run as given, as a task's is
            self._flow_plain = self.image = plain
            self.bundle = None
            self._check_present(plain, pull=True)
            return plain
        if not self._pinned:
            if self.dev:
                ctx = flow_context(flow, dev=True, refresh_lock=self.refresh_lock)
                self._bundle_bytes = ctx.bundle()
                self.bundle = self.artifacts.put(self._bundle_bytes)
            else:
                ctx = flow_context(flow, refresh_lock=self.refresh_lock)
            self._ensure(ctx)
            self.image = ctx.tag
        tag: str = self.image  # type: ignore[assignment]  # pinned or just built
        if self._pinned:
            self._check_present(tag)
        return tag + (f"{BUNDLE_SEP}{self.bundle}" if self.bundle else "")

    def _ensure(self, ctx: Any) -> None:
        if not self.build:
            self._check_present(ctx.tag)
            return
        res = self.builder.ensure(ctx, registry=self.registry, push=self.push)
        if res.built:
            log.info("built %s in %.1fs", ctx.tag, res.seconds)

    def image_key(self, task: Any) -> str | None:
        """A plain reference (the task's, else the flow's) enters the cache key: nothing else pins what it holds.
        Built images are not: their code is in the task's version."""
        img = task.options.image
        if isinstance(img, str):
            return img
        return self._flow_plain if img is None else None

    def _check_present(self, tag: str, pull: bool = False) -> None:
        from gflow.images.errors import ImageError

        if not self.builder.exists(tag):
            if pull:
                self.builder.pull(tag)  # RegistryError naming the reference when it cannot be pulled
                return
            if self.registry and self.builder.in_registry(tag, self.registry):
                from gflow.images.builders import with_registry

                self.builder.pull(with_registry(tag, self.registry), tag)
                return
            where = f" nor in {self.registry}" if self.registry else ""
            raise ImageError(f"image {tag} is not on the docker engine{where}")

    def _image_for(self, call: Call) -> str:
        img = call.task.options.image
        if img is None:
            if self.image is None:
                raise ExecutorError("the docker executor has no image: run a flow (its image is built) or give "
                                    "docker://?image=TAG")
            return self.image
        if isinstance(img, str):
            return img
        ident = call.task.identity
        with self._build_lock:
            tag = self.task_images.get(ident)
            if tag is None:
                from gflow.images.context import task_context

                ctx = task_context(call.task, self._flow_name or "flow", dev=self.dev)
                assert ctx is not None  # the task has an Image
                self._ensure(ctx)
                tag = self.task_images[ident] = ctx.tag
        return tag

    # -- the executor interface ---------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        handles = [_Handle(c) for c in calls]
        with self._lock:
            self._in_flight += len(handles)
        for h in handles:
            self._pool.submit(self._run, h)
        return handles

    def _mounts(self) -> tuple[str, dict]:
        from gflow.artifacts import LocalArtifactStore

        arts = self.artifacts
        if isinstance(arts, LocalArtifactStore):
            return arts.url, {arts.root: {"bind": arts.root, "mode": "rw"}}
        return arts.url, {}

    def _limits(self, call: Call) -> dict[str, Any]:
        res = call.task.options.resources
        kw: dict[str, Any] = {"nano_cpus": int(res.cpu * 1e9)}
        if res.memory:
            kw["mem_limit"] = int(res.memory)
        if res.gpu:
            import docker.types

            kw["device_requests"] = [docker.types.DeviceRequest(count=res.gpu, capabilities=[["gpu"]])]
        return kw

    def _run(self, h: _Handle) -> None:
        call = h.call
        outcome: Outcome | None = None
        spec = None
        try:
            if h.cancelled:
                return
            from gflow.images.protocol import read_outcome, to_outcome, write_call_spec

            h.tag = self._image_for(call)
            arts = self.artifacts
            if self._bundle_bytes is not None and not self._bundle_checked:
                if not arts.exists(self.bundle):  # the run's store may not be the one the bundle went to
                    arts.put(self._bundle_bytes, self.bundle)
                self._bundle_checked = True
            uses_bundle = self.bundle if call.task.options.image is None or self.dev else None
            spec = write_call_spec(arts, call, image=h.tag, bundle=uses_bundle)
            url, volumes = self._mounts()
            h.container = self.client.containers.create(
                h.tag, entrypoint=["gflow"], command=["worker", spec, "--artifacts", url], detach=True,
                volumes=volumes, network_mode=self.network, user=f"{os.getuid()}:{os.getgid()}",
                environment=self._environment(call), labels={"org.gflow.run": call.run_id, "org.gflow.call": call.id},
                **self._limits(call))
            if h.cancelled:
                return
            with self._lock:
                self._running.add(h)
            h.container.start()
            h.state = State.RUNNING
            self._listener(CallStarted(call.id, call.attempt, time.time(), self.describe_handle(h)))
            status = self._wait(h.container)
            rec = read_outcome(arts, spec)
            if rec is not None:
                outcome = to_outcome(arts, rec, allow_pickle=call.task.options.pickle)
            else:
                outcome = self._no_outcome(h, status)
        except BaseException as e:  # noqa: BLE001 - reported as the call's failure
            err = e if not _is_docker_error(e) else ExecutorError(f"docker: {getattr(e, 'explanation', None) or e}")
            outcome = Outcome.from_exception(err, traceback.format_exc(), None, time.time())
        finally:
            with self._lock:
                self._in_flight -= 1
                self._running.discard(h)
            if h.container is not None and not self.keep:
                try:
                    h.container.remove(force=True)
                except Exception:
                    log.debug("removing %s failed", h.container.id, exc_info=True)
        if h.cancelled:
            h.state = State.CANCELLED
            return
        h.state = State.SUCCEEDED if outcome.ok else State.FAILED
        self._listener(CallDone(call.id, call.attempt, outcome))

    def _environment(self, call: Call) -> dict[str, str]:
        env = {"HOME": "/tmp"}
        if call.task.options.pickle:  # the worker signs and checks pickles with the driver's key
            from gflow._signing import signing_env

            env.update(signing_env())
        return env

    def _wait(self, container: Any) -> dict:
        import requests

        while True:
            try:
                return container.wait(timeout=300)
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                container.reload()
                if container.status not in ("running", "created", "restarting"):
                    return {"StatusCode": container.attrs["State"].get("ExitCode", -1)}

    def _no_outcome(self, h: _Handle, status: dict) -> Outcome:
        """The container ended without an outcome record: say why, with the end of its log."""
        code = status.get("StatusCode")
        try:
            h.container.reload()
            oom = h.container.attrs["State"].get("OOMKilled")
            tail = h.container.logs(tail=40).decode(errors="replace")
        except Exception:  # noqa: BLE001
            oom, tail = False, ""
        why = "killed: out of memory (raise the task's Resources.memory)" if oom else f"exit code {code}"
        msg = (f"container of image {h.tag} ended without an outcome record ({why}); the image's gflow may be "
               f"unable to run this call")
        if oom:
            return failed(OutOfMemory(msg, requested=h.call.task.options.resources.memory), log_tail=tail)
        return failed(ExecutorError, msg, log_tail=tail, error_type="gflow.ExecutorError")

    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(h.state) for h in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        for h in handles:
            if h is None:
                continue
            h.cancelled = True
            if h.container is not None:
                try:
                    h.container.kill()
                except Exception:  # noqa: BLE001, S110 - it may have ended already
                    pass

    def capacity(self) -> int:
        return 2 * self.max_containers - self._in_flight

    def describe_handle(self, handle: Any) -> str:
        cid = handle.container.short_id if handle.container is not None else "-"
        return f"{handle.tag} container={cid}"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with self._lock:
            running = list(self._running)
        self.cancel(running)
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._client is not None:
            try:
                self._client.close()
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass


def _is_docker_error(e: BaseException) -> bool:
    return type(e).__module__.startswith(("docker.", "requests."))
