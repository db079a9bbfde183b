"""Images for AWS Batch: the flow's (or a task's) image, built with the Docker builder and pushed to
the configured registry when it is not there yet, or a plain image reference used as given.

Workers on Batch read and write the S3 artifact store, so the image gets ``boto3`` (the ``gflow[aws]``
extra) when its ``Image`` does not list it: the tag of a flow's Batch image is that of its
``Image`` plus ``boto3`` (``gflow build`` of a flow that lists ``boto3`` itself gives the same tag).

ECR registries (``ACCOUNT.dkr.ecr.REGION.amazonaws.com[/prefix]``) are spoken to through the ECR API:
presence is asked with DescribeImages, a missing repository is created, and the Docker engine logs
in with a token from GetAuthorizationToken before pushing or pulling. Other registries use the
registry v2 API (``gflow.images.builders``).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from typing import Any

from gflow.errors import ConfigError
from gflow.executors._batch import ensure_in_registry, with_worker_package
from gflow.images.errors import RegistryError

log = logging.getLogger("gflow.executors.aws_batch")
ECR = re.compile(r"^(\d{12})\.dkr\.ecr(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?(?:/.*)?$")


def is_ecr(registry: str | None) -> bool:
    return bool(registry and ECR.match(registry))


def batch_image(image: Any) -> Any:
    """The ``Image`` a Batch worker needs: the given one plus ``boto3`` unless it lists it."""
    return with_worker_package(image, "boto3")


class Images:
    """Resolves what image each call runs in (building and pushing where needed).

    Args:
        registry: Where built images are pushed and Batch pulls them from (``host[:port][/prefix]`` or
            an ECR registry). Without one, only plain image references can be run.
        build: Build images that are missing (False: they must already be in the registry).
        docker_host: The Docker engine that builds (default ``DOCKER_HOST``).
        ecr: A factory of ECR clients (the executor's session and endpoint).
    """

    def __init__(self, *, registry: str | None, build: bool = True, docker_host: str | None = None,
                 ecr: Any = None):
        self.registry = registry.rstrip("/") if registry else None
        self.build = build
        self.docker_host = docker_host
        self._ecr_factory = ecr
        self._ecr: Any = None
        self._builder: Any = None
        self._logged_in = False
        self._lock = threading.Lock()
        self.task_refs: dict[str, str] = {}
        self.task_tags: dict[str, str] = {}

    # -- building -----------------------------------------------------------------------------------
    @property
    def builder(self) -> Any:
        if self._builder is None:
            from gflow.images.builders import DockerBuilder, docker_client

            images = self

            class _Builder(DockerBuilder):
                def in_registry(self, tag: str, registry: str) -> bool:
                    return images.in_registry(tag, registry)

                def push(self, tag: str, registry: str) -> str:
                    images.prepare_push(tag)
                    return super().push(tag, registry)

                def pull(self, ref: str, as_tag: str | None = None) -> None:
                    images.login()
                    super().pull(ref, as_tag)

            self._builder = _Builder(docker_client(self.docker_host))
        return self._builder

    def ensure(self, ctx: Any) -> str:
        """Make the context's image available in the registry; returns the reference Batch pulls."""
        if self.registry is None:
            raise ConfigError(f"image {ctx.tag}: the aws-batch executor needs an image registry to push the flow's "
                              f"image to (image_registry=ACCOUNT.dkr.ecr.REGION.amazonaws.com or ?registry=HOST:PORT), "
                              f"or a prebuilt image (?image=REF)")
        return ensure_in_registry(lambda: self.builder, ctx, self.registry, build=self.build,
                                  in_registry=self.in_registry, log=log)

    def flow_ref(self, flow: Any) -> tuple[str, str]:
        """``(content tag, registry reference)`` of a flow's Batch image (built and pushed if absent)."""
        from gflow.images.context import flow_image, render, repo_name, source_file

        ctx = render(batch_image(flow_image(flow)), name=repo_name(flow.name),
                     base_dir=os.path.dirname(source_file(flow)))
        return ctx.tag, self.ensure(ctx)

    def task_ref(self, task: Any, flow_name: str) -> tuple[str, str] | None:
        """``(content tag, reference)`` of a task's own image, or None if it runs in the flow's."""
        img = task.options.image
        if img is None:
            return None
        if isinstance(img, str):
            return img, img
        ident = task.identity
        with self._lock:
            if ident not in self.task_refs:
                from gflow.images.context import render, repo_name, source_file

                ctx = render(batch_image(img), name=repo_name(flow_name, task.name),
                             base_dir=os.path.dirname(source_file(task)))
                self.task_refs[ident] = self.ensure(ctx)
                self.task_tags[ident] = ctx.tag
        return self.task_tags[ident], self.task_refs[ident]

    # -- registries ---------------------------------------------------------------------------------
    @property
    def ecr(self) -> Any:
        if self._ecr is None:
            self._ecr = self._ecr_factory()
        return self._ecr

    def _repo(self, ref: str) -> tuple[str, str, str]:
        """``(registry host, repository, tag)`` of a full reference."""
        from gflow.images.builders import split_ref

        repo, tag = split_ref(ref)
        host, _, path = repo.partition("/")
        return host, path, tag

    def in_registry(self, tag: str, registry: str) -> bool:
        from gflow.images.builders import registry_has, with_registry

        if not is_ecr(registry):
            return registry_has(registry, tag)
        import botocore.exceptions as bx

        _, repo, version = self._repo(with_registry(tag, registry))
        try:
            self.ecr.describe_images(repositoryName=repo, imageIds=[{"imageTag": version}])
            return True
        except bx.ClientError as e:
            from gflow.clouds.aws import error_code, translate

            if error_code(e)[0] in ("ImageNotFoundException", "RepositoryNotFoundException"):
                return False
            raise translate(e, f"looking up {tag} in ECR {registry}") from None

    def prepare_push(self, tag: str) -> None:
        """For ECR: create the repository if missing, and log the engine in."""
        if not is_ecr(self.registry):
            return
        self.ensure_repository(tag)
        self.login()

    def ensure_repository(self, tag: str) -> str:
        """Create the ECR repository ``tag`` is pushed to, unless it exists; returns its name."""
        import botocore.exceptions as bx

        from gflow.images.builders import with_registry

        _, repo, _ = self._repo(with_registry(tag, self.registry))
        try:
            self.ecr.create_repository(repositoryName=repo, imageTagMutability="IMMUTABLE")
            log.info("created ECR repository %s", repo)
        except bx.ClientError as e:
            from gflow.clouds.aws import error_code, translate

            if error_code(e)[0] != "RepositoryAlreadyExistsException":

                raise translate(e, f"creating ECR repository {repo}") from None
        return repo

    def login(self) -> None:
        if self._logged_in or not is_ecr(self.registry):
            return
        from gflow.clouds.aws import translate

        try:
            auth = self.ecr.get_authorization_token()["authorizationData"][0]
        except Exception as e:  # noqa: BLE001 - botocore errors, translated
            raise translate(e, f"getting an ECR login token for {self.registry}") from None
        user, _, password = base64.b64decode(auth["authorizationToken"]).decode().partition(":")
        try:
            self.builder.client.login(username=user, password=password, registry=auth["proxyEndpoint"])
        except Exception as e:  # noqa: BLE001 - docker.errors.APIError
            raise RegistryError(f"docker login to {auth['proxyEndpoint']} failed: {e}") from None
        self._logged_in = True

    def check_ref(self, ref: str) -> None:
        """Up front, for a plain reference: refuse one its registry says it does not have.
        Registries that cannot be asked (no credentials here) are given the benefit of the doubt."""
        from gflow.images.builders import split_ref

        repo, tag = split_ref(ref)
        host = repo.split("/")[0] if "/" in repo else ""
        if not ("." in host or ":" in host or host == "localhost"):
            return  # Docker Hub shorthand: nothing to ask without credentials
        path = repo[len(host) + 1:]
        try:
            found = self.in_registry(f"{path}:{tag}", host)  # ECR through its API, any other over HTTP
        except (RegistryError, ConfigError) as e:
            log.warning("cannot check that %s exists (%s); submitting anyway", ref, e)
            return
        if not found:
            raise ConfigError(f"image {ref} is not in its registry {host}, so no job could pull it; push it first "
                              f"(gflow build --push {host}) or fix the image reference")
