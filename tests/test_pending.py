"""A queued call's pending reason (issue 20 item 5): reported by the polling monitor on change as a typed
``CallPending``, noted by the engine beside the run without a state change, shown by ``gflow runs show`` and
GraphQL ``TaskRun.pendingReason`` while the task run is QUEUED (the real Slurm case: tests/test_slurm.py)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from conftest import cli

import gflow
from gflow.executors.base import Call, CallStarted, JobStatus, run_task
from gflow.executors.events import CallPending
from gflow.executors.polling import Cadence, PollingHandler, PollingMonitor, Tracked
from gflow.flows.pending import TABLE, pending_row, shown_reason
from gflow.states import State


class Job(Tracked):
    __slots__ = ("outcome", "started")

    def __init__(self, call):
        super().__init__(call)
        self.outcome = None
        self.started = None


class Waiting(PollingHandler):
    """Jobs that wait with the reason the test sets (by call id) until it lets them run."""

    name = "fake"

    def __init__(self):
        self.reasons: dict[str, str | None] = {}

    def check_if_running(self, t):
        return t.started

    def check_if_completed(self, t):
        return t.outcome

    def pending_reason(self, t):
        return self.reasons.get(t.call.id)

    def outcome(self, t, detail):
        return detail

    def kill(self, tracked):
        pass


def call(i, attempt=1):
    return Call(id=f"c{i}", run_id="r", task=None, args=(), kwargs={}, attempt=attempt)


def test_the_monitor_reports_a_reason_once_per_change_and_never_after_the_start():
    h = Waiting()
    events: list = []
    mon = PollingMonitor(h, cadence=Cadence(1, 8))
    mon.start(events.append)
    jobs = [Job(call(i)) for i in range(3)]
    mon.track(jobs, thread=False)
    mon.cycle()
    assert events == []  # no reason known: nothing said
    h.reasons = {"c0": "ReqNodeNotAvail: the nodes it needs are down", "c1": "Priority: jobs of higher priority"}
    assert mon.cycle()
    assert events == [CallPending("c0", 1, "fake: ReqNodeNotAvail: the nodes it needs are down"),
                      CallPending("c1", 1, "fake: Priority: jobs of higher priority")]
    events.clear()
    assert not mon.cycle() and events == []  # the same reasons: not said again
    h.reasons["c1"] = "Resources: waiting for free resources"
    h.reasons.pop("c0")
    mon.cycle()
    assert events == [CallPending("c0", 1, None), CallPending("c1", 1, "fake: Resources: waiting for free resources")]
    events.clear()
    jobs[1].started = 5.0
    h.reasons["c1"] = "Priority: changed after the start"
    mon.cancel([jobs[2]])
    h.reasons["c2"] = "Priority: after the cancel"
    mon.cycle()
    assert events == [CallStarted("c1", 1, 5.0, None)]  # started or cancelled calls have no reason any more
    mon.close()


def test_a_reason_is_shown_only_while_queued_in_its_attempt():
    row = pending_row("r", "r.1", 2, "Slurm:  ReqNodeNotAvail\n(x)", 1.0)
    assert row["reason"] == "Slurm: ReqNodeNotAvail (x)"
    assert shown_reason(row, State.QUEUED, 2) == "Slurm: ReqNodeNotAvail (x)"
    assert shown_reason(row, State.QUEUED, 3) is None  # a retry: the old attempt's reason is stale
    assert shown_reason(row, State.RUNNING, 2) is None
    assert shown_reason({"reason": ["not", "text"], "attempt": 2}, State.QUEUED, 2) is None  # untrusted rows
    assert shown_reason({"reason": "x", "attempt": True}, State.QUEUED, 1) is None


class WaitingExecutor(gflow.Executor):
    """An executor built on the monitor, like a batch backend; its jobs run in threads once ``go`` is set."""

    name = "waiting"

    def __init__(self):
        self.handler = Waiting()
        self.monitor = PollingMonitor(self.handler, cadence=Cadence(0.02, 0.05))
        self.go = threading.Event()

    def start(self, listener):
        super().start(listener)
        self.monitor.start(listener)

    def submit(self, calls):
        handles = [Job(c) for c in calls]

        def run(h):
            self.go.wait(60)
            h.started = time.time()
            h.outcome = run_task(h.call.task, h.call.args, h.call.kwargs)
            self.monitor.wake()

        for h in handles:
            threading.Thread(target=run, args=(h,), daemon=True).start()
        self.monitor.track(handles)
        return handles

    def poll(self, handles):
        return [JobStatus(h.state) for h in handles]

    def cancel(self, handles):
        self.monitor.cancel(handles)

    def close(self):
        self.go.set()
        self.monitor.close()


def wait_for(cond, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_waiting_call_shows_its_reason_in_runs_show_and_graphql_then_not_once_it_ran(store, gflow_home):
    import flows_basic as fb

    from gflow.server.app import create_app
    from gflow.server.testing import serve

    db = f"sqlite:///{gflow_home / 'gflow.db'}"
    ex = WaitingExecutor()
    ex.handler.reasons = {}
    box: dict = {}

    def go():
        box["run"] = fb.map_reduce.run(2, executor=ex, store=db, return_run=True)

    th = threading.Thread(target=go)
    th.start()
    try:
        live = wait_for(lambda: len(ex.monitor.live()) == 2 and ex.monitor.live(), what="two calls queued")
        run_id = live[0].call.run_id
        for t in live:
            ex.handler.reasons[t.call.id] = "ReqNodeNotAvail: the nodes it needs are down"
        ex.monitor.wake()
        wait_for(lambda: len([r for r in store.get_rows(TABLE, {"run": run_id}) if r["reason"]]) == 2,
                 what="two reasons noted")
        assert {t.state for t in store.task_runs(run_id)} == {State.QUEUED}  # a reason is no state change
        shown = cli("runs", "show", run_id, "--store", db)
        assert shown.returncode == 0, shown.stderr
        waiting = [line for line in shown.stdout.splitlines() if line.strip().startswith("waiting")]
        assert len(waiting) == 2, shown.stdout
        assert all("QUEUED (fake: ReqNodeNotAvail: the nodes it needs are down)" in line for line in waiting)
        q = """query($run: ID!) { taskRuns(runId: $run, first: 10) { items { id state pendingReason } } }"""
        with serve(create_app(store)) as url:
            items = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"run": run_id}}).json()
            items = items["data"]["taskRuns"]["items"]
            why = {(i["state"], i["pendingReason"]) for i in items}  # the reduce (PENDING, once added): no reason
            assert why - {("PENDING", None)} == {("QUEUED", "fake: ReqNodeNotAvail: the nodes it needs are down")}
            ex.go.set()
            th.join(30)
            assert box["run"].state is State.SUCCEEDED
            items = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"run": run_id}}).json()
            items = items["data"]["taskRuns"]["items"]
            assert {i["state"] for i in items} == {"SUCCEEDED"} and all(i["pendingReason"] is None for i in items)
        shown = cli("runs", "show", run_id, "--store", db)
        assert "QUEUED (" not in shown.stdout and "ReqNodeNotAvail" not in shown.stdout
    finally:
        ex.close()
        th.join(30)


@pytest.mark.parametrize("broken", [True, False])
def test_a_store_without_tables_costs_the_run_nothing(broken):
    from gflow.flows.pending import note_pending, reasons_of

    class NoTables:
        def put_rows(self, *a, **k):
            raise RuntimeError("no tables")

        def get_rows(self, *a, **k):
            if broken:
                raise RuntimeError("no tables")
            return [{"task_run": 5}, "junk"]

    note_pending(NoTables(), [pending_row("r", "r.1", 1, "x", 1.0)])
    assert reasons_of(NoTables(), "r") == {}


def test_aws_batch_reports_a_runnable_jobs_status_reason(tmp_path):
    """DescribeJobs' statusReason of a RUNNABLE job (moto sets none, so the answers are the test's, as in
    test_aws_batch_units.py) becomes a CallPending once, and none after the job starts."""
    import flows_basic as fb
    from test_aws_batch_units import _FakeBatch

    from gflow.artifacts import open_artifacts
    from gflow.executors.aws_batch._monitor import BatchHandler, BatchMonitor, Handle, Job

    api = _FakeBatch()
    handler = BatchHandler(api, open_artifacts(str(tmp_path / "arts")), log_group="/aws/batch/job", queue="q")
    mon = BatchMonitor(handler, clock=lambda: 100.0)
    events: list = []
    mon.start(events.append)
    job = Job("job-1", "gflow-inc", 0, "img:1", None)
    h = Handle(Call("c1", "r1", fb.inc, (1,), {}), job, 0, 0, "sha256:" + "0" * 64)
    job.elements[0] = [h]
    mon.add(job)
    mon.track([h], thread=False)
    why = "MISCONFIGURATION:JOB_RESOURCE_REQUIREMENT - The job resource requirement (vCPU) is higher than allowed"
    api.jobs["job-1"] = {"jobId": "job-1", "status": "RUNNABLE", "statusReason": why}
    mon.cycle()
    mon.cycle()
    assert events == [CallPending("c1", 1, f"AWS Batch: {why}")]
    api.jobs["job-1"] = {"jobId": "job-1", "status": "RUNNING", "startedAt": 5000, "statusReason": why}
    mon.cycle()
    assert events[1:] == [CallStarted("c1", 1, 5.0, None)]
    mon.close()
