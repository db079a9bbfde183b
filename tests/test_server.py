"""The GraphQL server over real HTTP and websockets: a real uvicorn on a loopback port, real flow runs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("strawberry")
httpx = pytest.importorskip("httpx")
ws_client = pytest.importorskip("websockets.sync.client")

import gflow  # noqa: E402
from gflow.objects import Molecule, Protein  # noqa: E402
from gflow.server.app import create_app  # noqa: E402
from gflow.server.auth import AuthConfig  # noqa: E402
from gflow.server.schema import Limits  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Transition, open_store  # noqa: E402
from gflow.store.sqlite import SQLiteStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRITE, READ = "write-token-0123456789", "read-token-0123456789"

# -- tasks and flows (executor="local": threads, so they need not be importable by workers) ----------

GATE = threading.Event()


@gflow.task
def double(x: int) -> int:
    return 2 * x


@gflow.task
def gated(x: int) -> int:
    GATE.wait(30)
    return x


@gflow.task
def add_all(xs: list[int]) -> int:
    return sum(xs)


@gflow.task(retries=1)
def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


@gflow.flow
def fan(n: int = 5) -> int:
    return add_all(double.map(range(n)))


@gflow.flow
def wide(n: int = 250) -> list[int]:
    return double.map(range(n))


@gflow.flow
def waiting(n: int = 3) -> int:
    return add_all(gated.map(range(n)))


@gflow.flow
def failing() -> int:
    ok = double(1)
    return boom(ok)


# -- helpers ---------------------------------------------------------------------------------------------

@pytest.fixture
def db(gflow_home) -> str:
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    # create the file before threads race to: concurrent first opens of a new SQLite file can fail "locked"
    open_store(url).close()
    return url


@pytest.fixture
def server(db):
    """Start a server over the test's store; ``server(auth=..., limits=...)`` returns a Client."""
    stack = []

    def start(auth: AuthConfig | None = None, limits: Limits | None = None, store=None) -> Client:
        st = store or open_store(db)
        cm = serve(create_app(st, auth=auth, limits=limits, close_store=True))
        url = cm.__enter__()
        stack.append(cm)
        return Client(url)

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)


class Client:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)

    def post(self, query: str, token: str | None = None, **variables):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)

    def data(self, query: str, token: str | None = None, **variables) -> dict:
        r = self.post(query, token, **variables)
        body = r.json()
        assert r.status_code == 200 and not body.get("errors"), body
        return body["data"]

    def error(self, query: str, token: str | None = None, status: int = 200, **variables) -> dict:
        r = self.post(query, token, **variables)
        assert r.status_code == status, (r.status_code, r.text)
        errors = r.json()["errors"]
        assert errors, r.text
        return errors[0]

    def subscribe(self, query: str, variables: dict, *, init: dict | None = None, timeout: float = 30.0):
        """A graphql-transport-ws subscription: yields each `next` payload until `complete`."""
        ws_url = self.url.replace("http://", "ws://") + "/graphql"
        with ws_client.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
            ws.send(json.dumps({"type": "connection_init", "payload": init or {}}))
            ack = json.loads(ws.recv(timeout))
            assert ack["type"] == "connection_ack", ack
            ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query, "variables": variables}}))
            while True:
                msg = json.loads(ws.recv(timeout))
                if msg["type"] == "ping":
                    ws.send(json.dumps({"type": "pong"}))
                elif msg["type"] == "next":
                    yield msg["payload"]
                elif msg["type"] == "error":
                    yield {"errors": msg["payload"]}
                    return
                elif msg["type"] == "complete":
                    return


def run_in_thread(flow, store_url: str, **kwargs):
    """Start ``flow.run`` in a thread; returns (thread, box) where box gets 'result' or 'error'."""
    box: dict = {}

    def target():
        try:
            box["result"] = flow.run(store=store_url, executor="local", return_run=True, **kwargs)
        except BaseException as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    return th, box


