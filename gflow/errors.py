"""gflow's own exception types.

Backend errors are translated into these at the boundary, so users catch ``gflow.TaskFailed``
rather than a cloud SDK's exception.
"""

from __future__ import annotations


class GflowError(Exception):
    """Base class of every error gflow raises on purpose."""


class ConfigError(GflowError):
    """A profile, URL or option is malformed or names something unknown."""


class InvalidArguments(GflowError, TypeError):
    """A task or flow was called with arguments that do not match its signature or annotations."""


class SerializationError(GflowError, TypeError):
    """A value cannot be turned into gflow's canonical form (JSON or a typed blob)."""


class StoreError(GflowError):
    """The state store is unreachable, corrupt or locked."""


class StoreFull(StoreError):
    """The state store's disk (or quota) is full: nothing can be recorded until space is freed. A driver gives up
    after ``GFLOW_STATE_RETRY_SECONDS`` (docs/RELIABILITY.md) and the run can be resumed once there is space."""


class InvalidTransition(StoreError):
    """A state transition that would move a run or task run backwards was refused."""


class RunNotFound(StoreError, LookupError):
    """No run with that id exists in the store."""


class ArtifactNotFound(GflowError, LookupError):
    """A content-addressed blob is missing from the artifact store."""


class ArtifactStoreError(GflowError):
    """The artifact store cannot be written or read (full, unreachable, no permission, corrupt blob)."""


class ArtifactCorrupt(ArtifactNotFound, ArtifactStoreError):
    """What is stored under a digest is not the blob with that digest (tampered, truncated, or a named
    slot read as a blob). Also an :class:`ArtifactNotFound`: the blob asked for is not there, so
    callers that recompute a missing result recompute a corrupt one too."""


class ExecutorError(GflowError):
    """An executor backend failed (translated from the backend's own exception)."""


class OutOfMemory(ExecutorError):
    """The backend killed the call for using more memory than it was given.

    Attributes:
        requested: Bytes the call asked for (its ``Resources.memory``), where known.
        used: Bytes it reached when it was killed, where the backend says.
    """

    def __init__(self, message: str = "", *, requested: int | None = None, used: int | None = None):
        super().__init__(message)
        self.requested = requested
        self.used = used

    def __reduce__(self):  # keyword attributes survive pickling (process pools, Dask)
        return (_rebuild_oom, (type(self), str(self), self.requested, self.used))


class Preempted(ExecutorError):
    """The machine running the call was taken back (a spot or preemptible instance, a higher-priority job)."""


class PodEvicted(ExecutorError):
    """Kubernetes evicted the call's pod (node pressure, a drain)."""


class ImagePullFailed(ExecutorError):
    """The backend could not pull the call's container image."""


class NodeFailure(ExecutorError):
    """The node running the call failed or stopped answering."""


#: THE map at the executor boundary: a backend's own name for why a job ended (Kubernetes reasons, AWS
#: Batch status reasons, Slurm job states, GCP Batch event types) -> the gflow class the outcome carries.
#: Backends look names up with :func:`failure_class`; add a backend's names here, nowhere else.
FAILURES: dict[str, type[ExecutorError]] = {
    # Kubernetes / Volcano
    "OOMKilled": OutOfMemory, "Evicted": PodEvicted, "PodEvicted": PodEvicted, "Preempted": Preempted,
    "ErrImagePull": ImagePullFailed, "ImagePullBackOff": ImagePullFailed, "InvalidImageName": ImagePullFailed,
    "NodeLost": NodeFailure,
    # AWS Batch (status reasons)
    "CannotPullContainerError": ImagePullFailed, "OutOfMemoryError": OutOfMemory, "Host EC2": Preempted,
    # Slurm (job states)
    "OUT_OF_MEMORY": OutOfMemory, "PREEMPTED": Preempted, "NODE_FAIL": NodeFailure, "BOOT_FAIL": NodeFailure,
    # Google Cloud Batch (a task's exit code: Spot VM preempted, VM lost, rebooted, unresponsive, recreated)
    "50001": Preempted, "50002": NodeFailure, "50003": NodeFailure, "50004": NodeFailure, "50006": NodeFailure,
    # gflow's own names (and those Volcano outcomes recorded before this map: gflow.ImagePullError ...)
    "OutOfMemory": OutOfMemory, "ImagePullFailed": ImagePullFailed, "NodeFailure": NodeFailure,
    "ImagePullError": ImagePullFailed, "Unschedulable": ExecutorError,
}


