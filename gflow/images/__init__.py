"""Images: what a flow (or a task) runs in, rendered into a deterministic build context.

``Image`` is a frozen spec; :func:`gflow.images.context.render` turns it into a build context
(Dockerfile + lock + gflow wheel + code) whose content hash is the tag. Builders
(:mod:`gflow.images.builders`) build and push it; ``gflow worker`` (:mod:`gflow.images.worker`) is
what runs inside it. See ``docs/images.md``.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from gflow.images.errors import (
    BaseImageMissing,
    BuildFailed,
    ImageError,
    LockError,
    RegistryError,
    TaskVersionMismatch,
    UnpinnedDependency,
    WorkerError,
)

_APT_PIN = re.compile(r"^[a-z0-9][a-z0-9+.\-]*(?::[a-z0-9]+)?=[A-Za-z0-9.+~:\-]+$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def default_base() -> str:
    """The base of images that do not name one: ``GFLOW_BASE_IMAGE``, else the profile's ``base_image``, else
    ``python:3.11-slim`` (an air-gapped site points this at a base its engine or registry has)."""
    import os

    env = os.environ.get("GFLOW_BASE_IMAGE")
    if env:
        return env
    try:
        from gflow.config import load_profile

        return load_profile().base_image or "python:3.11-slim"
    except Exception:  # noqa: BLE001 - a broken gflow.toml is reported where it is used, not here
        return "python:3.11-slim"


class Image(BaseModel):
    """What a flow's (or a task's) containers are made of.

    Args:
        base: Base image reference; it needs a ``python`` that can make a venv (``python3 -m venv``).
        packages: pip requirement specifiers (``"torch==2.13.0"``, ``"transformers"``); unpinned ones
            are resolved into a lock, so the tag always pins exact wheels.
        apt_packages: Debian packages, each pinned as ``name=version`` (apt has no lock).
        env: Environment variables set in the image.
        code: Code roots (folders, relative to the flow file's folder); default: the flow's folder
            (or the top of its package). Each is copied to ``/opt/gflow/code/<name>`` and put on
            ``PYTHONPATH``; ``.gitignore``/``.dockerignore`` are respected.
        requirements: A requirements.txt whose lines are resolved with ``packages``.
        lock: A lock file (``name==version --hash=...`` lines): used if it exists, written by the
            first resolution if not. Commit it for the same tag on every machine.
        python: The interpreter in ``base`` that creates the venv.
        python_version, arch, glibc: The wheel target (must match ``base``'s Python and libc).
        include_gflow: Install gflow itself (from a reproducible wheel of the running checkout).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    base: str = Field(default_factory=lambda: default_base())
    packages: tuple[str, ...] = Field(default=(), validation_alias=AliasChoices("packages", "python_packages"))
    apt_packages: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    code: tuple[str, ...] = ()
    requirements: str | None = None
    lock: str | None = None
    python: str = "python3"
    python_version: str = "3.11"
    arch: str = "x86_64"
    glibc: str = "2.36"
    include_gflow: bool = True

    @field_validator("packages", mode="before")
    @classmethod
    def _packages(cls, v: Any) -> Any:
        from gflow.images.lock import parse_requirement

        items = (v,) if isinstance(v, str) else tuple(v)
        for p in items:
            parse_requirement(p)
        return tuple(p.strip() for p in items)

    @field_validator("apt_packages", mode="before")
    @classmethod
    def _apt(cls, v: Any) -> Any:
        items = (v,) if isinstance(v, str) else tuple(v)
        for p in items:
            if not _APT_PIN.match(p.strip()):
                raise UnpinnedDependency(
                    f"Image.apt_packages: {p!r} is not pinned; write name=version (e.g. 'git=1:2.39.5-0+deb12u2'; "
                    f"`apt-cache policy {p.split('=')[0]}` in the base image shows the candidate)")
        return tuple(sorted(p.strip() for p in items))

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, v: Any) -> Any:
        items = dict(v or {})
        for k, val in items.items():
            if not isinstance(k, str) or not _ENV_KEY.match(k):
                raise ValueError(f"Image.env: {k!r} is not a valid environment variable name")
            if not isinstance(val, str):  # pydantic turns ValueErrors (not TypeErrors) into field errors
                raise ValueError(f"Image.env[{k!r}]: values must be strings, got {type(val).__name__}")  # noqa: TRY004
        return dict(sorted(items.items()))

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, v: Any) -> Any:
        return (v,) if isinstance(v, str) else tuple(v)

    @field_validator("python_version")
    @classmethod
    def _pyver(cls, v: str) -> str:
        if not re.fullmatch(r"3\.\d+", v):
            raise ValueError(f"Image.python_version: {v!r} is not like '3.11'")
        return v

    def __hash__(self) -> int:
        return hash(self.model_dump_json())

    # -- copies ------------------------------------------------------------------------------------
    def with_base(self, base: str) -> Image:
        return self.model_copy(update={"base": base})

    def with_packages(self, *packages: str) -> Image:
        """A copy with more pip packages."""
        return Image.model_validate({**self.model_dump(), "packages": (*self.packages, *packages)})

    def with_apt_packages(self, *packages: str) -> Image:
        return Image.model_validate({**self.model_dump(), "apt_packages": (*self.apt_packages, *packages)})

    def with_env(self, **env: str) -> Image:
        return Image.model_validate({**self.model_dump(), "env": {**self.env, **env}})

    def with_code(self, *roots: str) -> Image:
        return Image.model_validate({**self.model_dump(), "code": (*self.code, *roots)})

    def with_requirements(self, path: str | None) -> Image:
        return self.model_copy(update={"requirements": path})

    def with_lock(self, path: str | None) -> Image:
        return self.model_copy(update={"lock": path})


__all__ = ["BaseImageMissing", "BuildFailed", "Image", "ImageError", "LockError", "RegistryError",
           "TaskVersionMismatch", "UnpinnedDependency", "WorkerError"]
