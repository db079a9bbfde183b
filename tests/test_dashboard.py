"""The dashboard in a real headless Chromium (Debian's ``chromium`` driven by Playwright) against a real
uvicorn on 127.0.0.1 and real flow runs. Screenshots go to $GFLOW_TEST_ARTIFACTS (or the test's tmp dir)."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("strawberry")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

import server_flows as F  # noqa: E402  (tests/resources: driver processes import these flows too)
from server_support import driver_env  # noqa: E402

from gflow.objects import Protein  # noqa: E402
from gflow.server.app import create_app  # noqa: E402
from gflow.server.auth import AuthConfig  # noqa: E402
from gflow.server.drivers import DriverConfig  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Transition, open_store  # noqa: E402

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("GFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
WRITE, READ = "dash-write-token-12345", "dash-read-token-12345"


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
def shots(request, tmp_path) -> Path:
    """Where screenshots go: $GFLOW_TEST_ARTIFACTS/<test name>, else the test's tmp dir."""
    base = os.environ.get("GFLOW_TEST_ARTIFACTS")
    d = Path(base) / request.node.name if base else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def page(browser, shots):
    ctx = browser.new_context(viewport={"width": 1366, "height": 800})
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    try:
        pg.screenshot(path=str(shots / "last.png"))
    except Exception:  # noqa: BLE001 - the page may be gone
        pass
    ctx.close()
    assert not errors, errors  # no JavaScript errors on the page


@pytest.fixture
def db(gflow_home) -> str:
    url = f"sqlite:///{gflow_home / 'gflow.db'}"
    # create the file before threads race to: concurrent first opens of a new SQLite file can fail "locked"
    open_store(url).close()
    return url


def app_for(db, **kw):
    drivers = DriverConfig(store=db, env=driver_env(), **kw.pop("drivers", {}))
    return create_app(open_store(db), close_store=True, drivers=drivers, **kw)


def start_held_run(db, n=3):
    """A held_flow run in a thread, returned once its n tasks are RUNNING (release with F.GATE.set())."""
    F.GATE.clear()
    box: dict = {}
    th = threading.Thread(target=lambda: box.update(r=F.held_flow.run(n, store=db, executor="local",
                                                                      return_run=True)), daemon=True)
    th.start()
    st = open_store(db)
    deadline = time.monotonic() + 20
    while True:
        runs = st.list_runs(flow="held_flow")
        if runs and st.counts(runs[0].id).get("RUNNING", 0) == n:
            return runs[0].id, th, box
        assert time.monotonic() < deadline
        time.sleep(0.02)


def set_token(page, token):
    page.fill("#token", token)
    page.locator("#token-form button").click()


# -- runs list --------------------------------------------------------------------------------------------

def test_runs_list_shows_state_counts_progress_and_filters(page, db, shots):
    done = F.squares.run(4, store=db, executor="local", tags=["exp1"], return_run=True)
    failed = F.flaky_sum.run(3, store=db, executor="local", return_run=True)
    with serve(app_for(db)) as url:
        page.goto(url + "/")
        runs = page.get_by_test_id("runs")
        expect(runs.get_by_test_id(f"run-state-{done.id}")).to_have_text("SUCCEEDED")
        expect(runs.get_by_test_id(f"run-counts-{done.id}")).to_contain_text("succeeded 5")
        expect(runs.get_by_test_id(f"run-counts-{done.id}")).to_contain_text("5/5")
        expect(runs.get_by_test_id(f"run-state-{failed.id}")).to_have_text("FAILED")
        expect(page.get_by_test_id("conn")).to_have_text("live")
        page.screenshot(path=str(shots / "runs.png"))
        # filter by state: only the failed run; the filter lives in the URL (a link to it works)
        page.locator("#filters select[name=state]").select_option("FAILED")
        page.locator("#filters button.primary").click()
        expect(runs.locator("tbody tr")).to_have_count(1)
        expect(runs.locator(f"tr[data-run-id='{failed.id}']")).to_be_visible()
        assert "state=FAILED" in page.url
        page.goto(url + "/?tag=exp1")
        expect(runs.locator("tbody tr")).to_have_count(1)
        expect(runs.locator(f"tr[data-run-id='{done.id}']")).to_be_visible()
        # open a run from the list: no full page load (the app navigates itself)
        page.evaluate("window.__stayed = true")
        runs.locator(f"tr[data-run-id='{done.id}']").click()
        expect(page).to_have_url(f"{url}/runs/{done.id}")
        expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED")
        expect(page.get_by_test_id("run-counts")).to_contain_text("5 task runs")
        assert page.evaluate("window.__stayed") is True
        page.go_back()
        expect(page.get_by_test_id("runs")).to_be_visible()


