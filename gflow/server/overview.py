"""A run at a glance, for the dashboard's run page: task runs grouped by task (a 10,000-element map is
one group), the edges between groups, and every task run as compact columns (one response, not
10,000 GraphQL objects), plus the queue times the timeline draws.

Pure functions over store records; the schema wraps them. Columns are lists of equal length:

- ``id``: the task-run id without the ``<run id>.`` prefix when it has it (``"17"``), else the full id;
- ``g``: index into ``groups``; ``s``: index into ``states``; ``a``: attempt; ``m``: map index or null;
- ``c``/``t``/``e``: created / started / ended, in integer microseconds after ``t0`` (the run's
  creation), or null;
- ``err``: the error's first line (at most 160 characters), or null.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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
        state = t.state.value
        self.counts[state] = self.counts.get(state, 0) + 1
        if t.map_index is not None:
            self.is_map = True
        created, started, ended = t.created, t.started, t.ended
        if created is not None and (self.first_created is None or created < self.first_created):
            self.first_created = created
        if started is not None:
            if self.started is None or started < self.started:
                self.started = started
            if ended is not None:
                self.durations.append(ended - started)
        if ended is not None and (self.ended is None or ended > self.ended):
            self.ended = ended

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

    def group_of(self, t: TaskRunRecord) -> Group:
        key = group_key(t)
        g = self.groups.get(key)
        if g is None:
            g = self.groups[key] = Group(key=key, task=t.task, name=t.name or key, index=len(self.groups))
        return g

    def add_all(self, task_runs: Iterable[TaskRunRecord],
                limit: int | None = None) -> Iterator[tuple[TaskRunRecord, Group, bool]]:
        """Add task runs (the first ``limit`` as rows); yields each with its group and whether it became a row.
        One tight loop: a 10,000-task run is built in a few tens of milliseconds."""
        c = self.cols
        ids, gs, ss, at, ms, cs, ts, es, errs = (c["id"], c["g"], c["s"], c["a"], c["m"], c["c"], c["t"], c["e"],
                                                  c["err"])
        prefix, cut, t0 = self.prefix, len(self.prefix), self.t0
        state_index, groups = _STATE_INDEX, self.groups
        n = 0
        for t in task_runs:
            key = t.task or t.name or "?"
            g = groups.get(key)
            if g is None:
                g = self.group_of(t)
            n += 1
            row = limit is None or n <= limit
            if row:
                tid = t.id
                ids.append(tid[cut:] if tid.startswith(prefix) else tid)
                gs.append(g.index)
                ss.append(state_index[t.state.value])
                at.append(t.attempt)
                ms.append(t.map_index)
                cs.append(None if t.created is None else int((t.created - t0) * 1e6))
                ts.append(None if t.started is None else int((t.started - t0) * 1e6))
                es.append(None if t.ended is None else int((t.ended - t0) * 1e6))
                errs.append(first_line(t.error) if t.error else None)
            yield t, g, row

    def payload(self) -> dict[str, Any]:
        groups = sorted(self.groups.values(), key=lambda g: g.index)
        return {"t0": self.t0, "prefix": self.prefix, "states": STATES,
                "groups": [{"key": g.key, "name": g.name} for g in groups], **self.cols}


@dataclass
class Overview:
    cols: Columns
    edges: dict[tuple[str, str], int]  # (from group key, to group key) -> task-run pairs
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
    for t, g, row in cols.add_all(task_runs, max_rows):
        n += 1
        if row:
            last = t.id
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
    for _ in cols.add_all(task_runs):
        pass
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
