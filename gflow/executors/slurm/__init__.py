"""The Slurm executor (``slurm://PARTITION``): a map is one job array. Guide: ``docs/slurm.md``.

:class:`SlurmExecutor` is imported on first use, so an array element's entry point
(:mod:`gflow.executors.slurm.element`) does not load the driver's side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gflow.executors.slurm.executor import SlurmExecutor

__all__ = ["SlurmExecutor"]


def __getattr__(name: str) -> Any:
    if name == "SlurmExecutor":
        from gflow.executors.slurm.executor import SlurmExecutor

        return SlurmExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
