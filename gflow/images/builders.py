"""Builders: turn a build context into an image, only when its tag is not there yet, and push it.

:class:`Builder` is the interface; :class:`DockerBuilder` talks to a Docker Engine through the
``docker`` SDK (the legacy ``/build`` endpoint, so it works with a plain ``dockerd``). RUN steps use
``network_mode="none"`` (everything they install comes from the context; nothing is fetched from
inside the image) unless the image has apt packages, which need ``host``.
"""

from __future__ import annotations

import abc
import logging
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from gflow.images.context import BuildContext
from gflow.images.errors import BaseImageMissing, BuildFailed, ImageError, RegistryError

log = logging.getLogger("gflow.images")


@dataclass
class BuildResult:
    """What :meth:`Builder.ensure` did."""

    tag: str
    built: bool = False
    pulled: bool = False
    pushed: str | None = None
    seconds: float = 0.0
    log: list[str] = field(default_factory=list)


def split_ref(ref: str) -> tuple[str, str]:
    """``("registry/repo", "tag")`` of ``registry/repo:tag`` (a port's colon is not the tag's)."""
    repo, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag:
        return ref, "latest"
    return repo, tag


def with_registry(tag: str, registry: str | None) -> str:
    return f"{registry.rstrip('/')}/{tag}" if registry else tag


class Builder(abc.ABC):
    """Builds contexts into images and pushes them."""

    @abc.abstractmethod
    def exists(self, ref: str) -> bool:
        """Whether the image ``ref`` is present where this builder builds."""

    @abc.abstractmethod
    def build(self, ctx: BuildContext, *, nocache: bool = False) -> BuildResult:
        """Build ``ctx`` as ``ctx.tag``; raises BuildFailed with the failing step's log."""

    @abc.abstractmethod
    def push(self, tag: str, registry: str) -> str:
        """Push ``tag`` to ``registry``; returns the pushed reference."""

    def in_registry(self, tag: str, registry: str) -> bool:
        """Whether ``registry`` already has ``tag`` (raises RegistryError if it cannot be asked)."""
        return registry_has(registry, tag)

    def pull(self, ref: str, as_tag: str | None = None) -> None:
        """Fetch ``ref`` from its registry (and tag it ``as_tag``, the name runs use)."""
        raise ImageError(f"{type(self).__name__} cannot pull {ref}")

    def ensure(self, ctx: BuildContext, *, registry: str | None = None, push: bool = False) -> BuildResult:
        """Make ``ctx.tag`` available, building only if it is neither here nor in ``registry``.

        Args:
            registry: A registry (``host:port``) that may already have the image, and where it is
                pushed when ``push`` is set.
        """
        t0 = time.perf_counter()
        res = BuildResult(ctx.tag)
        if not self.exists(ctx.tag):
            if registry and self.in_registry(ctx.tag, registry):
                self.pull(with_registry(ctx.tag, registry), ctx.tag)
                res.pulled = True
            else:
                res = self.build(ctx)
        if push and registry and (res.built or not self.in_registry(ctx.tag, registry)):
            res.pushed = self.push(ctx.tag, registry)
        res.seconds = time.perf_counter() - t0
        return res


_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, "
              "application/vnd.docker.distribution.manifest.list.v2+json")


def _registry_url(registry: str) -> str:
    host = registry.split("/")[0]
    local = host.startswith(("127.", "localhost", "[::1]"))
    return f"{'http' if local else 'https'}://{host}"


