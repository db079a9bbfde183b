"""What a run's tasks were made of, noted once per task and run: code version and its parts, image, options.

The flow's thread notes each task the first time a run calls it (one row per run and task, in the state
store's ``gflow_task_versions`` table), so that ``gflow lineage`` can name the code version a call ran and
``gflow cache explain`` can say which helper, constant, image or option changed between two calls. A store
that keeps no tables, or a failing write, costs the run nothing: provenance is best effort.
"""

from __future__ import annotations

import hashlib
import json as _json
import logging
from typing import Any

from gflow.serialization import canonical_json, to_jsonable
from gflow.tasks import code_parts

TABLE = "gflow_task_versions"
"""The table (:meth:`gflow.store.Store.put_rows`) the notes go to, keyed by run and task identity."""

log = logging.getLogger("gflow.flows")


def options_of(task: Any) -> dict[str, Any]:
    """The options that can change a call's result or where it runs, as JSON-safe values."""
    o = task.options
    image = o.image
    shown = None if image is None else image.model_dump_json() if hasattr(image, "model_dump_json") else str(image)
    return {"retries": o.retries.count, "timeout": o.timeout, "cache": o.cache, "pickle": o.pickle,
            "resources": o.resources.model_dump(mode="json"),
            "executor": None if o.executor is None else str(o.executor), "image": shown}


def note_task(store: Any, run_id: str, task: Any, version: str, image: str | None) -> None:
    """Record ``task``'s code version, parts, image and options for ``run_id`` (best effort)."""
    try:
        row = {"run": run_id, "task": task.identity, "name": task.name, "version": version, "image": image or "",
               "parts": code_parts(task), "options": options_of(task)}
        store.put_rows(TABLE, [row], key=("run", "task"), run_id=run_id)
    except Exception:  # noqa: BLE001 - a store without tables, a full disk: the run goes on without the note
        log.debug("could not note task %s for run %s", getattr(task, "identity", task), run_id, exc_info=True)


INPUTS_TABLE = "gflow_call_inputs"
"""Argument digests of cacheable calls whose arguments were known when they were made: one row per batch of
calls (``{"run", "batch", "calls": {task_run_id: {"task", "ikey", "args": {argument: digest}}}}``), so a map of
10,000 writes about ten rows, not 10,000."""

_SCALARS = (str, int, bool, float, type(None))


def input_digests(task: Any, arguments: dict[str, Any]) -> dict[str, str]:
    """``{argument: sha256 of its canonical form}`` (an argument without one: ``"unserializable"``)."""
    out: dict[str, str] = {}
    for name, value in arguments.items():
        try:
            if type(value) in _SCALARS:  # the common case, without the tree walk
                text = _json.dumps(value, ensure_ascii=False, allow_nan=False)
            else:
                text = canonical_json(to_jsonable(value, {}, task.options.pickle, ""))
            out[name] = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        except Exception:  # noqa: BLE001 - the call itself reports it; the note just says so
            out[name] = "unserializable"
    return out


def note_inputs(store: Any, run_id: str, calls: dict[str, dict[str, Any]]) -> None:
    """Record the argument digests of a batch of cacheable calls (best effort, one row)."""
    try:
        store.put_rows(INPUTS_TABLE, [{"run": run_id, "batch": next(iter(calls)), "calls": calls}],
                       key=("run", "batch"), run_id=run_id)
    except Exception:  # noqa: BLE001 - as note_task
        log.debug("could not note the inputs of %d calls for run %s", len(calls), run_id, exc_info=True)
