"""Tasks: the ``@task`` decorator, ``Task`` and its options."""

from gflow.tasks._options import Resources, Retry, TaskOptions, parse_memory
from gflow.tasks._task import ArgumentValidator, Task, source_hash, task
from gflow.tasks._version import code_parts, code_version, project_file

__all__ = ["ArgumentValidator", "Resources", "Retry", "Task", "TaskOptions", "code_parts", "code_version",
           "parse_memory", "project_file", "source_hash", "task"]
