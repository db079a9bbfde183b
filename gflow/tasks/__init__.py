"""Tasks: the ``@task`` decorator, ``Task`` and its options."""

from gflow.tasks._options import Resources, Retry, TaskOptions, parse_memory
from gflow.tasks._task import ArgumentValidator, Task, source_hash, task

__all__ = ["ArgumentValidator", "Resources", "Retry", "Task", "TaskOptions", "parse_memory", "source_hash", "task"]
