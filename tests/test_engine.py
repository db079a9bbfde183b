"""Engine semantics, run on every executor: dependencies, map, retries, timeouts, upstream failure,
caching, resume, subflows, concurrency limits, bad input."""

import time

import flows_basic as fb
import pytest
from pydantic import ValidationError

import gflow
from gflow.objects import Protein, Score
from gflow.states import State


def test_task_outside_flow_is_plain_call():
    assert fb.inc(1) == 2
    assert fb.inc.map([1, 2, 3]) == [2, 3, 4]


def test_map_reduce(executor, store):
    res = fb.map_reduce.run(50, executor=executor, return_run=True)
    assert res.state is State.SUCCEEDED
    assert res.value == sum(range(1, 51))
    assert store.counts(res.id) == {"SUCCEEDED": 51}
    run = store.get_run(res.id)
    assert run.state is State.SUCCEEDED and run.executor == executor
    # every transition is an event: PENDING, QUEUED, RUNNING, SUCCEEDED per task, plus run events
    task_events = [e for e in store.events(res.id) if e.task_run_id]
    assert len(task_events) == 51 * 4
    per_task = {}
    for e in task_events:
        per_task.setdefault(e.task_run_id, []).append(e.state)
    assert all(v == [State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED] for v in per_task.values())


def test_map_index_and_dag_recorded(store):
    res = fb.map_reduce.run(3, executor="local", return_run=True)
    trs = store.task_runs(res.id)
    incs = [t for t in trs if t.name == "inc"]
    assert sorted(t.map_index for t in incs) == [0, 1, 2]
    (tot,) = [t for t in trs if t.name == "total"]
    assert sorted(tot.upstream) == sorted(t.id for t in incs)
    assert tot.task.endswith("flows_basic:total")


def test_chain_and_nested_futures(executor):
    assert fb.chain.run(7, executor=executor) == 7
    # a={'a': 2, 'b': 3}; extra=[2, 4]
    assert fb.nested_futures.run(executor=executor) == 2 + 3 + 2 + 4


def test_result_for_control_flow(executor):
    assert fb.control_flow.run(10, executor=executor) == "big"
    assert fb.control_flow.run(1, executor=executor) == "small"


def test_retries_then_success(executor, store, work):
    res = fb.flaky_flow.run(work, 2, executor=executor, return_run=True)
    assert res.state is State.SUCCEEDED and res.value == "ok after 3"
    (tr,) = store.task_runs(res.id)
    assert tr.attempt == 3 and tr.state is State.SUCCEEDED
    states = [(e.state, e.attempt) for e in store.events(res.id) if e.task_run_id]
    assert (State.RETRYING, 1) in states and (State.RETRYING, 2) in states
    assert states[-1] == (State.SUCCEEDED, 3)


def test_retries_exhausted_fail_with_original_traceback(executor, store, work):
    with pytest.raises(gflow.TaskFailed) as ei:
        fb.flaky_flow.run(work, 5, executor=executor)
    e = ei.value
    assert e.task == "flaky" and e.attempts == 3
    assert "RuntimeError" in str(e) and "flaky failure 3" in str(e)
    assert 'raise RuntimeError(f"flaky failure {n}")' in e.traceback
    assert fb.count(work, "flaky") == 3
    run = store.get_run(e.run_id)
    assert run.state is State.FAILED and "flaky" in run.error


def test_retry_only_on_listed_exceptions(executor, work):
    with pytest.raises(gflow.TaskFailed, match="not retryable"):
        fb.picky_flow.run(work, executor=executor)
    assert fb.count(work, "picky") == 1


@pytest.mark.parametrize("executor", ["local", "local://processes?workers=2"])
def test_timeout_fails_task_and_retries(executor, store):
    t0 = time.monotonic()
    res = fb.sleepy_flow.run(3.0, executor=executor, return_run=True)
    assert time.monotonic() - t0 < 2.9
    assert res.state is State.FAILED
    assert isinstance(res.error, gflow.TaskFailed) and "TaskTimeout" in str(res.error)
    (tr,) = store.task_runs(res.id)
    assert tr.attempt == 2 and tr.state is State.FAILED  # timeout=0.5, retries=1


