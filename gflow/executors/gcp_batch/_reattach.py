"""Reattach after a lost driver on Google Cloud Batch (``gflow resume``, issue 19 item 4).

The dead run's jobs are the project/region's jobs (jobs.list, pages) whose ``gflow-run`` label is the run's;
each job's command (``worker DIGEST``) names its manifest, whose call specs name the call ids they were
written for (the dead run's task run ids). A resumed call is followed through the old call spec's outcome
slot. Calls of a job that FAILED, is being deleted or is gone, and of tasks that FAILED, are submitted again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from gflow.errors import GflowError
from gflow.executors._batch import Placed, adopt, placed_calls
from gflow.executors.base import Call
from gflow.executors.gcp_batch._jobs import label
from gflow.executors.gcp_batch._monitor import Handle, Job

log = logging.getLogger("gflow.executors.gcp_batch")
GIVEN_UP = ("FAILED", "DELETION_IN_PROGRESS", "CANCELLED", "CANCELLATION_IN_PROGRESS")


def find_jobs(ex: Any, run_ids: set[str]) -> list[dict]:
    """The jobs (as dicts) labelled ``gflow-run`` with one of ``run_ids``."""
    from google.cloud import batch_v1

    want = {label(r) for r in run_ids}
    out: list[dict] = []
    token = ""
    while True:
        page = ex._call("list_jobs", "jobs.list", request={"parent": ex.parent, "page_size": 100,
                                                             "page_token": token})
        for j in page.jobs:
            d = dict(batch_v1.Job.to_dict(j, preserving_proto_field_name=False, use_integers_for_enums=False))
            if (d.get("labels") or {}).get("gflow-run") in want:
                out.append(d)
        token = page.next_page_token
        if not token:
            return out


def reattach(ex: Any, calls: Sequence[Call], records: Sequence[Any]) -> list[Handle | None]:
    """Handles following the dead driver's jobs of ``calls`` (None where a call must be submitted again)."""
    arts = ex._check_artifacts()
    where: dict[str, tuple[dict, str, Placed]] = {}
    for d in find_jobs(ex, {r.run_id for r in records}):
        if ((d.get("status") or {}).get("state")) in GIVEN_UP:
            continue
        try:
            group = d["taskGroups"][0]
            commands = group["taskSpec"]["runnables"][0]["container"]["commands"]
            manifest = str(commands[1])
            placed = placed_calls(arts, manifest)
        except (KeyError, IndexError, TypeError, GflowError) as e:
            log.warning("Batch job %s: its manifest cannot be read (%s); its calls are submitted again",
                        d.get("name"), e)
            continue
        for call_id, p in placed.items():
            where.setdefault(call_id, (d, manifest, p))
    failed: dict[str, set[int]] = {}
    jobs: dict[str, Job] = {}
    out: list[Handle | None] = []
    api = ex.handler.api
    for call, rec in zip(calls, records):
        got = where.get(rec.id)
        if got is None:
            out.append(None)
            continue
        d, manifest, p = got
        name = str(d["name"])
        if name not in failed:
            failed[name] = {int(str(t.get("name", "")).rsplit("/", 1)[1]) for t in api.tasks(name, "FAILED")}
        if p.element in failed[name]:
            out.append(None)
            continue
        job = jobs.get(name)
        if job is None:
            group = d["taskGroups"][0]
            image = str(group["taskSpec"]["runnables"][0]["container"].get("imageUri", ""))
            job = jobs[name] = Job(name, int(group.get("taskCount") or 1), image, manifest, p.chunk)
        h = Handle(call, job, p.element, p.pos, p.spec)
        job.elements.setdefault(h.element, []).append(h)
        out.append(h)
    adopted = adopt(ex, out, jobs.values())
    log.info("adopted %d of %d calls in %d Batch jobs", len(adopted), len(calls), len(jobs))
    return out
