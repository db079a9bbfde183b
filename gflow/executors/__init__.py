"""Executors by name: built-ins are imported only when used; third parties register through the
``gflow.executors`` entry-point group (or :func:`register_executor`)."""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from gflow.errors import ConfigError
from gflow.executors.base import Call, Executor, JobStatus, Listener, Outcome

_BUILTIN = {
    "local": "gflow.executors.local:LocalExecutor",
    "threads": "gflow.executors.local:LocalExecutor",
    "processes": "gflow.executors.local:LocalExecutor",
    "inline": "gflow.executors.local:InlineExecutor",
    "dask": "gflow.executors.dask:DaskExecutor",
    "docker": "gflow.executors.docker:DockerExecutor",
    "volcano": "gflow.executors.volcano:VolcanoExecutor",
    "aws-batch": "gflow.executors.aws_batch:AwsBatchExecutor",
    "aws_batch": "gflow.executors.aws_batch:AwsBatchExecutor",
    "slurm": "gflow.executors.slurm:SlurmExecutor",
    "gcp-batch": "gflow.executors.gcp_batch:GcpBatchExecutor",
    "gcp_batch": "gflow.executors.gcp_batch:GcpBatchExecutor",
}
_EXTRA = {"dask": "dask", "docker": "docker", "volcano": "k8s", "aws-batch": "aws", "aws_batch": "aws",
          "gcp-batch": "gcp", "gcp_batch": "gcp"}
_registered: dict[str, Callable[[str], Executor]] = {}


def register_executor(name: str, factory: Callable[[str], Executor]) -> None:
    """Register ``factory(spec) -> Executor`` under ``name`` (the spec's scheme)."""
    _registered[name] = factory


def known_executors() -> list[str]:
    names = set(_BUILTIN) | set(_registered)
    try:
        names |= {ep.name for ep in entry_points(group="gflow.executors")}
    except Exception:
        pass
    return sorted(names)


def _scheme(spec: str) -> str:
    if "://" in spec:
        return spec.split("://", 1)[0]
    return spec.split(":", 1)[0]


def executor_class(spec: str) -> type[Executor] | None:
    """The class behind a spec, without making an executor (None if unknown or not importable)."""
    name = _scheme(spec)
    if name in ("threads", "processes"):
        name = "local"
    factory: Any = _registered.get(name)
    if factory is None:
        try:
            for ep in entry_points(group="gflow.executors"):
                if ep.name == name and name not in _BUILTIN:
                    factory = ep.load()
                    break
        except Exception:  # noqa: BLE001 - a broken third-party entry point
            factory = None
    if factory is None and name in _BUILTIN:
        from gflow.serialization import import_path

        try:
            factory = import_path(_BUILTIN[name])
        except ImportError:
            return None
    return factory if isinstance(factory, type) and issubclass(factory, Executor) else None


def settings_key(spec: str) -> str:
    """The profile table holding settings for executors of this spec's scheme (``aws-batch`` -> ``aws_batch``)."""
    return _scheme(spec).replace("-", "_")


def get_executor(spec: str | Executor | None = None, settings: dict[str, Any] | None = None) -> Executor:
    """An executor from a spec like ``local``, ``local://processes``, ``dask://host:8786``.

    ``settings`` (a profile's table for this backend) are passed to the backend's ``from_spec`` as
    keyword arguments; the spec's own query parameters win over them.

    Raises:
        ConfigError: for an unknown name (listing the known ones) or a missing optional extra.
    """
    if isinstance(spec, Executor):
        return spec
    if spec is None or spec == "":
        spec = "local"
    if not isinstance(spec, str):
        # e.g. a distributed.Client: let backends claim it
        if type(spec).__module__.startswith("distributed"):
            from gflow.executors.dask import DaskExecutor

            return DaskExecutor(client=spec)
        raise ConfigError(f"executor must be a name, URL or Executor, got {type(spec).__name__}")
    name = _scheme(spec)
    if name in ("threads", "processes"):
        spec = f"local://{name}"
    factory: Any = _registered.get(name)
    if factory is None:
        for ep in entry_points(group="gflow.executors"):
            if ep.name == name and name not in _BUILTIN:
                factory = ep.load()
                break
    if factory is None and name in _BUILTIN:
        from gflow.serialization import import_path

        try:
            factory = import_path(_BUILTIN[name])
        except ImportError as e:
            raise ConfigError(
                f"executor {name!r} needs an optional dependency ({e.name or e}); "
                f"pip install 'gflow[{_EXTRA.get(name, name)}]'") from e
    if factory is None:
        raise ConfigError(f"unknown executor {name!r}; known executors: {', '.join(known_executors())}")
    if isinstance(factory, type) and issubclass(factory, Executor):
        try:
            return factory.from_spec(spec, **(settings or {}))
        except TypeError as e:
            if not settings:
                raise
            raise ConfigError(f"executor {name!r}: profile settings {sorted(settings)} not accepted: {e}") from None
    ex = factory(spec, **settings) if settings else factory(spec)
    if not isinstance(ex, Executor):
        raise ConfigError(f"executor factory for {name!r} returned {type(ex).__name__}, not a gflow Executor")
    return ex


__all__ = ["Call", "Executor", "JobStatus", "Listener", "Outcome", "get_executor", "known_executors",
           "executor_class", "register_executor", "settings_key"]
