"""Shared by the reattach tests (issue 19 item 4): waiting for a driver's calls to be recorded in flight."""

from __future__ import annotations

import time
from typing import Any

from gflow.states import State


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def queued_run(store, n: int, before: set[str], name: str = "square") -> str:
    """The driver's run id once all ``n`` elements are recorded QUEUED (the array was submitted)."""
    found: list[str] = []

    def ready() -> bool:
        runs = [r for r in store.list_runs() if r.id not in before]
        if not runs:
            return False
        trs = [t for t in store.task_runs(runs[0].id) if t.name == name]
        if len(trs) == n and all(t.state is State.QUEUED or t.state is State.RUNNING for t in trs):
            found.append(runs[0].id)
            return True
        return False

    wait_for(ready, timeout=120, what=f"{n} {name} calls recorded QUEUED")
    return found[0]