def test_runs_list_pages_with_cursors(page, db):
    st = open_store(db)
    now = time.time()
    for i in range(120):
        st.create_run(RunRecord(id=f"20250101-000000-{i:06x}", flow="many", created=now - 1000 + i))
    with serve(app_for(db)) as url:
        page.goto(url + "/")
        rows = page.get_by_test_id("runs").locator("tbody tr")
        expect(rows).to_have_count(50)
        expect(rows.first).to_have_attribute("data-run-id", f"20250101-000000-{119:06x}")
        page.locator("#runs-more").click()
        expect(rows.first).to_have_attribute("data-run-id", f"20250101-000000-{69:06x}")
        page.locator("#runs-more").click()
        expect(rows).to_have_count(20)
        expect(page.locator("#runs-more")).to_be_disabled()
        page.locator("#runs-newer").click()
        expect(rows.first).to_have_attribute("data-run-id", f"20250101-000000-{69:06x}")


def test_reads_behind_a_token_ask_for_it(page, db):
    done = F.squares.run(2, store=db, executor="local", return_run=True)
    auth = AuthConfig(read_tokens=(READ,), require_read_token=True)
    with serve(app_for(db, auth=auth)) as url:
        page.goto(url + "/")
        expect(page.get_by_test_id("notice")).to_contain_text("needs a token")
        page.fill("#token", READ)
        page.locator("#token-form button").click()
        expect(page.get_by_test_id(f"run-state-{done.id}")).to_have_text("SUCCEEDED")


# -- a run page -------------------------------------------------------------------------------------------

def test_run_page_follows_a_live_run_counts_and_dag(page, db, shots):
    run_id, th, box = start_held_run(db, n=6)
    try:
        with serve(app_for(db)) as url:
            page.goto(f"{url}/#run={run_id}")  # old links still work
            expect(page).to_have_url(f"{url}/runs/{run_id}")
            expect(page.get_by_test_id("run-state")).to_have_text("RUNNING")
            expect(page.get_by_test_id("live")).to_have_text("live")
            expect(page.get_by_test_id("conn")).to_have_text("live")
            counts = page.get_by_test_id("run-counts")
            expect(counts).to_contain_text("running 6")
            dag = page.get_by_test_id("run-dag")
            held = dag.locator("[data-testid=dag-node][data-key$=':held']")
            expect(held).to_have_count(1)  # the map of 6 is one node
            expect(held.get_by_test_id("dag-count")).to_contain_text("0/6 map")
            expect(held).to_have_attribute("data-state", "RUNNING")
            expect(page.get_by_test_id(f"task-state-{run_id}.1")).to_have_text("RUNNING")
            expect(page.get_by_test_id("run-timeline").locator("canvas")).to_be_visible()
            page.screenshot(path=str(shots / "live-running.png"))
            page.get_by_test_id("task-table").locator(f"tr[data-task-run-id='{run_id}.1']").click()
            drawer = page.get_by_test_id("task-drawer")
            expect(drawer.get_by_test_id("drawer-state")).to_have_text("RUNNING")
            F.GATE.set()  # the tasks finish while the page watches
            expect(drawer.get_by_test_id("drawer-state")).to_have_text("SUCCEEDED")  # the open drawer follows
            expect(held.get_by_test_id("dag-count")).to_contain_text("6/6 map")
            expect(held).to_have_attribute("data-state", "SUCCEEDED")
            expect(page.get_by_test_id(f"task-state-{run_id}.1")).to_have_text("SUCCEEDED")
            expect(counts).to_contain_text("succeeded 7")
            expect(dag.locator("[data-testid=dag-node][data-key$=':total']")).to_have_attribute("data-state",
                                                                                               "SUCCEEDED")
            expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED")
            expect(page.get_by_test_id("live")).to_have_text("run finished")
            page.screenshot(path=str(shots / "live-finished.png"))
            th.join(10)
            assert box["r"].id == run_id
    finally:
        F.GATE.set()


