"""The polling monitor shared by polling backends, driven by hand with a fake clock and a fake handler."""

import pickle
import threading

import pytest

import gflow
from gflow.errors import (
    ConfigError,
    ExecutorError,
    ImagePullFailed,
    NodeFailure,
    OutOfMemory,
    PodEvicted,
    Preempted,
    error_class,
    failure_class,
)
from gflow.executors.base import Call, CallDone, CallStarted, Outcome
from gflow.executors.polling import Cadence, PollingHandler, PollingMonitor, Tracked, failed
from gflow.states import State


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Job(Tracked):
    __slots__ = ("job_id",)

    def __init__(self, call, job_id):
        super().__init__(call)
        self.job_id = job_id


class FakeBackend(PollingHandler):
    """A backend whose jobs' states the test sets: {job_id: ("RUNNING", ts) | ("DONE", ok) | ...}."""

    name = "fake"

    def __init__(self):
        self.states = {}
        self.refreshed = []
        self.seen = {}
        self.killed = []
        self.broken = None
        self.outcome_error = None
        self.outcomes_read = []

    def refresh(self, live, now):
        self.refreshed.append((sorted(t.job_id for t in live), now))
        if self.broken is not None:
            raise self.broken
        changed = self.seen != self.states
        self.seen = dict(self.states)
        return changed

    def check_if_running(self, t):
        st = self.seen.get(t.job_id)
        return st[1] if st and st[0] == "RUNNING" else None

    def check_if_completed(self, t):
        st = self.seen.get(t.job_id)
        return st if st and st[0] == "DONE" else None

    def outcome(self, t, detail):
        self.outcomes_read.append(t.job_id)
        if self.outcome_error is not None:
            raise self.outcome_error
        if detail[1]:
            return Outcome(True, value=t.job_id)
        return failed("OOMKilled", f"job {t.job_id} ran out of memory")

    def kill(self, tracked):
        self.killed.extend(t.job_id for t in tracked)

    def describe(self, t):
        return f"node of {t.job_id}"


def call(i, attempt=1):
    return Call(id=f"c{i}", run_id="r", task=None, args=(), kwargs={}, attempt=attempt)


@pytest.fixture
def setup():
    clock = Clock()
    backend = FakeBackend()
    events = []
    mon = PollingMonitor(backend, cadence=Cadence(1, 8), max_errors=3, clock=clock, workers=2)
    mon.start(events.append)
    yield mon, backend, events, clock
    mon.close()


def test_started_once_and_done_exactly_once(setup):
    mon, be, events, clock = setup
    jobs = [Job(call(i), f"j{i}") for i in range(3)]
    mon.track(jobs, thread=False)
    assert not mon.cycle() and events == []
    be.states = {"j0": ("RUNNING", 5.0), "j1": ("RUNNING", 6.0)}
    assert mon.cycle()
    assert events == [CallStarted("c0", 1, 5.0, "node of j0"), CallStarted("c1", 1, 6.0, "node of j1")]
    events.clear()
    clock.t += 10
    assert not mon.cycle() and events == []  # still running: not reported again
    be.states = {"j0": ("DONE", True), "j1": ("RUNNING", 6.0), "j2": ("DONE", False)}
    mon.cycle()
    assert [type(e) for e in events] == [CallDone, CallDone]
    by_id = {e.call_id: e.outcome for e in events}
    assert by_id["c0"].ok and by_id["c0"].value == "j0"
    assert by_id["c2"].error_class is OutOfMemory and by_id["c2"].error_type == "gflow.errors.OutOfMemory"
    assert jobs[0].state is State.SUCCEEDED and jobs[2].state is State.FAILED
    events.clear()
    mon.cycle()
    assert events == []  # done calls are no longer followed nor reported
    assert be.refreshed[-1] == (["j1"], clock.t)


def test_one_refresh_per_cycle_for_all_live_calls(setup):
    mon, be, _, clock = setup
    mon.track([Job(call(i), f"j{i}") for i in range(50)], thread=False)
    mon.cycle()
    mon.cycle()
    assert len(be.refreshed) == 2 and len(be.refreshed[0][0]) == 50 and mon.cycles == 2


def test_nothing_tracked_asks_nothing(setup):
    mon, be, _, _ = setup
    assert not mon.cycle() and be.refreshed == [] and mon.cycles == 0


def test_cancelled_calls_are_killed_and_never_reported(setup):
    mon, be, events, _ = setup
    jobs = [Job(call(i), f"j{i}") for i in range(2)]
    mon.track(jobs, thread=False)
    assert mon.cancel([jobs[0]]) == [jobs[0]]
    assert mon.cancel([jobs[0]]) == []  # once
    assert be.killed == ["j0"] and jobs[0].state is State.CANCELLED
    be.states = {"j0": ("DONE", True), "j1": ("DONE", True)}
    mon.cycle()
    assert [e.call_id for e in events] == ["c1"]
    assert mon.cancel([jobs[1]]) == [] and be.killed == ["j0"]  # a finished call is not killed


