"""The active flow context (a context variable), shared by tasks and flows without an import cycle."""

from __future__ import annotations

import contextvars
from typing import Any

#: The flow run whose body is executing in this thread, or None outside flows (and inside tasks).
current_flow: contextvars.ContextVar[Any] = contextvars.ContextVar("gflow_current_flow", default=None)
