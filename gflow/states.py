"""Run and task-run states, and the forward-only rule.

A task run moves PENDING -> QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED, with RETRYING
(between attempts) and CACHED (result taken from the cache). Order is by ``(attempt, rank)``: a
transition is legal only if it moves that pair strictly forward and the current state is not
terminal. RETRYING ends attempt n; the next attempt's QUEUED carries n + 1.
"""

from __future__ import annotations

from enum import Enum


class State(str, Enum):
    PENDING = "PENDING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RETRYING = "RETRYING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    CACHED = "CACHED"

    #: (set on each member below: plain attributes, as the engine reads them per transition)
    rank: int
    terminal: bool

    def __str__(self) -> str:
        return str(self._value_)


RANK = {
    State.PENDING: 0,
    State.QUEUED: 1,
    State.RUNNING: 2,
    State.RETRYING: 3,
    State.SUCCEEDED: 4,
    State.FAILED: 4,
    State.CANCELLED: 4,
    State.CACHED: 4,
}
TERMINAL = frozenset({State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED})
TERMINAL_RANK = 4
RUN_STATES = (State.PENDING, State.RUNNING, State.SUCCEEDED, State.FAILED, State.CANCELLED)
for _m in State:
    _m.rank = RANK[_m]
    _m.terminal = RANK[_m] == TERMINAL_RANK
del _m


def is_forward(old: State | None, old_attempt: int, new: State, new_attempt: int) -> bool:
    """True if moving from ``(old, old_attempt)`` to ``(new, new_attempt)`` is allowed."""
    if old is None:
        return True
    if old in TERMINAL:
        return False
    return (new_attempt, RANK[new]) > (old_attempt, RANK[old])