def registry_has(registry: str, tag: str, timeout: float = 10) -> bool:
    """Ask a registry (v2 API) whether it has ``tag``; plain http for loopback registries."""
    repo, version = split_ref(tag)
    path = "/".join([*registry.split("/")[1:], repo])
    url = f"{_registry_url(registry)}/v2/{path}/manifests/{version}"
    req = urllib.request.Request(url, method="HEAD", headers={"Accept": _MANIFESTS})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status == 200
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise RegistryError(f"registry {registry} answered {e.code} for {tag}: {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RegistryError(f"registry {registry} is unreachable ({reason})") from None


class DockerBuilder(Builder):
    """Builds with a Docker Engine through the ``docker`` SDK.

    Args:
        client: A ``docker.DockerClient``; default: ``base_url`` or the environment (``DOCKER_HOST``).
        network_mode: For RUN steps; default ``none`` (``host`` when the image has apt packages).
    """

    def __init__(self, client: Any = None, *, base_url: str | None = None, network_mode: str | None = None,
                 timeout: int = 600):
        self._client = client
        self.base_url = base_url
        self.network_mode = network_mode
        self.timeout = timeout

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = docker_client(self.base_url, self.timeout)
        return self._client

    def exists(self, ref: str) -> bool:
        import docker.errors

        try:
            self.client.images.get(ref)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError as e:
            raise ImageError(f"docker engine error looking up {ref}: {e.explanation or e}") from None

    def pull(self, ref: str, as_tag: str | None = None) -> None:
        import docker.errors

        repo, version = split_ref(ref)
        try:
            self.client.images.pull(repo, tag=version)
            if as_tag and as_tag != ref:  # pulled as registry/repo:tag; runs use the plain tag
                self.client.images.get(ref).tag(*split_ref(as_tag))
        except docker.errors.APIError as e:
            raise RegistryError(f"cannot pull {ref}: {e.explanation or e}") from None

    def _check_base(self, base: str) -> None:
        import docker.errors

        if self.exists(base):
            return
        try:
            repo, version = split_ref(base)
            self.client.images.pull(repo, tag=version)
        except docker.errors.APIError as e:
            raise BaseImageMissing(
                f"base image {base!r} is not on the docker engine and cannot be pulled ({e.explanation or e}); "
                f"load it first (docker load / docker import), push it to a registry the engine can reach, or set "
                f"another base for every image with GFLOW_BASE_IMAGE or the profile's base_image (docs/images.md)"
            ) from None

    def build(self, ctx: BuildContext, *, nocache: bool = False) -> BuildResult:
        import docker.errors

        t0 = time.perf_counter()
        self._check_base(ctx.image.base)
        wheels = ctx.fetch_wheels()
        network = self.network_mode or ("host" if ctx.image.apt_packages else "none")
        lines: list[str] = []
        step: str | None = None
        step_log: list[str] = []
        with tempfile.TemporaryFile() as f:
            ctx.write_tar(f, wheels)
            f.seek(0)
            try:
                stream = self.client.api.build(
                    fileobj=f, custom_context=True, tag=ctx.tag, rm=True, forcerm=True, decode=True, pull=False,
                    nocache=nocache, network_mode=network,
                    labels={"org.gflow.tag": ctx.tag, "org.gflow.context": ctx.digest})
                log.info("building image %s (its tag is not on the engine yet; later runs reuse it)", ctx.tag)
                for item in stream:
                    if "stream" in item:
                        text = item["stream"]
                        lines.append(text)
                        if text.startswith("Step "):
                            step, step_log = text.strip(), []
                            log.info("  %s", step)
                        else:
                            step_log.append(text)
                    if "error" in item or "errorDetail" in item:
                        msg = item.get("error") or item["errorDetail"].get("message", "")
                        out = "".join(step_log).rstrip()
                        raise BuildFailed(
                            f"building {ctx.tag} failed at {step or 'the first step'}: {msg.strip()}"
                            + (f"\n--- log of that step ---\n{out}" if out else ""), step=step, log=out)
            except docker.errors.APIError as e:
                raise BuildFailed(f"building {ctx.tag} failed: {e.explanation or e}", step=step,
                                  log="".join(step_log)) from None
        if not self.exists(ctx.tag):
            raise BuildFailed(f"building {ctx.tag} ended without an image:\n{''.join(lines[-30:])}")
        log.info("built %s in %.1fs", ctx.tag, time.perf_counter() - t0)
        return BuildResult(ctx.tag, built=True, seconds=time.perf_counter() - t0, log=lines)

    def push(self, tag: str, registry: str) -> str:
        import docker.errors

        ref = with_registry(tag, registry)
        repo, version = split_ref(ref)
        try:
            self.client.images.get(tag).tag(repo, version)
            for item in self.client.api.push(repo, tag=version, stream=True, decode=True):
                if "error" in item or "errorDetail" in item:
                    msg = item.get("error") or item["errorDetail"].get("message", "")
                    raise RegistryError(f"pushing {ref} failed: {msg}")
        except docker.errors.APIError as e:
            raise RegistryError(f"pushing {ref} failed: {e.explanation or e}") from None
        return ref


def docker_client(base_url: str | None = None, timeout: int = 600) -> Any:
    """A Docker SDK client (``base_url`` or the environment), with a clear error if no engine answers."""
    try:
        import docker
    except ImportError as e:
        raise ImageError("the docker SDK is not installed: pip install 'gflow[docker]'") from e
    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else \
            docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - docker.errors.DockerException and connection errors alike
        import os

        where = base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock (the default socket)"
        raise ImageError(f"no docker engine answers at {where}: {e}; start dockerd, or point DOCKER_HOST (or "
                         f"docker://?host=...) at its socket") from None
