"""A run at a glance, for the dashboard's run page: task runs grouped by task (a 10,000-element map is
one group), the edges between groups, and every task run as compact columns (one response, not
10,000 GraphQL objects), plus the queue times the timeline draws.

Pure functions over store records; the schema wraps them. Columns are lists of equal length:

- ``id``: the task-run id without the ``<run id>.`` prefix when it has it (``"17"``), else the full id;
- ``g``: index into ``groups``; ``s``: index into ``states``; ``a``: attempt; ``m``: map index or null;
- ``c``/``t``/``e``: created / started / ended, seconds after ``t0`` (the run's creation), or null;
- ``err``: the error's first line (at most 160 characters), or null.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gflow.server.display import first_line
from gflow.states import RANK, TERMINAL, State
from gflow.store import Event, TaskRunRecord

STATES = [s.value for s in sorted(State, key=lambda s: RANK[s])]
_STATE_INDEX = {s: i for i, s in enumerate(STATES)}


def group_key(t: TaskRunRecord) -> str:
    return t.task or t.name or "?"


@dataclass
class Group:
    key: str
    task: str
    name: str
    index: int
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    is_map: bool = False
    first_created: float | None = None
    started: float | None = None
    ended: float | None = None
    durations: list[float] = field(default_factory=list)

    def add(self, t: TaskRunRecord) -> None:
        self.total += 1
        self.counts[t.state.value] = self.counts.get(t.state.value, 0) + 1
        self.is_map = self.is_map or t.map_index is not None
        if t.created is not None and (self.first_created is None or t.created < self.first_created):
            self.first_created = t.created
        if t.started is not None and (self.started is None or t.started < self.started):
            self.started = t.started
        if t.ended is not None and (self.ended is None or t.ended > self.ended):
            self.ended = t.ended
        if t.started is not None and t.ended is not None:
            self.durations.append(t.ended - t.started)

    @property
    def done(self) -> int:
        return sum(n for s, n in self.counts.items() if State(s) in TERMINAL)

    def duration_stats(self) -> tuple[float | None, float | None, float | None]:
        """Median, p95 and max duration of the finished members."""
        if not self.durations:
            return None, None, None
        d = sorted(self.durations)
        return d[len(d) // 2], d[min(len(d) - 1, int(len(d) * 0.95))], d[-1]


class Columns:
    """Task runs as compact columns (see the module docstring), built incrementally."""

    def __init__(self, run_id: str, t0: float, groups: dict[str, Group] | None = None):
        self.prefix = f"{run_id}."
        self.t0 = t0
        self.groups: dict[str, Group] = groups if groups is not None else {}
        self.cols: dict[str, list[Any]] = {k: [] for k in ("id", "g", "s", "a", "m", "c", "t", "e", "err")}

    def _rel(self, ts: float | None) -> float | None:
        return None if ts is None else round(ts - self.t0, 6)

    def group_of(self, t: TaskRunRecord) -> Group:
        key = group_key(t)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = Group(key=key, task=t.task, name=t.name or key, index=len(self.groups))
        return g

    def add(self, t: TaskRunRecord) -> Group:
        g = self.group_of(t)
        c = self.cols
        c["id"].append(t.id[len(self.prefix):] if t.id.startswith(self.prefix) else t.id)
        c["g"].append(g.index)
        c["s"].append(_STATE_INDEX[t.state.value])
        c["a"].append(t.attempt)
        c["m"].append(t.map_index)
        c["c"].append(self._rel(t.created))
        c["t"].append(self._rel(t.started))
        c["e"].append(self._rel(t.ended))
        c["err"].append(first_line(t.error))
        return g

    def payload(self) -> dict[str, Any]:
        groups = sorted(self.groups.values(), key=lambda g: g.index)
        return {"t0": self.t0, "prefix": self.prefix, "states": STATES,
                "groups": [{"key": g.key, "name": g.name} for g in groups], **self.cols}


@dataclass
class Overview:
    cols: Columns
    edges: dict[tuple[str, str], int]  # (from group key, to group key) -> task runs
    total: int  # task runs in the run
    last_row: str | None  # id of the last task run in the columns


def overview(run_id: str, t0: float, task_runs: Iterable[TaskRunRecord], max_rows: int) -> Overview:
    """Groups (with counts and timings), the edges between groups, and the first ``max_rows`` task runs
    as columns."""
    cols = Columns(run_id, t0)
    last: str | None = None
    group_of_id: dict[str, str] = {}
    ups: list[tuple[str, list[str]]] = []
    n = 0
    for t in task_runs:
        n += 1
        if n <= max_rows:
            g = cols.add(t)
            last = t.id
        else:
            g = cols.group_of(t)
        g.add(t)
        group_of_id[t.id] = g.key
        if t.upstream:
            ups.append((g.key, t.upstream))
    edges: dict[tuple[str, str], int] = {}
    for key, upstream in ups:
        for u in dict.fromkeys(upstream):
            src = group_of_id.get(u)
            if src is not None:
                edges[(src, key)] = edges.get((src, key), 0) + 1
    return Overview(cols, edges, n, last)


def rows(run_id: str, t0: float, task_runs: Sequence[TaskRunRecord]) -> dict[str, Any]:
    """Columns of some task runs (a page of them), with their own group table."""
    cols = Columns(run_id, t0)
    for t in task_runs:
        cols.add(t)
    return cols.payload()


def queue_times(run_id: str, events: Iterable[Event]) -> dict[str, float]:
    """When each task run's current attempt was QUEUED (submitted to the executor), by task-run id."""
    queued: dict[str, tuple[int, float]] = {}
    for e in events:
        if e.task_run_id and e.state is State.QUEUED:
            cur = queued.get(e.task_run_id)
            if cur is None or e.attempt >= cur[0]:
                queued[e.task_run_id] = (e.attempt, e.ts)
    return {k: ts for k, (_, ts) in queued.items()}
