"""``@gflow.warm`` (per-process values: one load under concurrency, LRU, errors not kept, never serialized,
the loader's code in the cache key) and ``batch_size`` tasks (lists in, one result per element, the
element-by-element fallback, validation) and ``per_job`` (bad values refused, packed workers)."""

from __future__ import annotations

import os
import pickle
import sys
import threading
from pathlib import Path

import pytest

import gflow
from gflow.errors import BatchLengthMismatch, InvalidArguments
from gflow.states import State

sys.path.insert(0, str(Path(__file__).parent / "resources"))
import warm_tasks  # noqa: E402


def test_eight_threads_asking_at_once_load_once():
    release, loads = threading.Event(), []

    @gflow.warm
    def slow(name: str) -> object:
        loads.append(name)
        release.wait(5)
        return object()

    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(slow("m"))) for _ in range(8)]
    for t in threads:
        t.start()
    release.set()
    for t in threads:
        t.join(5)
    assert loads == ["m"] and len(got) == 8 and len({id(v) for v in got}) == 1
    assert slow("m") is got[0] and slow.loads == 1
    slow("other")
    assert slow.loads == 2 and slow.cached() == 2  # keyed by arguments


def test_max_items_evicts_the_least_recently_used():
    loads = []

    @gflow.warm(max_items=2)
    def load(name: str) -> str:
        loads.append(name)
        return name.upper()

    load("a"), load("b"), load("a"), load("c")  # b is the least recently used when c arrives
    assert load.cached() == 2
    load("a")
    load("b")
    assert loads == ["a", "b", "c", "b"]


def test_a_loader_that_raises_gives_its_error_and_the_next_call_loads_again():
    attempts = []

    @gflow.warm
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("checkpoint not there yet")
        return "model"

    with pytest.raises(OSError, match="checkpoint not there yet"):
        flaky()
    assert flaky.cached() == 0 and flaky() == "model" and len(attempts) == 2


def test_bad_warm_input_is_one_line():
    with pytest.raises(InvalidArguments, match="max_items must be an integer of at least 1, got 0"):
        gflow.warm(max_items=0)(lambda: 1)

    @gflow.warm
    def load(x: object) -> object:
        return x

    with pytest.raises(InvalidArguments, match="arguments must be hashable"):
        load([1, 2])


def test_a_warm_value_never_crosses_a_process():
    v = warm_tasks.model("esm")
    again = pickle.loads(pickle.dumps(warm_tasks.model))
    assert again is warm_tasks.model and again("esm") is v  # a reference to the loader, never its value


def test_the_loaders_code_is_in_the_task_version_but_its_value_is_not(tmp_path, monkeypatch):
    from gflow.tasks import code_version

    src = '''import gflow

@gflow.warm
def load(name):
    return {"name": name, "weights": %r}

@gflow.task
def use(x: int) -> int:
    return x + len(load("m")["weights"])
'''
    monkeypatch.syspath_prepend(str(tmp_path))
    versions = []
    for i, weights in enumerate(["aa", "bbb"]):
        (tmp_path / f"warmmod{i}.py").write_text(src % weights)
        mod = __import__(f"warmmod{i}")
        versions.append(code_version(mod.use))
        before = code_version(mod.use)
        mod.use.fn(1)  # loading the value changes nothing in the key
        mod.use._code_version = None
        assert code_version(mod.use) == before
    assert versions[0] != versions[1]  # a change to the loader changes the task's version


def test_loads_equal_workers_on_local_processes(tmp_path, monkeypatch, store):
    loads = tmp_path / "loads"
    loads.mkdir()
    monkeypatch.setenv(warm_tasks.LOADS_DIR, str(loads))
    r = warm_tasks.many.run(20, executor="local://processes?workers=2", return_run=True)
    assert r.state is State.SUCCEEDED and r.value == [i + 3 for i in range(20)]
    assert 1 <= len(os.listdir(loads)) <= 2  # one load per worker process, not one per element


# -- batch_size ---------------------------------------------------------------------------------------------
def test_a_single_call_is_a_batch_of_one_and_map_groups_batches():
    assert warm_tasks.lengths("abc", scale=2) == 6
    assert warm_tasks.lengths.map(["a", "bb", "ccc", "dddd", "eeeee"], scale=3) == [3, 6, 9, 12, 15]
    assert warm_tasks.lengths.options.batch_size == 4 and warm_tasks.lengths.batched == ("seqs",)


def test_a_batch_that_raises_is_retried_element_by_element():
    res = warm_tasks.lengths.invoke_many([((s,), {}) for s in ["a", "bad", "ccc", "dd", "e"]])
    assert [r.ok for r in res] == [True, False, True, True, True]
    assert [r.value for r in res if r.ok] == [1, 3, 2, 1]
    assert "bad sequence" in str(res[1].exc)


def test_a_wrong_length_names_the_task_and_both_lengths():
    with pytest.raises(BatchLengthMismatch, match=r"task 'short_by_one' returned 3 results for a batch of 4"):
        from gflow.tasks._batching import _call

        out = _call(warm_tasks.short_by_one, [{"xs": i} for i in range(4)])
        raise out.exc  # type: ignore[union-attr]
    # run as a batch, it is retried one by one and every element gets its result
    res = warm_tasks.short_by_one.invoke_many([((i,), {}) for i in range(4)])
    assert [r.value for r in res] == [0, 1, 2, 3]