def test_upstream_failure_and_independent_branch(executor, store, work):
    res = fb.upstream_failure.run(work, executor=executor, return_run=True)
    assert res.state is State.FAILED
    err = res.error
    assert isinstance(err, gflow.TaskFailed) and err.task == "boom"
    assert "boom on 1" in str(err) and 'raise ValueError(f"boom on {x}")' in str(err)
    by_name = {t.name: t for t in store.task_runs(res.id)}
    assert by_name["boom"].state is State.FAILED
    assert by_name["inc"].state is State.FAILED and by_name["inc"].error.startswith("UpstreamFailed")
    assert by_name["add"].state is State.FAILED and by_name["add"].error.startswith("UpstreamFailed")
    assert by_name["slow_ok"].state is State.SUCCEEDED  # the independent branch finished
    assert fb.count(work, "slow_ok") == 1
    assert by_name["inc"].started is None  # never ran


def test_upstream_failed_future_result_raises():
    @gflow.flow
    def f():
        bad = fb.boom(2)
        down = fb.inc(bad)
        try:
            down.result()
        except gflow.UpstreamFailed as e:
            return f"upstream: {e.error_message}"
        return "no error"

    with pytest.raises(gflow.TaskFailed):  # the flow still fails: a task failed
        f.run(executor="local")


def test_cache_across_runs(executor, store, work):
    assert fb.cached_flow.run(work, [1, 2, 3], executor=executor) == [1, 4, 9]
    res = fb.cached_flow.run(work, [1, 2, 3, 4], executor=executor, return_run=True)
    assert res.value == [1, 4, 9, 16]
    states = sorted(t.state.value for t in store.task_runs(res.id))
    assert states == ["CACHED", "CACHED", "CACHED", "SUCCEEDED"]
    assert [fb.count(work, f"square-{x}") for x in (1, 2, 3, 4)] == [1, 1, 1, 1]


def test_cache_key_depends_on_version(work):
    fb.cached_flow.run(work, [5], executor="inline")
    v2 = fb.cached_square.with_options(version="v2")

    @gflow.flow
    def f():
        return v2(work, 5)

    assert f.run(executor="inline") == 25
    assert fb.count(work, "square-5") == 2


def test_cache_off_recomputes(work):
    for _ in range(2):
        fb.resumable.run(work, 2, executor="inline", return_run=True)
    assert fb.count(work, "record-0") == 2


def test_resume_reuses_finished_tasks(executor, store, work):
    first = fb.resumable.run(work, 5, executor=executor, return_run=True)
    assert first.state is State.FAILED and "gate closed" in str(first.error)
    assert [fb.count(work, f"record-{i}") for i in range(5)] == [1] * 5
    (open(f"{work}/allow", "w")).close()  # the user fixes the problem
    second = fb.resumable.run(work, 5, executor=executor, resume_from=first.id, return_run=True)
    assert second.state is State.SUCCEEDED and second.value == sum(range(5))
    assert [fb.count(work, f"record-{i}") for i in range(5)] == [1] * 5  # none recomputed
    counts = store.counts(second.id)
    assert counts == {"CACHED": 5, "SUCCEEDED": 1}
    assert store.get_run(second.id).resumed_from == first.id
    assert store.get_run(first.id).state is State.FAILED  # the old run is left as it was


def test_subflows(executor, store):
    res = fb.outer.run(1, executor=executor, return_run=True)
    assert res.value == (2 + 10) + (3 + 10)
    children = [r for r in store.list_runs() if r.parent_run == res.id]
    assert len(children) == 2 and all(r.flow == "inner" and r.state is State.SUCCEEDED for r in children)
    assert sum(store.counts(c.id).get("SUCCEEDED", 0) for c in children) == 4
    assert store.counts(res.id) == {"SUCCEEDED": 1}


