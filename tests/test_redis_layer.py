"""The Redis layer over a durable store, against a real ``redis-server`` on a free loopback port.

Covers live counters, the event stream and pub/sub after real flow runs, FLUSHALL and a full
server restart mid-run (counters rebuilt from the durable store), Redis killed or refusing this
client mid-run (the run completes, nothing lost), and concurrent writer processes.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import flows_basic as fb
import pytest
from store_contract import StoreContract, assert_forward_per_task, new_run, run_writer_processes

import gflow
from gflow.states import State
from gflow.store import Transition, open_store
from gflow.store.sqlite import SQLiteStore

redis = pytest.importorskip("redis")
from gflow.store.redis import RedisLayer, _keys  # noqa: E402

pytestmark = pytest.mark.integration
P, Q, R, S = State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED
REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """A throwaway redis-server on 127.0.0.1, without persistence (a restart starts empty)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.workdir / "redis.log", "ab") as log:  # the child keeps its own handle
            self.proc = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT)
        admin = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 15
        while True:
            try:
                if admin.ping():
                    break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: {(self.workdir / 'redis.log').read_text()}") \
                        from None
                time.sleep(0.05)
        admin.close()

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; scripts/apt-packages.txt)")
    d = tmp_path / "redis"
    d.mkdir()
    srv = RedisServer(d)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def layer(redis_server, tmp_path):
    st = RedisLayer(SQLiteStore(tmp_path / "state.db"), redis_server.url, retry_after=0.2)
    yield st
    st.close()


class TestRedisLayerContract(StoreContract):
    """The layer is a Store like any other (counts come from Redis here)."""

    @pytest.fixture
    def st(self, layer):
        return layer

    @pytest.fixture
    def other(self, layer, redis_server):
        return RedisLayer(SQLiteStore(layer.durable.path), redis_server.url)

    def test_concurrent_writer_processes(self, st, redis_server):
        """Writer processes race through the layer: Redis ends up agreeing with the durable store."""
        run_writer_processes(st)
        durable, c = st.durable, redis_server.client()
        for run_id in ("w0", "w1", "w2", "w3", "shared"):
            assert redis_counts(redis_server, run_id) == durable.counts(run_id)
            # the stream got exactly the transitions the durable store accepted
            assert c.xlen(_keys(run_id)[3]) == len(durable.events(run_id))


# -- helpers ------------------------------------------------------------------------------------------

GATE = threading.Event()


@gflow.flow
def two_phase(n: int) -> int:
    """Phase 1, a pause the test controls (the flow is mid-run), then phase 2."""
    a = fb.total(fb.inc.map(range(n)))
    a.result()
    assert GATE.wait(60), "the test never opened the gate"
    b = fb.total(fb.inc.map(range(n, 2 * n)))
    return fb.add(a, b)


def two_phase_expected(n: int) -> int:
    return sum(range(1, 2 * n + 1))


class Background:
    """Runs a flow in a thread; ``run_id`` is known as soon as the run is created."""

    def __init__(self, flow, *args, subscribe_with: RedisLayer | None = None, **kw):
        self.created = threading.Event()
        self.run_id: str | None = None
        self.result = None
        self.events: list[dict] = []
        self.sub_thread: threading.Thread | None = None

        def observer(run_id, engine):
            self.run_id = run_id
            if subscribe_with is not None:

                def listen():
                    for ev in subscribe_with.subscribe(run_id, timeout=90):
                        self.events.append(ev)

                self.sub_thread = threading.Thread(target=listen, daemon=True)
                self.sub_thread.start()
                # wait until it listens, so that it sees the run's first transition
                self._ready_probe(subscribe_with, run_id)
            self.created.set()

        def run():
            self.result = flow.run(*args, observer=observer, return_run=True, **kw)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.created.wait(30)

    @staticmethod
    def _ready_probe(layer, run_id):
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                if layer.redis.pubsub_numsub(f"gflow:run:{run_id}")[0][1] >= 1:
                    return
            except redis.RedisError:
                return  # Redis down: the subscription polls the durable store
            time.sleep(0.01)

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the flow did not finish"
        if self.sub_thread is not None:
            self.sub_thread.join(30)
            assert not self.sub_thread.is_alive(), "the subscription did not end with the run"
        return self.result


