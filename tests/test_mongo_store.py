"""The MongoDB store: the Store contract, conditional writes, retried batches, flows end to end.

Runs through the real pymongo API against mongomock (in-process). Set ``GFLOW_TEST_MONGO_URL``
(e.g. ``mongodb://127.0.0.1:27017``) to run the same tests against a real server too: each test
then gets its own database, dropped afterwards.
"""

from __future__ import annotations

import os
import time
import uuid

import flows_basic as fb
import pytest
from store_contract import REF, StoreContract, assert_forward_per_task, new_run

import gflow
from gflow.states import State
from gflow.store import Transition, open_store
from gflow.store.sqlite import SQLiteStore

pytest.importorskip("pymongo")
from gflow.store.mongo import MongoStore  # noqa: E402

P, Q, R, S = State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED
REAL_URL = os.environ.get("GFLOW_TEST_MONGO_URL")
needs_real = pytest.mark.skipif(not REAL_URL, reason="set GFLOW_TEST_MONGO_URL to test against a real MongoDB")


def _real_url(db: str) -> str:
    base, _, query = REAL_URL.partition("?")
    base = base.rstrip("/")
    if base.count("/") > 2:  # a database is named: replace it
        base = base.rsplit("/", 1)[0]
    return f"{base}/{db}" + (f"?{query}" if query else "")


@pytest.fixture
def mock_url():
    pytest.importorskip("mongomock")
    return f"mongomock://{uuid.uuid4().hex[:12]}/gflow"


class TestSQLiteReference(StoreContract):
    """The contract holds for the reference store (so it says what SQLite does)."""

    @pytest.fixture
    def st(self, tmp_path):
        s = SQLiteStore(tmp_path / "g.db")
        yield s
        s.close()

    @pytest.fixture
    def other(self, st):
        return SQLiteStore(st.path)


class TestMongomock(StoreContract):
    multiprocess = False

    @pytest.fixture
    def st(self, mock_url):
        s = open_store(mock_url)
        assert isinstance(s, MongoStore)
        yield s
        s.close()

    @pytest.fixture
    def other(self, st):
        return open_store(st.url)  # the same mongomock "server", another client


@needs_real
class TestRealMongo(StoreContract):
    @pytest.fixture
    def st(self):
        db = f"gflow_test_{uuid.uuid4().hex[:10]}"
        s = MongoStore.from_url(_real_url(db))
        yield s
        s.client.drop_database(db)
        s.close()

    @pytest.fixture
    def other(self, st):
        return open_store(st.url)


# -- Mongo-specific behaviour ---------------------------------------------------------------------


@pytest.fixture
def mst(mock_url):
    s = open_store(mock_url)
    yield s
    s.close()


def test_refusal_is_the_databases_conditional_write(mst):
    """A task run moved forward behind the store's back (another writer) still refuses a stale transition."""
    rid = new_run(mst)
    mst.apply([Transition("r1.1", rid, P, 1, 1.0)])
    # another writer, straight to the collection: no in-process state can know about it
    mst.task_runs_coll.update_one({"_id": "r1.1"}, {"$set": {"state": "RUNNING", "rank": 2, "pos": 10}})
    refused = mst.apply([Transition("r1.1", rid, Q, 1, 2.0), Transition("r1.2", rid, P, 1, 2.0)])
    assert [(t.task_run_id, t.state) for t in refused] == [("r1.1", Q)]
    assert mst.get_task_run("r1.1").state is R and mst.get_task_run("r1.2").state is P


