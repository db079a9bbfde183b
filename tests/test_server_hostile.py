"""The server under hostile requests (issue 9, section 5) and a fuzz of GraphQL request bodies against
the real ASGI app: every answer is GraphQL-shaped JSON with a typed error code, never a 500 or text."""

from __future__ import annotations

import asyncio
import json
import socket
import time

import pytest

pytest.importorskip("strawberry")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import gflow  # noqa: E402
from gflow.server.app import create_app  # noqa: E402
from gflow.server.auth import AuthConfig  # noqa: E402
from gflow.server.schema import Limits  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.store import open_store  # noqa: E402

WRITE = "write-token-0123456789"
CODES = {"BAD_USER_INPUT", "NOT_FOUND", "CONFLICT", "UNAUTHENTICATED", "FORBIDDEN", "DRIVER_FAILED",
         "GRAPHQL_PARSE_FAILED", "GRAPHQL_VALIDATION_FAILED", "TIMEOUT"}


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.flow
def incs(n: int = 3) -> list[int]:
    return inc.map(range(n))


@pytest.fixture(scope="module")
def store_url(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('hostile') / 'gflow.db'}"
    st_ = open_store(url)
    r = incs.run(3, store=st_, executor="inline", return_run=True)
    st_.close()
    return url, r.id


def assert_typed(r: httpx.Response) -> dict:
    """A GraphQL-shaped answer: JSON, a 2xx/4xx status, and a known code on every error."""
    assert r.status_code < 500, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and ("data" in body or "errors" in body), body
    for e in body.get("errors") or []:
        assert isinstance(e["message"], str) and e["extensions"]["code"] in CODES, e
    if r.status_code >= 400:
        assert body.get("errors"), body
    return body


# -- bodies the server must refuse cleanly -------------------------------------------------------------

def test_chunked_bodies_are_limited_by_bytes_read(store_url):
    """A chunked body has no Content-Length: the limit counts bytes as they arrive, and the server stops
    reading (it answers 413 long before the client finishes sending 8 MB)."""
    url, _ = store_url
    with serve(create_app(open_store(url), close_store=True, limits=Limits(max_body_bytes=64 * 1024))) as base:
        host, port = base.removeprefix("http://").split(":")
        s = socket.create_connection((host, int(port)), timeout=10)
        s.sendall(b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        sent = 0
        answer = b""
        s.settimeout(0.05)
        t0 = time.monotonic()
        try:
            while sent < 8 * 1024 * 1024 and time.monotonic() - t0 < 20:
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    answer += s.recv(65536)
                except TimeoutError:
                    continue
                if b"\r\n\r\n" in answer:
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server closed the connection after answering: it stopped reading
        s.settimeout(5)
        try:
            while b"}]}" not in answer:
                more = s.recv(65536)
                if not more:
                    break
                answer += more
        except (TimeoutError, ConnectionResetError):
            pass
        s.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:300]
        assert sent < 8 * 1024 * 1024  # refused while the body was still coming
        assert b'"code":"BAD_USER_INPUT"' in body and b"65536 bytes" in body
        # and the server is fine
        assert httpx.get(f"{base}/healthz").json()["ok"] is True


