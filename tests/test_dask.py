"""The Dask executor on one real LocalCluster (2 worker processes, 1 thread each; worker 0 declares a GPU)."""

from __future__ import annotations

import _thread
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
import dask  # noqa: E402

sys.path.append(str(Path(__file__).parent / "resources"))  # workers import tasks from here (spawned later)

import dask_tasks as T  # noqa: E402

import gflow  # noqa: E402
from gflow.errors import ConfigError, ExecutorError, TaskFailed, TaskTimeout  # noqa: E402
from gflow.executors import get_executor  # noqa: E402
from gflow.executors.base import CallDone  # noqa: E402
from gflow.executors.dask import DaskExecutor, parse_spec  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import open_store  # noqa: E402

pytestmark = pytest.mark.integration


class _GPUOnFirst(distributed.Nanny):
    """Worker 0 declares ``GPU=1``; kept in the nanny's options, so it survives a worker restart."""

    def __init__(self, *args, name=None, **kwargs):
        if name == 0:
            kwargs["resources"] = {"GPU": 1}
        super().__init__(*args, name=name, **kwargs)


@pytest.fixture(scope="module")
def cluster():
    # LocalCluster forgets a nanny whose worker is absent from the scheduler when a timer set at each
    # removal fires (``lost-worker-timeout``, 15 s); the kill loop below restarts workers every ~2 s, so
    # that timer would often land inside a restart and drop the worker for good. Nannies restart here.
    cfg = dask.config.set({"distributed.deploy.lost-worker-timeout": "1h"})
    cfg.__enter__()
    c = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                 worker_class=_GPUOnFirst, scheduler_kwargs={"allowed_failures": 0})
    try:
        yield c
    finally:
        c.close()
        cfg.__exit__(None, None, None)


@pytest.fixture(scope="module")
def client(cluster):
    with distributed.Client(cluster, set_as_default=False) as cl:
        cl.wait_for_workers(2, timeout=30)
        yield cl


@pytest.fixture
def ctx(tmp_path, monkeypatch, client):
    """A place to run flows: explicit store and artifacts under tmp, GFLOW_HOME isolated."""
    monkeypatch.setenv("GFLOW_HOME", str(tmp_path / "home"))
    client.wait_for_workers(2, timeout=30)  # a previous test may have killed one

    class Ctx:
        tmp = tmp_path
        store_url = f"sqlite:///{tmp_path}/g.db"

        def run(self, flow, *args, executor=None, **kwargs):
            ex = executor or DaskExecutor(client=client)
            try:
                return flow.run(*args, executor=ex, store=self.store_url, artifacts=str(tmp_path / "a"),
                                return_run=True, **kwargs)
            finally:
                ex.close()

        @property
        def store(self):
            return open_store(self.store_url)

    return Ctx()


# -- flows (bodies run on the driver; their tasks live in dask_tasks) ----------------------------------

@gflow.flow
def map_reduce(n: int) -> int:
    return T.total(T.inc.map(range(n)))


@gflow.flow
def diamond(x: int) -> int:
    a = T.inc(x)
    b = T.inc(a)
    c = T.add(a, b)
    return T.add(c, T.inc(c))


@gflow.flow
def flaky_flow(path: str, fails: int, retries: int) -> str:
    return T.flaky.with_options(retries=retries)(path, fails)


@gflow.flow
def upstream_fails() -> int:
    return T.inc(T.boom(1))


@gflow.flow
def single(name: str) -> object:
    return {"unpicklable_error": T.raise_unpicklable, "unpicklable_result": T.unpicklable_result}[name]()


@gflow.flow
def timed(seconds: float, timeout: float, retries: int = 0, path: str = "") -> float:
    return T.sleepy.with_options(timeout=timeout, retries=retries)(seconds, path)


@gflow.flow
def many_timed(n: int, seconds: float, timeout: float) -> list[float]:
    return T.sleepy.with_options(timeout=timeout).map([seconds] * n)


@gflow.flow
def squares(xs: list[int], path: str) -> list[int]:
    return T.cached_square.map(xs, path=path)


@gflow.flow
def placements(n: int, gpu: int, memory: str | None = None) -> list[str]:
    return T.where.with_options(resources=gflow.Resources(gpu=gpu, memory=memory)).map(range(n))


@gflow.flow
def serial_intervals(n: int, folder: str) -> list[list[float]]:
    return T.interval.map(range(n), folder=folder)


@gflow.flow
def survive(flag: str) -> int:
    return T.die_once(flag)


