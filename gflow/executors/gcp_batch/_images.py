"""What image each Batch task runs: a prebuilt reference, or the flow's (task's) image built and pushed to
Artifact Registry (``REGION-docker.pkg.dev/PROJECT/REPO``); in dev mode a deps-only image plus the code as a
content-addressed bundle in the artifact store (patched logic ships without rebuilding the image)."""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Any

from gflow.errors import ConfigError
from gflow.executors._batch import ensure_in_registry, with_worker_package

log = logging.getLogger("gflow.executors.gcp_batch")
ARTIFACT_REGISTRY = re.compile(r"^([a-z0-9-]+)-docker\.pkg\.dev/([a-z][a-z0-9-]{4,28}[a-z0-9])/([a-z0-9._-]+)$")


def check_registry(registry: str | None) -> str | None:
    """``registry`` without a trailing slash; an ``*.pkg.dev`` one must be ``REGION-docker.pkg.dev/PROJECT/REPO``."""
    if registry is None:
        return None
    registry = registry.rstrip("/")
    if "pkg.dev" in registry and not ARTIFACT_REGISTRY.match(registry):
        raise ConfigError(f"gcp-batch executor: image_registry {registry!r} is not an Artifact Registry repository; "
                          f"use REGION-docker.pkg.dev/PROJECT/REPO (gcloud artifacts repositories create REPO "
                          f"--repository-format=docker --location=REGION)")
    return registry


def gcs_image(image: Any) -> Any:
    """The ``Image`` a Batch worker needs: the given one plus ``google-cloud-storage`` unless it lists it."""
    return with_worker_package(image, "google-cloud-storage")


class Images:
    """Resolves, builds and pushes images (Docker SDK) for the executor.

    Args:
        registry: Where built images are pushed and Batch pulls them from (Artifact Registry). Docker must be
            allowed to push there: ``gcloud auth configure-docker REGION-docker.pkg.dev``.
        build: Build images that are missing (False: they must already be in the registry).
        dev: Build deps-only images; the code travels as a bundle.
    """

    def __init__(self, *, registry: str | None, build: bool = True, docker_host: str | None = None, dev: bool = False):
        self.registry = check_registry(registry)
        self.build = build
        self.docker_host = docker_host
        self.dev = dev
        self._builder: Any = None
        self._lock = threading.Lock()
        self.task_refs: dict[str, tuple[str, str]] = {}

    @property
    def builder(self) -> Any:
        if self._builder is None:
            from gflow.images.builders import DockerBuilder, docker_client

            self._builder = DockerBuilder(docker_client(self.docker_host))
        return self._builder

    def ensure(self, ctx: Any) -> str:
        """Make the context's image available in the registry; returns the reference Batch pulls."""
        if self.registry is None:
            raise ConfigError(f"image {ctx.tag}: the gcp-batch executor needs an image registry to push the flow's "
                              f"image to (image_registry=REGION-docker.pkg.dev/PROJECT/REPO), or a prebuilt image "
                              f"(?image=REF)")
        return ensure_in_registry(lambda: self.builder, ctx, self.registry, build=self.build,
                                  in_registry=lambda tag, reg: self.builder.in_registry(tag, reg), log=log)

    def flow_ref(self, flow: Any) -> tuple[str, str, bytes | None]:
        """``(content tag, registry reference, code bundle or None)`` of a flow's image (built and pushed if absent)."""
        from gflow.images.context import flow_image, render, repo_name, source_file

        name = repo_name(flow.name, "deps") if self.dev else repo_name(flow.name)
        ctx = render(gcs_image(flow_image(flow)), name=name, base_dir=os.path.dirname(source_file(flow)), dev=self.dev)
        return ctx.tag, self.ensure(ctx), ctx.bundle() if self.dev else None

    def bundle_of(self, flow: Any) -> bytes:
        """The flow's code as a bundle (dev mode with a prebuilt deps-only image)."""
        from gflow.images.context import flow_context

        return flow_context(flow, dev=True).bundle()

    def task_ref(self, task: Any, flow_name: str) -> tuple[str, str] | None:
        """``(content tag, reference)`` of a task's own image, or None if it runs in the flow's."""
        img = task.options.image
        if img is None:
            return None
        if isinstance(img, str):
            return img, img
        with self._lock:
            if task.identity not in self.task_refs:
                from gflow.images.context import render, repo_name, source_file

                ctx = render(gcs_image(img), name=repo_name(flow_name, task.name),
                             base_dir=os.path.dirname(source_file(task)))
                self.task_refs[task.identity] = (ctx.tag, self.ensure(ctx))
        return self.task_refs[task.identity]
