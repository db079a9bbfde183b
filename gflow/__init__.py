"""gflow: tasks and flows for protein design and drug discovery, local first, remote unchanged."""

from gflow import tables as tables  # gflow.tables.record() in flow bodies
from gflow._warm import warm
from gflow.errors import (
    ArtifactCorrupt,
    ArtifactNotFound,
    ArtifactStoreError,
    Cancelled,
    ConfigError,
    ExecutorError,
    FlowFailed,
    GflowError,
    InvalidArguments,
    InvalidTransition,
    OutOfMemory,
    Preempted,
    RunNotFound,
    SerializationError,
    StoreError,
    TaskFailed,
    TaskTimeout,
    UpstreamFailed,
)
from gflow.executors import Executor, get_executor, register_executor
from gflow.flows import Flow, Future, ResumeRefused, RunResult, cancel_run, flow
from gflow.images import Image
from gflow.states import State
from gflow.tasks import Failed, Resources, Retry, Task, task

__version__ = "0.1.0"

__all__ = [
    "ArtifactCorrupt",
    "ArtifactNotFound",
    "ArtifactStoreError",
    "Cancelled",
    "ConfigError",
    "Executor",
    "ExecutorError",
    "Failed",
    "Flow",
    "FlowFailed",
    "Future",
    "GflowError",
    "Image",
    "InvalidArguments",
    "InvalidTransition",
    "OutOfMemory",
    "Preempted",
    "Resources",
    "ResumeRefused",
    "Retry",
    "RunNotFound",
    "RunResult",
    "SerializationError",
    "State",
    "StoreError",
    "Task",
    "TaskFailed",
    "TaskTimeout",
    "UpstreamFailed",
    "__version__",
    "cancel_run",
    "flow",
    "get_executor",
    "register_executor",
    "task",
    "warm",
]
