"""The dashboard in a real headless Chromium (Debian's ``chromium`` driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

pytest.importorskip("strawberry")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import gflow  # noqa: E402
from gflow.server.app import create_app  # noqa: E402
from gflow.server.auth import AuthConfig  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.store import open_store  # noqa: E402

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("GFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
GATE = threading.Event()


@gflow.task
def square(x: int) -> int:
    return x * x


@gflow.task
def held(x: int) -> int:
    GATE.wait(30)
    return x


@gflow.task
def total(xs: list[int]) -> int:
    return sum(xs)


@gflow.flow
def squares(n: int = 4) -> int:
    return total(square.map(range(n)))


@gflow.flow
def held_flow(n: int = 3) -> int:
    return total(held.map(range(n)))


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as e:  # noqa: BLE001 - a browser that cannot start is an environment problem
            pytest.skip(f"Chromium at {CHROMIUM} does not start under Playwright: {e}")
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context()
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert not errors, errors  # no JavaScript errors on the page


@pytest.fixture
def db(gflow_home) -> str:
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    # create the file before threads race to: concurrent first opens of a new SQLite file can fail "locked"
    open_store(url).close()
    return url


def test_dashboard_lists_runs_with_state_and_counts(page, db):
    done = squares.run(4, store=db, executor="local", return_run=True)
    with serve(create_app(open_store(db), close_store=True)) as url:
        page.goto(url + "/")
        state = page.get_by_test_id(f"run-state-{done.id}")
        sync_api.expect(state).to_have_text("SUCCEEDED", timeout=10_000)
        sync_api.expect(page.get_by_test_id(f"run-counts-{done.id}")).to_contain_text("succeeded 5")
        # open the run: its task runs and their states
        page.locator(f"tr[data-run-id='{done.id}']").click()
        sync_api.expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED")
        sync_api.expect(page.get_by_test_id("run-counts")).to_contain_text("5 task runs")
        rows = page.locator("#tasks tbody tr")
        sync_api.expect(rows).to_have_count(5)
        sync_api.expect(page.get_by_test_id(f"task-state-{done.id}.1")).to_have_text("SUCCEEDED")
        sync_api.expect(page.get_by_test_id("live")).to_have_text("run finished")


def test_dashboard_follows_a_live_run(page, db):
    GATE.clear()
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(r=held_flow.run(3, store=db, executor="local", return_run=True)),
                          daemon=True)
    th.start()
    try:
        st = open_store(db)
        deadline = time.monotonic() + 20
        while True:
            runs = st.list_runs(flow="held_flow")
            if runs and st.counts(runs[0].id).get("RUNNING", 0) == 3:
                break
            assert time.monotonic() < deadline
            time.sleep(0.02)
        run_id = runs[0].id
        with serve(create_app(open_store(db), close_store=True)) as url:
            page.goto(f"{url}/#run={run_id}")
            sync_api.expect(page.get_by_test_id("run-state")).to_have_text("RUNNING", timeout=10_000)
            sync_api.expect(page.get_by_test_id(f"task-state-{run_id}.1")).to_have_text("RUNNING")
            sync_api.expect(page.get_by_test_id("live")).to_have_text("live")
            GATE.set()  # the tasks finish while the page watches
            sync_api.expect(page.get_by_test_id(f"task-state-{run_id}.1")).to_have_text("SUCCEEDED", timeout=10_000)
            sync_api.expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED", timeout=10_000)
            sync_api.expect(page.get_by_test_id("run-counts")).to_contain_text("succeeded 4")
            sync_api.expect(page.get_by_test_id("live")).to_have_text("run finished")
            th.join(10)
            assert box["r"].id == run_id
    finally:
        GATE.set()


def test_dashboard_asks_for_a_token_when_reads_are_protected(page, db):
    done = squares.run(2, store=db, executor="local", return_run=True)
    token = "dashboard-read-token-1234"
    auth = AuthConfig(read_tokens=(token,), require_read_token=True)
    with serve(create_app(open_store(db), auth=auth, close_store=True)) as url:
        page.goto(url + "/")
        sync_api.expect(page.get_by_test_id("notice")).to_contain_text("needs a token")
        page.fill("#token", token)
        page.locator("#token-form button").click()
        sync_api.expect(page.get_by_test_id(f"run-state-{done.id}")).to_have_text("SUCCEEDED", timeout=10_000)
