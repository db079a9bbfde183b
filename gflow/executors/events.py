"""What an executor tells the engine: two small typed events, handed to the listener from any thread.

``listener(CallStarted(call_id, attempt, ts))`` when a call starts (``ts``: seconds since the epoch, as the
backend saw it; ``description``: what the call runs as, where the backend learns it only at the start, such
as a container id or a pod name), and ``listener(CallDone(call_id, attempt, outcome))`` exactly once per
call that was not cancelled. A call may be reported done without ever being reported started: the
outcome's ``started`` then gives its start. While a call waits on the backend, ``listener(CallPending(call_id,
attempt, reason))`` says why (``Slurm: ReqNodeNotAvail: ...``), once per change of the reason (``None``: the
backend no longer gives one); it changes no state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gflow.executors.base import Outcome

__all__ = ["CallDone", "CallEvent", "CallPending", "CallStarted", "Listener"]


@dataclass(frozen=True, slots=True)
class CallStarted:
    """Call ``call_id`` (attempt ``attempt``) started at ``ts``."""

    call_id: str
    attempt: int
    ts: float
    description: str | None = None


@dataclass(frozen=True, slots=True)
class CallDone:
    """Call ``call_id`` (attempt ``attempt``) ended; ``outcome`` says how."""

    call_id: str
    attempt: int
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class CallPending:
    """Call ``call_id`` (attempt ``attempt``) still waits on the backend, because of ``reason`` (one line, the
    backend's name first; None: no reason any more). Reported only when the reason changes."""

    call_id: str
    attempt: int
    reason: str | None


CallEvent = CallStarted | CallDone | CallPending

#: what an executor reports through (the engine's, given to :meth:`Executor.start`)
Listener = Callable[[CallEvent], None]
