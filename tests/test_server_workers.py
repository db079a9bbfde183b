"""The server scales out (issue 24): ``gflow server --workers N`` behind one port, events fanned out across
workers through the store's event log (woken by Redis pub/sub), resume cursors, a subscription limit per
token. Real server processes, a real redis-server, real websocket clients."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from gflow.server.app import create_app
from gflow.server.auth import AuthConfig
from gflow.server.schema import Limits
from gflow.server.testing import serve
from gflow.states import State
from gflow.store import RunRecord, Transition, open_store

pytest.importorskip("websockets")
from websockets.sync.client import connect  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRITE = "write-token-0123456789"
BATCHES = "subscription($id: ID!, $after: Int!) { runEventBatches(runId: $id, after: $after) { seq taskRunId state } }"
EVENTS = "subscription($id: ID!, $after: Int!) { runEvents(runId: $id, after: $after) { seq taskRunId state } }"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _ws(base: str, token: str | None = None):
    with connect(base.replace("http", "ws") + "/graphql", subprotocols=["graphql-transport-ws"],
                 max_size=None) as ws:
        yield _init(ws, token)


def _init(ws, token: str | None):
    ws.send(json.dumps({"type": "connection_init", "payload": {"Authorization": f"Bearer {token}"} if token else {}}))
    assert json.loads(ws.recv(10))["type"] == "connection_ack"
    return ws


def _subscribe(ws, query: str, run_id: str, after: int, sid: str = "1") -> None:
    ws.send(json.dumps({"id": sid, "type": "subscribe", "payload": {"query": query,
                                                                    "variables": {"id": run_id, "after": after}}}))


def _code(msg: dict) -> str | None:
    """The error code of a subscription's message (an error before the first event comes as a `next` with errors)."""
    errors = msg["payload"] if msg["type"] == "error" else msg["payload"].get("errors")
    return errors[0]["extensions"]["code"] if errors else None


def _next(ws, timeout: float = 30) -> dict:
    while True:
        msg = json.loads(ws.recv(timeout))
        if msg["type"] == "ping":
            ws.send(json.dumps({"type": "pong"}))
            continue
        return msg


class _Client(threading.Thread):
    """One subscriber: collects event seqs until the stream completes; ``drop_after`` events in, it closes its
    socket and resubscribes on a new one from the last seq it saw (a reconnect)."""

    def __init__(self, base: str, run_id: str, query: str, drop_after: int | None = None):
        super().__init__(daemon=True)
        self.base, self.run_id, self.query, self.drop_after = base, run_id, query, drop_after
        self.seqs: list[int] = []
        self.subscribed = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._follow(0)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _follow(self, after: int) -> None:
        with _ws(self.base) as ws:
            _subscribe(ws, self.query, self.run_id, after)
            self.subscribed.set()
            while True:
                msg = _next(ws)
                if msg["type"] == "complete":
                    return
                assert msg["type"] == "next", msg
                data = msg["payload"]["data"]
                evs = data.get("runEventBatches") or [data["runEvents"]]
                self.seqs += [e["seq"] for e in evs]
                if self.drop_after is not None and len(self.seqs) >= self.drop_after:
                    self.drop_after = None
                    break
        self._follow(self.seqs[-1])  # a new socket, maybe another worker: resume from the cursor


@pytest.fixture
def redis_url(tmp_path):
    from test_redis_layer import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; scripts/apt-packages.txt)")
    d = tmp_path / "redis"
    d.mkdir()
    srv = RedisServer(d)
    srv.start()
    yield srv.url
    srv.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_workers_share_one_port_and_every_subscriber_sees_every_event_in_order(tmp_path, redis_url):
    url = f"sqlite:///{tmp_path}/g.db"
    st = open_store(url, events=redis_url)
    st.create_run(RunRecord(id="wk", flow="f", created=time.time()))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GFLOW_HOME": str(tmp_path), "GFLOW_SERVER_WRITE_TOKENS": WRITE}
    server = subprocess.Popen([sys.executable, "-m", "gflow", "server", "--store", url, "--events", redis_url,
                               "--port", str(port), "--workers", "3", "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        pids = set()
        deadline = time.monotonic() + 60
        while len(pids) < 3:  # three worker processes answer on the one port
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
            try:
                pids.add(httpx.get(f"{base}/healthz", timeout=2).json()["pid"])
            except (httpx.TransportError, ValueError):
                time.sleep(0.1)
        clients = [_Client(base, "wk", BATCHES if i % 2 else EVENTS, drop_after=40 if i in (2, 5) else None)
                   for i in range(8)]
        for c in clients:
            c.start()
        for c in clients:
            assert c.subscribed.wait(20)
        watching: dict[int, int] = {}
        for _ in range(60):  # the subscriptions landed on more than one worker
            h = httpx.get(f"{base}/healthz", timeout=2).json()
            watching[h["pid"]] = h["watched_runs"]
        assert sum(1 for n in watching.values() if n) >= 2, watching
        st.set_run_state("wk", State.RUNNING, time.time())
        for s in (State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED):
            for k in range(0, 60, 20):  # written by this process: each worker hears of it through Redis
                st.apply([Transition(f"wk.{i}", "wk", s, 1, time.time(), task="m:t", name="t")
                          for i in range(k, k + 20)])
                time.sleep(0.02)
        # the run's end, recorded through whichever worker takes this request
        r = httpx.post(f"{base}/graphql", headers={"Authorization": f"Bearer {WRITE}"}, timeout=10, json={
            "query": 'mutation { cancelRun(id: "wk", reason: "test") { run { state } } }'})
        assert r.json()["data"]["cancelRun"]["run"]["state"] == "CANCELLED", r.text
        for c in clients:
            c.join(30)
            assert not c.is_alive() and c.error is None, c.error
        log = st.events("wk")
        end = next(i for i, e in enumerate(log) if e.task_run_id is None and e.state is State.CANCELLED)
        want = [e.seq for e in log[:end + 1]]
        assert len(want) == 2 + 4 * 60
        for c in clients:  # no gap, no duplicate, in order, across reconnects too
            assert c.seqs == want
    finally:
        server.terminate()
        server.wait(20)
        st.close()
    assert server.returncode == 0 or server.returncode == -15
    assert not any(p for p in pids if _alive(p)), "worker processes outlived the server"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_refuse_a_store_that_lives_in_one_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "gflow", "server", "--store", "mongomock://x/db", "--workers", "2"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                            "GFLOW_HOME": str(tmp_path)})
    assert r.returncode != 0
    assert "--workers 2 needs a store every worker process can open" in r.stderr
    assert "Traceback" not in r.stderr