def test_pydantic_objects_flow(executor):
    p = Protein(sequence="MKTAYIAK", name="p")
    scores = fb.protein_flow.run(p, executor=executor)
    assert [s.value for s in scores] == [8.0, 8.0, 8.0] and all(isinstance(s, Score) for s in scores)


@pytest.mark.parametrize("executor", ["local"])
def test_max_concurrency(executor):
    fb.peak_and_reset()
    assert fb.limited_flow.run(12, executor=executor) == list(range(12))
    assert fb.peak_and_reset() == 2


def test_unserializable_argument_named(executor):
    with pytest.raises(gflow.SerializationError, match=r"task 'takes_opaque' argument 'o'.*Opaque"):
        fb.opaque_flow.run(False, executor=executor)
    assert fb.opaque_flow.run(True, executor="local") == 3


def test_wrong_argument_type_before_submit(store):
    with pytest.raises(gflow.InvalidArguments, match=r"task 'typed': argument 'n'"):
        fb.bad_call_flow.run(executor="local")
    (run,) = store.list_runs()
    assert run.state is State.FAILED and store.counts(run.id) == {}  # nothing was submitted


def test_invalid_flow_params_store_nothing(store):
    with pytest.raises(gflow.InvalidArguments, match="parent"):
        fb.protein_flow.run("MK1T", executor="local")
    with pytest.raises(gflow.InvalidArguments):
        fb.map_reduce.run("ten", executor="local")
    with pytest.raises(gflow.InvalidArguments, match="unexpected keyword"):
        fb.map_reduce.run(nope=1, executor="local")
    assert store.list_runs() == []


def test_invalid_protein_names_residue():
    with pytest.raises(Exception, match=r"invalid residue .1. at position 3"):
        Protein(sequence="MK1T")


def test_unknown_executor_lists_known():
    with pytest.raises(gflow.ConfigError, match=r"unknown executor 'nope'.*local"):
        fb.map_reduce.run(2, executor="nope")


def test_flow_return_run_and_ids(store):
    res = fb.map_reduce.run(2, executor="local", return_run=True, tags=["exp-1"])
    assert res.id and store.get_run(res.id).tags == ["exp-1"]
    assert [r.id for r in store.list_runs(tag="exp-1")] == [res.id]
    assert store.get_run(res.id[:-2]).id == res.id  # unique prefixes are accepted


def test_body_exception_fails_run_and_propagates(store):
    @gflow.flow
    def f():
        fb.inc(1)
        raise KeyError("in body")

    with pytest.raises(KeyError):
        f.run(executor="local")
    (run,) = store.list_runs()
    assert run.state is State.FAILED and "KeyError" in run.error
    assert store.counts(run.id) == {"SUCCEEDED": 1}  # the submitted task still finished


def test_large_and_array_results_go_to_artifacts(gflow_home):
    np = pytest.importorskip("numpy")

    @gflow.task
    def big(n: int):
        return np.arange(n, dtype=np.float32)

    @gflow.task
    def s(a) -> float:
        return float(a.sum())

    @gflow.flow
    def f(n: int):
        return s(big(n))

    res = f.run(100_000, executor="local", return_run=True)
    assert res.value == float(np.arange(100_000, dtype=np.float32).sum())
    blobs = list((gflow_home / "artifacts").rglob("*"))
    assert any(p.is_file() and p.stat().st_size >= 400_000 for p in blobs)


def test_with_options_and_signature():
    import inspect

    t = fb.flaky.with_options(retries=5, timeout=3)
    assert t.options.retries.count == 5 and t.options.timeout == 3
    assert fb.flaky.options.retries.count == 2  # the original is unchanged
    assert list(inspect.signature(fb.add).parameters) == ["x", "y"]
    with pytest.raises(ValidationError):
        fb.inc.with_options(retries=-1)
    with pytest.raises(ValidationError):
        gflow.task(timeout=0)(lambda: 1)


