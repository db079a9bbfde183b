"""``gflow cache explain RUN_ID TASK``: why a call ran instead of coming from the cache.

For each call of TASK in the run that ran (not CACHED), the nearest earlier call of the same task (an
earlier one with the same inputs first, else the latest earlier one) and what differs between them, in
the order the cache key is made of (``gflow.flows._keys``):

- the **code version**, naming the helper functions, classes, constants or project modules whose source
  changed (from the parts noted per run and task, ``gflow.flows._provenance``);
- the **image** the task ran in;
- an **input**: which argument, with its old and new digest (recorded for calls of cacheable tasks whose
  arguments were known when they were made; for the others, the input key says that some input changed);
- the **options** (retries, resources, timeout, ...: they do not change the key; shown for context).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from gflow.errors import GflowError, StoreError
from gflow.flows import CALL_INPUTS_TABLE as INPUTS_TABLE
from gflow.flows import PROVENANCE_TABLE
from gflow.states import State

__all__ = ["CallDiff", "ExplainError", "explain"]
_RAN = (State.SUCCEEDED, State.FAILED, State.RUNNING, State.RETRYING, State.QUEUED)


class ExplainError(GflowError):
    """An unknown run or task, or a run with no call of it."""


@dataclass
class CallDiff:
    """One call that ran, the earlier call it is compared with, and what differs."""

    task_run: str
    task: str
    earlier: str | None = None
    earlier_run: str | None = None
    same_key: bool = False
    code: list[str] = field(default_factory=list)
    old_version: str | None = None
    new_version: str | None = None
    image: tuple[str, str] | None = None
    inputs: list[tuple[str, str, str]] = field(default_factory=list)
    inputs_changed: bool = False
    options: list[tuple[str, Any, Any]] = field(default_factory=list)
    note: str = ""

    def lines(self) -> list[str]:
        """The explanation as text, one finding a line."""
        if self.earlier is None:
            return [f"{self.task_run}: no earlier call of {self.task} recorded: nothing to take from the cache"]
        out = [f"{self.task_run}: compared with {self.earlier} (run {self.earlier_run})"]
        if self.same_key:
            out.append(f"  same cache key: {self.note or 'it could have come from the cache'}")
        if self.code:
            out.append(f"  code version {self.old_version} -> {self.new_version}:")
            out += [f"    {c}" for c in self.code]
        elif self.old_version != self.new_version:
            out.append(f"  code version {self.old_version} -> {self.new_version} (parts not recorded)")
        if self.image:
            out.append(f"  image {self.image[0] or '(none)'} -> {self.image[1] or '(none)'}")
        for name, old, new in self.inputs:
            out.append(f"  argument '{name}': {old} -> {new}")
        if self.inputs_changed and not self.inputs:
            out.append("  inputs differ (input key changed; per-argument digests not recorded for these calls: "
                       "their arguments came from other calls)")
        for name, old, new in self.options:
            out.append(f"  option {name}: {old!r} -> {new!r}")
        if self.note and not self.same_key:
            out.append(f"  {self.note}")
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _rows(store: Any, table: str, where: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        return list(store.get_rows(table, where, limit=1))
    except (StoreError, GflowError):
        return []


def _call_args(store: Any, run_id: str, task_run_id: str) -> dict[str, str]:
    """The argument digests noted for one call (rows hold a batch of calls each), or {}."""
    after = None
    for _ in range(1000):
        try:
            page = store.get_rows(INPUTS_TABLE, {"run": run_id}, limit=100, after=after)
        except (StoreError, GflowError):
            return {}
        for row in page:
            calls = row.get("calls")
            got = calls.get(task_run_id) if isinstance(calls, dict) else None
            if isinstance(got, dict) and isinstance(got.get("args"), dict):
                return {str(k): str(v) for k, v in got["args"].items()}
        if len(page) < 100:
            return {}
        after = page[-1]["_cursor"]
    return {}


def _earlier_calls(store: Any, run: Any, task: str, ikey: str | None, max_runs: int) -> list[Any]:
    """Earlier calls of ``task``: in ``run`` (made before) and in the runs created before it, newest first."""
    out: list[Any] = []
    before: tuple[float, str] | None = (run.created, run.id)
    scanned = 0
    while before is not None and scanned < max_runs:
        page = store.list_runs(limit=50, before=before)
        if not page:
            break
        for r in page:
            scanned += 1
            calls = [t for t in store.task_runs(r.id, task=task) if t.state in (State.SUCCEEDED, State.CACHED)]
            out += reversed(calls)
            if ikey is not None and any(t.ikey == ikey for t in calls):
                return out
        before = (page[-1].created, page[-1].id)
    return out


def explain(store: Any, run_id: str, task: str, *, limit: int = 20, max_runs: int = 200) -> list[CallDiff]:
    """Why the calls of ``task`` (a task's name, its ``module:qualname`` or a task run id) in ``run_id`` ran.

    Raises:
        ExplainError: naming the unknown run, or the task that has no call in it.
    """
    try:
        run = store.get_run(run_id)
    except (LookupError, StoreError) as e:
        raise ExplainError(f"no run {run_id!r} in {store.url}") from e
    calls = store.task_runs(run_id, task=task)
    if not calls:
        one = store.get_task_runs([task]).get(task)
        calls = [one] if one is not None and one.run_id == run_id else []
    if not calls:
        raise ExplainError(f"run {run_id} has no call of task {task!r} (give its name, module:qualname or a "
                           f"task run id; see gflow runs show {run_id})")
    ran = [t for t in calls if t.state in _RAN][:limit]
    out: list[CallDiff] = []
    for t in ran:
        out.append(_explain_one(store, run, t, max_runs))
    if not out:
        states = sorted({t.state.value for t in calls})
        raise ExplainError(f"no call of {task!r} in run {run_id} ran: they are {', '.join(states)}")
    return out


def _explain_one(store: Any, run: Any, t: Any, max_runs: int) -> CallDiff:
    d = CallDiff(task_run=t.id, task=t.task)
    same_run = [o for o in store.task_runs(run.id, task=t.task) if (o.created or 0) < (t.created or 0)
                and o.state in (State.SUCCEEDED, State.CACHED) and o.id != t.id]
    candidates = list(reversed(same_run)) + _earlier_calls(store, run, t.task, t.ikey, max_runs)
    if not candidates:
        return d
    prev = next((o for o in candidates if t.ikey and o.ikey == t.ikey), candidates[0])
    d.earlier, d.earlier_run = prev.id, prev.run_id
    new_note = (_rows(store, PROVENANCE_TABLE, {"run": run.id, "task": t.task}) or [{}])[0]
    old_note = (_rows(store, PROVENANCE_TABLE, {"run": prev.run_id, "task": t.task}) or [{}])[0]
    d.old_version, d.new_version = old_note.get("version"), new_note.get("version")
    old_parts, new_parts = old_note.get("parts") or {}, new_note.get("parts") or {}
    for label in sorted(set(old_parts) | set(new_parts)):
        a, b = old_parts.get(label), new_parts.get(label)
        if a != b:
            d.code.append(f"{label}: " + ("added" if a is None else "removed" if b is None else "changed"))
    if old_note and new_note and (old_note.get("image") or "") != (new_note.get("image") or ""):
        d.image = (old_note.get("image") or "", new_note.get("image") or "")
    old_opts, new_opts = old_note.get("options") or {}, new_note.get("options") or {}
    d.options = [(k, old_opts.get(k), new_opts.get(k)) for k in sorted(set(old_opts) | set(new_opts))
                 if old_opts.get(k) != new_opts.get(k) and k != "image"]
    d.inputs_changed = bool(t.ikey and prev.ikey and t.ikey != prev.ikey)
    if d.inputs_changed:
        old_in = _call_args(store, prev.run_id, prev.id)
        new_in = _call_args(store, run.id, t.id)
        if old_in and new_in:
            d.inputs = [(k, old_in.get(k, "(absent)"), new_in.get(k, "(absent)"))
                        for k in sorted(set(old_in) | set(new_in)) if old_in.get(k) != new_in.get(k)]
    d.same_key = bool(t.key and prev.key == t.key)
    if not new_opts.get("cache", True):
        d.note = "the task has cache off: every call runs"
    elif d.same_key:
        d.note = "the earlier result was not available to this run (resume/cache lookup found none readable)"
    return d
