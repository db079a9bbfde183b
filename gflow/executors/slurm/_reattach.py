"""Reattach after a lost driver on Slurm (``gflow resume``, issue 19 item 4).

The dead run's jobs are found by name (``job_name(prefix, TASK-RUN_ID)``, one ``squeue --name`` for all the
task names asked for); each job's batch script (squeue's ``Command``, written by the dead driver into its log
folder) names the manifest it runs (``worker DIGEST`` / ``slurm.element DIGEST``), whose call specs name the
call ids they were written for (the dead run's task run ids). A resumed call is followed through the old call
spec's outcome slot. Only jobs squeue still lists are followed: an element that ended before the resume and
wrote no outcome is reported failed by the monitor (its retry policy applies); calls of jobs squeue no longer
lists are submitted again.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from gflow.errors import GflowError
from gflow.executors._batch import Placed, placed_calls
from gflow.executors.base import Call
from gflow.executors.slurm._script import job_name
from gflow.executors.slurm._status import Job, SlurmTracked

log = logging.getLogger("gflow.executors.slurm")
_MANIFEST = re.compile(r"(?:worker|gflow\.executors\.slurm\.element)\s+'?(sha256:[0-9a-f]{64})")
GIVEN_UP = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


def find_jobs(ex: Any, names: set[str]) -> dict[str, tuple[bool, str, set[str]]]:
    """Jobs named ``names`` that squeue lists: job id -> (is an array, its script path, states of its lines)."""
    out = ex.slurm.run(["squeue", "--noheader", f"--name={','.join(sorted(names))}",
                        "--Format=JobID:|,ArrayJobID:|,ArrayTaskID:|,State:|,Command:|"], what=" (looking for the "
                       "jobs of a resumed run)")
    jobs: dict[str, tuple[bool, str, set[str]]] = {}
    for line in out.splitlines():
        f = [x.strip() for x in line.split("|")]
        if len(f) < 5:
            continue
        job_id, array_job, task, state, command = f[:5]
        array = task not in ("N/A", "")
        jid = array_job if array else job_id
        prev = jobs.get(jid)
        states = (prev[2] if prev else set()) | {state.split()[0] if state else "UNKNOWN"}
        jobs[jid] = (array, command, states)
    return jobs


def manifest_of(script: str) -> str | None:
    try:
        with open(script, encoding="utf-8", errors="replace") as fh:
            m = _MANIFEST.search(fh.read(1 << 20))
    except OSError:
        return None
    return m.group(1) if m else None


def reattach(ex: Any, calls: Sequence[Call], records: Sequence[Any]) -> list[SlurmTracked | None]:
    """Handles following the dead driver's Slurm jobs of ``calls`` (None where a call must be submitted again)."""
    names = {job_name(ex.job_name_prefix, f"{r.name}-{r.run_id}") for r in records}
    found = find_jobs(ex, names)
    arts = ex.artifacts
    log_dir = ex._log_dir()
    where: dict[str, tuple[str, bool, str, Placed]] = {}
    for jid, (array, script, states) in found.items():
        if states and states <= set(GIVEN_UP):
            continue
        manifest = manifest_of(script)
        if manifest is None:
            log.warning("Slurm job %s: no manifest found in its script %s; its calls are submitted again", jid, script)
            continue
        try:
            placed = placed_calls(arts, manifest)
        except GflowError as e:
            log.warning("Slurm job %s: its manifest %s cannot be read (%s); its calls are submitted again", jid,
                        manifest, e)
            continue
        for call_id, p in placed.items():
            where.setdefault(call_id, (jid, array, manifest, p))
    jobs: dict[str, Job] = {}
    out: list[SlurmTracked | None] = []
    for call, rec in zip(calls, records):
        got = where.get(rec.id)
        if got is None:
            out.append(None)
            continue
        jid, array, manifest, p = got
        job = jobs.get(jid)
        if job is None:
            job = jobs[jid] = Job(jid, array=array, manifest=manifest, log_dir=log_dir, chunk=p.chunk)
        t = SlurmTracked(call, job, p.element, p.pos, p.spec)
        job.elements.setdefault(t.index, []).append(t)
        out.append(t)
    adopted = [t for t in out if t is not None]
    if adopted:
        ex.monitor.track(adopted)
    log.info("adopted %d of %d calls in %d Slurm jobs", len(adopted), len(calls), len(jobs))
    return out
