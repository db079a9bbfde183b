"""The Store contract, as tests that any store must pass (SQLite is the reference).

Subclass :class:`StoreContract` and give it a ``st`` fixture (a fresh, empty store) and, for the
cross-instance test, an ``other`` fixture (a second instance on the same database)::

    class TestMyStore(StoreContract):
        @pytest.fixture
        def st(self, tmp_path): ...
"""

from __future__ import annotations

import multiprocessing as mp
import threading
import time

import pytest

import gflow
from gflow.states import State
from gflow.store import RunRecord, Store, Transition, open_store

P, Q, R, RT = State.PENDING, State.QUEUED, State.RUNNING, State.RETRYING
S, F, C, K = State.SUCCEEDED, State.FAILED, State.CANCELLED, State.CACHED
REF = "sha256:" + "0" * 64


def new_run(st: Store, rid: str = "r1", **kw) -> str:
    st.create_run(RunRecord(id=rid, flow=kw.pop("flow", "f"), created=kw.pop("created", time.time()), **kw))
    return rid


def assert_forward_per_task(events) -> dict[str, list[State]]:
    """Each task run's events, in seq order, move strictly forward; returns them by task run."""
    per: dict[str, list[tuple[int, int]]] = {}
    states: dict[str, list[State]] = {}
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for e in events:
        if e.task_run_id:
            per.setdefault(e.task_run_id, []).append((e.attempt, e.state.rank))
            states.setdefault(e.task_run_id, []).append(e.state)
    for tr, pos in per.items():
        assert pos == sorted(pos) and len(set(pos)) == len(pos), f"{tr} moved backwards: {states[tr]}"
        assert all(not s.terminal for s in states[tr][:-1]), f"{tr} moved after a terminal state: {states[tr]}"
    return states


def _writer(url: str, events: str | None, wid: int, n: int, shared: int) -> None:
    st = open_store(url, events=events)
    rid = f"w{wid}"
    new_run(st, rid, flow="load")
    for i in range(0, n, 10):  # own task runs, in batches of 10
        for s in (P, Q, R, S):
            st.apply([Transition(f"{rid}.{j}", rid, s, 1, time.time(), task="m:t", name="t") for j in range(i, i + 10)])
    for i in range(shared):  # shared task runs: every writer sends every state, one at a time
        for s in (P, Q, R, S):
            st.apply([Transition(f"shared.{i}", "shared", s, 1, time.time(), task="m:t", name="t")])
    assert not getattr(st, "degraded", False)
    st.close()