def test_batch_retried_after_a_failure_between_state_and_events_is_idempotent(mst, monkeypatch):
    rid = new_run(mst)
    batch = [Transition(f"r1.{i}", rid, s, 1, float(k), task="m:t", name="t")
             for i in range(3) for k, s in enumerate((P, Q, R))]
    real_insert = MongoStore._insert_events
    calls = []

    def flaky_insert(self, docs):
        calls.append(len(docs))
        if len(calls) == 1:
            raise gflow.StoreError("MongoDB at test is unreachable during record transitions")
        return real_insert(self, docs)

    monkeypatch.setattr(MongoStore, "_insert_events", flaky_insert)
    with pytest.raises(gflow.StoreError, match="unreachable"):
        mst.apply(batch)
    assert mst.counts(rid) == {"RUNNING": 3} and mst.events(rid) == []  # states written, events not
    assert mst.apply(batch) == []  # the recorder's retry: nothing reported as refused
    evs = mst.events(rid)
    assert len(evs) == 9 and {e.seq for e in evs} == set(range(1, 10))  # the original seqs, no duplicates
    assert assert_forward_per_task(evs)["r1.2"] == [P, Q, R]
    assert mst.apply(batch) == []  # and again: still no duplicate events
    assert len(mst.events(rid)) == 9
    assert [t.state for t in mst.apply([Transition("r1.0", rid, Q, 1, 9.0)])] == [Q]  # a new send is refused


def test_racing_writer_overtaking_the_event_seq_is_retried_not_lost(mst, monkeypatch):
    rid = new_run(mst)
    mst.apply([Transition("r1.1", rid, P, 1, 1.0)])
    other = open_store(mst.url)
    real_reserve = MongoStore._reserve_for
    raced = []

    def reserve_then_get_overtaken(self, transitions):
        seqs = real_reserve(self, transitions)
        if not raced:  # another writer reserves later seqs and applies QUEUED before this one writes
            raced.append(1)
            assert other.apply([Transition("r1.1", rid, Q, 1, 1.5)]) == []
        return seqs

    monkeypatch.setattr(MongoStore, "_reserve_for", reserve_then_get_overtaken)
    assert mst.apply([Transition("r1.1", rid, R, 1, 2.0)]) == []  # forward: applied with a fresh seq
    evs = mst.events(rid)
    assert [e.state for e in evs] == [P, Q, R]  # in seq order, the order they were applied in
    assert evs[2].seq > evs[1].seq == 3 and mst.get_task_run("r1.1").state is R


def test_indexes_for_the_servers_queries(mst):
    tr = mst.task_runs_coll.index_information()
    assert tr["run_seq"]["key"] == [("run_id", 1), ("seq", 1)]
    assert tr["run_state_seq"]["key"] == [("run_id", 1), ("state", 1), ("seq", 1)]
    assert tr["cache_key"]["partialFilterExpression"] == {"cacheable": 1}
    runs = mst.runs.index_information()
    assert {"created", "flow_created", "state_created", "tags_created"} <= set(runs)
    assert mst.events_coll.index_information()["run_seq"]["unique"] is True


def test_unreachable_server_is_a_clear_store_error():
    t0 = time.monotonic()
    with pytest.raises(gflow.StoreError, match=r"MongoDB at mongodb://\*\*\*@127.0.0.1:9/gflow\?.* is unreachable"):
        MongoStore.from_url("mongodb://user:secret@127.0.0.1:9/gflow?serverSelectionTimeoutMS=300")
    assert time.monotonic() - t0 < 10


def test_bad_urls():
    with pytest.raises(gflow.StoreError, match="must start with mongodb://"):
        MongoStore.from_url("http://x/db")
    with pytest.raises(gflow.StoreError, match="invalid"):
        MongoStore.from_url("mongodb://host:notaport/db")


def test_database_from_url_and_shared_mock_server(mock_url):
    a, b = open_store(mock_url), open_store(mock_url)
    assert a.runs.database.name == "gflow"
    new_run(a, "x1")
    assert b.get_run("x1").flow == "f"
    other_db = open_store(mock_url.rsplit("/", 1)[0] + "/elsewhere")
    with pytest.raises(gflow.RunNotFound):
        other_db.get_run("x1")


# -- flows end to end on Mongo ----------------------------------------------------------------------


@pytest.mark.parametrize("executor", ["inline", "local"])
def test_flow_map_reduce_on_mongo(mock_url, executor):
    res = fb.map_reduce.run(30, executor=executor, store=mock_url, return_run=True)
    assert res.state is S and res.value == sum(range(1, 31))
    st = open_store(mock_url)
    assert st.counts(res.id) == {"SUCCEEDED": 31}
    run = st.get_run(res.id)
    assert run.state is S and run.started and run.ended and run.result_inline == str(res.value)
    states = assert_forward_per_task(st.events(res.id))
    assert len(states) == 31 and all(v == [P, Q, R, S] for v in states.values())
    (tot,) = st.task_runs(res.id, task="total")
    assert sorted(tot.upstream) == sorted(t.id for t in st.task_runs(res.id, task="inc"))
    assert [e.state for e in st.events(res.id) if e.task_run_id is None] == [R, S]


