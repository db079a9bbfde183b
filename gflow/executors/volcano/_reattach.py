"""Reattach after a lost driver on Volcano (``gflow resume``, issue 19 item 4).

The dead run's Jobs are listed by its ``gflow.dev/run`` label; each Job's ``gflow.dev/array-spec`` annotation
names its array spec, whose call specs name the call ids they were written for (the dead run's task run ids):
replica ``i`` of the Job runs call spec ``i``. An adopted Job is tracked as if this driver had created it, with
the replicas not adopted held as finished placeholders, and the dead driver's ``gflow.dev/driver`` label is
watched too (pods keep the label of the driver that created their Job). A resumed call's outcome is read from
the old call spec's slot.

Not followed (submitted again): calls of a Job that ended Failed, Aborted or Terminated, or that is gone; a Job
whose array spec cannot be read.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from gflow.errors import GflowError
from gflow.executors._batch import Placed, placed_calls
from gflow.executors.base import Call
from gflow.executors.volcano import _manifest as vm
from gflow.executors.volcano._k8s import k8s_error
from gflow.executors.volcano._runtime import Handle, JobRec
from gflow.states import State

log = logging.getLogger("gflow.executors.volcano")
#: phases of a Job whose calls are not followed (Completed ones are: their outcomes wait in the old slots)
GIVEN_UP = frozenset({"Failed", "Aborted", "Terminated"})


def list_jobs(ex: Any, run_id: str) -> list[dict]:
    """The Volcano Jobs of run ``run_id`` in the executor's namespace (raw dicts)."""
    try:
        resp = ex.custom.list_namespaced_custom_object(vm.GROUP, vm.VERSION, ex.namespace, vm.PLURAL,
                                                       label_selector=f"{vm.L_RUN}={vm.label_value(run_id)}",
                                                       _preload_content=False)
    except Exception as e:  # noqa: BLE001 - translated at the boundary
        raise k8s_error(e, f"volcano executor: listing the Jobs of run {run_id} in {ex.namespace}") from None
    return list(json.loads(resp.data).get("items") or ())


def reattach(ex: Any, calls: Sequence[Call], records: Sequence[Any]) -> list[Handle | None]:
    """Handles following the dead driver's Jobs of ``calls`` (None where a call must be submitted again)."""
    where: dict[str, tuple[dict, Placed, int]] = {}
    for run_id in sorted({r.run_id for r in records}):
        for job in list_jobs(ex, run_id):
            meta = job.get("metadata") or {}
            array = (meta.get("annotations") or {}).get(vm.A_ARRAY)
            phase = ((job.get("status") or {}).get("state") or {}).get("phase")
            if not isinstance(array, str) or phase in GIVEN_UP or meta.get("deletionTimestamp"):
                continue
            try:
                placed = placed_calls(ex.artifacts, array)
            except GflowError as e:
                log.warning("Volcano Job %s: its array spec %s cannot be read (%s); its calls are submitted again",
                            meta.get("name"), array, e)
                continue
            size = max((p.element for p in placed.values()), default=-1) + 1
            for call_id, p in placed.items():
                where.setdefault(call_id, (job, p, size))
    recs: dict[str, JobRec] = {}
    drivers: set[str] = set()
    out: list[Handle | None] = []
    for call, rec in zip(calls, records):
        got = where.get(rec.id)
        if got is None:
            out.append(None)
            continue
        job, p, size = got
        meta = job["metadata"]
        name = str(meta["name"])
        jr = recs.get(name)
        if jr is None:
            image = ""
            jr = recs[name] = JobRec(name, image)
            jr.handles = [None] * size  # type: ignore[list-item]  # filled below; the rest become placeholders
            driver = (meta.get("labels") or {}).get(vm.L_DRIVER)
            if driver:
                drivers.add(str(driver))
        h = Handle(call, jr, p.element, p.spec)
        jr.handles[p.element] = h
        out.append(h)
    tracker = ex.tracker
    with tracker._lock:
        for jr in recs.values():
            opened = 0
            for i, h in enumerate(jr.handles):
                if h is None:  # a replica of a call not adopted (finished before, or not asked for)
                    ph = Handle(Call("", "", None, (), {}), jr, i, "")
                    ph.state = State.CANCELLED
                    jr.handles[i] = ph
                else:
                    opened += 1
            jr.open = opened
            tracker.open_calls += opened
            tracker.jobs[jr.name] = jr
    for d in sorted(drivers - {ex.driver_id}):
        ex._watch_driver(d)
    adopted = sum(h is not None for h in out)
    log.info("adopted %d of %d calls in %d Volcano Jobs", adopted, len(calls), len(recs))
    return out
