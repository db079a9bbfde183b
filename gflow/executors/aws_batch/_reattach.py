"""Reattach after a lost driver on AWS Batch (``gflow resume``, issue 19 item 4).

The dead run's jobs are found by its run id: ListJobs on the executor's queues (each status a job can be in
after its driver died), kept when the job name carries the run id (``job_name``) and, where DescribeJobs
returns tags, when ``gflow:run`` names the run. The job's command names its spec (``worker DIGEST``); the spec
(a paged array, or one call) lists the call spec of each element, and each call spec names the call id it was
written for: the dead run's task run id. A resumed call is followed through the old call spec's outcome slot,
never its own (its spec would carry the new run and call ids, so a new digest).

Not followed (the call is submitted again): a job or array child that FAILED, a job that is not found any more
(Batch forgets finished jobs after about a week), a spec that cannot be read.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from gflow.errors import GflowError
from gflow.executors._batch import Placed, adopt, placed_calls
from gflow.executors.aws_batch._monitor import Handle, Job
from gflow.executors.base import Call

log = logging.getLogger("gflow.executors.aws_batch")

#: what ListJobs is asked for: every state a job of a dead driver can be in (FAILED ones are skipped, but their
#: elements must be known to be resubmitted rather than followed)
STATES = ("SUBMITTED", "PENDING", "RUNNABLE", "STARTING", "RUNNING", "SUCCEEDED")


def find_jobs(ex: Any, run_ids: set[str]) -> list[dict]:
    """DescribeJobs of the jobs (not array children) the runs ``run_ids`` submitted to ``ex``'s queues."""
    marks = {r: re.sub(r"[^A-Za-z0-9_-]", "-", r) for r in run_ids}
    ids: list[str] = []
    for queue in dict.fromkeys(q for q in (ex.queue, ex.spot_queue, ex.on_demand_queue) if q):
        for status in STATES:
            kw: dict[str, Any] = {"jobQueue": queue, "jobStatus": status, "maxResults": 1000}
            while True:
                page = ex._call("list_jobs", **kw)
                for s in page.get("jobSummaryList", []):
                    jid, name = str(s.get("jobId", "")), str(s.get("jobName", ""))
                    if ":" not in jid and any(m in name for m in marks.values()):
                        ids.append(jid)
                token = page.get("nextToken")
                if not token:
                    break
                kw["nextToken"] = token
    jobs: list[dict] = []
    for i in range(0, len(ids), 100):
        jobs += ex._call("describe_jobs", jobs=list(dict.fromkeys(ids[i:i + 100])))["jobs"]
    # the name matched; a job that carries the run tag must name one of these runs
    return [j for j in jobs if (j.get("tags") or {}).get("gflow:run") in (None, *run_ids)]


def reattach(ex: Any, calls: Sequence[Call], records: Sequence[Any]) -> list[Handle | None]:
    """Handles following the dead driver's jobs of ``calls`` (None where a call must be submitted again)."""
    arts = ex._check_artifacts()
    found = find_jobs(ex, {r.run_id for r in records})
    where: dict[str, tuple[dict, Placed]] = {}
    for d in found:
        cmd = (d.get("container") or {}).get("command") or []
        if len(cmd) < 2 or cmd[0] != "worker" or not isinstance(cmd[1], str):
            continue
        try:
            placed = placed_calls(arts, cmd[1])
        except GflowError as e:
            log.warning("AWS Batch job %s: its spec %s cannot be read (%s); its calls are submitted again",
                        d.get("jobId"), cmd[1], e)
            continue
        for call_id, p in placed.items():
            where.setdefault(call_id, (d, p))
    failed: dict[str, set[int]] = {}
    jobs: dict[str, Job] = {}
    out: list[Handle | None] = []
    for call, rec in zip(calls, records):
        got = where.get(rec.id)
        if got is None:
            out.append(None)
            continue
        d, p = got
        jid = str(d["jobId"])
        size = int((d.get("arrayProperties") or {}).get("size") or 0)
        if d.get("status") == "FAILED" and not size:
            out.append(None)
            continue
        if size and jid not in failed:
            failed[jid] = {int(str(s["jobId"]).rsplit(":", 1)[1]) for s in ex._Api(ex).children(jid, "FAILED")}
        if p.element in failed.get(jid, ()):
            out.append(None)
            continue
        job = jobs.get(jid)
        if job is None:
            cmd = d["container"]["command"]
            image = str((d.get("container") or {}).get("image", ""))
            job = jobs[jid] = Job(jid, str(d.get("jobName", "")), size, image, None if cmd[1] == p.spec else cmd[1],
                                  p.chunk)
        h = Handle(call, job, p.element if size else 0, p.pos, p.spec)
        job.elements.setdefault(h.element, []).append(h)
        out.append(h)
    adopted = adopt(ex, out, jobs.values())
    log.info("adopted %d of %d calls in %d AWS Batch jobs of run(s) %s", len(adopted), len(calls), len(jobs),
             ", ".join(sorted({r.run_id for r in records})))
    return out