def test_flow_retries_on_mongo(mock_url, work):
    res = fb.flaky_flow.run(work, 2, executor="local", store=mock_url, return_run=True)
    assert res.state is S and res.value == "ok after 3"
    st = open_store(mock_url)
    (tr,) = st.task_runs(res.id)
    assert tr.attempt == 3 and tr.state is S
    states = [(e.state, e.attempt) for e in st.events(res.id) if e.task_run_id]
    assert (State.RETRYING, 1) in states and (State.RETRYING, 2) in states and states[-1] == (S, 3)


def test_flow_cache_and_resume_on_mongo(mock_url, work):
    assert fb.cached_flow.run(work, [1, 2], executor="local", store=mock_url) == [1, 4]
    res = fb.cached_flow.run(work, [1, 2, 3], executor="local", store=mock_url, return_run=True)
    st = open_store(mock_url)
    assert st.counts(res.id) == {"CACHED": 2, "SUCCEEDED": 1}
    assert [fb.count(work, f"square-{x}") for x in (1, 2, 3)] == [1, 1, 1]

    first = fb.resumable.run(work, 4, executor="local", store=mock_url, return_run=True)
    assert first.state is State.FAILED and "gate closed" in str(first.error)
    open(f"{work}/allow", "w").close()
    second = fb.resumable.run(work, 4, executor="local", store=mock_url, resume_from=first.id, return_run=True)
    assert second.state is S and second.value == sum(range(4))
    assert [fb.count(work, f"record-{i}") for i in range(4)] == [1] * 4  # none recomputed
    assert st.counts(second.id) == {"CACHED": 4, "SUCCEEDED": 1}
    assert st.get_run(second.id).resumed_from == first.id
    assert st.get_run(first.id).state is State.FAILED


def test_flow_failure_recorded_on_mongo(mock_url):
    with pytest.raises(gflow.TaskFailed):
        fb.upstream_failure.run("unused", executor="inline", store=mock_url)
    st = open_store(mock_url)
    (run,) = st.list_runs(flow="upstream_failure")
    assert run.state is State.FAILED and "boom on 1" in run.error and run.traceback
    (bad,) = st.task_runs(run.id, task="boom")
    assert bad.state is State.FAILED and "ValueError" in bad.error and "boom on 1" in bad.traceback


def test_result_ref_roundtrip(mst):
    rid = new_run(mst)
    mst.apply([Transition("r1.1", rid, P, 1, 1.0, cacheable=1, key="k"),
               Transition("r1.1", rid, S, 1, 2.0, result_ref=REF)])
    rec = mst.find_cached("k")
    assert rec.result_ref == REF and rec.result_inline is None and rec.ended == 2.0


def test_flow_lineage_on_mongo(mock_url):
    from gflow.objects import Protein

    p = Protein(sequence="MKTAYIAK", name="p")
    scores = fb.protein_flow.run(p, n=2, executor="local", store=mock_url)
    st = open_store(mock_url)
    lin = st.lineage(scores[0].content_id)
    assert [t.name for t in lin["produced_by"]] == ["score_len", "score_len"]
    assert set(lin["inputs"]) == {p.mutate("M1A").content_id, p.mutate("M1G").content_id}
    (consumer,) = st.lineage(p.mutate("M1A").content_id)["consumed_by"]
    assert consumer.name == "score_len" and st.objects_of(consumer.id)["outputs"] == [scores[0].content_id]


def test_counts_many_in_one_query(mst):
    for rid in ("a", "b", "c"):
        new_run(mst, rid)
    mst.apply([Transition(f"a.{i}", "a", P, 1, 1.0) for i in range(3)] + [Transition("b.1", "b", S, 1, 1.0)])
    assert mst.counts_many(["a", "b", "c", "nope"]) == {"a": {"PENDING": 3}, "b": {"SUCCEEDED": 1}, "c": {},
                                                        "nope": {}}
