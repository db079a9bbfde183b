"""Why a queued call still waits on its backend (``Slurm: ReqNodeNotAvail: ...``), kept for people to read.

Executors report it with :class:`~gflow.executors.events.CallPending` (the polling monitor: once per change).
The engine writes the reasons it heard in one loop step as rows of the state store's ``gflow_pending_reasons``
table (:meth:`gflow.store.Store.put_rows`), one row per task run (the last reason wins). A reason is not a
state: the task run stays QUEUED, and a reason is shown only while its task run is still QUEUED in the attempt
it was reported for (:func:`shown_reason`), so a started or retried call never shows an old one.

Why a table and not the task run's ``info``: the stores apply task-run rows only when they move a state
forward (QUEUED -> QUEUED is refused by design), and ``info`` is set with RUNNING and the end; a note beside
the run costs no change to the transition rules. A store that keeps no tables, or a failing write, costs the
run nothing: the reason is best effort, like provenance (:mod:`gflow.flows._provenance`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

from gflow.states import State

TABLE = "gflow_pending_reasons"
"""The table the reasons go to: ``{"run", "task_run", "attempt", "reason", "ts"}``, keyed by task run."""

#: the longest reason kept (a backend's message is untrusted and may be long)
MAX_REASON = 500

log = logging.getLogger("gflow.flows")


def note_pending(store: Any, rows: Sequence[dict[str, Any]]) -> None:
    """Write reasons (rows of :data:`TABLE`), one ``put_rows`` per run (best effort)."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_run.setdefault(r["run"], []).append(r)
    for run_id, part in by_run.items():
        try:
            store.put_rows(TABLE, part, key=("task_run",), run_id=run_id)
        except Exception:  # noqa: BLE001 - a store without tables, a full disk: the run goes on without the note
            log.debug("could not note %d pending reasons for run %s", len(part), run_id, exc_info=True)


def pending_row(run_id: str, task_run_id: str, attempt: int, reason: str | None, ts: float) -> dict[str, Any]:
    """One row of :data:`TABLE` (the reason cut to :data:`MAX_REASON` characters, one line)."""
    text = None if reason is None else " ".join(str(reason).split())[:MAX_REASON]
    return {"run": run_id, "task_run": task_run_id, "attempt": attempt, "reason": text, "ts": ts}


def reasons_of(store: Any, run_id: str, *, limit: int = 100_000) -> dict[str, dict[str, Any]]:
    """The rows of ``run_id`` by task run id (empty when the store keeps no tables or cannot read them)."""
    out: dict[str, dict[str, Any]] = {}
    after: str | None = None
    try:
        while len(out) < limit:
            page = store.get_rows(TABLE, {"run": run_id}, limit=1000, after=after)
            for r in page:
                if isinstance(r, dict) and isinstance(r.get("task_run"), str):
                    out[r["task_run"]] = r
            if len(page) < 1000:
                break
            after = page[-1].get("_cursor")
    except Exception:  # noqa: BLE001 - stored data is untrusted and the table optional: show no reasons
        log.debug("could not read the pending reasons of run %s", run_id, exc_info=True)
    return out


def reason_of(store: Any, run_id: str, task_run_id: str) -> dict[str, Any] | None:
    """The row of one task run, or None."""
    try:
        rows = store.get_rows(TABLE, {"run": run_id, "task_run": task_run_id}, limit=1)
    except Exception:  # noqa: BLE001 - as reasons_of
        return None
    return rows[0] if rows and isinstance(rows[0], dict) else None


def shown_reason(row: dict[str, Any] | None, state: State | str, attempt: int) -> str | None:
    """The reason to show for a task run in ``state`` at ``attempt``: only while it is QUEUED in the attempt the
    reason was reported for; None otherwise (or when the stored row is not what this module writes)."""
    if row is None or State(state) is not State.QUEUED:
        return None
    reason, at = row.get("reason"), row.get("attempt")
    if not isinstance(reason, str) or not reason or type(at) is not int or at != attempt:
        return None
    return " ".join(reason.split())[:MAX_REASON]


def shown_reasons(store: Any, run_id: str, task_runs: Iterable[Any]) -> dict[str, str]:
    """Task run id -> its reason, for the QUEUED ones of ``task_runs`` (records with ``id``, ``state``,
    ``attempt``); reads the table only when one of them is QUEUED."""
    queued = [t for t in task_runs if State(t.state) is State.QUEUED]
    if not queued:
        return {}
    rows = reasons_of(store, run_id) if len(queued) > 20 else {
        t.id: r for t in queued if (r := reason_of(store, run_id, t.id)) is not None}
    out: dict[str, str] = {}
    for t in queued:
        why = shown_reason(rows.get(t.id), t.state, t.attempt)
        if why:
            out[t.id] = why
    return out