def run_writer_processes(st: Store, writers: int = 4, n: int = 60, shared: int = 20) -> None:
    """Writer processes (each opens the store from its URL) race; nothing is lost or moved backwards."""
    new_run(st, "shared", flow="load")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(st.url, getattr(st, "events_url", None), w, n, shared))
             for w in range(writers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for w in range(writers):
        assert st.counts(f"w{w}") == {"SUCCEEDED": n}
        assert len(st.events(f"w{w}")) == 4 * n
    assert st.counts("shared") == {"SUCCEEDED": shared}
    states = assert_forward_per_task(st.events("shared"))  # however the writers interleaved
    assert len(states) == shared and all(v[-1] is S for v in states.values())


class StoreContract:
    """Tests every Store must pass. Needs fixtures ``st`` and ``other``."""

    #: whether other processes can open the store from ``st.url`` (not mongomock: it lives in one process)
    multiprocess = True

    def test_forward_only_task_transitions(self, st):
        rid = new_run(st)
        tr = "r1.1"
        st.transition(Transition(tr, rid, P, 1, 1.0, task="m:t", name="t"))
        st.transition(Transition(tr, rid, Q, 1, 2.0, key="k"))
        st.transition(Transition(tr, rid, R, 1, 3.0))
        with pytest.raises(gflow.InvalidTransition, match="r1.1"):
            st.transition(Transition(tr, rid, Q, 1, 4.0))  # backwards within an attempt
        st.transition(Transition(tr, rid, RT, 1, 5.0, error="E: x"))
        st.transition(Transition(tr, rid, Q, 2, 6.0))  # the next attempt moves forward
        st.transition(Transition(tr, rid, R, 2, 7.0))
        st.transition(Transition(tr, rid, S, 2, 8.0, result_ref=REF, result_inline="1"))
        for bad in (R, F, S):
            with pytest.raises(gflow.InvalidTransition):
                st.transition(Transition(tr, rid, bad, 3, 9.0))  # terminal is final
        rec = st.get_task_run(tr)
        assert (rec.state, rec.attempt, rec.result_inline, rec.started, rec.ended) == (S, 2, "1", 7.0, 8.0)
        # a success clears an earlier attempt's error (it stays in that attempt's event)
        assert rec.error is None and rec.key == "k" and rec.task == "m:t" and rec.name == "t"
        assert [e.message for e in st.events(rid) if e.state is RT] == ["E: x"]
        assert rec.created == 1.0 and rec.result_ref == REF
        evs = [(e.state, e.attempt) for e in st.events(rid)]
        assert evs == [(P, 1), (Q, 1), (R, 1), (RT, 1), (Q, 2), (R, 2), (S, 2)]  # refused ones left no event

    def test_batch_refuses_only_backward_ones(self, st):
        rid = new_run(st)
        st.apply([Transition(f"r1.{i}", rid, P, 1, 1.0, task="m:t", name="t") for i in range(3)])
        st.apply([Transition("r1.0", rid, S, 1, 2.0)])
        batch = [Transition("r1.0", rid, R, 1, 3.0), Transition("r1.1", rid, Q, 1, 3.0),
                 Transition("r1.1", rid, P, 1, 3.5), Transition("r1.2", rid, F, 1, 4.0)]
        refused = st.apply(batch)
        assert [(t.task_run_id, t.state) for t in refused] == [("r1.0", R), ("r1.1", P)]
        assert refused[0] is batch[0] and refused[1] is batch[2]  # the caller's own objects
        assert st.counts(rid) == {"SUCCEEDED": 1, "QUEUED": 1, "FAILED": 1}
        assert len(st.events(rid)) == 3 + 1 + 2

    def test_whole_life_in_one_batch(self, st):
        rid = new_run(st)
        st.apply([Transition("r1.7", rid, P, 1, 1.0, task="m:t", name="t", upstream=["r1.1"], map_index=3,
                             cacheable=1),
                  Transition("r1.7", rid, Q, 1, 2.0, key="k7"),
                  Transition("r1.7", rid, R, 1, 3.0, handle="h-1"),
                  Transition("r1.7", rid, F, 1, 4.0, error="ValueError: no", traceback="tb")])
        rec = st.get_task_run("r1.7")
        assert (rec.state, rec.created, rec.started, rec.ended) == (F, 1.0, 3.0, 4.0)
        assert (rec.upstream, rec.map_index, rec.key, rec.handle) == (["r1.1"], 3, "k7", "h-1")
        assert (rec.error, rec.traceback) == ("ValueError: no", "tb")
        assert [e.state for e in st.events(rid)] == [P, Q, R, F]
        assert st.events(rid)[-1].message == "ValueError: no"

    def test_run_state_forward_only(self, st):
        rid = new_run(st)
        st.set_run_state(rid, R, 1.0)
        st.set_run_state(rid, F, 2.0, error="x", traceback="tb")
        with pytest.raises(gflow.InvalidTransition):
            st.set_run_state(rid, R, 3.0)
        with pytest.raises(gflow.InvalidTransition):
            st.set_run_state(rid, S, 3.0)  # terminal is final
        with pytest.raises(gflow.RunNotFound):
            st.set_run_state("nope", R, 3.0)
        run = st.get_run(rid)
        assert (run.state, run.error, run.traceback, run.started, run.ended) == (F, "x", "tb", 1.0, 2.0)
        run_events = [(e.state, e.task_run_id) for e in st.events(rid)]
        assert run_events == [(R, None), (F, None)]

    def test_runs_get_update_and_errors(self, st):
        new_run(st, "abc123", tags=["x"], params='{"n": 1}', extra={"profile": "p"})
        new_run(st, "abd456")
        assert st.get_run("abc").id == "abc123"  # a unique prefix
        with pytest.raises(gflow.RunNotFound):
            st.get_run("ab")  # ambiguous
        with pytest.raises(gflow.RunNotFound):
            st.get_run("zzz")
        st.update_run("abc123", image_tag="img:1", extra={"profile": "q", "n": 2})
        run = st.get_run("abc123")
        assert (run.image_tag, run.extra, run.tags, run.params) == \
            ("img:1", {"profile": "q", "n": 2}, ["x"], '{"n": 1}')
        with pytest.raises(ValueError, match="state"):
            st.update_run("abc123", state="RUNNING")
        with pytest.raises(gflow.RunNotFound):
            st.update_run("nope", image_tag="x")
        with pytest.raises(gflow.StoreError, match="abc123|UNIQUE"):
            new_run(st, "abc123")  # ids are unique
        with pytest.raises(LookupError):
            st.get_task_run("abc123.99")

    def test_pagination_and_filters(self, st):
        for i in range(5):
            new_run(st, f"r{i}", flow="a" if i % 2 else "b", created=100.0 + i, tags=[f"t{i % 2}"])
        st.set_run_state("r2", R, 1.0)
        page1 = st.list_runs(limit=2)
        assert [r.id for r in page1] == ["r4", "r3"]
        page2 = st.list_runs(limit=2, before=(page1[-1].created, page1[-1].id))
        assert [r.id for r in page2] == ["r2", "r1"]
        assert [r.id for r in st.list_runs(flow="a")] == ["r3", "r1"]
        assert [r.id for r in st.list_runs(tag="t0")] == ["r4", "r2", "r0"]
        assert [r.id for r in st.list_runs(since=102, until=104)] == ["r3", "r2"]
        assert [r.id for r in st.list_runs(state="RUNNING")] == ["r2"]
        new_run(st, "r5a", created=200.0)
        new_run(st, "r5b", created=200.0)  # same created: the id breaks the tie, and the cursor keeps it
        first = st.list_runs(limit=1)
        assert [r.id for r in first] == ["r5b"]
        assert [r.id for r in st.list_runs(limit=2, before=(200.0, "r5b"))] == ["r5a", "r4"]

    def test_task_run_pages_and_filters(self, st):
        rid = new_run(st)
        st.apply([Transition(f"r1.{i}", rid, P, 1, float(i), task="m:a" if i % 2 else "m:b",
                             name="a" if i % 2 else "b") for i in range(1, 13)])
        st.apply([Transition(f"r1.{i}", rid, S, 1, 20.0) for i in range(1, 13, 3)])
        ids = [t.id for t in st.task_runs(rid)]
        assert ids == [f"r1.{i}" for i in range(1, 13)]  # creation order, numerically (r1.10 after r1.9)
        page, seen = st.task_runs(rid, limit=5), []
        while page:
            seen += [t.id for t in page]
            page = st.task_runs(rid, limit=5, after=page[-1].id)
        assert seen == ids
        assert [t.id for t in st.task_runs(rid, state="SUCCEEDED")] == ["r1.1", "r1.4", "r1.7", "r1.10"]
        assert [t.id for t in st.task_runs(rid, task="a", limit=3)] == ["r1.1", "r1.3", "r1.5"]
        assert [t.id for t in st.task_runs(rid, task="m:b", state="SUCCEEDED")] == ["r1.4", "r1.10"]
        assert st.counts(rid) == {"PENDING": 8, "SUCCEEDED": 4}
        assert st.counts("nope") == {}

    def test_events_cursor(self, st):
        rid = new_run(st)
        new_run(st, "r2")
        for i in range(5):
            st.apply([Transition(f"r1.{i}", rid, P, 1, 1.0), Transition(f"r2.{i}", "r2", P, 1, 1.0)])
        evs = st.events(rid)
        assert len(evs) == 5 and {e.run_id for e in evs} == {rid}
        assert [e.task_run_id for e in st.events(rid, after=evs[1].seq)] == ["r1.2", "r1.3", "r1.4"]
        assert [e.task_run_id for e in st.events(rid, after=evs[1].seq, limit=1)] == ["r1.2"]
        assert st.events(rid, after=evs[-1].seq) == []

    def test_cache_lookup(self, st):
        rid = new_run(st)
        new_run(st, "r2")

        def done(tr, run, key, ended, *, cacheable=1, ref=REF, state=S):
            st.apply([Transition(tr, run, P, 1, 1.0, task="m:t", name="t", cacheable=cacheable),
                      Transition(tr, run, Q, 1, 2.0, key=key),
                      Transition(tr, run, state, 1, ended, result_ref=ref, result_inline=tr)])

        done("r1.1", rid, "k1", 5.0)
        done("r2.1", "r2", "k1", 9.0)  # newer
        done("r2.2", "r2", "k2", 9.0, cacheable=0)  # the task does not cache
        done("r2.3", "r2", "k3", 9.0, ref=None)  # no stored result
        done("r2.4", "r2", "k4", 9.0, state=F)
        done("r2.5", "r2", "k5", 9.0, state=K)
        assert st.find_cached("k1").id == "r2.1" and st.find_cached("k1").result_inline == "r2.1"
        assert st.find_cached("k2") is None and st.find_cached("k3") is None and st.find_cached("k4") is None
        assert st.find_cached("k5").id == "r2.5"
        assert st.find_cached("missing") is None
        assert sorted(st.results_by_key("r2")) == ["k1", "k2", "k5"]  # resume ignores `cacheable`
        assert st.results_by_key("r2")["k2"].id == "r2.2"
        assert list(st.results_by_key(rid)) == ["k1"]

    def test_second_instance_sees_and_guards_the_same_state(self, st, other):
        """The rule lives in the database, not in one process's memory."""
        rid = new_run(st)
        st.apply([Transition("r1.1", rid, P, 1, 1.0), Transition("r1.1", rid, R, 1, 2.0)])
        assert [t.state for t in other.apply([Transition("r1.1", rid, Q, 1, 3.0)])] == [Q]
        assert other.apply([Transition("r1.1", rid, S, 1, 4.0)]) == []
        assert st.apply([Transition("r1.1", rid, F, 1, 5.0)])  # refused: other finished it
        assert st.get_task_run("r1.1").state is S and other.counts(rid) == {"SUCCEEDED": 1}

    def test_concurrent_threads_race_on_shared_task_runs(self, st):
        rid = new_run(st)
        errors: list[BaseException] = []

        def work(k):
            try:
                for i in range(40):  # own task runs: every transition must land
                    st.apply([Transition(f"r1.{k}{i:03d}", rid, P, 1, 1.0, task="m:t", name="t"),
                              Transition(f"r1.{k}{i:03d}", rid, S, 1, 2.0)])
                for i in range(10):  # shared task runs: every thread sends every state
                    for s in (P, Q, R, S):
                        st.apply([Transition(f"r1.9{i:03d}", rid, s, 1, time.time())])
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ths = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
        [t.start() for t in ths]
        [t.join() for t in ths]
        assert not errors
        assert st.counts(rid) == {"SUCCEEDED": 4 * 40 + 10}
        states = assert_forward_per_task(st.events(rid))
        for i in range(10):
            assert states[f"r1.9{i:03d}"][-1] is S
        assert sum(len(v) for v in states.values()) == len(st.events(rid))

    def test_lineage(self, st):
        rid = new_run(st)
        st.apply([Transition("r1.1", rid, P, 1, 1.0, task="m:mk", name="mk"),
                  Transition("r1.1", rid, Q, 1, 2.0, objects=["in-a", "in-b"]),
                  Transition("r1.1", rid, R, 1, 3.0),
                  Transition("r1.1", rid, S, 1, 4.0, result_ref=REF, objects=["out-c"])])
        st.apply([Transition("r1.2", rid, P, 1, 5.0, task="m:use", name="use"),
                  Transition("r1.2", rid, Q, 1, 6.0, objects=["out-c"])])
        assert st.objects_of("r1.1") == {"inputs": ["in-a", "in-b"], "outputs": ["out-c"]}
        assert st.objects_of("r1.2") == {"inputs": ["out-c"], "outputs": []}
        lin = st.lineage("out-c")
        assert [t.id for t in lin["produced_by"]] == ["r1.1"] and lin["inputs"] == ["in-a", "in-b"]
        assert [t.id for t in lin["consumed_by"]] == ["r1.2"]
        assert st.lineage("nothing") == {"produced_by": [], "inputs": [], "consumed_by": []}

    def test_derived_runs_and_task_run_summaries(self, st):
        root = new_run(st, created=1000.0)
        for i, field in enumerate(("resumed_from", "replay_of", "parent_run")):
            st.create_run(RunRecord(id=f"{root}-d{i}", flow="f", created=1100.0 + i, **{field: root}))
        st.create_run(RunRecord(id=f"{root}-other", flow="f", created=1050.0))
        assert [r.id for r in st.derived_runs(root)] == [f"{root}-d0", f"{root}-d1", f"{root}-d2"]
        st.apply([Transition(f"{root}.{i}", root, P, 1, 1.0, task="m:t", name="t") for i in range(1, 4)])
        st.apply([Transition(f"{root}.2", root, F, 1, 2.0, error="E: x", traceback="long traceback")])
        rows = st.task_run_summaries(root, after=f"{root}.1", limit=5)
        assert [t.id for t in rows] == [f"{root}.2", f"{root}.3"]
        assert rows[0].error == "E: x" and rows[0].traceback is None

    def test_concurrent_writer_processes(self, st):
        if not self.multiprocess:
            pytest.skip("an in-process store: other processes cannot open it")
        run_writer_processes(st)

    def test_counts_by_run_and_task_follow_every_write(self, st):
        import random

        rnd = random.Random(24)
        rid = new_run(st, "c1")
        order = (P, Q, R, RT, S, F, C)
        for step in range(6):
            batch = []
            for i in range(40):
                s = order[min(len(order) - 1, step + rnd.randrange(2))]
                batch.append(Transition(f"c1.{i}", rid, s, 1 + (s is RT), time.time(),
                                        task=f"m:t{i % 3}", name=f"t{i % 3}"))
            st.apply(batch)
            trs = st.task_runs(rid)
            want: dict[str, dict[str, int]] = {}
            for t in trs:
                want.setdefault(t.task, {}).setdefault(t.state.value, 0)
                want[t.task][t.state.value] += 1
            assert st.counts_by_task(rid) == want
            total: dict[str, int] = {}
            for by in want.values():
                for k, v in by.items():
                    total[k] = total.get(k, 0) + v
            assert st.counts(rid) == total
            assert st.counts_many([rid, "nope"]) == {rid: total, "nope": {}}