def failure_class(name: str | None) -> type[ExecutorError]:
    """The gflow class for a backend's failure ``name`` (:data:`FAILURES`); :class:`ExecutorError` if unknown."""
    return FAILURES.get(name or "", ExecutorError)


def error_class(error_type: str | None) -> type[BaseException] | None:
    """The class a recorded ``error_type`` names (``gflow.errors.OutOfMemory``, ``gflow.PodEvicted``,
    ``ValueError``), for decisions by type: gflow's own classes and builtin exceptions only (stored names
    are untrusted, so nothing is imported); None for anything else."""
    if not error_type:
        return None
    mod, _, name = error_type.rpartition(".")
    if mod in ("gflow", "gflow.errors"):
        cls = globals().get(name)
        if isinstance(cls, type) and issubclass(cls, GflowError):
            return cls
        return FAILURES.get(name)
    if not mod:
        import builtins

        cls = getattr(builtins, name, None)
        return cls if isinstance(cls, type) and issubclass(cls, BaseException) else None
    return None


class FlowFailed(GflowError):
    """A flow run ended FAILED.

    Attributes:
        run_id: The failed run.
        failures: The task failures that caused it (may be empty when the flow body raised).
    """

    def __init__(self, message: str, *, run_id: str | None = None, failures: list[TaskFailed] | None = None):
        super().__init__(message)
        self.run_id = run_id
        self.failures = list(failures or [])


class TaskFailed(FlowFailed):
    """A task run failed after its retries; carries the original error and traceback.

    Raised by ``future.result()`` and, for the first failed task, by the flow itself.
    """

    def __init__(
        self,
        task: str,
        *,
        task_run_id: str | None = None,
        run_id: str | None = None,
        error_type: str = "Exception",
        error_message: str = "",
        traceback: str = "",
        attempts: int = 1,
    ):
        self.task = task
        self.task_run_id = task_run_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
        self.attempts = attempts
        if attempts:
            msg = f"task '{task}' ({task_run_id}) failed after {attempts} attempt(s): {error_type}: {error_message}"
        else:
            msg = f"task '{task}' ({task_run_id}) was not run: {error_type}: {error_message}"
        if traceback:
            msg += "\n\nOriginal traceback:\n" + traceback.rstrip()
        super().__init__(msg, run_id=run_id, failures=[self])

    def __reduce__(self):  # keep picklable across processes
        return (
            _rebuild_task_failed,
            (type(self), self.task, self.task_run_id, self.run_id, self.error_type, self.error_message,
             self.traceback, self.attempts),
        )


class UpstreamFailed(TaskFailed):
    """A task was not run because a task it depends on failed."""


class TaskTimeout(GflowError, TimeoutError):
    """A task attempt ran longer than its ``timeout``."""


class Cancelled(GflowError):
    """The run was cancelled (Ctrl-C, ``cancelRun`` or ``executor.cancel``)."""


def _rebuild_task_failed(cls, task, task_run_id, run_id, error_type, error_message, traceback, attempts):
    return cls(task, task_run_id=task_run_id, run_id=run_id, error_type=error_type,
               error_message=error_message, traceback=traceback, attempts=attempts)


def _rebuild_oom(cls, message, requested, used):
    return cls(message, requested=requested, used=used)


class BatchLengthMismatch(GflowError, ValueError):
    """A ``batch_size`` task returned a list whose length is not its batch's (or no list at all)."""
