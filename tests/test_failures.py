"""Failures that real clusters have (issue 19): memory enforced locally with escalating retries, spot
accounting, exit-code filters, partial maps and per-map concurrency. Figures: docs/RELIABILITY.md."""

from __future__ import annotations

import failure_flows as ff
import pytest

import gflow
from gflow.errors import OutOfMemory, Preempted
from gflow.executors.base import Outcome
from gflow.flows._attempts import _retry_decision
from gflow.flows._events import TaskState
from gflow.states import State


def _attempt_events(store, run_id):
    """(attempt, state, message) of the run's task-run events, in order."""
    return [(e.attempt, e.state, e.message or "") for e in store.events(run_id) if e.task_run_id]


# -- item 1 + 2: memory enforced on local://processes, escalated by the retry policy ------------------------

def test_local_oom_escalates_64_128_256_and_is_recorded(store):
    res = ff.hungry_flow.run(executor="local://processes?workers=1", return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    assert res.value == 150_000_000
    evs = _attempt_events(store, res.id)
    asked = [m for a, s, m in evs if s is State.QUEUED]
    assert asked == ["asks memory=64Mi", "asks memory=128Mi", "asks memory=256Mi"]
    retried = [m for a, s, m in evs if s is State.RETRYING]
    assert len(retried) == 2 and all(m.startswith("gflow.errors.OutOfMemory: ") for m in retried), retried
    assert "asked for 64Mi" in retried[0] and "asked for 128Mi" in retried[1]


def test_oom_without_escalation_fails_as_out_of_memory(store):
    t = ff.hungry.with_options(retries=0)

    @gflow.flow
    def once() -> int:
        return t(150_000_000)

    res = once.run(executor="local://processes?workers=1", return_run=True)
    assert res.state is State.FAILED
    assert "OutOfMemory" in str(res.error) and "64Mi" in str(res.error)


def test_the_same_call_within_its_memory_succeeds_in_a_process():
    t = ff.hungry.with_options(retries=0)

    @gflow.flow
    def small() -> int:
        return t(10_000_000)

    assert small.run(executor="local://processes?workers=1") == 10_000_000


# -- the retry policy's decisions, fed outcomes directly (no executor) ----------------------------------------

def _state(retry: gflow.Retry, resources: gflow.Resources) -> TaskState:
    task = ff.picky.with_options(retries=retry, resources=resources)
    return TaskState("r.1", "r", task, None, [])


def _failed(exc: BaseException, **info) -> Outcome:
    out = Outcome.from_exception(exc, "", None, 0.0)
    out.info = info or None
    return out


def test_escalation_is_capped_by_max_memory():
    ts = _state(gflow.Retry(5, memory_factor=4.0, max_memory="1Gi"), gflow.Resources(memory="512Mi"))
    again, changes = _retry_decision(ts, _failed(OutOfMemory("x", requested=512 << 20)))
    assert again and changes == {"memory": 1 << 30}


def test_spot_reclaims_do_not_count_and_then_run_on_demand():
    ts = _state(gflow.Retry(0, spot=2), gflow.Resources(spot=True))
    again, changes = _retry_decision(ts, _failed(Preempted("Host EC2 (instance i-1) terminated.")))
    assert again and changes == {}                      # reclaim 1 of 2: again on spot, count untouched
    ts.attempt = 2
    again, changes = _retry_decision(ts, _failed(Preempted("reclaimed")))
    assert again and changes == {"spot": False}          # reclaim 2 of 2: the next attempt runs on demand
    ts.attempt = 3
    again, _ = _retry_decision(ts, _failed(Preempted("reclaimed")))
    assert not again                                     # count=0: a third reclaim is a failure


def test_on_exit_codes_retries_only_those_codes():
    ts = _state(gflow.Retry(3, on_exit_codes=[3, 42]), gflow.Resources())
    assert _retry_decision(ts, _failed(gflow.ExecutorError("exit 42"), exit_code=42))[0]
    assert not _retry_decision(ts, _failed(gflow.ExecutorError("exit 1"), exit_code=1))[0]


@pytest.mark.parametrize("kwargs, words", [
    ({"memory_factor": 1.0}, "memory_factor"),
    ({"memory_factor": 0.5}, "greater than 1"),
    ({"on_exit_codes": ["1"]}, "integer exit codes"),
    ({"on_exit_codes": [1.5]}, "on_exit_codes"),
    ({"spot": -1}, "spot"),
])
def test_bad_retry_options_are_one_clear_line(kwargs, words):
    with pytest.raises(ValueError) as ei:
        gflow.Retry(2, **kwargs)
    assert words in str(ei.value)


def test_retry_count_is_positional():
    r = gflow.Retry(3, memory_factor=2.0, max_memory="64Gi", on_exit_codes=[137], spot=1)
    assert (r.count, r.memory_factor, r.max_memory, r.on_exit_codes, r.spot) == (3, 2.0, 64 << 30, (137,), 1)


def test_attempts_show_error_type_and_memory_in_graphql_and_runs_show(store, gflow_home):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("strawberry")
    from conftest import cli

    from gflow.server.app import create_app
    from gflow.server.testing import serve
    from gflow.store import open_store

    res = ff.hungry_flow.run(executor="local://processes?workers=1", return_run=True)
    (tr,) = store.task_runs(res.id)
    q = """query($id: ID!) { taskRun(id: $id) { attempts { attempt state errorType asked } } }"""
    with serve(create_app(open_store(store.url), close_store=True)) as url:
        r = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"id": tr.id}}, timeout=30)
    attempts = r.json()["data"]["taskRun"]["attempts"]
    assert attempts == [
        {"attempt": 1, "state": "RETRYING", "errorType": "OutOfMemory", "asked": "memory=64Mi"},
        {"attempt": 2, "state": "RETRYING", "errorType": "OutOfMemory", "asked": "memory=128Mi"},
        {"attempt": 3, "state": "SUCCEEDED", "errorType": None, "asked": "memory=256Mi"},
    ]
    shown = cli("runs", "show", res.id, "--store", store.url, env={"GFLOW_HOME": str(gflow_home)})
    assert shown.returncode == 0, shown.stderr
    assert (f"attempts of {tr.id}: 1 OutOfMemory (memory=64Mi), 2 OutOfMemory (memory=128Mi), "
            f"3 SUCCEEDED (memory=256Mi)") in shown.stdout