def wait_for_run(store, flow_name: str, n_tasks: int, timeout: float = 20.0):
    """The run of ``flow_name`` once it has ``n_tasks`` task runs RUNNING (or more)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = store.list_runs(flow=flow_name)
        if runs and store.counts(runs[0].id).get("RUNNING", 0) >= n_tasks:
            return runs[0]
        time.sleep(0.02)
    raise AssertionError(f"no running run of {flow_name}")


@pytest.fixture
def gate():
    GATE.clear()
    yield GATE
    GATE.set()


# -- queries ---------------------------------------------------------------------------------------------

RUN_FIELDS = """id flow flowPath state params executor imageTag created started ended duration tags error
                countsByState { state count } taskRunCount lastEventSeq host pid"""


def test_run_query_has_counts_params_and_timings(server, db):
    r = fan.run(4, store=db, executor="local", tags=["exp1"], return_run=True)
    c = server()
    run = c.data(f"query($id: ID!) {{ run(id: $id) {{ {RUN_FIELDS} }} }}", id=r.id)["run"]
    assert run["id"] == r.id and run["flow"] == "fan" and run["state"] == "SUCCEEDED"
    assert run["params"] == {"n": 4}
    assert run["executor"] == "local" and run["imageTag"] is None and run["tags"] == ["exp1"]
    assert run["countsByState"] == [{"state": "SUCCEEDED", "count": 5}] and run["taskRunCount"] == 5
    assert run["started"] <= run["ended"] and run["duration"] == pytest.approx(run["ended"] - run["started"])
    assert run["flowPath"].endswith(":fan") and run["pid"] == os.getpid()
    st = open_store(db)
    assert run["lastEventSeq"] == st.events(r.id)[-1].seq
    # a unique prefix of the id works, as on the CLI
    assert c.data("query($id: ID!) { run(id: $id) { id } }", id=r.id[:-2])["run"]["id"] == r.id


def test_runs_filters_and_cursor_pagination(server, db):
    ids = []
    for i in range(5):
        ids.append(fan.run(1, store=db, executor="local", tags=["even" if i % 2 == 0 else "odd"],
                           return_run=True).id)
    failed = failing.run(store=db, executor="local", return_run=True)
    assert failed.state is State.FAILED
    c = server()
    q = """query($flow: String, $state: State, $tag: String, $since: Float, $until: Float, $after: String) {
             runs(flow: $flow, state: $state, tag: $tag, since: $since, until: $until, first: 2, after: $after) {
               items { id state tags created } nextCursor hasNextPage } }"""
    seen, after = [], None
    while True:
        page = c.data(q, flow="fan", after=after)["runs"]
        assert len(page["items"]) <= 2 and page["hasNextPage"] == (page["nextCursor"] is not None)
        seen += [r["id"] for r in page["items"]]
        after = page["nextCursor"]
        if after is None:
            break
    assert seen == list(reversed(ids))  # newest first, each once
    assert [r["id"] for r in c.data(q, tag="odd")["runs"]["items"]] == [ids[3], ids[1]]
    assert [r["id"] for r in c.data(q, state="FAILED")["runs"]["items"]] == [failed.id]
    st = open_store(db)
    created = {r.id: r.created for r in st.list_runs(limit=100)}
    window = c.data(q, flow="fan", since=created[ids[1]], until=created[ids[3]])["runs"]["items"]
    assert [r["id"] for r in window] == [ids[2], ids[1]]
    err = c.error(q, after="not-a-cursor")
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "cursor" in err["message"]


def test_task_runs_cursor_walk_over_250(server, db):
    r = wide.run(250, store=db, executor="local", return_run=True)
    assert r.state is State.SUCCEEDED
    c = server()
    q = """query($run: ID!, $after: String, $state: State, $task: String) {
             taskRuns(runId: $run, first: 100, after: $after, state: $state, task: $task) {
               items { id name state mapIndex resultRef resultInline executorHandle } nextCursor hasNextPage } }"""
    ids, after, pages = [], None, 0
    while True:
        page = c.data(q, run=r.id, after=after)["taskRuns"]
        pages += 1
        ids += [t["id"] for t in page["items"]]
        assert all(t["state"] == "SUCCEEDED" and t["name"] == "double" for t in page["items"])
        after = page["nextCursor"]
        if after is None:
            break
    assert pages == 3 and len(ids) == 250 and len(set(ids)) == 250
    assert ids == [f"{r.id}.{i}" for i in range(1, 251)]  # creation order
    first = c.data(q, run=r.id)["taskRuns"]["items"][7]
    assert first["mapIndex"] == 7 and json.loads(first["resultInline"]) == 14 and first["resultRef"]
    assert first["executorHandle"]
    assert c.data(q, run=r.id, state="FAILED")["taskRuns"]["items"] == []
    assert len(c.data(q, run=r.id, task="double")["taskRuns"]["items"]) == 100
    assert c.data(q, run=r.id, task="nope")["taskRuns"] == {"items": [], "nextCursor": None, "hasNextPage": False}


def test_task_run_attempts_error_traceback_logs_and_lineage(server, db):
    r = failing.run(store=db, executor="local", return_run=True)
    c = server()
    st = open_store(db)
    trs = st.task_runs(r.id)
    ok, bad = trs[0], trs[1]
    t = c.data("""query($id: ID!) { taskRun(id: $id) { id runId task name state attempt error traceback duration
                   attempts { attempt state queued started ended message } events { seq state attempt }
                   logs { kind command } upstreamIds run { id state } } }""", id=bad.id)["taskRun"]
    assert t["state"] == "FAILED" and t["attempt"] == 2 and t["name"] == "boom"
    assert "boom 2" in t["error"] and "ValueError" in t["traceback"]
    assert [(a["attempt"], a["state"]) for a in t["attempts"]] == [(1, "RETRYING"), (2, "FAILED")]
    assert all(a["started"] and a["ended"] >= a["started"] for a in t["attempts"])
    assert [e["seq"] for e in t["events"]] == [e.seq for e in st.events(r.id) if e.task_run_id == bad.id]
    assert t["logs"] == {"kind": "event-log", "command": f"gflow logs {r.id} --task-run {bad.id}"}
    assert t["upstreamIds"] == [ok.id] and t["run"] == {"id": r.id, "state": "FAILED"}
    lq = """query($id: ID!, $depth: Int!) { lineage(taskRunId: $id, depth: $depth) {
              taskRun { id } upstream { id } downstream { id state } edges { upstream downstream } truncated } }"""
    down = c.data(lq, id=ok.id, depth=1)["lineage"]
    assert down["upstream"] == [] and down["downstream"] == [{"id": bad.id, "state": "FAILED"}]
    assert down["edges"] == [{"upstream": ok.id, "downstream": bad.id}] and down["truncated"] is False
    up = c.data(lq, id=bad.id, depth=2)["lineage"]
    assert up["upstream"] == [{"id": ok.id}] and up["downstream"] == []
    assert c.error(lq, id=bad.id, depth=99)["extensions"]["code"] == "BAD_USER_INPUT"


@gflow.task
def extend(p: Protein) -> Protein:
    return Protein(sequence=p.sequence + "A")


@gflow.flow
def evolve(p: Protein) -> Protein:
    return extend(extend(p))


def test_object_lineage_by_content_id(server, db):
    parent = Protein(sequence="MKTAYIAKQR")
    r = evolve.run(parent, store=db, executor="local", return_run=True)
    child, grandchild = Protein(sequence="MKTAYIAKQRA"), r.value
    assert grandchild.sequence == "MKTAYIAKQRAA"
    c = server()
    q = """query($cid: String!) { objectLineage(contentId: $cid) {
             contentId producedBy { id name } inputs consumedBy { id } } }"""
    mid = c.data(q, cid=child.content_id)["objectLineage"]
    assert mid["producedBy"] == [{"id": f"{r.id}.1", "name": "extend"}] and mid["inputs"] == [parent.content_id]
    assert mid["consumedBy"] == [{"id": f"{r.id}.2"}]
    assert c.data(q, cid=parent.content_id)["objectLineage"]["producedBy"] == []
    assert c.data(q, cid="no-such-object")["objectLineage"] == {
        "contentId": "no-such-object", "producedBy": [], "inputs": [], "consumedBy": []}
    objs = c.data("""query($id: ID!) { taskRuns(runId: $id) { items { id objects { inputs outputs } } } }""",
                  id=r.id)["taskRuns"]["items"]
    assert objs[1]["objects"] == {"inputs": [child.content_id], "outputs": [grandchild.content_id]}


def test_lineage_walks_several_hops(server, db):
    r = fan.run(3, store=db, executor="local", return_run=True)
    c = server()
    total = f"{r.id}.4"  # add_all over the three doubles
    got = c.data("""query($id: ID!) { lineage(taskRunId: $id, depth: 3) { upstream { id } edges { upstream } } }""",
                 id=total)["lineage"]
    assert sorted(u["id"] for u in got["upstream"]) == [f"{r.id}.{i}" for i in (1, 2, 3)]


def test_counts_are_batched_for_a_page_of_runs(server, db, monkeypatch):
    from gflow.server import loaders

    for _ in range(6):
        fan.run(2, store=db, executor="local")
    calls = []
    real = loaders.counts_many

    def counting(store, ids):
        calls.append(list(ids))
        return real(store, ids)

    monkeypatch.setattr(loaders, "counts_many", counting)
    c = server()
    runs = c.data("{ runs(first: 20) { items { id countsByState { state count } taskRunCount } } }")["runs"]["items"]
    assert len(runs) == 6 and all(r["taskRunCount"] == 3 for r in runs)
    assert len(calls) == 1 and set(calls[0]) == {r["id"] for r in runs}  # one read for all runs
    st = open_store(db)
    assert real(st, [r["id"] for r in runs]) == {r["id"]: st.counts(r["id"]) for r in runs}


def test_generic_store_path_matches_sqlite_fast_path(db):
    """Stores other than the embedded SQLite one go through the Store interface; same answers."""
    from gflow.server import loaders

    class OtherStore(SQLiteStore):  # not the SQLite type itself: takes the generic path
        pass

    r = failing.run(store=db, executor="local", return_run=True)
    fan.run(2, store=db, executor="local")
    fast, generic = open_store(db), OtherStore(open_store(db).path)
    ids = [x.id for x in fast.list_runs()] + ["missing"]
    trs = [t.id for t in fast.task_runs(r.id)] + ["missing.1"]
    assert loaders.counts_many(fast, ids) == loaders.counts_many(generic, ids)
    assert loaders.runs_many(fast, ids) == loaders.runs_many(generic, ids)
    assert loaders.task_runs_many(fast, trs) == loaders.task_runs_many(generic, trs)
    keys = [(r.id, t) for t in trs]
    assert loaders.task_events_many(fast, keys) == loaders.task_events_many(generic, keys)
    assert loaders.last_event_seq(fast, r.id) == loaders.last_event_seq(generic, r.id) > 0
    assert loaders.downstream_many(fast, r.id, trs) == loaders.downstream_many(generic, r.id, trs)
    assert loaders.objects_many(fast, trs) == loaders.objects_many(generic, trs)


# -- limits and bad input --------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors_and_the_server_stays_up(server, db):
    r = fan.run(2, store=db, executor="local", return_run=True)
    c = server()
    err = c.error("{ runs(first: 501) { items { id } } }")
    assert err["extensions"] == {"code": "BAD_USER_INPUT", "maxPageSize": 500} and "500" in err["message"]
    assert c.error("query($id: ID!) { taskRuns(runId: $id, first: 0) { items { id } } }", id=r.id)["extensions"][
        "code"] == "BAD_USER_INPUT"
    too_deep = "{ lineage(taskRunId: \"x\") { taskRun { run { countsByState { state } } } } }"
    assert c.data("{ runs { items { id } } }")  # a fine query
    limited = server(limits=Limits(max_depth=3))
    err = limited.error(too_deep)
    assert "exceeds maximum operation depth of 3" in err["message"]
    assert limited.error(too_deep.replace("x", "y"))  # rejected before any resolver runs, every time
    aliases = "{ " + " ".join(f"a{i}: runs {{ nextCursor }}" for i in range(25)) + " }"
    assert "aliases" in c.error(aliases)["message"].lower()
    err = c.error("{ runs { items { id } ")
    assert "Syntax Error" in err["message"]
    assert "Cannot query field" in c.error("{ nope }")["message"]
    err = c.error('{ run(id: "no-such-run") { id } }')
    assert err["extensions"]["code"] == "NOT_FOUND" and "no-such-run" in err["message"]
    assert "gflow.db" not in err["message"]  # the store's URL is not echoed
    assert c.error('{ taskRun(id: "no.1") { id } }')["extensions"]["code"] == "NOT_FOUND"
    assert c.error('{ taskRuns(runId: "no-such-run") { items { id } } }')["extensions"]["code"] == "NOT_FOUND"
    bad_json = c.http.post("/graphql", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    big = c.http.post("/graphql", json={"query": "{ runs { items { id } } }", "pad": "x" * 300_000})
    assert big.status_code == 413
    # still answering
    assert c.http.get("/healthz").json()["ok"] is True
    assert c.data("query($id: ID!) { run(id: $id) { state } }", id=r.id)["run"]["state"] == "SUCCEEDED"


def test_request_timeout_answers_504(server, db):
    class SlowStore(SQLiteStore):
        def list_runs(self, **kw):
            time.sleep(1.0)
            return super().list_runs(**kw)

    c = server(store=SlowStore(open_store(db).path), limits=Limits(request_timeout=0.2))
    r = c.post("{ runs { items { id } } }")
    assert r.status_code == 504 and r.json()["errors"][0]["extensions"]["code"] == "TIMEOUT"
    assert c.http.get("/").status_code == 200


def test_store_outage_is_a_clear_error_and_the_server_recovers(server, db):
    from gflow.errors import StoreError

    class FlakyStore(SQLiteStore):
        down = False

        def list_runs(self, **kw):
            if self.down:
                raise StoreError(f"state store {self.path} is locked by another process (waited 30s)")
            return super().list_runs(**kw)

    r = fan.run(1, store=db, executor="local", return_run=True)
    st = FlakyStore(open_store(db).path)
    c = server(store=st)
    st.down = True
    err = c.error("{ runs { items { id } } }")
    assert err["extensions"]["code"] == "STORE_UNAVAILABLE" and "locked" in err["message"]
    assert st.path not in err["message"]
    health = c.http.get("/healthz")
    assert health.status_code == 503 and health.json()["ok"] is False
    st.down = False
    assert c.data("{ runs { items { id } } }")["runs"]["items"] == [{"id": r.id}]
    assert c.http.get("/healthz").status_code == 200


# -- auth and mutations ----------------------------------------------------------------------------------

CANCEL = "mutation($id: ID!) { cancelRun(id: $id, reason: \"test\") { run { id state error } unfinishedTaskRuns } }"


def test_mutations_need_a_write_token(server, db):
    r = fan.run(2, store=db, executor="local", return_run=True)
    c = server(auth=AuthConfig(write_tokens=(WRITE,), read_tokens=(READ,)))
    err = c.error(CANCEL, status=401, id=r.id)
    assert err["extensions"]["code"] == "UNAUTHENTICATED"
    err = c.error(CANCEL, READ, status=403, id=r.id)
    assert err["extensions"]["code"] == "FORBIDDEN" and "only allows reads" in err["message"]
    wrong = c.post(CANCEL, "not-a-real-token", id=r.id)
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert "not-a-real-token" not in wrong.text
    malformed = c.http.post("/graphql", json={"query": "{ runs { items { id } } }"},
                            headers={"Authorization": f"Basic {WRITE}"})
    assert malformed.status_code == 401
    # reads are open here; a read token works for reads too
    assert c.data("{ runs { items { id } } }")["runs"]["items"][0]["id"] == r.id
    assert c.data("{ runs { items { id } } }", READ)["runs"]["items"][0]["id"] == r.id
    # with the write token: a finished run cannot be cancelled
    err = c.error(CANCEL, WRITE, id=r.id)
    assert err["extensions"]["code"] == "CONFLICT" and "SUCCEEDED" in err["message"]
    tr = f"{r.id}.1"
    err = c.error("mutation($id: ID!) { retryTask(taskRunId: $id) { id } }", WRITE, id=tr)
    assert err["extensions"]["code"] == "CONFLICT" and "only a FAILED or CANCELLED" in err["message"]
    err = c.error("mutation($id: ID!) { replayRun(id: $id) { id } }", WRITE, id=r.id)
    assert err["extensions"]["code"] == "BAD_USER_INPUT" and "no image tag" in err["message"]
    assert c.error("mutation($id: ID!) { replayRun(id: $id) { id } }", status=401, id=r.id)
    assert c.error('mutation { retryTask(taskRunId: "nope.1") { id } }', WRITE)["extensions"]["code"] == "NOT_FOUND"
    # a server without write tokens refuses every mutation
    closed = server()
    assert closed.error(CANCEL, status=403, id=r.id)["extensions"]["code"] == "FORBIDDEN"


def test_cancel_run_cancels_a_live_run(server, db, gate):
    c = server(auth=AuthConfig(write_tokens=(WRITE,)))
    th, box = run_in_thread(waiting, db, n=3)
    st = open_store(db)
    run = wait_for_run(st, "waiting", 3)
    # the pending add_all is recorded within 0.5 s (a PENDING row waits that long to merge with the next)
    deadline = time.monotonic() + 15
    while sum(st.counts(run.id).values()) < 4:
        assert time.monotonic() < deadline, st.counts(run.id)
        time.sleep(0.02)
    out = c.data(CANCEL, WRITE, id=run.id)["cancelRun"]
    assert out["run"]["state"] == "CANCELLED" and "cancelRun" in out["run"]["error"] and "test" in out["run"]["error"]
    assert out["unfinishedTaskRuns"] == 4  # three gated + the pending add_all
    # the driver watches its run: it cancels its calls while the tasks are still blocked
    deadline = time.monotonic() + 15
    while st.counts(run.id) != {"CANCELLED": 4}:
        assert time.monotonic() < deadline, st.counts(run.id)
        time.sleep(0.05)
    th.join(15)
    assert not th.is_alive() and box["result"].state is State.CANCELLED
    assert st.get_run(run.id).state is State.CANCELLED
    assert c.error(CANCEL, WRITE, id=run.id)["extensions"]["code"] == "CONFLICT"


def test_read_tokens_protect_queries_and_subscriptions(server, db):
    r = fan.run(2, store=db, executor="local", return_run=True)
    c = server(auth=AuthConfig(write_tokens=(WRITE,), read_tokens=(READ,), require_read_token=True))
    missing = c.post("{ runs { items { id } } }")
    assert missing.status_code == 401 and missing.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert c.data("{ runs { items { id } } }", READ)["runs"]["items"][0]["id"] == r.id
    assert c.data("{ runs { items { id } } }", WRITE)["runs"]["items"][0]["id"] == r.id
    assert c.post("{ runs { items { id } } }", "wrong-token-123456").status_code == 401
    assert c.http.get("/").status_code == 200  # the page itself is static; its data needs the token
    sub = "subscription($id: ID!) { runEvents(runId: $id) { seq state } }"
    with pytest.raises(Exception) as e:  # the socket is closed with 4403 at connection_init
        list(c.subscribe(sub, {"id": r.id}))
    assert "4403" in str(e.value)
    with pytest.raises(Exception) as e:
        list(c.subscribe(sub, {"id": r.id}, init={"Authorization": "Bearer wrong-token-123456"}))
    assert "4403" in str(e.value)
    events = list(c.subscribe(sub, {"id": r.id}, init={"Authorization": f"Bearer {READ}"}))
    assert events and events[-1]["data"]["runEvents"]["state"] == "SUCCEEDED"
    # a mutation over the socket with only a read token is refused
    msgs = list(c.subscribe(CANCEL, {"id": r.id}, init={"Authorization": f"Bearer {READ}"}))
    assert msgs[0]["errors"][0]["extensions"]["code"] == "FORBIDDEN"


def test_tokens_come_from_env_and_are_never_shown():
    env = {"GFLOW_SERVER_WRITE_TOKENS": f"{WRITE}, other-write-token", "GFLOW_SERVER_READ_TOKENS": READ,
           "GFLOW_SERVER_REQUIRE_READ_TOKEN": "1"}
    auth = AuthConfig.from_options(environ=env)
    assert auth.role_of(WRITE).name == "WRITE" and auth.role_of("other-write-token").name == "WRITE"
    assert auth.role_of(READ).name == "READ" and auth.require_read_token
    assert WRITE not in repr(auth) and READ not in repr(auth) and WRITE not in str(auth)
    with pytest.raises(gflow.errors.ConfigError):
        AuthConfig(require_read_token=True)
    with pytest.raises(gflow.errors.ConfigError):
        AuthConfig(write_tokens=("short",))


# -- subscriptions ---------------------------------------------------------------------------------------

SUB = ("subscription($id: ID!, $after: Int!) { runEvents(runId: $id, after: $after) { "
       "seq runId taskRunId state attempt ts } }")


def test_subscription_streams_a_live_run_until_it_ends(server, db, gate):
    c = server()
    th, box = run_in_thread(waiting, db, n=3)
    st = open_store(db)
    run = wait_for_run(st, "waiting", 3)
    got: list[dict] = []
    done = threading.Event()

    def listen():
        for msg in c.subscribe(SUB, {"id": run.id, "after": 0}):
            got.append(msg)
        done.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    while not any(m["data"]["runEvents"]["state"] == "RUNNING" and m["data"]["runEvents"]["taskRunId"] for m in got):
        assert time.monotonic() < deadline, got
        time.sleep(0.02)
    seen_before_release = len(got)
    gate.set()  # the tasks finish only now, while we are subscribed
    assert done.wait(30), "the subscription did not complete after the run ended"
    th.join(10)
    assert box["result"].state is State.SUCCEEDED
    events = [m["data"]["runEvents"] for m in got]
    assert all("errors" not in m for m in got)
    stored = st.events(run.id)
    assert [e["seq"] for e in events] == [e.seq for e in stored]  # every event, in order, once
    assert len(events) > seen_before_release
    live = events[seen_before_release:]
    assert sum(1 for e in live if e["state"] == "SUCCEEDED" and e["taskRunId"]) == 4
    assert events[-1] == {**events[-1], "taskRunId": None, "state": "SUCCEEDED", "runId": run.id}


def test_subscription_after_the_end_replays_from_a_seq_and_completes(server, db):
    r = fan.run(2, store=db, executor="local", return_run=True)
    c = server()
    st = open_store(db)
    stored = st.events(r.id)
    everything = [m["data"]["runEvents"]["seq"] for m in c.subscribe(SUB, {"id": r.id, "after": 0})]
    assert everything == [e.seq for e in stored]
    mid = stored[3].seq
    tail = [m["data"]["runEvents"]["seq"] for m in c.subscribe(SUB, {"id": r.id, "after": mid})]
    assert tail == [e.seq for e in stored if e.seq > mid]
    batches = [m["data"]["runEventBatches"] for m in c.subscribe(
        "subscription($id: ID!) { runEventBatches(runId: $id) { seq taskRunId state } }", {"id": r.id})]
    assert [e["seq"] for b in batches for e in b] == [e.seq for e in stored] and len(batches) < len(stored)
    err = list(c.subscribe(SUB, {"id": "no-such-run", "after": 0}))
    assert err[0]["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert c.http.get("/healthz").json()["ok"] is True


def test_subscription_uses_store_push_when_the_store_has_subscribe(server, db):
    """A store with ``subscribe(run_id)`` (the Redis layer) wakes the tail instead of the 50 ms poll."""
    import queue

    class PushStore(SQLiteStore):
        def __init__(self, path):
            super().__init__(path)
            self.subscribers: list[tuple[str, queue.Queue]] = []

        def push(self, run_id):
            for rid, q in self.subscribers:
                if rid == run_id:
                    q.put(run_id)

        def apply(self, transitions):
            refused = super().apply(transitions)
            for run_id in {t.run_id for t in transitions}:
                self.push(run_id)
            return refused

        def subscribe(self, run_id):
            q: queue.Queue = queue.Queue()
            self.subscribers.append((run_id, q))
            while True:
                yield q.get()

    push = PushStore(open_store(db).path)
    c = server(store=push, limits=Limits(poll_interval=10.0))  # polling alone would be far too slow
    r = fan.run(1, store=db, executor="local", return_run=True)  # a finished run: its backlog completes at once
    assert len(list(c.subscribe(SUB, {"id": r.id, "after": 0}))) == len(push.events(r.id))
    push.create_run(RunRecord(id="pushrun", flow="push", created=time.time()))
    push.set_run_state("pushrun", State.RUNNING, time.time())
    live: list[tuple[float, dict]] = []

    def listen():
        for m in c.subscribe(SUB, {"id": "pushrun", "after": 0}):
            live.append((time.monotonic(), m["data"]["runEvents"]))

    th = threading.Thread(target=listen, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    while "pushrun" not in [rid for rid, _ in push.subscribers]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    t0 = time.monotonic()
    push.apply([Transition("pushrun.1", "pushrun", State.PENDING, 1, time.time(), task="t", name="t")])
    while not any(e["taskRunId"] == "pushrun.1" for _, e in live):
        assert time.monotonic() - t0 < 5, live
        time.sleep(0.005)
    arrived = next(t for t, e in live if e["taskRunId"] == "pushrun.1")
    assert arrived - t0 < 0.5  # well under the 10 s poll and the 1 s safety net: the push woke the tail
    push.set_run_state("pushrun", State.SUCCEEDED, time.time())
    push.push("pushrun")
    th.join(10)
    assert not th.is_alive() and live[-1][1]["state"] == "SUCCEEDED"


def _slow_subscriber(db, run_id: str, hub_kw: dict, transitions: list[list[tuple[int, State]]]):
    """Subscribe, stall while the tail publishes ``transitions`` (one batch each), then read all; returns what came
    and the inbox's coalesced count, or the exception the stream ended with."""
    import asyncio

    from gflow.server.events import EventHub

    st = open_store(db)
    st.create_run(RunRecord(id=run_id, flow="slow", created=time.time()))
    st.set_run_state(run_id, State.RUNNING, time.time())

    async def call(fn, *a, **kw):
        return await asyncio.to_thread(fn, *a, **kw)

    async def main():
        hub = EventHub(st, call, poll_interval=0.01, **hub_kw)
        sub = hub.subscribe(run_id, after=0)
        first = await sub.__anext__()  # the backlog: the run's RUNNING event
        assert [e.state for e in first] == [State.RUNNING]
        for batch in transitions:  # while the subscriber does not read, the tail publishes batch after batch
            st.apply([Transition(f"{run_id}.{i}", run_id, s, 1, time.time(), task="t", name="t") for i, s in batch])
            await asyncio.sleep(0.05)
        st.set_run_state(run_id, State.SUCCEEDED, time.time())
        got: list = []
        try:
            async for b in sub:
                got += b
        except Exception as e:  # noqa: BLE001 - returned for the test to check
            return got, e
        finally:
            await hub.close()
        return got, None

    return asyncio.run(main())