def test_subscriptions_are_limited_per_token(tmp_path):
    url = f"sqlite:///{tmp_path}/g.db"
    st = open_store(url)
    st.create_run(RunRecord(id="lim", flow="f", created=time.time()))
    st.set_run_state("lim", State.RUNNING, time.time())  # a backlog of one event: each subscription's first message
    other = "other-token-0123456789"
    app = create_app(st, auth=AuthConfig(write_tokens=(WRITE, other)), limits=Limits(max_subscriptions_per_token=2))
    with serve(app) as base, contextlib.ExitStack() as stack:
        a, b = stack.enter_context(_ws(base, WRITE)), stack.enter_context(_ws(base, WRITE))
        _subscribe(a, BATCHES, "lim", 0, "1")
        _subscribe(a, BATCHES, "lim", 0, "2")
        assert _next(a)["type"] == "next" and _next(a)["type"] == "next"
        _subscribe(b, BATCHES, "lim", 0, "3")  # a third, on another socket with the same token
        msg = _next(b)
        assert _code(msg) == "TOO_MANY_SUBSCRIPTIONS", msg
        c = stack.enter_context(_ws(base, other))  # another token has its own allowance
        _subscribe(c, BATCHES, "lim", 0, "4")
        assert _next(c)["type"] == "next"
        a.send(json.dumps({"id": "1", "type": "complete"}))  # closing one frees a slot
        deadline = time.monotonic() + 10
        for attempt in range(100):
            _subscribe(b, BATCHES, "lim", 0, f"5.{attempt}")
            while (msg := _next(b))["id"] != f"5.{attempt}" or msg["type"] == "complete":
                pass
            if _code(msg) is None:
                break
            assert time.monotonic() < deadline, msg
            time.sleep(0.1)
    st.close()


def test_over_mongodb_without_change_streams_subscriptions_poll_the_event_log(tmp_path):
    """mongomock (like a standalone mongod) has no change streams: the store says so once, the hub polls the
    event log instead, and a subscriber still gets every event in order. (The change-stream path needs a
    replica set, which this machine does not run.)"""
    pytest.importorskip("mongomock")
    st = open_store("mongomock://scale/gflow")
    assert st.can_subscribe is False  # type: ignore[attr-defined]
    st.create_run(RunRecord(id="mg", flow="f", created=time.time()))
    st.set_run_state("mg", State.RUNNING, time.time())
    app = create_app(st)
    with serve(app) as base, _ws(base) as ws:
        _subscribe(ws, BATCHES, "mg", 0)
        seqs = [e["seq"] for e in _next(ws)["payload"]["data"]["runEventBatches"]]
        assert app.state.gflow.hub.pushes is False
        for s in (State.PENDING, State.QUEUED, State.SUCCEEDED):
            st.apply([Transition(f"mg.{i}", "mg", s, 1, time.time(), task="t", name="t") for i in range(5)])
        st.set_run_state("mg", State.SUCCEEDED, time.time())
        while (msg := _next(ws))["type"] == "next":
            seqs += [e["seq"] for e in msg["payload"]["data"]["runEventBatches"]]
        assert seqs == [e.seq for e in st.events("mg")] and len(seqs) == 17
    assert st.counts_by_task("mg") == {"t": {"SUCCEEDED": 5}}


@pytest.mark.integration
@pytest.mark.slow
def test_a_worker_that_dies_is_restarted_and_sigterm_stops_them_all(tmp_path):
    import signal

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GFLOW_HOME": str(tmp_path)}
    server = subprocess.Popen([sys.executable, "-m", "gflow", "server", "--store", f"sqlite:///{tmp_path}/g.db",
                               "--port", str(port), "--workers", "2", "--log-level", "warning"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def pids_answering(n: int, deadline: float) -> set[int]:
        seen: set[int] = set()
        while len(seen) < n:
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
            try:
                seen.add(httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).json()["pid"])
            except (httpx.TransportError, ValueError):
                time.sleep(0.1)
        return seen

    try:
        first = pids_answering(2, time.monotonic() + 60)
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            now = pids_answering(2, deadline)
            if victim not in now and len(now - first) == 1:
                break
            time.sleep(0.2)
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        time.sleep(0.5)
        assert not any(_alive(p) for p in now)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