@gflow.flow
def slow_fanout(n: int, folder: str, seconds: float) -> list[int]:
    return T.marked_sleep.map(range(n), folder=folder, seconds=seconds)


# -- the shared engine semantics on Dask --------------------------------------------------------------

def test_map_reduce_is_one_client_map_per_fanout(ctx, client, monkeypatch):
    calls = []
    real_map = client.map

    def counting_map(fn, *iterables, **kw):
        calls.append(len(iterables[0]))
        return real_map(fn, *iterables, **kw)

    submits = []
    real_submit = client.submit

    def counting_submit(fn, *args, **kw):
        submits.append(len(args))
        return real_submit(fn, *args, **kw)

    monkeypatch.setattr(client, "map", counting_map)
    monkeypatch.setattr(client, "submit", counting_submit)
    r = ctx.run(map_reduce, 200)
    assert r.state is State.SUCCEEDED, r.error
    assert r.value == sum(range(1, 201))
    # the fan-out is one round-trip; the reduce is submitted at once with the 200 futures as its inputs
    # (payload + ref ids + 200 futures), or, if the fan-out finished first, as an ordinary one-call map
    assert calls in ([200], [200, 1])
    assert submits == ([202] if calls == [200] else [])
    assert ctx.store.counts(r.id) == {"SUCCEEDED": 201}
    runs = ctx.store.task_runs(r.id, task="inc")
    assert all(tr.handle.startswith("inc-") and tr.handle.endswith("-a1") for tr in runs)


def test_dependencies(ctx):
    r = ctx.run(diamond, 1)
    # a=2, b=3, c=5, inc(c)=6 -> 11
    assert r.state is State.SUCCEEDED and r.value == 11
    runs = ctx.store.task_runs(r.id)
    assert len(runs) == 5 and all(tr.state is State.SUCCEEDED for tr in runs)
    last = runs[-1]
    assert last.name == "add" and len(last.upstream) == 2


def test_retries_until_success(ctx):
    r = ctx.run(flaky_flow, str(ctx.tmp / "count"), 2, 3)
    assert r.state is State.SUCCEEDED and r.value == "ok after 3"
    (tr,) = ctx.store.task_runs(r.id)
    assert tr.attempt == 3
    retrying = [e for e in ctx.store.events(r.id) if e.state is State.RETRYING]
    assert len(retrying) == 2 and "RuntimeError: flaky failure 1" in retrying[0].message


def test_retries_exhausted(ctx):
    r = ctx.run(flaky_flow, str(ctx.tmp / "count"), 5, 1)
    assert r.state is State.FAILED
    assert isinstance(r.error, TaskFailed)
    assert r.error.attempts == 2 and r.error.error_type == "RuntimeError"
    assert "flaky failure 2" in r.error.error_message
    assert (ctx.tmp / "count").read_text() == "xx"


def test_upstream_failure(ctx):
    r = ctx.run(upstream_fails)
    assert r.state is State.FAILED
    # the flow's error names the task that failed (not the downstream task that never ran)
    assert isinstance(r.error, TaskFailed) and not isinstance(r.error, gflow.UpstreamFailed)
    assert r.error.task == "boom"
    assert "ValueError: boom 1" in str(r.error) and "raise ValueError" in r.error.traceback
    by_name = {tr.name: tr for tr in ctx.store.task_runs(r.id)}
    assert by_name["boom"].state is State.FAILED
    assert by_name["inc"].state is State.FAILED and "UpstreamFailed" in by_name["inc"].error


def test_unpicklable_exception_keeps_type_message_and_traceback(ctx):
    r = ctx.run(single, "unpicklable_error")
    assert r.state is State.FAILED
    assert r.error.error_type == "dask_tasks.LockedError"
    assert r.error.error_message == "cannot travel"
    assert "raise LockedError" in r.error.traceback


def test_unserializable_result_fails_naming_the_task(ctx):
    r = ctx.run(single, "unpicklable_result")
    assert r.state is State.FAILED
    assert r.error.task == "unpicklable_result"
    assert "could not be brought back from the Dask worker" in r.error.error_message


def test_timeout_fails_the_task(ctx):
    t0 = time.monotonic()
    r = ctx.run(timed, 2.0, 0.4)
    assert r.state is State.FAILED
    assert r.error.error_type.endswith("TaskTimeout")
    assert isinstance(r.error.__cause__, TaskTimeout)
    assert time.monotonic() - t0 < 1.8  # did not wait for the 2 s sleep


def test_timeout_then_retry_succeeds(ctx):
    r = ctx.run(timed, 2.0, 0.5, 1, str(ctx.tmp / "count"))
    assert r.state is State.SUCCEEDED and r.value == 0.0
    (tr,) = ctx.store.task_runs(r.id)
    assert tr.attempt == 2