def test_a_slow_subscriber_gets_coalesced_updates_latest_state_per_task_run(db):
    """Back-pressure (issue 24): a subscriber that does not read while 5 task runs go through 4 states gets, once
    it reads, the latest state of each task run and the run's end, in seq order, not all 20 events."""
    steps = [[(i, s) for i in range(5)] for s in (State.PENDING, State.QUEUED, State.RUNNING, State.SUCCEEDED)]
    got, err = _slow_subscriber(db, "slow", {"coalesce_after": 6}, steps)
    assert err is None
    assert [e.seq for e in got] == sorted(e.seq for e in got)
    task_events = [e for e in got if e.task_run_id]
    assert sorted(e.task_run_id for e in task_events) == [f"slow.{i}" for i in range(5)]
    assert {e.state for e in task_events} == {State.SUCCEEDED}
    assert got[-1].task_run_id is None and got[-1].state is State.SUCCEEDED


def test_a_subscriber_too_far_behind_even_coalesced_is_dropped_with_a_clear_error(db):
    """Past max_pending task-run states the subscriber is dropped with SlowSubscriber naming the seq to resume at."""
    from gflow.server.events import SlowSubscriber

    steps = [[(i, State.PENDING) for i in range(k * 4, k * 4 + 4)] for k in range(4)]
    got, err = _slow_subscriber(db, "slow2", {"coalesce_after": 2, "max_pending": 6}, steps)
    assert isinstance(err, SlowSubscriber) and "resubscribe with after=1" in str(err)
    assert got == []


