"""What a driver does around a run: open (and close) its stores and executor settings from a profile,
and claim a run for a resume, one driver at a time."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from gflow.artifacts import ArtifactStore, open_artifacts
from gflow.config import load_profile
from gflow.errors import GflowError
from gflow.states import State
from gflow.store import RunRecord, Store, TaskRunRecord, driver_alive, end_unfinished, open_store


class ResumeRefused(GflowError):
    """A run cannot be resumed now (another driver resumes it, or it was already resumed successfully)."""


@dataclass
class RunContext:
    """The opened parts a run uses. Stores given as objects are the caller's; those opened here are closed."""

    store: Store
    artifacts: ArtifactStore
    executor: Any
    executor_description: str
    routes: dict[str, str] = field(default_factory=dict)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    profile_name: str = "default"


@contextlib.contextmanager
def open_run_context(profile: str | None = None, *, executor: Any = None, store: Any = None, artifacts: Any = None,
                     events: str | None = None) -> Iterator[RunContext]:
    """The profile's (or the given) store, artifacts and executor settings, closed on every path."""
    prof = load_profile(profile, executor=executor, store=store, artifacts=artifacts, events=events)
    if prof.signing_key:
        from gflow._signing import configure

        configure(prof.signing_key)  # GFLOW_SIGNING_KEY still wins
    st = open_store(prof.store, events=prof.events)
    owns_store = st is not prof.store
    try:
        arts = open_artifacts(prof.artifacts)
        ex = prof.executor
        # what the run records: the URL (a backend object knows its own, with region, queue ...), else its name
        desc = ex if isinstance(ex, str) else str(getattr(ex, "url", None) or getattr(ex, "name", type(ex).__name__))
        yield RunContext(st, arts, ex, desc, prof.routes, prof.backends, prof.name)
    finally:
        if owns_store:
            st.close()


@dataclass
class Resume:
    """A claimed resume: the run, its finished calls (``results``) and the calls that were queued or running
    when its driver died (``inflight``, both by input key), whose jobs may still run."""

    run: RunRecord
    results: dict[str, TaskRunRecord]
    inflight: dict[str, TaskRunRecord] = field(default_factory=dict)


#: the error ``prepare_resume`` records on the task runs a dead driver left unfinished
DRIVER_LOST = "DriverLost: the driver process died"


def inflight_calls(store: Store, run_id: str, results: dict[str, TaskRunRecord]) -> dict[str, TaskRunRecord]:
    """The task runs of ``run_id`` that a dead driver left queued or running on a backend (recorded with a
    executor, ended ``DriverLost``), by input key; calls with a stored result are left to ``results``."""
    out: dict[str, TaskRunRecord] = {}
    for t in store.task_runs(run_id):
        if t.state is State.FAILED and t.error == DRIVER_LOST and t.ikey and t.ikey not in results:
            out.setdefault(t.ikey, t)
    return out


def prepare_resume(store: Store, run_id: str, new_run_id: str, force: bool = False) -> Resume:
    """Claim ``run_id`` for a resume by ``new_run_id`` and collect what it finished.

    A run still marked RUNNING whose driver is gone is first recorded FAILED (``DriverLost``), with its
    unfinished task runs: the one run state written outside a scheduling core, because that run's core died
    with its driver (a live run's end is decided only by its core, see ``gflow.flows._core``). The claim is
    atomic in the store: of two drivers resuming one run at once, one wins and the other is refused. A run
    whose earlier resume SUCCEEDED, or is still being driven, is refused naming that resume, unless ``force``.

    Raises:
        RunNotFound, ResumeRefused.
    """
    rec = store.get_run(run_id)
    if rec.state in (State.RUNNING, State.PENDING):
        alive = driver_alive(rec)
        if alive:
            raise ResumeRefused(f"run {rec.id} is still running (driver pid {rec.pid} on this host); cancel it "
                                f"first (gflow runs cancel {rec.id})")
        if alive is None and not force:
            raise ResumeRefused(f"run {rec.id} is marked {rec.state.value} on host {rec.host}; if its driver is "
                                f"gone, resume with --force")
        now = time.time()
        end_unfinished(store, rec.id, State.FAILED, DRIVER_LOST, now)
        try:
            store.set_run_state(rec.id, State.FAILED, now, error=f"DriverLost: driver pid {rec.pid} on {rec.host} "
                                                                   f"is gone")
        except GflowError:
            pass  # someone else recorded its end meanwhile
        rec = store.get_run(rec.id)
    current = rec.resumed_by
    if current and not force:
        prev = store.get_runs([current]).get(current)
        if prev is None and not _stale_claim(current):
            raise ResumeRefused(f"run {rec.id} is being resumed by run {current} (starting now); wait for it")
        if prev is not None:
            if prev.state is State.SUCCEEDED:
                raise ResumeRefused(f"run {rec.id} was already resumed by run {prev.id}, which SUCCEEDED; resume "
                                    f"that one, or use --force to resume {rec.id} again")
            if prev.state in (State.RUNNING, State.PENDING) and driver_alive(prev) is not False:
                raise ResumeRefused(f"run {rec.id} is being resumed by run {prev.id} (driver pid {prev.pid} on "
                                    f"{prev.host}); wait for it, or cancel it first")
    winner = store.claim_resume(rec.id, new_run_id, current)
    if winner is not None:
        raise ResumeRefused(f"run {rec.id} is being resumed by run {winner} (another driver claimed it first)")
    results = store.results_for_resume(rec.id)
    return Resume(rec, results, inflight_calls(store, rec.id, results))


#: a claim whose run was never recorded (its driver died between the claim and the record) is stale after this
CLAIM_GRACE_SECONDS = 120.0


def _stale_claim(claimant: str, now: float | None = None) -> bool:
    """Whether a resume claim by ``claimant``, whose run record does not exist, can be taken over: run ids
    start with their UTC creation time (``YYYYMMDD-HHMMSS``); one that does not is never stale."""
    import calendar

    try:
        t = calendar.timegm(time.strptime(claimant[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return False
    return (now if now is not None else time.time()) - t > CLAIM_GRACE_SECONDS