def test_map_over_a_future(executor, store):
    res = fb.map_over_future.run(6, executor=executor, return_run=True)
    assert res.value == 3 * sum(range(6))
    trs = store.task_runs(res.id)
    names = sorted(t.name for t in trs)
    assert names.count("scale") == 6 and "scale.map" in names
    mapnode = next(t for t in trs if t.name == "scale.map")
    assert mapnode.state is State.SUCCEEDED and mapnode.task == "gflow:map"
    (tot,) = [t for t in trs if t.name == "total"]
    assert tot.upstream == [mapnode.id]
    # each element keeps the edge to the call whose list it was fanned out over (issue 22: no orphan nodes)
    (src,) = [t for t in trs if t.id in mapnode.upstream]
    (k,) = [t for t in trs if t.name == "inc"]
    assert src.name == "make_list"  # the list fanned out over, and the common argument k
    assert all(t.upstream == [src.id, k.id] for t in trs if t.name == "scale")
    assert fb.map_over_future.run(0, executor=executor) == 0  # an empty fan-out


@pytest.mark.parametrize("kind, message", [
    ("not-iterable", "not iterable"),
    ("zip", "zip()"),
])
def test_map_over_a_future_bad_values(kind, message, store):
    res = fb.map_over_future_bad.run(kind, executor="local", return_run=True)
    assert res.state is State.FAILED and message in str(res.error)


def test_map_over_a_future_child_failure(executor, store):
    @gflow.flow
    def f():
        ys = fb.scale.map(fb.make_list(3), k=1)           # succeeds
        bad = fb.scale.map(fb.signed_list(), k=2)        # one child of the fan-out fails
        return fb.total(ys), fb.total(bad)

    res = f.run(executor=executor, return_run=True)
    assert res.state is State.FAILED and "negative" in str(res.error)
    maps = [t for t in store.task_runs(res.id) if t.name == "scale.map"]
    assert sorted(t.state.value for t in maps) == ["FAILED", "SUCCEEDED"]
    failed_map = next(t for t in maps if t.state is State.FAILED)
    assert failed_map.error.startswith("UpstreamFailed")
    totals = [t for t in store.task_runs(res.id) if t.name == "total"]
    assert sorted(t.state.value for t in totals) == ["FAILED", "SUCCEEDED"]


def test_cancel_from_outside_stops_the_run(store, work):
    """`gflow runs cancel` (or the server) marks the run; the driver cancels its calls within ~1 s."""
    import threading

    box = {}
    th = threading.Thread(target=lambda: box.update(res=fb.killable.run(work, 60, executor="local://threads?workers=2",
                                                                          return_run=True)))
    th.start()
    deadline = time.time() + 20
    while time.time() < deadline and not (store.list_runs() and store.counts(store.list_runs()[0].id).get("SUCCEEDED")):
        time.sleep(0.05)
    run_id = store.list_runs()[0].id
    t0 = time.time()
    gflow.cancel_run(run_id, reason="test says stop")
    th.join(20)
    assert not th.is_alive() and time.time() - t0 < 5
    res = box["res"]
    assert res.state is State.CANCELLED and isinstance(res.error, gflow.Cancelled)
    run = store.get_run(run_id)
    assert run.state is State.CANCELLED and "test says stop" in run.error
    counts = store.counts(run_id)
    assert counts.get("CANCELLED", 0) > 0 and counts.get("SUCCEEDED", 0) < 60
    assert set(counts) <= {"SUCCEEDED", "CANCELLED"}


