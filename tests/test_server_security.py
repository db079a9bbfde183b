"""The server's answers carry security headers and an oversized body ends its connection (issue 16, items 6
and 8): checked over real sockets against the real server (uvicorn), and in a real Chromium for the CSP."""

from __future__ import annotations

import socket
import time

import pytest

pytest.importorskip("strawberry")
httpx = pytest.importorskip("httpx")

import gflow  # noqa: E402
from gflow.server.app import create_app  # noqa: E402
from gflow.server.headers import CONTENT_SECURITY_POLICY  # noqa: E402
from gflow.server.schema import Limits  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.store import open_store  # noqa: E402

PROTOCOLS = ["h11", pytest.param("httptools", marks=pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("httptools"), reason="httptools is not installed"))]


@gflow.task
def inc(x: int) -> int:
    return x + 1


@gflow.flow
def incs(n: int = 3) -> list[int]:
    return inc.map(range(n))


@pytest.fixture
def db(gflow_home) -> str:
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    st = open_store(url)
    incs.run(3, store=st, executor="inline")
    st.close()
    return url


# -- item 6: security headers ------------------------------------------------------------------------------
def test_every_answer_carries_the_security_headers(db):
    with serve(create_app(open_store(db), close_store=True)) as base:
        answers = [httpx.get(f"{base}/"), httpx.get(f"{base}/runs/nope"), httpx.get(f"{base}/static/app.js"),
                   httpx.get(f"{base}/static/style.css"), httpx.get(f"{base}/healthz"),
                   httpx.get(f"{base}/static/missing.js"),
                   httpx.post(f"{base}/graphql", json={"query": "{ runs { nextCursor } }"}),
                   httpx.post(f"{base}/graphql", content=b"[]", headers={"content-type": "application/json"})]
    for r in answers:
        h = r.headers
        assert h["content-security-policy"] == CONTENT_SECURITY_POLICY, r.url
        assert h["x-frame-options"] == "DENY" and h["x-content-type-options"] == "nosniff", r.url
    csp = {d.split()[0]: d.split()[1:] for d in CONTENT_SECURITY_POLICY.split("; ")}
    assert csp["default-src"] == ["'none'"] and csp["frame-ancestors"] == ["'none'"]
    assert csp["script-src"] == ["'self'"] and csp["style-src"] == ["'self'"]  # no 'unsafe-inline' anywhere
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "'unsafe-eval'" not in CONTENT_SECURITY_POLICY


# -- item 8: an oversized body ends the connection --------------------------------------------------------
def _flood(base: str, *, chunked: bool, seconds: float = 4.0) -> tuple[bytes, int, bool]:
    """Send an endless body; returns (the answer, bytes sent after it came, whether the server closed)."""
    host, port = base.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    head = b"POST /graphql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Transfer-Encoding: chunked\r\n\r\n" if chunked else b"Content-Length: 100000000000\r\n\r\n"
    s.sendall(head)
    chunk = b"x" * 65536
    frame = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
    answer = b""
    after = 0
    closed = False
    s.settimeout(0.01)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            s.sendall(frame)
            if b"}]}" in answer:
                after += len(frame)
            try:
                got = s.recv(65536)
            except TimeoutError:
                continue
            if not got:
                closed = True
                break
            answer += got
    except (BrokenPipeError, ConnectionResetError):
        closed = True
    finally:
        s.close()
    return answer, after, closed


@pytest.mark.parametrize("http", PROTOCOLS)
@pytest.mark.parametrize("chunked", [True, False], ids=["chunked", "content-length"])
def test_an_oversized_body_gets_413_and_the_connection_is_closed(db, http, chunked):
    limits = Limits(max_body_bytes=64 * 1024)
    with serve(create_app(open_store(db), close_store=True, limits=limits), http=http) as base:
        t0 = time.monotonic()
        answer, after, closed = _flood(base, chunked=chunked)
        took = time.monotonic() - t0
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), answer[:300]
        assert closed, f"the server kept reading: {after} bytes taken after its 413 in {took:.1f}s"
        assert b"connection: close" in head.lower()
        assert b'"code":"BAD_USER_INPUT"' in body
        assert took < 4 and after < 32 * 1024 * 1024
        assert httpx.get(f"{base}/healthz").json()["ok"] is True  # and it serves the next client


def test_a_body_within_the_limit_keeps_the_connection(db):
    with serve(create_app(open_store(db), close_store=True)) as base, httpx.Client() as client:
        for _ in range(3):  # one connection, reused
            r = client.post(f"{base}/graphql", json={"query": "{ runs { nextCursor } }"})
            assert r.status_code == 200 and r.headers.get("connection", "keep-alive") != "close"


# -- the dashboard under its policy, in a real Chromium --------------------------------------------------------
_WATCH_CSP = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


@pytest.fixture
def chromium_page():
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    import os

    from test_dashboard import ARGS, CHROMIUM

    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # noqa: BLE001 - a browser that cannot start is an environment problem
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {e}")
        ctx = browser.new_context(viewport={"width": 1366, "height": 800})
        ctx.add_init_script(_WATCH_CSP)
        page = ctx.new_page()
        page.set_default_timeout(15_000)
        console: list[str] = []
        errors: list[str] = []
        page.on("console", lambda m: console.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page, console
        ctx.close()
        browser.close()
        assert not errors, errors


def test_the_dashboard_works_under_its_policy_and_refuses_framing(db, chromium_page):
    from playwright.sync_api import expect

    page, console = chromium_page
    st = open_store(db)
    (run,) = st.list_runs()
    st.close()
    with serve(create_app(open_store(db), close_store=True)) as url:
        page.goto(url + "/")
        expect(page.get_by_test_id(f"run-state-{run.id}")).to_have_text("SUCCEEDED")
        expect(page.get_by_test_id("conn")).to_have_text("live")  # the websocket: connect-src 'self'
        bar = page.locator(f"tr[data-run-id='{run.id}'] .bar span, tr[data-run-id='{run.id}'] span[title]").first
        assert bar.evaluate("e => e.getBoundingClientRect().width") > 0  # a style set by the page's script
        page.goto(f"{url}/runs/{run.id}")
        expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED")
        legend = page.locator(".legend i").first
        assert legend.evaluate("e => getComputedStyle(e).backgroundColor") not in ("", "rgba(0, 0, 0, 0)")
        page.goto(f"{url}/runs/{run.id}/tasks/{run.id}.1")
        expect(page.get_by_test_id("drawer-state")).to_have_text("SUCCEEDED")
        assert page.evaluate("window.__csp") == []
        assert not [m for m in console if "Content Security Policy" in m], console
        # a page of another site cannot frame it
        with serve(_framing_site(f"{url}/")) as other:
            page.goto(other)
            page.wait_for_timeout(1500)
            assert page.frame_locator("#f").locator(".brand").count() == 0
        assert any("frame-ancestors" in m for m in console), console[-5:]


def _framing_site(target: str):
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def home(request):
        return HTMLResponse(f'<!doctype html><iframe id="f" src="{target}" width="800" height="600"></iframe>')

    return Starlette(routes=[Route("/", home)])