def test_common_arguments_split_batches():
    calls = [(("ab",), {"scale": 1}), (("ab",), {"scale": 2}), (("abc",), {"scale": 1})]
    assert [r.value for r in warm_tasks.lengths.invoke_many(calls)] == [2, 4, 3]


def test_batched_parameters_are_validated_per_element():
    with pytest.raises(InvalidArguments, match="seqs"):
        warm_tasks.score_all.run([1, 2])  # int is not str: named before anything runs


def test_a_batch_task_in_a_flow_gives_one_task_run_per_element(store):
    r = warm_tasks.score_all.run(["a", "bb", "bad", "dddd"], return_run=True)
    assert r.state is State.FAILED
    trs = sorted(store.task_runs(r.id), key=lambda t: t.map_index)
    assert [t.state for t in trs] == [State.SUCCEEDED, State.SUCCEEDED, State.FAILED, State.SUCCEEDED]


def test_bad_counts_are_refused_in_one_line():
    with pytest.raises(InvalidArguments, match="batch_size must be an integer of at least 1, got 0"):
        gflow.task(batch_size=0)(lambda x: x)
    with pytest.raises(InvalidArguments, match="per_job must be an integer of at least 1, got 0"):
        warm_tasks.use_model.map([1], per_job=0)
    with pytest.raises(InvalidArguments, match="batched parameter 'nope' is not a parameter"):
        gflow.task(batch_size=2, batched="nope")(lambda xs: xs)


def test_a_packed_array_child_groups_a_batch_task_and_shares_warm_values(tmp_path):
    from gflow.artifacts import LocalArtifactStore
    from gflow.executors._batch import outcome_of, write_paged_manifest
    from gflow.executors.base import Call
    from gflow.images.worker import run_spec

    arts = LocalArtifactStore(tmp_path / "arts")
    seqs = ["a", "bb", "bad", "dddd", "eeeee", "ff"]
    calls = [Call(f"r.{i}", "r", warm_tasks.lengths, (s,), {}, 1, f"k{i}", i) for i, s in enumerate(seqs)]
    m = write_paged_manifest(arts, calls, chunk=6)
    assert run_spec(arts, m.array, 0) == 1  # one element failed: the worst exit code
    outs = [outcome_of(arts, d) for d in m.specs]
    assert [o.ok for o in outs] == [True, True, False, True, True, True]
    assert [o.value for o in outs if o.ok] == [1, 2, 4, 5, 2]


def test_the_thread_pool_runs_a_batch_task_in_full_batches_with_one_task_run_per_element(store):
    warm_tasks.BATCHES.clear()
    seqs = ["a" * (i % 5 + 1) for i in range(20)] + ["bad"]
    r = warm_tasks.embed_all.run(seqs, executor="local", return_run=True)
    assert r.state is State.FAILED  # the bad element, alone
    trs = sorted(store.task_runs(r.id), key=lambda t: t.map_index)
    assert [t.state for t in trs] == [State.SUCCEEDED] * 20 + [State.FAILED]
    assert sorted(warm_tasks.BATCHES)[-2:] == [8, 8]  # full batches of batch_size, not 21 calls of one


def test_mapping_several_iterables_batches_every_mapped_parameter(store):
    warm_tasks.PAIRS.clear()
    assert warm_tasks.pair.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert warm_tasks.PAIRS == [([1, 2, 3], [10, 20, 30])]
    warm_tasks.PAIRS.clear()
    r = warm_tasks.pairs.run([1, 2, 3, 4, 5], [1, 1, 1, 1, 1], return_run=True)
    assert r.state is State.SUCCEEDED and r.value == [20, 30, 40, 50, 60]
    assert sorted(len(xs) for xs, _ in warm_tasks.PAIRS) == [1, 4] and all(len(x) == len(y) for x, y in
                                                                          warm_tasks.PAIRS)


@pytest.mark.parametrize("n, per_job, chunk, limit, k", [
    (1_000_000, None, 1, 10_000, 100),    # AWS Batch: one array of 10,000 children
    (1_000_000, None, 1, 100_000, 10),    # GCP Batch: 100,000 tasks per job
    (5_000, None, 1, 1001, 5),            # Slurm's default MaxArraySize
    (500, None, 4, 10_000, 4),            # the executor's chunk is the floor
    (10_000, 100, 1, 10_000, 100),        # per_job wins
    (0, None, 1, 10_000, 1),
])
def test_the_executor_packs_a_map_to_fit_its_array_limit(n, per_job, chunk, limit, k):
    from gflow.executors._batch import per_job as packing

    task = warm_tasks.use_model if per_job is None else warm_tasks.use_model.with_options(per_job=per_job)
    assert packing(task, n, chunk, limit) == k
    assert -(-n // k) <= limit


def test_an_array_executor_gets_a_map_of_more_than_10000_in_one_submit(store):
    """The engine hands an array backend the whole map, so the backend can pack it into one array."""
    from gflow.executors.base import Capabilities
    from gflow.executors.local import InlineExecutor

    class ArrayInline(InlineExecutor):
        capabilities = Capabilities(array_jobs=True)
        sizes: list[int] = []

        def submit(self, calls):
            self.sizes.append(len(calls))
            return super().submit(calls)

        def capacity(self) -> int:
            return 1_000_000

    ex = ArrayInline()
    r = warm_tasks.inc_all.run(12_000, executor=ex, return_run=True)
    assert r.state is State.SUCCEEDED and r.value == 12_000
    assert ex.sizes[0] == 12_000