def wait_for(pred, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def _gate():
    GATE.clear()
    yield
    GATE.set()  # never leave a flow thread blocked


def redis_counts(srv: RedisServer, run_id: str) -> dict[str, int] | None:
    """The counters as Redis holds them (None if they are not live)."""
    c = srv.client()
    _, counts, live, _ = _keys(run_id)
    if not c.exists(live):
        return None
    return {k: int(v) for k, v in c.hgetall(counts).items() if int(v)}


def assert_complete(durable, run_id: str, n_tasks: int):
    """Every task run SUCCEEDED with its four events, in order; the run's own events too."""
    assert durable.counts(run_id) == {"SUCCEEDED": n_tasks}
    evs = durable.events(run_id)
    states = assert_forward_per_task(evs)
    assert len(states) == n_tasks and all(v == [P, Q, R, S] for v in states.values())
    assert [e.state for e in evs if e.task_run_id is None] == [R, S]


# -- flows through the layer ------------------------------------------------------------------------


def test_flow_counters_stream_and_pubsub(layer, redis_server):
    bg = Background(fb.map_reduce, 50, executor="local", store=layer, subscribe_with=layer)
    res = bg.join()
    assert res.state is S and res.value == sum(range(1, 51))
    rid = res.id
    assert redis_counts(redis_server, rid) == {"SUCCEEDED": 51}  # live, kept incrementally
    assert layer.counts(rid) == layer.durable.counts(rid) == {"SUCCEEDED": 51}
    assert_complete(layer.durable, rid, 51)
    # pub/sub: every transition, in order per task run, ending with the run's own SUCCEEDED
    got = bg.events
    assert len(got) == 51 * 4 + 2 and got[-1]["task_run_id"] is None and got[-1]["state"] == "SUCCEEDED"
    per_task: dict[str, list[str]] = {}
    for ev in got:
        if ev["task_run_id"]:
            per_task.setdefault(ev["task_run_id"], []).append(ev["state"])
    assert len(per_task) == 51 and all(v == ["PENDING", "QUEUED", "RUNNING", "SUCCEEDED"] for v in per_task.values())
    # the stream: the same events, the latest ones first on request
    c = redis_server.client()
    assert c.xlen(_keys(rid)[3]) == 51 * 4 + 2
    recent = layer.recent_events(rid, 10)
    assert [(e["task_run_id"], e["state"]) for e in recent] == [(e["task_run_id"], e["state"]) for e in got[-10:]]
    assert all("stream_id" in e for e in recent) and recent[-1]["state"] == "SUCCEEDED"
    assert [e["ts"] for e in recent] == [e["ts"] for e in got[-10:]]  # timestamps exact through Lua
    durable_tail = [(e.task_run_id, e.state.value, e.attempt, e.ts) for e in layer.events(rid)[-10:]]
    assert [(e["task_run_id"], e["state"], e["attempt"], e["ts"]) for e in recent] == durable_tail
    assert c.ttl(_keys(rid)[1]) > 0  # live keys expire


def test_engine_uses_the_layer_from_the_events_setting(redis_server, gflow_home, monkeypatch):
    monkeypatch.setenv("GFLOW_EVENTS", redis_server.url)
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    res = fb.map_reduce.run(20, executor="inline", store=url, return_run=True)
    assert res.state is S
    assert redis_counts(redis_server, res.id) == {"SUCCEEDED": 21}
    st = open_store(url, events=redis_server.url)
    assert isinstance(st, RedisLayer) and st.counts(res.id) == {"SUCCEEDED": 21}


def test_flushall_mid_run_rebuilds_counts_and_loses_nothing(layer, redis_server):
    n = 20
    bg = Background(two_phase, n, executor="local", store=layer)
    rid = bg.run_id
    wait_for(lambda: layer.durable.counts(rid) == {"SUCCEEDED": n + 1}, what="phase 1")
    assert redis_counts(redis_server, rid) == {"SUCCEEDED": n + 1}
    redis_server.client().flushall()
    assert redis_counts(redis_server, rid) is None
    assert layer.counts(rid) == {"SUCCEEDED": n + 1}  # rebuilt from the durable store...
    assert redis_counts(redis_server, rid) == {"SUCCEEDED": n + 1}  # ...and live again
    redis_server.client().flushall()  # flushed again; this time no read until the run is over
    GATE.set()
    res = bg.join()
    assert res.state is S and res.value == two_phase_expected(n)
    assert layer.counts(rid) == {"SUCCEEDED": 2 * n + 3} == redis_counts(redis_server, rid)
    assert_complete(layer.durable, rid, 2 * n + 3)


def test_redis_restart_mid_run(layer, redis_server):
    n = 20
    bg = Background(two_phase, n, executor="local", store=layer)
    rid = bg.run_id
    wait_for(lambda: layer.durable.counts(rid) == {"SUCCEEDED": n + 1}, what="phase 1")
    redis_server.stop()
    redis_server.start()  # same port, empty (no persistence)
    GATE.set()
    res = bg.join()
    assert res.state is S and res.value == two_phase_expected(n)
    assert layer.counts(rid) == {"SUCCEEDED": 2 * n + 3} == redis_counts(redis_server, rid)
    assert_complete(layer.durable, rid, 2 * n + 3)
    # the stream holds what came after the restart; the durable log holds everything
    assert 0 < redis_server.client().xlen(_keys(rid)[3]) < len(layer.events(rid))


def test_redis_killed_mid_run_completes_and_loses_nothing(layer, redis_server, caplog):
    n = 20
    bg = Background(two_phase, n, executor="local", store=layer, subscribe_with=layer)
    rid = bg.run_id
    wait_for(lambda: layer.durable.counts(rid) == {"SUCCEEDED": n + 1}, what="phase 1")
    wait_for(lambda: len(bg.events) >= (n + 1) * 4 + 1, what="phase 1 events on pub/sub")
    with caplog.at_level(logging.WARNING, logger="gflow.store.redis"):
        redis_server.stop(kill=True)
        GATE.set()
        res = bg.join()
    assert res.state is S and res.value == two_phase_expected(n)
    assert layer.degraded
    assert any("keeps every transition" in r.message for r in caplog.records)
    assert_complete(layer.durable, rid, 2 * n + 3)  # the durable store has every transition
    assert layer.counts(rid) == {"SUCCEEDED": 2 * n + 3}  # served by the durable store meanwhile
    recent = layer.recent_events(rid, 5)
    assert [e["seq"] for e in recent] == [e.seq for e in layer.events(rid)[-5:]]
    # the subscriber went on from the durable log: every event once, up to the run's end
    idents = [(e["task_run_id"], e["attempt"], e["state"]) for e in bg.events]
    assert len(idents) == len(set(idents)) == (2 * n + 3) * 4 + 2
    assert bg.events[-1]["task_run_id"] is None and bg.events[-1]["state"] == "SUCCEEDED"
    # Redis comes back (empty): the layer reconnects and rebuilds
    redis_server.start()
    time.sleep(0.3)
    assert layer.counts(rid) == {"SUCCEEDED": 2 * n + 3} == redis_counts(redis_server, rid)
    assert not layer.degraded


def test_unreachable_but_not_restarted_invalidates_what_it_missed(layer, redis_server):
    """Redis keeps its data but refuses this client for a while: its counters must not stay stale."""
    n = 10
    bg = Background(two_phase, n, executor="local", store=layer)
    rid = bg.run_id
    wait_for(lambda: layer.durable.counts(rid) == {"SUCCEEDED": n + 1}, what="phase 1")
    layer.counts(rid)
    admin = redis_server.client()
    admin.config_set("requirepass", "s3cret")
    admin.execute_command("AUTH", "s3cret")
    admin.client_kill_filter(_type="normal", skipme=True)  # the layer's connections must log in again: refused
    GATE.set()
    res = bg.join()
    assert res.state is S and layer.degraded
    stale = {k: int(v) for k, v in admin.hgetall(_keys(rid)[1]).items() if int(v)}
    assert stale == {"SUCCEEDED": n + 1}  # Redis never saw phase 2
    admin.config_set("requirepass", "")
    time.sleep(0.3)
    assert layer.counts(rid) == {"SUCCEEDED": 2 * n + 3}  # the missed run was invalidated and rebuilt
    assert redis_counts(redis_server, rid) == {"SUCCEEDED": 2 * n + 3} and not layer.degraded


def test_no_redis_at_all_still_records(tmp_path, caplog):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    layer = RedisLayer(SQLiteStore(tmp_path / "g.db"), f"redis://127.0.0.1:{port}/0", retry_after=60)
    with caplog.at_level(logging.WARNING, logger="gflow.store.redis"):
        t0 = time.monotonic()
        res = fb.map_reduce.run(10, executor="inline", store=layer, return_run=True)
    assert res.state is S and time.monotonic() - t0 < 20
    assert layer.degraded and layer.counts(res.id) == {"SUCCEEDED": 11}
    warnings = [r for r in caplog.records if r.name == "gflow.store.redis" and r.levelno == logging.WARNING]
    assert len(warnings) == 1  # one warning, not one per write
    assert_complete(layer.durable, res.id, 11)


# -- counters ------------------------------------------------------------------------------------------


def test_failure_messages_reach_stream_and_subscribers(layer):
    rid = new_run(layer)
    got = []
    ready = threading.Event()
    th = threading.Thread(target=lambda: got.extend(layer.subscribe(rid, timeout=20, ready=ready)))
    th.start()
    assert ready.wait(5)
    layer.apply([Transition("r1.1", rid, P, 1, 1.25), Transition("r1.1", rid, State.FAILED, 1, 2.5,
                                                                  error="ValueError: naïve \"quote\"\nline 2")])
    layer.set_run_state(rid, R, 3.0)
    layer.set_run_state(rid, State.FAILED, 4.0, error="TaskFailed: r1.1")
    th.join(20)
    assert [(e["task_run_id"], e["state"], e["message"]) for e in got] == [
        ("r1.1", "PENDING", None), ("r1.1", "FAILED", 'ValueError: naïve "quote"\nline 2'),
        (None, "RUNNING", None), (None, "FAILED", "TaskFailed: r1.1")]
    recent = layer.recent_events(rid, 10)
    assert [(e["task_run_id"], e["state"], e["message"], e["ts"]) for e in recent] == [
        ("r1.1", "PENDING", None, 1.25), ("r1.1", "FAILED", 'ValueError: naïve "quote"\nline 2', 2.5),
        (None, "RUNNING", None, 3.0), (None, "FAILED", "TaskFailed: r1.1", 4.0)]
    assert layer.counts(rid) == {"FAILED": 1}


def test_inconsistent_counters_are_rebuilt(layer, redis_server):
    rid = new_run(layer)
    layer.apply([Transition(f"r1.{i}", rid, P, 1, 1.0) for i in range(6)])
    layer.apply([Transition(f"r1.{i}", rid, S, 1, 2.0) for i in range(4)])
    assert redis_counts(redis_server, rid) == {"PENDING": 2, "SUCCEEDED": 4}
    c = redis_server.client()
    states, counts, live, _ = _keys(rid)
    c.hincrby(counts, "SUCCEEDED", 3)  # drifted: no longer adds up to the task runs in `states`
    assert layer.counts(rid) == {"PENDING": 2, "SUCCEEDED": 4}
    c.hdel(states, "r1.0", "r1.5")  # partly lost
    assert layer.counts(rid) == {"PENDING": 2, "SUCCEEDED": 4}
    c.delete(live)  # expired
    assert layer.counts(rid) == {"PENDING": 2, "SUCCEEDED": 4}
    assert redis_counts(redis_server, rid) == {"PENDING": 2, "SUCCEEDED": 4}


def test_out_of_order_redis_updates_converge_forward(layer, redis_server):
    """Two writers' durable writes land in one order and their Redis updates in the other."""
    rid = new_run(layer)
    layer.apply([Transition("r1.1", rid, P, 1, 1.0)])
    # the later state reaches Redis first, then the earlier one: Redis must keep the later
    def ev(state, ts):
        return {"run_id": rid, "task_run_id": "r1.1", "state": state, "attempt": 1, "ts": ts, "message": None}

    layer._publish({rid: [ev("SUCCEEDED", 3.0)]}, "test")
    layer._publish({rid: [ev("RUNNING", 2.0)]}, "test")
    assert redis_counts(redis_server, rid) == {"SUCCEEDED": 1}
    assert layer.counts(rid) == {"SUCCEEDED": 1}


def test_asubscribe(layer):
    rid = new_run(layer)

    async def consume():
        out = []
        async for ev in layer.asubscribe(rid, timeout=20):
            out.append(ev)
        return out

    def produce():
        Background._ready_probe(layer, rid)
        for s in (P, Q, R, S):
            layer.apply([Transition("r1.1", rid, s, 1, time.time())])
        layer.set_run_state(rid, R, time.time())
        layer.set_run_state(rid, S, time.time())

    async def main():
        task = asyncio.create_task(consume())
        await asyncio.to_thread(produce)
        return await asyncio.wait_for(task, 20)

    got = asyncio.run(main())
    assert [(e["task_run_id"], e["state"]) for e in got] == [
        ("r1.1", "PENDING"), ("r1.1", "QUEUED"), ("r1.1", "RUNNING"), ("r1.1", "SUCCEEDED"),
        (None, "RUNNING"), (None, "SUCCEEDED")]


def test_stream_is_bounded(redis_server, tmp_path):
    st = RedisLayer(SQLiteStore(tmp_path / "g.db"), redis_server.url, stream_maxlen=100)
    rid = new_run(st)
    for k in range(20):
        st.apply([Transition(f"r1.{k}{i:02d}", rid, P, 1, 1.0) for i in range(50)])
    n = redis_server.client().xlen(_keys(rid)[3])
    assert 100 <= n < 1000  # MAXLEN ~ trims whole macro nodes: about 100, never all 1000
    assert len(st.events(rid)) == 1000
    assert st.counts(rid) == {"PENDING": 1000}


def test_password_not_in_messages(tmp_path, caplog):
    layer = RedisLayer(SQLiteStore(tmp_path / "g.db"), "redis://:hunter2@127.0.0.1:9/0", retry_after=60)
    with caplog.at_level(logging.WARNING, logger="gflow.store.redis"):
        new_run(layer)
        layer.apply([Transition("r1.1", "r1", P, 1, 1.0)])
    assert layer.degraded and caplog.records
    assert all("hunter2" not in r.getMessage() for r in caplog.records)
    assert "***@127.0.0.1:9" in caplog.records[0].getMessage()


def test_layer_overrides_every_store_method():
    """A Store method the layer does not override would answer from the base class, not the durable store."""
    from gflow.store.base import Store

    public = {n for n, v in vars(Store).items() if callable(v) and not n.startswith("_")} - {"transition"}
    missing = sorted(n for n in public if getattr(RedisLayer, n) is getattr(Store, n))
    assert not missing, f"RedisLayer must delegate {missing} to the durable store"


def test_counts_many(layer, redis_server):
    for rid in ("a", "b", "c"):
        new_run(layer, rid)
    layer.apply([Transition(f"a.{i}", "a", P, 1, 1.0) for i in range(3)] + [Transition("b.1", "b", S, 1, 1.0)])
    redis_server.client().delete(_keys("b")[2])  # b's counters are not live: rebuilt on the way
    expected = {"a": {"PENDING": 3}, "b": {"SUCCEEDED": 1}, "c": {}, "nope": {}}
    assert layer.counts_many(["a", "b", "c", "nope"]) == expected
    assert redis_counts(redis_server, "b") == {"SUCCEEDED": 1}
    redis_server.stop(kill=True)
    assert layer.counts_many(["a", "b", "c", "nope"]) == expected and layer.degraded  # from the durable store


def test_unknown_run_leaves_no_keys(layer, redis_server):
    assert layer.counts("no-such-run") == {} and layer.counts_many(["no-such-run-2"]) == {"no-such-run-2": {}}
    assert redis_server.client().keys("gflow:*no-such-run*") == []
