"""Tasks: the ``@task`` decorator, ``Task`` and its options."""

from gflow.tasks._batching import BatchResult, run_batch
from gflow.tasks._maps import Failed, MapGroup, group_for
from gflow.tasks._options import Resources, Retry, TaskOptions, format_memory, parse_memory
from gflow.tasks._task import ArgumentValidator, Task, source_hash, task
from gflow.tasks._version import code_parts, code_version, project_file

__all__ = ["ArgumentValidator", "BatchResult", "Failed", "MapGroup", "Resources", "Retry", "Task", "TaskOptions",
           "code_parts", "code_version", "format_memory", "group_for", "parse_memory", "project_file", "run_batch",
           "source_hash", "task"]