def test_timeout_counts_from_start_not_from_queueing(ctx):
    # 6 calls of 0.5 s on 2 single-thread workers: the last ones wait ~1 s in the queue, which
    # must not count against their 0.9 s timeout (the worker reports each start).
    r = ctx.run(many_timed, 6, 0.5, 0.9)
    assert r.state is State.SUCCEEDED, r.error
    assert r.value == [0.5] * 6


def test_cache_across_runs(ctx):
    path = str(ctx.tmp / "count")
    first = ctx.run(squares, [1, 2, 3], path)
    second = ctx.run(squares, [1, 2, 3, 4], path)
    assert first.value == [1, 4, 9] and second.value == [1, 4, 9, 16]
    assert ctx.store.counts(second.id) == {"CACHED": 3, "SUCCEEDED": 1}
    assert Path(path).read_text() == "xxxx"  # 3 + 1 calls, none repeated


def test_max_concurrency(ctx):
    folder = ctx.tmp / "iv"
    folder.mkdir()
    r = ctx.run(serial_intervals, 4, str(folder))
    assert r.state is State.SUCCEEDED, r.error
    spans = sorted(r.value)
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:])), spans  # never two at once


# -- resources --------------------------------------------------------------------------------------

def _gpu_worker(client) -> str:
    workers = client.scheduler_info(n_workers=-1)["workers"]
    (addr,) = [a for a, w in workers.items() if w.get("resources", {}).get("GPU")]
    return addr


def test_gpu_tasks_only_on_gpu_workers(ctx, client):
    gpu = _gpu_worker(client)
    r = ctx.run(placements, 8, 1)
    assert r.state is State.SUCCEEDED, r.error
    assert set(r.value) == {gpu}
    r = ctx.run(placements, 40, 0)
    assert r.state is State.SUCCEEDED
    assert len(set(r.value)) == 2  # plain tasks use both workers


def test_memory_is_ignored_where_no_worker_declares_it(ctx):
    r = ctx.run(placements, 2, 0, "64Gi")
    assert r.state is State.SUCCEEDED, r.error