def test_failed_task_traceback_in_the_drawer_and_deep_links(page, db, shots):
    r = F.flaky_sum.run(5, store=db, executor="local", return_run=True)
    assert r.state is State.FAILED
    bad = f"{r.id}.3"  # flaky(2)
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/{r.id}")
        table = page.get_by_test_id("task-table")
        expect(table.locator("tbody tr")).to_have_count(6)
        page.get_by_test_id("task-filter-state").select_option("FAILED")
        expect(table.locator("tbody tr")).to_have_count(2)  # flaky(2), and total, which needed it
        expect(page.get_by_test_id("task-table-count")).to_have_text("2 of 6 task runs")
        table.locator(f"tr[data-task-run-id='{bad}']").click()
        drawer = page.get_by_test_id("task-drawer")
        expect(drawer).to_be_visible()
        expect(page).to_have_url(f"{url}/runs/{r.id}/tasks/{bad}")
        expect(drawer.get_by_test_id("drawer-state")).to_have_text("FAILED")
        expect(drawer.get_by_test_id("traceback")).to_contain_text("ValueError: flaky 2: not fixed yet")
        expect(drawer.get_by_test_id("traceback")).to_contain_text("Traceback (most recent call last)")
        expect(drawer.get_by_test_id("attempts")).to_contain_text("FAILED")
        expect(drawer.get_by_test_id("lineage")).to_contain_text("total")  # used by
        page.screenshot(path=str(shots / "drawer-traceback.png"))
        page.keyboard.press("Escape")
        expect(drawer).to_be_hidden()
        expect(page).to_have_url(f"{url}/runs/{r.id}")
        # keyboard: Tab into the table, Enter opens the row
        table.locator("tbody tr").first.focus()
        page.keyboard.press("Enter")
        expect(drawer.get_by_test_id("traceback")).to_be_visible()
        # a deep link opens the page with the drawer
        page.goto(f"{url}/runs/{r.id}/tasks/{r.id}.1")
        expect(drawer.get_by_test_id("drawer-state")).to_have_text("SUCCEEDED")
        expect(drawer.get_by_test_id("lineage")).to_contain_text("total")


def test_values_are_shown_as_the_user_wrote_them(page, db, shots):
    r = F.designs.run(Protein(sequence="MKTAYIAKQR"), store=db, executor="local", return_run=True)
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/{r.id}/tasks/{r.id}.1")
        params = page.get_by_test_id("run-params")
        expect(params).to_contain_text('"sequence": "MKTAYIAKQR"')
        expect(params).not_to_contain_text("__gflow__")
        drawer = page.get_by_test_id("task-drawer")
        expect(drawer.get_by_test_id("object-Protein")).to_contain_text("MKTAYIAKQRW")
        expect(drawer.get_by_test_id("object-Protein")).to_contain_text("11 residues")
        mol = drawer.get_by_test_id("object-Molecule")
        expect(mol.get_by_test_id("smiles")).to_have_text(re.compile(r"^(Oc1ccccc1|c1ccccc1O)$"))  # RDKit canonical
        try:
            import rdkit  # noqa: F401
        except ImportError:
            expect(mol.get_by_test_id("depiction")).to_have_count(0)  # no RDKit on the server: the SMILES alone
        else:
            expect(mol.get_by_test_id("depiction")).to_be_visible()  # a 2D drawing, as an <img> (nothing in it runs)
            assert mol.get_by_test_id("depiction").evaluate("i => i.complete && i.naturalWidth > 0")
        expect(drawer.get_by_test_id("object-Score")).to_contain_text("0.87")
        # sub-millisecond durations are shown in µs or ms, never "0ms"
        cells = page.get_by_test_id("task-table").locator("tbody td:nth-child(6)").all_text_contents()
        assert cells and all(re.fullmatch(r"\d+ µs|\d+\.\d\d ms|\d+ ms|\d+\.\d s", c) for c in cells), cells
        page.screenshot(path=str(shots / "objects.png"))


def test_a_5mb_traceback_is_cut_with_a_way_to_see_all(page, db):
    st = open_store(db)
    now = time.time()
    st.create_run(RunRecord(id="bigtb-run", flow="big", created=now))
    st.set_run_state("bigtb-run", State.RUNNING, now)
    tb = "Traceback (most recent call last):\n" + "  line\n" * 750_000 + "ValueError: the very end"
    st.apply([Transition("bigtb-run.1", "bigtb-run", State.PENDING, 1, now, task="m:big", name="big"),
              Transition("bigtb-run.1", "bigtb-run", State.FAILED, 1, now + 1, error="ValueError: the very end",
                         traceback=tb)])
    st.set_run_state("bigtb-run", State.FAILED, now + 2, error="ValueError: the very end")
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/bigtb-run/tasks/bigtb-run.1")
        drawer = page.get_by_test_id("task-drawer")
        pre = drawer.get_by_test_id("traceback")
        expect(pre).to_contain_text("ValueError: the very end")
        expect(pre).to_contain_text("characters omitted")
        expect(drawer.get_by_test_id("traceback-note")).to_contain_text(f"{len(tb):,} characters")
        assert len(pre.text_content()) < 80_000
        drawer.get_by_test_id("traceback-all").click()
        expect(drawer.get_by_test_id("traceback-note")).to_contain_text("full traceback")
        full = drawer.get_by_test_id("traceback")
        expect(full).to_have_attribute("data-chars", str(len(tb)))  # all of it, drawn a screenful at a time
        full.evaluate("b => b.scrollTop = b.scrollHeight")
        expect(full).to_contain_text("ValueError: the very end")
        full.evaluate("b => b.scrollTop = b.scrollHeight / 2")
        expect(full).not_to_contain_text("ValueError: the very end")
        expect(full).to_contain_text("  line")