@pytest.fixture
def redis_url(tmp_path):
    """A throwaway redis-server on a free loopback port."""
    import shutil

    pytest.importorskip("redis")
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = _free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.integration
def test_subscription_over_the_redis_layer_is_pushed(server, db, gate, redis_url, monkeypatch):
    """Over the Redis layer, pub/sub wakes the subscription: events arrive far sooner than the slow poll."""
    monkeypatch.setenv("GFLOW_EVENTS", redis_url)  # the flow's driver writes through the Redis layer too
    c = server(store=open_store(db, events=redis_url), limits=Limits(poll_interval=5.0))
    assert c.data("{ runs { items { id } } }")["runs"]["items"] == []
    th, box = run_in_thread(waiting, db, n=3)
    st = open_store(db)
    run = wait_for_run(st, "waiting", 3)
    got: list[tuple[float, dict]] = []

    def listen():
        for m in c.subscribe(SUB, {"id": run.id, "after": 0}):
            got.append((time.time(), m["data"]["runEvents"]))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    deadline = time.monotonic() + 10
    while not any(e["state"] == "RUNNING" and e["taskRunId"] for _, e in got):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(1.5)  # past the quick re-reads: the tail now sleeps until a push (or the 1 s safety net)
    n_before = len(got)
    gate.set()
    listener.join(30)
    th.join(10)
    assert box["result"].state is State.SUCCEEDED
    assert [e["seq"] for _, e in got] == [e.seq for e in st.events(run.id)]
    lags = [t - e["ts"] for t, e in got[n_before:]]
    assert lags and max(lags) < 0.8, lags  # pushed: no 5 s poll, no 1 s safety-net wait