# -- item 5: partial maps and per-map concurrency -------------------------------------------------------------

def test_partial_map_of_10000_with_3_bad_inputs_completes(store):
    res = ff.partial_values.run(n=10_000, min_success=0.99, return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    failed = [v for v in res.value if isinstance(v, gflow.Failed)]
    assert len(res.value) == 10_000 and len(failed) == 3
    assert sorted(f.index for f in failed) == [999, 1999, 2999]
    assert all(f.error_type == "ValueError" and f.message.startswith("bad input") for f in failed)
    assert res.summary == ["map 'picky': 9,997 of 10,000 succeeded"]
    rec = store.get_run(res.id)
    assert rec.extra["maps"][0]["summary"] == "map 'picky': 9,997 of 10,000 succeeded"
    assert store.counts(res.id).get("FAILED") == 3
    by_id = {t.id: t for t in store.task_runs(res.id, state="FAILED")}
    assert {f.task_run_id for f in failed} == set(by_id)


def test_partial_map_values_flow_into_a_downstream_task():
    assert ff.partial_flow(n=3000, min_success=0.99) == sum(2 * x for x in range(3000) if x % 1000 != 999)


def test_below_min_success_the_map_fails_as_today():
    res = ff.partial_flow.run(n=100, min_success=0.99, return_run=True)  # 1 bad of 100 may fail: 1 allowed
    assert res.state is State.SUCCEEDED
    res = ff.partial_flow.run(n=2000, min_success=0.9995, return_run=True)  # 2 bad of 2000, 1 allowed
    assert res.state is State.FAILED and "bad input 1999" in str(res.error)


def test_partial_map_over_a_future_of_a_list():
    @gflow.task
    def numbers(n: int) -> list[int]:
        return list(range(n))

    @gflow.flow
    def later(n: int) -> list:
        return ff.picky.map(numbers(n), min_success=0.5).result()

    out = later(2000)
    assert [type(v).__name__ for v in out].count("Failed") == 2 and out[0] == 0


def test_partial_map_outside_a_flow_is_plain_python():
    out = ff.picky.map(range(1001), min_success=0.99)
    assert isinstance(out[999], gflow.Failed) and out[1000] == 2000
    with pytest.raises(ValueError):
        ff.picky.map(range(1001), min_success=1.0)


@pytest.mark.parametrize("kwargs, words", [
    ({"min_success": 0}, "min_success=0"), ({"min_success": 1.5}, "(0, 1]"), ({"min_success": True}, "fraction"),
    ({"max_concurrency": 0}, "max_concurrency=0"), ({"max_concurrency": 2.5}, "whole number"),
])
def test_bad_map_options_are_one_line_before_anything_is_submitted(store, kwargs, words):
    @gflow.flow
    def bad() -> list:
        return ff.picky.map(range(3), **kwargs)

    res = bad.run(return_run=True)
    assert res.state is State.FAILED and words in str(res.error) and "\n" not in str(res.error).strip()
    assert store.task_runs(res.id) == []


def test_map_max_concurrency_caps_running_elements(tmp_path):
    import os
    import threading

    folder = tmp_path / "marks"
    folder.mkdir()
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], len(os.listdir(folder)))
            stop.wait(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert ff.throttled.run(str(folder), n=300, k=50, seconds=0.02, executor="local://threads?workers=64") == 300
    finally:
        stop.set()
        sampler.join()
    assert 0 < peak[0] <= 50, peak


def test_runs_show_says_how_many_of_a_partial_map_succeeded(store, gflow_home):
    from conftest import cli

    res = ff.partial_flow.run(n=2000, min_success=0.99, return_run=True)
    shown = cli("runs", "show", res.id, "--store", store.url, env={"GFLOW_HOME": str(gflow_home)})
    assert shown.returncode == 0, shown.stderr
    assert "map          map 'picky': 1,998 of 2,000 succeeded" in shown.stdout


def test_partial_map_on_dask_whose_executor_takes_references():
    """Dask resolves references itself (speculative dispatch): a downstream call of a partial map's elements
    must still see Failed values, not wait on a result that will never exist."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as c:
        res = ff.partial_flow.run(n=1000, min_success=0.99, executor=f"dask://{c.scheduler_address}",
                                  return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    assert res.value == sum(2 * x for x in range(1000) if x != 999)
    assert res.summary == ["map 'picky': 999 of 1,000 succeeded"]


def test_retries_escalated_alike_share_one_task_so_arrays_stay_arrays():
    from gflow.flows._attempts import fail
    from gflow.flows._core import Core

    core = Core()
    task = ff.picky.with_options(retries=gflow.Retry(2, memory_factor=2.0), resources=gflow.Resources(memory="1Gi"))
    states = [TaskState(f"r.{i}", "r", task, None, []) for i in range(3)]
    for ts in states:
        ts.state = State.RUNNING
        fail(core, ts, _failed(OutOfMemory("killed", requested=1 << 30)))
    assert all(ts.state is State.RETRYING for ts in states)
    assert len({id(ts.task) for ts in states}) == 1 and states[0].task.options.resources.memory == 2 << 30


def test_on_spot_an_evicted_pod_or_lost_node_is_a_reclaim_but_not_off_spot():
    from gflow.errors import NodeFailure, PodEvicted

    on = _state(gflow.Retry(0, spot=1), gflow.Resources(spot=True))
    assert _retry_decision(on, _failed(PodEvicted("node drained"))) == (True, {"spot": False})
    on = _state(gflow.Retry(0, spot=1), gflow.Resources(spot=True))
    assert _retry_decision(on, _failed(NodeFailure("node lost"))) == (True, {"spot": False})
    off = _state(gflow.Retry(0, spot=1), gflow.Resources())
    assert _retry_decision(off, _failed(PodEvicted("memory pressure")))[0] is False