def test_lineage_of_objects(store):
    p = Protein(sequence="MKTAYIAK", name="p")
    scores = fb.protein_flow.run(p, n=2, executor="local")
    s0 = scores[0]
    lin = store.lineage(s0.content_id)
    # both mutants have length 8: the same Score (same content id) came from two task runs
    producers = lin["produced_by"]
    assert [t.name for t in producers] == ["score_len", "score_len"]
    mutants = {p.mutate("M1A").content_id, p.mutate("M1G").content_id}
    assert set(lin["inputs"]) == mutants
    for t in producers:
        ins = store.objects_of(t.id)
        assert ins["outputs"] == [s0.content_id] and len(ins["inputs"]) == 1 and ins["inputs"][0] in mutants
    consumer = store.lineage(p.mutate("M1A").content_id)["consumed_by"]
    assert len(consumer) == 1 and consumer[0].name == "score_len"
    assert store.lineage("sha256:" + "0" * 64) == {"produced_by": [], "inputs": [], "consumed_by": []}


def test_flow_error_names_the_root_task_not_the_victim(executor):
    @gflow.flow
    def f():
        return fb.inc(fb.boom(3))  # the returned future is the downstream victim

    with pytest.raises(gflow.TaskFailed) as ei:
        f.run(executor=executor)
    assert ei.value.task == "boom" and not isinstance(ei.value, gflow.UpstreamFailed)
    assert "boom on 3" in str(ei.value) and 'raise ValueError(f"boom on {x}")' in str(ei.value)


def test_subflow_value_and_failure(store):
    @gflow.flow
    def child(x: int) -> int:
        return fb.boom(x) if x < 0 else fb.inc(x)

    @gflow.flow
    def parent(x: int) -> int:
        return child(x) * 2  # a called subflow gives its value

    assert parent.run(4, executor="local") == 10
    with pytest.raises(gflow.TaskFailed, match="boom on -1"):
        parent.run(-1, executor="local")
    failed_child = [r for r in store.list_runs(flow="child") if r.state is State.FAILED]
    assert len(failed_child) == 1 and failed_child[0].parent_run


def test_process_pool_refuses_unimportable_task_clearly(store):
    @gflow.task
    def local_task(x: int) -> int:
        return x

    @gflow.flow
    def f():
        return local_task(1)

    res = f.run(executor="local://processes?workers=1", return_run=True)
    assert res.state is State.FAILED
    assert "defined inside a function" in str(res.error) and "module level" in str(res.error)
    assert fb.map_reduce.run(3, executor="local://processes?workers=1") == 6  # the pool was not broken


def test_a_waiter_is_woken_by_its_own_future_not_by_every_resolution(monkeypatch, store):
    """The flow's thread waiting for the end of a chain of 300 calls: woken when that future resolves (a few
    times at most), not once per link (it then took the GIL from the engine at every step of the chain)."""
    import threading

    from gflow.flows import _engine

    waits = {"n": 0}

    class CountingCondition(threading.Condition):
        def wait(self, timeout=None):
            waits["n"] += 1
            return super().wait(timeout)

    orig = _engine.Engine.__init__

    def init(self, *args, **kwargs):
        orig(self, *args, **kwargs)
        self._cond = CountingCondition()

    monkeypatch.setattr(_engine.Engine, "__init__", init)
    res = fb.chain.run(300, executor="local", return_run=True)
    assert res.value == 300 and store.counts(res.id) == {"SUCCEEDED": 300}
    assert waits["n"] <= 10, f"the waiting thread went to sleep {waits['n']} times for one result"


def test_an_empty_map_on_an_array_backend_is_an_empty_list(store):
    """An array backend gets a fan-out as one batch; a fan-out of nothing is no batch (it crashed the flow)."""
    import dataclasses

    from gflow.executors.local import LocalExecutor

    @gflow.flow
    def fan(xs: list[int]) -> list[int]:
        return fb.inc.map(xs)

    ex = LocalExecutor()
    ex.capabilities = dataclasses.replace(ex.capabilities, array_jobs=True)
    assert fan.run([], executor=ex) == []
    assert fan.run([1, 2], executor=ex) == [2, 3]