def test_a_10000_task_run_is_one_node_and_a_virtual_table(page, db, shots):
    st = open_store(db)
    now = time.time()
    st.create_run(RunRecord(id="big-run", flow="big", created=now - 100))
    st.set_run_state("big-run", State.RUNNING, now - 100)
    trs = [Transition("big-run.1", "big-run", State.PENDING, 1, now - 99, task="m:prep", name="prep"),
           Transition("big-run.1", "big-run", State.SUCCEEDED, 1, now - 98)]
    for i in range(10_000):
        tid = f"big-run.{i + 2}"
        trs += [Transition(tid, "big-run", State.PENDING, 1, now - 97, task="m:score", name="score", map_index=i,
                           upstream=["big-run.1"]),
                Transition(tid, "big-run", State.QUEUED, 1, now - 96 + i * 1e-3),
                Transition(tid, "big-run", State.RUNNING, 1, now - 95 + i * 1e-3),
                Transition(tid, "big-run", State.FAILED if i == 9_999 else State.SUCCEEDED, 1, now - 94 + i * 1e-3,
                           error="ValueError: last one" if i == 9_999 else None)]
    for k in range(0, len(trs), 10_000):
        st.apply(trs[k:k + 10_000])
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/big-run")
        dag = page.get_by_test_id("run-dag")
        expect(dag.get_by_test_id("dag-node")).to_have_count(2)
        score = dag.locator("[data-testid=dag-node][data-key='m:score']")
        expect(score.get_by_test_id("dag-count")).to_contain_text("10,000/10,000 map")
        expect(score).to_have_attribute("data-state", "FAILED")
        table = page.get_by_test_id("task-table")
        expect(page.get_by_test_id("task-table-count")).to_have_text("10,001 task runs")
        assert table.locator("tbody tr").count() < 80  # only what is on screen exists
        page.screenshot(path=str(shots / "big-run.png"))
        table.locator(".scroller").evaluate("s => s.scrollTop = s.scrollHeight")
        expect(page.get_by_test_id("task-state-big-run.10001")).to_have_text("FAILED")
        # the DAG node filters the table (keyboard too)
        score.focus()
        page.keyboard.press("Enter")
        expect(page.get_by_test_id("task-table-count")).to_have_text("10,000 of 10,001 task runs")


# -- actions ----------------------------------------------------------------------------------------------

def test_cancel_needs_a_write_token_and_says_so(page, db, shots):
    run_id, th, box = start_held_run(db, n=2)
    auth = AuthConfig(write_tokens=(WRITE,), read_tokens=(READ,))
    try:
        with serve(app_for(db, auth=auth)) as url:
            page.goto(f"{url}/runs/{run_id}")
            cancel = page.get_by_test_id("cancel-run")
            msg = page.get_by_test_id("action-message")
            cancel.click()
            expect(msg).to_contain_text("needs a write token")
            expect(page.locator("#token")).to_have_class(re.compile("wanted"))  # the token field is pointed out
            set_token(page, READ)
            page.get_by_test_id("cancel-run").click()
            expect(page.get_by_test_id("action-message")).to_contain_text("only allows reads")
            set_token(page, "expired-token-000000")
            expect(page.get_by_test_id("notice")).to_contain_text("not accepted")  # reads go on without it
            page.get_by_test_id("cancel-run").click()
            expect(page.get_by_test_id("action-message")).to_contain_text("not accepted")
            page.screenshot(path=str(shots / "cancel-refused.png"))
            set_token(page, WRITE)
            expect(page.get_by_test_id("token-state")).to_have_text("✓ set")
            page.get_by_test_id("cancel-run").click()
            expect(page.get_by_test_id("run-state")).to_have_text("CANCELLED")
            th.join(15)
            assert box["r"].state is State.CANCELLED
            expect(page.get_by_test_id("live")).to_have_text("run finished")
            expect(page.get_by_test_id("replay-run")).to_be_visible()
    finally:
        F.GATE.set()