@pytest.mark.parametrize("body", [b"123", b"[]", b'"query"', b"null", b"true", b'{"query": 5}',
                                  b'{"query": "{ runs { nextCursor } }", "variables": [1]}',
                                  b'{"query": "{ runs { nextCursor } }", "operationName": 7}',
                                  b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe{", b'{"query": "\\ud800"}'])
def test_bodies_that_are_not_graphql_requests_get_a_graphql_shaped_400(store_url, body):
    url, _ = store_url
    app = create_app(open_store(url), close_store=True)

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            return await c.post("/graphql", content=body, headers={"content-type": "application/json"})

    r = asyncio.run(main())
    got = assert_typed(r)
    if body != b'{"query": "\\ud800"}':  # a lone surrogate is valid JSON: GraphQL rejects the document instead
        assert r.status_code == 400 and got["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", got


@pytest.mark.parametrize("method,query,says", [
    ("POST", 'subscription { runEvents(runId: "x") { seq } }', "websocket"),
    ("GET", "mutation { __typename }", "send it with POST"),
    ("POST", "{}", "selection set is empty"),  # strawberry's depth limiter used to crash on this
    ("POST", "{ runs { items { ...Missing } } }", "Unknown fragment"),
])
def test_operations_plain_http_cannot_run_are_clear_errors(store_url, method, query, says):
    url, _ = store_url
    with serve(create_app(open_store(url), close_store=True)) as base:
        if method == "GET":
            r = httpx.get(f"{base}/graphql", params={"query": query})
        else:
            r = httpx.post(f"{base}/graphql", json={"query": query})
        body = assert_typed(r)
        assert says in body["errors"][0]["message"], body


def test_deeply_nested_variables_are_refused(store_url):
    url, _ = store_url
    deep: object = 1
    for _ in range(200):
        deep = {"a": deep}
    with serve(create_app(open_store(url), close_store=True)) as base:
        r = httpx.post(f"{base}/graphql", json={"query": "query($x: JSON) { runs { nextCursor } }",
                                                "variables": {"x": deep}})
        body = assert_typed(r)
        assert r.status_code == 400 and "nest deeper" in body["errors"][0]["message"]
        lists = "[" * 5000 + "]" * 5000
        r = httpx.post(f"{base}/graphql", content='{"query": "{ runs { nextCursor } }", "variables": {"x": '
                       + lists + "}}", headers={"content-type": "application/json"})
        assert r.status_code == 400 and assert_typed(r)


def test_huge_or_odd_ids_are_bad_input_not_a_store_outage(store_url):
    url, run_id = store_url
    huge = "a" * 200_000
    with serve(create_app(open_store(url), close_store=True, auth=AuthConfig(write_tokens=(WRITE,)),
                          limits=Limits(max_body_bytes=1024 * 1024))) as base:
        queries = [
            ("query($id: ID!) { run(id: $id) { id } }", {}),
            ("query($id: ID!) { taskRun(id: $id) { id } }", {}),
            ("query($id: ID!) { taskRuns(runId: $id) { items { id } } }", {}),
            ("query($id: ID!) { lineage(taskRunId: $id) { truncated } }", {}),
            ("query($id: ID!) { runOverview(runId: $id) { rowCount } }", {}),
            ("query($id: ID!) { runEvents(runId: $id) { lastSeq } }", {}),
            ("query($id: ID!) { runTimeline(runId: $id) }", {}),
            ("query($id: ID!) { taskRunRows(runId: $id) { count } }", {}),
            ("query($id: String!) { objectLineage(contentId: $id) { contentId } }", {}),
            ("mutation($id: ID!) { cancelRun(id: $id) { unfinishedTaskRuns } }", {}),
            ("mutation($id: ID!) { retryTask(taskRunId: $id) { runId } }", {}),
            ("mutation($id: ID!) { replayRun(id: $id) { runId } }", {}),
        ]
        for bad in (huge, "x%", "a b", "../../etc/passwd", "run\u0000id", ""):
            for q, extra in queries:
                r = httpx.post(f"{base}/graphql", json={"query": q, "variables": {"id": bad, **extra}},
                               headers={"Authorization": f"Bearer {WRITE}"})
                body = assert_typed(r)
                code = body["errors"][0]["extensions"]["code"]
                assert code == "BAD_USER_INPUT", (q, bad[:20], body)
        r = httpx.post(f"{base}/graphql", json={"query": f'{{ run(id: "{huge}") {{ id }} }}'})
        assert assert_typed(r)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        long_flow = httpx.post(f"{base}/graphql", json={"query": "query($f: String) { runs(flow: $f) { nextCursor } }",
                                                        "variables": {"f": "f" * 5000}})
        assert assert_typed(long_flow)["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        ok = httpx.post(f"{base}/graphql", json={"query": "query($id: ID!) { run(id: $id) { id } }",
                                                 "variables": {"id": run_id}})
        assert assert_typed(ok)["data"]["run"]["id"] == run_id


# -- the fuzz --------------------------------------------------------------------------------------------

FIELDS = ["runs { items { id state } nextCursor }", "run(id: $id) { id }", "taskRuns(runId: $id) { items { id } }",
          "runOverview(runId: $id) { rowCount }", "runEvents(runId: $id, after: $n) { lastSeq }",
          "lineage(taskRunId: $id, depth: $n) { truncated }", "taskRun(id: $id) { state output { size } }",
          "runs(first: $n, state: $s) { nextCursor }", "nope", "__typename", "runTimeline(runId: $id)"]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                      st.text(max_size=40))
json_value = st.recursive(json_leaf, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                          max_leaves=20)
query_text = st.one_of(
    st.text(max_size=80),
    st.builds(lambda fs, op: f"{op}($id: ID!, $n: Int!, $s: State) {{ {' '.join(fs)} }}",
              st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3),
              st.sampled_from(["query", "mutation", "subscription", "query Q", "fragment"])),
    st.builds(lambda q, cut: q[:cut], st.just("query($id: ID!) { run(id: $id) { id state countsByState { count } } }"),
              st.integers(0, 60)),
)
variables = st.one_of(json_value, st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.text(max_size=30), json_value, st.just("x" * 300)),
    "n": st.one_of(st.integers(-10, 10**12), json_value),
    "s": st.one_of(st.sampled_from(["FAILED", "BAD", ""]), json_value)}))