# -- the command ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_gflow_server_command_on_embedded_defaults(gflow_home, db):
    r = fan.run(2, store=db, executor="local", return_run=True)  # the default store of this gflow home
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "GFLOW_SERVER_WRITE_TOKENS": WRITE}
    proc = subprocess.Popen([sys.executable, "-m", "gflow", "server", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() else ""
            time.sleep(0.1)
        c = Client(url)
        assert c.data("{ runs { items { id state } } }")["runs"]["items"] == [{"id": r.id, "state": "SUCCEEDED"}]
        assert c.error(CANCEL, status=401, id=r.id)["extensions"]["code"] == "UNAUTHENTICATED"
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    assert "gflow server on http://127.0.0.1:" in out and "1 write token" in out
    assert WRITE not in out  # tokens are never printed


def test_server_command_help_lists_its_options():
    from click.testing import CliRunner

    from gflow.cli import main

    res = CliRunner().invoke(main, ["server", "--help"])
    assert res.exit_code == 0
    for opt in ("--host", "--port", "--store", "--events", "--profile", "--token-write", "--token-read",
                "--require-read-token"):
        assert opt in res.output


# -- the dashboard's queries -------------------------------------------------------------------------------

OVERVIEW = """query($id: ID!, $max: Int) { runOverview(runId: $id, maxRows: $max) {
  run { id state } groups { key name index total done isMap countsByState { state count } medianDuration }
  edges { source target count } rows rowCount taskRunCount truncated lastEventSeq lastRowId } }"""


def test_run_overview_groups_a_map_into_one_node_with_columns(server, db):
    r = fan.run(4, store=db, executor="local", return_run=True)
    c = server()
    ov = c.data(OVERVIEW, id=r.id)["runOverview"]
    assert ov["run"] == {"id": r.id, "state": "SUCCEEDED"} and ov["taskRunCount"] == 5 and not ov["truncated"]
    double, add = ov["groups"]
    assert (double["name"], double["total"], double["done"], double["isMap"]) == ("double", 4, 4, True)
    assert (add["name"], add["total"], add["isMap"]) == ("add_all", 1, False)
    assert double["countsByState"] == [{"state": "SUCCEEDED", "count": 4}] and double["medianDuration"] >= 0
    assert ov["edges"] == [{"source": double["key"], "target": add["key"], "count": 4}]  # 4 results into add_all
    rows = ov["rows"]
    st = open_store(db)
    trs = st.task_runs(r.id)
    assert rows["prefix"] == f"{r.id}." and rows["t0"] == st.get_run(r.id).created
    assert rows["id"] == [t.id.removeprefix(f"{r.id}.") for t in trs] == ["1", "2", "3", "4", "5"]
    assert [rows["groups"][g]["name"] for g in rows["g"]] == [t.name for t in trs]
    assert [rows["states"][s] for s in rows["s"]] == ["SUCCEEDED"] * 5 and rows["m"] == [0, 1, 2, 3, None]
    assert rows["t"][0] == int((trs[0].started - rows["t0"]) * 1e6)  # microseconds after the run's creation
    assert ov["lastEventSeq"] == st.events(r.id)[-1].seq
    # a capped overview says so, and taskRunRows continues after its last row
    cut = c.data(OVERVIEW, id=r.id, max=2)["runOverview"]
    assert cut["truncated"] and cut["rowCount"] == 2 and cut["lastRowId"] == f"{r.id}.2"
    assert [g["total"] for g in cut["groups"]] == [4, 1]  # groups still count every task run
    rest = c.data("""query($id: ID!, $after: ID) { taskRunRows(runId: $id, afterId: $after, first: 2) {
                       rows count lastId hasMore } }""", id=r.id, after=cut["lastRowId"])["taskRunRows"]
    assert rest["rows"]["id"] == ["3", "4"] and rest["lastId"] == f"{r.id}.4" and rest["hasMore"]
    assert c.error(OVERVIEW, id=r.id, max=-1)["extensions"]["code"] == "BAD_USER_INPUT"
    # queue times for the timeline, and the event log for clients that poll
    tl = c.data("query($id: ID!) { runTimeline(runId: $id) }", id=r.id)["runTimeline"]
    queued = {e.task_run_id: e.ts for e in st.events(r.id) if e.state is State.QUEUED}
    assert sorted(tl["id"]) == sorted(t.removeprefix(f"{r.id}.") for t in queued)
    assert tl["q"][0] == int((queued[f"{r.id}.{tl['id'][0]}"] - tl["t0"]) * 1e6)
    q = """query($id: ID!, $after: Int!) {
             runEvents(runId: $id, after: $after, first: 4) { items { seq } lastSeq hasMore } }"""
    seen, after = [], 0
    while True:
        page = c.data(q, id=r.id, after=after)["runEvents"]
        seen += [e["seq"] for e in page["items"]]
        after = page["lastSeq"]
        if not page["hasMore"]:
            break
    assert seen == [e.seq for e in st.events(r.id)]


def test_values_are_shown_as_written_with_their_objects(server, db):
    from server_flows import designs

    r = designs.run(Protein(sequence="MKTAYIAKQR"), store=db, executor="local", return_run=True)
    assert r.state is State.SUCCEEDED
    c = server()
    run = c.data("query($id: ID!) { run(id: $id) { params paramsDisplay } }", id=r.id)["run"]
    assert run["paramsDisplay"] == {"p": {"sequence": "MKTAYIAKQR", "name": None, "metadata": {}}, "top": 3}
    assert "__gflow__" in json.dumps(run["params"])  # the canonical form is still there for programs
    t = c.data("""query($id: ID!) { taskRun(id: $id) { output { display size source truncated
                   objects { kind type data depictionSvg } } } }""", id=f"{r.id}.1")["taskRun"]
    out = t["output"]
    assert out["source"] == "inline" and not out["truncated"] and out["size"] > 0
    assert [o["kind"] for o in out["objects"]] == ["Protein", "Molecule", "Score"]
    assert out["objects"][0]["data"]["sequence"] == "MKTAYIAKQRW" and out["objects"][2]["data"]["value"] == 0.87
    assert out["display"][0] == {"sequence": "MKTAYIAKQRW", "name": "variant", "metadata": {}}
    mol = out["objects"][1]
    try:
        import rdkit  # noqa: F401
        assert mol["depictionSvg"].lstrip().startswith(("<?xml", "<svg"))
    except ImportError:
        assert mol["depictionSvg"] is None  # no RDKit on this server: the SMILES alone
    assert mol["data"]["smiles"]


def test_a_5mb_traceback_comes_as_an_excerpt(server, db):
    st = open_store(db)
    st.create_run(RunRecord(id="bigtb", flow="f", created=time.time()))
    tb = "Traceback (most recent call last):\n" + "  frame\n" * 700_000 + "ValueError: the end"
    assert len(tb) > 5_000_000
    st.apply([Transition("bigtb.1", "bigtb", State.PENDING, 1, time.time(), task="m:t", name="t"),
              Transition("bigtb.1", "bigtb", State.FAILED, 1, time.time(), error="ValueError: " + "e" * 20_000,
                         traceback=tb)])
    c = server(limits=Limits(request_timeout=30))
    t = c.data("""query { taskRun(id: "bigtb.1") { tracebackExcerpt { text size truncated omitted }
                   errorExcerpt(head: 100, tail: 100) { text size truncated } } }""")["taskRun"]
    ex = t["tracebackExcerpt"]
    assert ex["truncated"] and ex["size"] == len(tb) and ex["omitted"] == len(tb) - 8192 - 57344
    assert ex["text"].startswith("Traceback (most recent call last):") and ex["text"].endswith("ValueError: the end")
    assert "characters omitted" in ex["text"] and len(ex["text"]) < 70_000
    assert t["errorExcerpt"]["truncated"] and len(t["errorExcerpt"]["text"]) < 400
    full = c.data('query { taskRun(id: "bigtb.1") { traceback } }')["taskRun"]["traceback"]
    assert full == tb  # all of it, when asked


# -- the molecule registry ---------------------------------------------------------------------------------

@gflow.task
def mol_weight_class(m: Molecule) -> str:
    return "small" if len(m.smiles) < 10 else "large"


def test_registry_finds_a_molecule_across_runs_whatever_its_spelling(server, db):
    pytest.importorskip("rdkit")

    @gflow.flow
    def classify(smiles: list[str]) -> list[str]:
        return [mol_weight_class(Molecule(smiles=s, name=f"m{i}")) for i, s in enumerate(smiles)]

    a = classify.run(["OCC", "c1ccccc1"], executor="local", store=db, tags=["cycle1"], return_run=True)
    b = classify.run(["C(O)C"], executor="local", store=db, tags=["cycle2"], return_run=True)
    assert a.state is State.SUCCEEDED and b.state is State.SUCCEEDED
    c = server()
    got = c.data("query($k: String!) { registry(kind: \"molecule\", key: $k) { kind key uses { runId runTags role "
                 "taskRun { name } } } }", k="CCO")["registry"]
    assert got["key"] == "CCO"
    assert sorted((u["runId"], tuple(u["runTags"]), u["role"]) for u in got["uses"]) == sorted(
        [(a.id, ("cycle1",), "read"), (b.id, ("cycle2",), "read")])
    assert all(u["taskRun"]["name"] == "mol_weight_class" for u in got["uses"])
