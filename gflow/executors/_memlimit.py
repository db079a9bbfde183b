"""A call's ``Resources.memory`` enforced on this host (``local://processes``): the worker process's data size
limit (``RLIMIT_DATA``: heap and private anonymous mappings, what Python objects and numpy arrays take) is set
to its own footprint plus the memory asked, for the length of one call, and put back after it. An allocation
past it raises ``MemoryError`` in the task, which the worker reports as :class:`gflow.OutOfMemory` with the
memory asked, as a cluster reports a job killed for memory.

Why RLIMIT_DATA over the footprint, not a cgroup: it needs no privileges or cgroup delegation, works the same
in a container, and a pool worker already holds the interpreter and gflow (tens of MiB) that a cluster job's
request would not count against the task either. Not enforced (a no-op) where ``resource`` is missing."""

from __future__ import annotations

from collections.abc import Callable

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]


def _data_size() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmData:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def limit_memory(memory: int | None) -> Callable[[], None] | None:
    """Limit this process to ``memory`` more bytes of data than it holds now; returns what puts the old limit
    back (None when nothing was limited)."""
    if memory is None or resource is None:
        return None
    base = _data_size()
    if base is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    want = base + memory
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))

    def restore() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))

    return restore


def out_of_memory_message(name: str, memory: int) -> str:
    from gflow.tasks import format_memory

    return (f"task '{name}' ran out of memory: it asked for {format_memory(memory)} (Resources.memory); "
            f"raise it, or retry with more: gflow.Retry(n, memory_factor=2.0)")
