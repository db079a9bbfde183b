"""The active flow context (a context variable), shared by tasks and flows without an import cycle."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

#: The flow run whose body is executing in this thread, or None outside flows (and inside tasks).
current_flow: contextvars.ContextVar[Any] = contextvars.ContextVar("gflow_current_flow", default=None)

#: The artifact store of the run whose task call is executing in this thread (set by executors that run
#: calls in-process), so task code (``gflow.models.materialize``) uses its run's store.
run_artifacts: contextvars.ContextVar[Any] = contextvars.ContextVar("gflow_run_artifacts", default=None)

#: Makes the flow that runs one call of a task (``Task.run``): set by ``gflow.flows`` when it is imported
#: (always, by ``import gflow``), so that tasks, which sit below flows, never import them.
one_call_flow: Callable[[Any], Any] | None = None
