"""The Slurm executor (``slurm://PARTITION``): a map is one job array. Guide: ``docs/slurm.md``."""

from gflow.executors.slurm.executor import SlurmExecutor

__all__ = ["SlurmExecutor"]