def test_retry_a_failed_task_starts_a_driver_and_links_the_new_run(page, db, gflow_home, shots):
    r = F.flaky_sum.run(4, store=db, executor="local", return_run=True)
    bad = f"{r.id}.3"
    (gflow_home / "fixed").touch()
    auth = AuthConfig(write_tokens=(WRITE,))
    with serve(app_for(db, auth=auth)) as url:
        page.goto(f"{url}/runs/{r.id}/tasks/{bad}")
        drawer = page.get_by_test_id("task-drawer")
        drawer.get_by_test_id("retry-task").click()
        expect(drawer.get_by_test_id("task-action-message")).to_contain_text("needs a write token")
        set_token(page, WRITE)
        page.goto(f"{url}/runs/{r.id}/tasks/{bad}")
        drawer.get_by_test_id("retry-task").click()
        link = drawer.get_by_test_id("new-run-link")
        expect(link).to_be_visible()
        new_id = link.text_content()
        assert new_id and new_id != r.id
        expect(drawer.get_by_test_id("task-action-message")).to_contain_text("driver pid")
        page.screenshot(path=str(shots / "retry-started.png"))
        link.click()
        expect(page).to_have_url(f"{url}/runs/{new_id}")
        expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED", timeout=60_000)
        expect(page.get_by_test_id("run-counts")).to_contain_text("cached 3")
        expect(page.get_by_test_id("run-links")).to_contain_text("started by this server")
        expect(page.get_by_test_id("run-links")).to_contain_text("exited 0")
        assert open_store(db).get_run(new_id).resumed_from == r.id


def test_replay_says_why_it_cannot_run(page, db):
    r = F.squares.run(2, store=db, executor="local", return_run=True)
    with serve(app_for(db, auth=AuthConfig(write_tokens=(WRITE,)), drivers={"start_grace": 60})) as url:
        page.goto(f"{url}/runs/{r.id}")
        page.get_by_test_id("replay-run").click()
        expect(page.get_by_test_id("action-message")).to_contain_text("needs a write token")
        set_token(page, WRITE)
        page.get_by_test_id("replay-run").click()
        expect(page.get_by_test_id("action-message")).to_contain_text("no image tag")
        # a recorded image this host does not have: the driver starts and fails, and the page says so
        open_store(db).update_run(r.id, image_tag="gflow-test/not-here:0123456789ab")
        page.reload()
        page.get_by_test_id("replay-run").click()
        expect(page.get_by_test_id("action-message")).to_contain_text("replay driver", timeout=30_000)
        expect(page.get_by_test_id("action-message")).to_contain_text("exited with code")


# -- bad addresses and a server that goes away ------------------------------------------------------------

def test_unknown_runs_and_task_runs_get_a_not_found_page(page, db):
    r = F.squares.run(2, store=db, executor="local", return_run=True)
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/no-such-run")
        expect(page.get_by_test_id("not-found")).to_contain_text("No run no-such-run")
        page.goto(f"{url}/runs/{r.id}/tasks/{r.id}.999")
        expect(page.get_by_test_id("not-found")).to_contain_text(f"No task run {r.id}.999")
        page.get_by_test_id("not-found").get_by_role("link", name=f"back to run {r.id}").click()
        expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED")
        page.goto(f"{url}/runs/{'x' * 300}")
        expect(page.get_by_test_id("not-found")).to_be_visible()


def test_server_stopped_and_restarted_mid_session(page, db, shots):
    run_id, th, box = start_held_run(db, n=2)
    try:
        first = serve(app_for(db))
        url = first.__enter__()
        port = int(url.rsplit(":", 1)[1])
        try:
            page.goto(f"{url}/runs/{run_id}")
            expect(page.get_by_test_id("live")).to_have_text("live")
            expect(page.get_by_test_id("conn")).to_have_text("live")
        finally:
            first.__exit__(None, None, None)  # the server goes away
        expect(page.get_by_test_id("conn")).to_contain_text("reconnecting")
        expect(page.get_by_test_id("conn")).to_have_attribute("data-state", "reconnecting")
        page.screenshot(path=str(shots / "reconnecting.png"))
        F.GATE.set()  # the run finishes while the server is down
        th.join(15)
        with serve(app_for(db), port=port):
            expect(page.get_by_test_id("conn")).to_have_text("live", timeout=20_000)
            expect(page.get_by_test_id("run-state")).to_have_text("SUCCEEDED", timeout=20_000)
            expect(page.get_by_test_id("run-counts")).to_contain_text("succeeded 3")
            page.screenshot(path=str(shots / "recovered.png"))
        assert box["r"].state is State.SUCCEEDED
    finally:
        F.GATE.set()