def test_status_errors_in_a_row_fail_every_unfinished_call(setup):
    mon, be, events, _ = setup
    jobs = [Job(call(i), f"j{i}") for i in range(2)]
    mon.track(jobs, thread=False)
    be.broken = RuntimeError("squeue: timeout")
    mon.cycle()
    mon.cycle()
    be.broken = None
    mon.cycle()  # a good answer resets the count
    assert mon.errors == 0 and events == []
    be.broken = RuntimeError("squeue: timeout")
    mon.cycle()
    mon.cycle()
    assert events == []
    mon.cycle()  # the third in a row
    assert sorted(e.call_id for e in events) == ["c0", "c1"]
    for e in events:
        assert isinstance(e, CallDone) and e.outcome.error_class is ExecutorError
        assert "lost track" in e.outcome.error_message and "squeue: timeout" in e.outcome.error_message
    assert mon.live() == []


def test_a_fatal_error_fails_at_once():
    be = FakeBackend()
    events = []
    mon = PollingMonitor(be, max_errors=5, fatal=(ConfigError,))
    mon.start(events.append)
    mon.track([Job(call(1), "j1")], thread=False)
    be.broken = ConfigError("credentials expired")
    mon.cycle()
    assert len(events) == 1 and "credentials expired" in events[0].outcome.error_message
    mon.close()


def test_an_unreadable_outcome_is_a_failure_not_a_lost_call(setup):
    mon, be, events, _ = setup
    mon.track([Job(call(1), "j1")], thread=False)
    be.outcome_error = OSError("s3 down")
    be.states = {"j1": ("DONE", True)}
    mon.cycle()
    (ev,) = events
    assert not ev.outcome.ok and ev.outcome.error_class is ExecutorError and "s3 down" in ev.outcome.error_message


def test_outcomes_are_read_in_the_pool(setup):
    mon, be, events, _ = setup
    mon.track([Job(call(i), f"j{i}") for i in range(20)], thread=False)
    be.states = {f"j{i}": ("DONE", True) for i in range(20)}
    mon.cycle()
    assert sorted(be.outcomes_read) == sorted(f"j{i}" for i in range(20))
    assert sorted(e.call_id for e in events) == sorted(f"c{i}" for i in range(20))
    assert mon._pool is not None


def test_reports_before_start_are_an_error():
    mon = PollingMonitor(FakeBackend())
    mon.track([Job(call(1), "j1")], thread=False)
    mon.handler.states = {"j1": ("RUNNING", 1.0)}
    with pytest.raises(ExecutorError, match="start"):
        mon.cycle()


def test_tracking_records_the_clock(setup):
    mon, _, _, clock = setup
    j = Job(call(1), "j1")
    clock.t = 1234.0
    mon.track([j], thread=False)
    assert j.since == 1234.0


def test_cadence_adapts():
    c = Cadence(1, 8)
    assert c.interval == 1
    assert [c.next(False) for _ in range(5)] == [2, 4, 8, 8, 8]
    assert c.next(True) == 1
    c.next(False)
    c.reset()
    assert c.interval == 1


def test_the_thread_runs_cycles_and_can_be_woken():
    be = FakeBackend()
    got = threading.Event()
    events = []

    def listener(ev):
        events.append(ev)
        if isinstance(ev, CallDone):
            got.set()

    mon = PollingMonitor(be, cadence=Cadence(3600, 3600))  # only a wake can run a cycle in this test
    mon.start(listener)
    try:
        be.states = {"j1": ("DONE", True)}
        mon.track([Job(call(1), "j1")])  # wakes the thread
        assert got.wait(10)
        got.clear()
        mon.track([Job(call(2), "j2")])
        be.states = {"j2": ("DONE", True)}
        mon.wake()
        assert got.wait(10)
        assert [e.call_id for e in events] == ["c1", "c2"]
    finally:
        mon.close()
    assert not mon._thread.is_alive()


def test_the_one_failure_map():
    assert failure_class("OOMKilled") is OutOfMemory and failure_class("OUT_OF_MEMORY") is OutOfMemory
    assert failure_class("PREEMPTED") is Preempted and failure_class("Evicted") is PodEvicted
    assert failure_class("ErrImagePull") is ImagePullFailed and failure_class("NODE_FAIL") is NodeFailure
    assert failure_class("something new") is ExecutorError and failure_class(None) is ExecutorError
    for cls in (OutOfMemory, Preempted, PodEvicted, ImagePullFailed, NodeFailure):
        assert issubclass(cls, ExecutorError)
    assert gflow.OutOfMemory is OutOfMemory and gflow.Preempted is Preempted


def test_error_class_from_a_recorded_name_imports_nothing():
    assert error_class("gflow.errors.OutOfMemory") is OutOfMemory
    assert error_class("gflow.PodEvicted") is PodEvicted
    assert error_class("gflow.ImagePullError") is ImagePullFailed  # names Volcano recorded before the map
    assert error_class("ValueError") is ValueError
    assert error_class("gflow.errors.error_class") is None  # a function, not a class
    assert error_class("os.system") is None and error_class("len") is None and error_class(None) is None
    assert Outcome(False, exc=KeyError("x"), error_type="KeyError").error_class is KeyError
    assert Outcome(True).error_class is None


