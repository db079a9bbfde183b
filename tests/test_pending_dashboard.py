"""The dashboard's task drawer shows why a QUEUED call waits on its backend (issue 20 item 5), in headless
Chromium; the fixtures are the dashboard tests' own (tests/test_dashboard.py)."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("strawberry")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

from test_dashboard import app_for, browser, db, page, shots  # noqa: E402, F401  (fixtures, shared)

from gflow.flows.pending import TABLE, pending_row  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Transition, open_store  # noqa: E402

pytestmark = pytest.mark.integration


def test_the_drawer_shows_a_queued_calls_pending_reason(page, db, shots):  # noqa: F811
    now = time.time()
    st = open_store(db)
    st.create_run(RunRecord(id="wait-run", flow="waits", created=now - 10))
    st.set_run_state("wait-run", State.RUNNING, now - 10)
    st.apply([Transition("wait-run.1", "wait-run", State.PENDING, 1, now - 9, task="m:score", name="score"),
              Transition("wait-run.1", "wait-run", State.QUEUED, 1, now - 8),
              Transition("wait-run.2", "wait-run", State.PENDING, 1, now - 9, task="m:score", name="score"),
              Transition("wait-run.2", "wait-run", State.QUEUED, 1, now - 8),
              Transition("wait-run.2", "wait-run", State.RUNNING, 1, now - 7)])
    reason = "Slurm: ReqNodeNotAvail: the nodes it needs are down, drained or reserved <b>x</b>"
    st.put_rows(TABLE, [pending_row("wait-run", "wait-run.1", 1, reason, now),
                        pending_row("wait-run", "wait-run.2", 1, "Slurm: Priority: stale once it ran", now)],
                key=("task_run",), run_id="wait-run")
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/wait-run/tasks/wait-run.1")
        drawer = page.get_by_test_id("task-drawer")
        expect(drawer.get_by_test_id("drawer-state")).to_have_text("QUEUED")
        # shown as text: a backend's message is untrusted and never markup
        expect(drawer.get_by_test_id("pending-reason")).to_have_text(f"QUEUED ({reason})")
        page.screenshot(path=str(shots / "drawer-pending-reason.png"))
        page.goto(f"{url}/runs/wait-run/tasks/wait-run.2")
        expect(drawer.get_by_test_id("drawer-state")).to_have_text("RUNNING")
        expect(drawer.get_by_test_id("pending-reason")).to_have_count(0)  # it started: the old reason is not shown
    st.close()