def test_own_cluster_declares_memory_fails_fast_on_missing_gpu_and_closes():
    ex = get_executor("dask://?n_workers=1&threads_per_worker=1&memory_limit=1GiB")
    assert isinstance(ex, DaskExecutor)
    cluster = ex._cluster
    try:
        (w,) = ex.client.scheduler_info(n_workers=-1)["workers"].values()
        assert w["resources"] == {"MEMORY": 2**30}
        events = []
        ex.start(events.append)
        from gflow.executors.base import Call

        gpu_task = T.where.with_options(resources=gflow.Resources(gpu=1))
        big = T.where.with_options(resources=gflow.Resources(memory="512Mi"))
        ex.submit([Call("r.1", "r", gpu_task, (0,), {}), Call("r.2", "r", big, (0,), {})])
        deadline = time.monotonic() + 20
        while len([e for e in events if isinstance(e, CallDone)]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        done = {e.call_id: e.outcome for e in events if isinstance(e, CallDone)}
        assert not done["r.1"].ok and done["r.1"].error_type == "gflow.errors.ExecutorError"
        assert "no Dask worker offers resources {'GPU': 1}" in done["r.1"].error_message
        assert done["r.2"].ok and done["r.2"].value.startswith("tcp://")
    finally:
        ex.close()
        ex.close()  # idempotent
    assert cluster.status.name == "closed"


# -- cancel, dying workers, bad addresses -------------------------------------------------------------

def _scheduler_keys(client, run_id: str) -> list[str]:
    return client.run_on_scheduler(lambda dask_scheduler: [str(k) for k in dask_scheduler.tasks if run_id in str(k)])


def test_cancel_run_cancels_dask_futures(ctx, client):
    folder = ctx.tmp / "m"
    folder.mkdir()
    seen: dict = {}

    def observer(run_id, engine):
        seen["run"] = run_id

        def cancel_soon():
            while len(list(folder.iterdir())) < 2:
                time.sleep(0.02)
            seen["keys_before"] = _scheduler_keys(client, run_id)
            engine.cancel(run_id, "cancelled by test")

        threading.Thread(target=cancel_soon, daemon=True).start()
        return None

    t0 = time.monotonic()
    r = ctx.run(slow_fanout, 8, str(folder), 1.5, observer=observer)
    assert time.monotonic() - t0 < 8 * 1.5 / 2  # did not run the fan-out to the end
    assert r.state is State.CANCELLED
    assert ctx.store.get_run(r.id).state is State.CANCELLED
    assert ctx.store.counts(r.id) == {"CANCELLED": 8}
    assert len(seen["keys_before"]) == 8
    time.sleep(2.0)  # the two running calls finish; the queued ones never start
    assert len(list(folder.iterdir())) <= 4
    assert _scheduler_keys(client, r.id) == []


def test_ctrl_c_cancels_and_marks_the_run_cancelled(ctx, client):
    folder = ctx.tmp / "m"
    folder.mkdir()

    def interrupt_when_started():
        deadline = time.monotonic() + 20
        while len(list(folder.iterdir())) < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_started, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        ctx.run(slow_fanout, 6, str(folder), 1.5)
    (run,) = ctx.store.list_runs()
    assert run.state is State.CANCELLED and "Ctrl-C" in run.error
    assert ctx.store.counts(run.id) == {"CANCELLED": 6}
    deadline = time.monotonic() + 5
    while _scheduler_keys(client, run.id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _scheduler_keys(client, run.id) == []


def test_executor_cancel_on_handles(ctx, client):
    from gflow.executors.base import Call

    ex = DaskExecutor(client=client)
    events = []
    ex.start(events.append)
    calls = [Call(f"c.{i}", "c", T.sleepy, (1.0,), {}) for i in range(6)]
    handles = ex.submit(calls)
    assert ex.capacity() == 1000 - 6
    assert [ex.describe_handle(h) for h in handles] == [f"sleepy-c.{i}-a1" for i in range(6)]
    ex.cancel(handles)
    assert all(s.state is State.CANCELLED for s in ex.poll(handles))
    assert ex.capacity() == 1000
    time.sleep(1.5)
    assert not [e for e in events if isinstance(e, CallDone)]  # cancelled calls are not reported as done
    ex.close()
    assert client.status == "running"  # a client we were given is never closed


def test_killed_worker_is_retried_per_policy(ctx, client):
    flag = ctx.tmp / "died"
    r = ctx.run(survive, str(flag))
    assert r.state is State.SUCCEEDED, r.error
    assert flag.exists() and r.value != int(flag.read_text())  # ran again in another process
    (tr,) = ctx.store.task_runs(r.id)
    assert tr.attempt == 2
    (retry,) = [e for e in ctx.store.events(r.id) if e.state is State.RETRYING]
    assert "KilledWorker" in retry.message
    client.wait_for_workers(2, timeout=30)


def test_killed_worker_without_retries_fails_clearly(ctx, client):
    @gflow.flow
    def no_retry(flag: str) -> int:
        return T.die_once.with_options(retries=0)(flag)

    r = ctx.run(no_retry, str(ctx.tmp / "died"))
    assert r.state is State.FAILED
    assert r.error.error_type == "distributed.scheduler.KilledWorker"
    client.wait_for_workers(2, timeout=30)


def test_task_workers_cannot_import_fails_fast_with_the_reason(ctx):
    @gflow.task
    def nested(x: int) -> int:
        return x

    @gflow.flow
    def uses_nested() -> int:
        return nested(1)

    t0 = time.monotonic()
    r = ctx.run(uses_nested)
    assert r.state is State.FAILED and time.monotonic() - t0 < 5
    assert r.error.error_type == "gflow.errors.ExecutorError"
    assert "defined inside a function" in r.error.error_message


def test_dask_spec_starts_and_closes_its_own_cluster(ctx, monkeypatch):
    made = []
    real = DaskExecutor.from_spec.__func__

    def spy(cls, spec):
        made.append(real(cls, spec))
        return made[-1]

    monkeypatch.setattr(DaskExecutor, "from_spec", classmethod(spy))
    r = map_reduce.run(20, executor="dask://?n_workers=1", store=ctx.store_url, artifacts=str(ctx.tmp / "a"),
                       return_run=True)
    assert r.state is State.SUCCEEDED and r.value == sum(range(1, 21))
    assert ctx.store.get_run(r.id).executor == "dask://?n_workers=1"
    (ex,) = made
    assert ex._cluster.status.name == "closed" and ex.client.status == "closed"


def test_unreachable_scheduler_is_a_clear_error_before_anything_runs(ctx):
    t0 = time.monotonic()
    with pytest.raises(ExecutorError, match=r"127\.0\.0\.1:1"):
        map_reduce.run(3, executor="dask://127.0.0.1:1", store=ctx.store_url, artifacts=str(ctx.tmp / "a"))
    assert time.monotonic() - t0 < 8
    assert ctx.store.list_runs() == []


def test_spec_parsing():
    assert parse_spec("dask") == {}
    assert parse_spec("dask://") == {}
    assert parse_spec("dask://?n_workers=2&threads_per_worker=1") == {"n_workers": 2, "threads_per_worker": 1}
    assert parse_spec("dask://10.0.0.5:8786?timeout=5") == {"address": "tcp://10.0.0.5:8786", "timeout": 5.0}
    assert parse_spec("dask://tls://sched:8786") == {"address": "tls://sched:8786"}
    with pytest.raises(ConfigError, match="unknown option 'workers'"):
        parse_spec("dask://?workers=2")
    with pytest.raises(ConfigError, match="not a number"):
        parse_spec("dask://?n_workers=two")
    with pytest.raises(ConfigError, match="only apply to the local cluster"):
        parse_spec("dask://h:8786?n_workers=2")


# -- scale -----------------------------------------------------------------------------------------

class _PeakExecutor(DaskExecutor):
    peak = 0

    def submit(self, calls):
        handles = super().submit(calls)
        self.peak = max(self.peak, self._in_flight)
        return handles


@pytest.mark.slow
def test_10k_map_reduce_tracked_in_sqlite(ctx, client):
    ex = _PeakExecutor(client=client)
    r = ctx.run(map_reduce, 10_000, executor=ex)
    assert r.state is State.SUCCEEDED, r.error
    assert r.value == sum(range(1, 10_001))
    assert ctx.store.counts(r.id) == {"SUCCEEDED": 10_001}
    assert 500 <= ex.peak <= 1000  # backpressure: never more than max(1000, 200 * workers) on the cluster


@gflow.flow
def one_long_sleep(seconds: float) -> float:
    return T.sleepy(seconds)


def test_long_task_without_timeout_shows_running_live(ctx):
    """The start watcher asks the scheduler once a second: RUNNING is recorded before the task ends."""
    box = {}
    th = threading.Thread(target=lambda: box.update(r=ctx.run(one_long_sleep, 3.0)))
    th.start()
    seen_running = False
    deadline = time.time() + 10
    while time.time() < deadline and th.is_alive():
        time.sleep(0.2)
        runs = ctx.store.list_runs()
        if runs and ctx.store.counts(runs[0].id).get("RUNNING"):
            seen_running = True
            break
    th.join(30)
    assert seen_running
    r = box["r"]
    assert r.state is State.SUCCEEDED and r.value == 3.0
    (tr,) = ctx.store.task_runs(r.id)
    assert tr.started is not None and tr.ended - tr.started >= 1.0  # recorded while it ran, not at the end


@pytest.mark.slow
def test_killing_a_dask_worker_mid_task_loses_nothing(ctx, client):
    """SIGKILL a worker process while calls run, TRIALS times: the calls it held are retried, nothing is lost or
    recorded twice (figures: docs/RELIABILITY.md)."""
    import os
    import random
    import signal

    trials = int(os.environ.get("GFLOW_FAULT_TRIALS", "20"))
    n = 4
    lost = dup = retried = 0
    for _ in range(trials):
        client.wait_for_workers(2, timeout=180)  # the nanny replaces a killed worker (slow on a loaded machine)

        def kill_one():
            time.sleep(0.4 + random.random() * 0.4)
            busy = [addr for addr, keys in client.processing().items() if keys]
            pids = client.run(os.getpid, workers=busy) if busy else {}  # a worker process running a call
            if pids:
                os.kill(random.choice(list(pids.values())), signal.SIGKILL)

        th = threading.Thread(target=kill_one)
        th.start()
        r = ctx.run(T.killable_map, n, 0.6)
        th.join()
        assert r.state is State.SUCCEEDED, r.error
        assert r.value == sum(i * i for i in range(n))
        trs = [t for t in ctx.store.task_runs(r.id) if t.name == "killable_sleep"]
        lost += sum(1 for t in trs if t.state is not State.SUCCEEDED)
        done = {}
        for e in ctx.store.events(r.id):
            if e.task_run_id and e.state is State.SUCCEEDED:
                done[e.task_run_id] = done.get(e.task_run_id, 0) + 1
        dup += sum(c - 1 for c in done.values())
        retried += sum(1 for t in trs if t.attempt > 1)
    client.wait_for_workers(2, timeout=180)
    assert (lost, dup) == (0, 0)
    assert retried >= trials // 2
    print(f"\nDask worker SIGKILL: {trials} trials, lost 0, duplicated 0, retried {retried}")
