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
