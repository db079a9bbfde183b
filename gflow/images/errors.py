"""Errors of the images part: building, pushing, locking and running calls in images."""

from __future__ import annotations

from gflow.errors import ConfigError, GflowError


class ImageError(GflowError):
    """An image could not be rendered, built, found or pushed."""


class UnpinnedDependency(ConfigError):
    """A dependency has no exact version where one is required (a lock file, an apt package)."""


class LockError(ImageError):
    """Dependencies could not be resolved into a lock, or the wheels of a lock could not be fetched."""


class BaseImageMissing(ImageError):
    """The base image is neither on the engine nor pullable."""


class BuildFailed(ImageError):
    """``docker build`` failed; the message carries the failing step and its log.

    Attributes:
        step: The Dockerfile step that failed (``Step 5/9 : RUN ...``), if known.
        log: The output of that step.
    """

    def __init__(self, message: str, *, step: str | None = None, log: str = ""):
        super().__init__(message)
        self.step = step
        self.log = log


class RegistryError(ImageError):
    """A registry is unreachable or refused a push or a lookup."""


class TaskVersionMismatch(GflowError):
    """The task inside the image is not the version the call was recorded with."""


class WorkerError(GflowError):
    """A call spec could not be read or run by ``gflow worker`` (not an error of the task itself)."""