def test_out_of_memory_carries_its_bytes_through_pickle():
    e = OutOfMemory("killed", requested=2 << 30, used=3 << 30)
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is OutOfMemory and str(back) == "killed"
    assert back.requested == 2 << 30 and back.used == 3 << 30
    assert OutOfMemory("x").requested is None


class Polled(Tracked):
    __slots__ = ("outcome", "started")

    def __init__(self, call):
        super().__init__(call)
        self.outcome = None
        self.started = None


class ThreadJobs(PollingHandler):
    """A 'backend' whose jobs run in threads here; the handler only reads what they left (as a batch
    service's status and outcome records would be read)."""

    name = "threads"

    def __init__(self):
        self.refreshes = 0

    def refresh(self, live, now):
        self.refreshes += 1
        return False

    def check_if_running(self, t):
        return t.started

    def check_if_completed(self, t):
        return t.outcome

    def outcome(self, t, detail):
        return detail

    def kill(self, tracked):
        pass


class PollingThreads(gflow.Executor):
    """An executor built on the monitor the way a batch backend is (tests only)."""

    name = "polling-threads"

    def __init__(self):
        self.handler = ThreadJobs()
        self.monitor = PollingMonitor(self.handler, cadence=Cadence(0.01, 0.05))

    def start(self, listener):
        super().start(listener)
        self.monitor.start(listener)

    def submit(self, calls):
        from gflow.executors.base import run_task

        handles = [Polled(c) for c in calls]

        def run(h):
            import time

            h.started = time.time()
            h.outcome = run_task(h.call.task, h.call.args, h.call.kwargs)
            self.monitor.wake()

        for h in handles:
            threading.Thread(target=run, args=(h,), daemon=True).start()
        self.monitor.track(handles)
        return handles

    def poll(self, handles):
        from gflow.executors.base import JobStatus

        return [JobStatus(h.state) for h in handles]

    def cancel(self, handles):
        self.monitor.cancel(handles)

    def close(self):
        self.monitor.close()


def test_a_polling_executor_runs_a_flow_through_typed_events(store):
    import flows_basic as fb

    with PollingThreads() as ex:
        res = fb.map_reduce.run(5, executor=ex, return_run=True)
        assert ex.handler.refreshes >= 1
    assert res.state is State.SUCCEEDED and res.value == sum(range(1, 6))
    assert store.counts(res.id) == {"SUCCEEDED": 6}
    assert all(t.started is not None for t in store.task_runs(res.id))


def test_failed_carries_the_class_and_the_instance():
    out = failed(OutOfMemory("killed at 3 GiB", requested=2 << 30, used=3 << 30), info={"job": "j"})
    assert out.error_class is OutOfMemory and out.exc.used == 3 << 30 and out.error_message == "killed at 3 GiB"
    assert out.error_type == "gflow.errors.OutOfMemory" and out.info == {"job": "j"}
    out = failed("Evicted", "evicted by the kubelet", error_type="gflow.PodEvicted")
    assert out.error_class is PodEvicted and out.error_type == "gflow.PodEvicted"
    assert gflow.Retry(count=2, on=(Preempted,)).should_retry(1, failed("PREEMPTED", "spot").error_class)
    assert not gflow.Retry(count=2, on=(Preempted,)).should_retry(1, failed("OOMKilled", "x").error_class)


class PreemptingThreads(PollingThreads):
    """Every call's first attempt is reclaimed by the 'backend' (no outcome record of its own)."""

    name = "preempting-threads"

    def submit(self, calls):
        handles = [Polled(c) for c in calls]
        for h in handles:
            h.started = 1.0
            if h.call.attempt == 1:
                h.outcome = failed("PREEMPTED", f"call {h.call.id}: the node was reclaimed")
            else:
                from gflow.executors.base import run_task

                h.outcome = run_task(h.call.task, h.call.args, h.call.kwargs)
        self.monitor.track(handles)
        return handles


@gflow.task(retries=gflow.Retry(count=2, on=(Preempted,)))
def retried_on_preemption(x: int) -> int:
    return x + 1


@gflow.task(retries=gflow.Retry(count=2, on=(OutOfMemory,)))
def retried_on_oom_only(x: int) -> int:
    return x + 1


@gflow.flow
def preempted_once(x: int) -> int:
    return retried_on_preemption(x)


@gflow.flow
def preempted_oom_policy(x: int) -> int:
    return retried_on_oom_only(x)


def test_retry_policies_compare_the_class_of_a_remote_failure(store):
    with PreemptingThreads() as ex:
        res = preempted_once.run(1, executor=ex, return_run=True)
    assert res.state is State.SUCCEEDED and res.value == 2
    (tr,) = store.task_runs(res.id)
    assert tr.attempt == 2
    with PreemptingThreads() as ex:
        res = preempted_oom_policy.run(1, executor=ex, return_run=True)
    assert res.state is State.FAILED
    err = res.error
    assert err.error_type == "gflow.errors.Preempted" and err.attempts == 1
    assert isinstance(err.__cause__, Preempted)