bodies = st.one_of(
    st.binary(max_size=200),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={"query": st.one_of(query_text, json_value), "variables": variables,
                                        "operationName": st.one_of(st.none(), st.text(max_size=10), json_value),
                                        "extensions": json_value}).map(lambda d: json.dumps(d).encode()),
)


@pytest.mark.slow
def test_fuzz_graphql_request_bodies(store_url):
    """Random bodies, content types, methods and tokens against the real app: typed errors only."""
    url, run_id = store_url
    app = create_app(open_store(url), close_store=True, auth=AuthConfig(write_tokens=(WRITE,)),
                     limits=Limits(request_timeout=5.0))
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")

    @settings(max_examples=400, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=bodies, ctype=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain",
                                               "multipart/form-data", ""]),
           method=st.sampled_from(["POST", "POST", "POST", "GET", "PUT"]),
           token=st.sampled_from([None, WRITE, "wrong-token-1234567", "", "Basic abc"]))
    def check(body, ctype, method, token):
        headers = {"content-type": ctype} if ctype else {}
        if token is not None:
            headers["authorization"] = token if token.startswith("Basic") or not token else f"Bearer {token}"
        if method == "GET":
            params = {"query": body.decode("utf-8", "replace")[:200], "variables": body.decode("latin-1")[:200]}
            r = loop.run_until_complete(client.get("/graphql", params=params, headers=headers))
        else:
            r = loop.run_until_complete(client.request(method, "/graphql", content=body, headers=headers))
        assert_typed(r)

    try:
        check()
        # still serving real queries afterwards
        r = loop.run_until_complete(client.post("/graphql", json={"query": "query($id: ID!) { run(id: $id) { id } }",
                                                                  "variables": {"id": run_id}}))
        assert assert_typed(r)["data"]["run"]["id"] == run_id
    finally:
        loop.run_until_complete(client.aclose())
        loop.close()


def test_websocket_messages_that_are_not_protocol_messages_close_the_socket(store_url):
    """Deeply nested, non-object or non-JSON websocket messages close that socket with 4400 and a reason;
    the server keeps serving (strawberry's handler used to fail on them with a traceback)."""
    ws_client = pytest.importorskip("websockets.sync.client")
    url, run_id = store_url
    nested: object = 1
    for _ in range(40):
        nested = [nested]
    bad = ["[" * 100_000 + "]" * 100_000, "123", "not json",
           json.dumps({"type": "connection_init", "payload": {"x": nested}})]
    with serve(create_app(open_store(url), close_store=True)) as base:
        ws_url = base.replace("http://", "ws://") + "/graphql"
        for message in bad:
            with ws_client.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
                ws.send(message)
                with pytest.raises(Exception) as closed:
                    ws.recv(10)
                assert "4400" in str(closed.value), closed.value
        with ws_client.connect(ws_url, subprotocols=["graphql-transport-ws"], open_timeout=10) as ws:
            ws.send(json.dumps({"type": "connection_init", "payload": {}}))
            assert json.loads(ws.recv(10))["type"] == "connection_ack"
            sub = "subscription($id: ID!) { runEventBatches(runId: $id) { seq } }"
            payload = {"query": sub, "variables": {"id": run_id}}
            ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
            assert json.loads(ws.recv(10))["type"] == "next"
