"""The dashboard shows issue 19's records (real headless Chromium, as tests/test_dashboard.py): each attempt's
error type and the memory it asked for, and a partial map's "N of M succeeded" on the run page."""

from __future__ import annotations

import pytest

pytest.importorskip("strawberry")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import failure_flows as ff  # noqa: E402
from test_dashboard import app_for, browser, db, page, shots  # noqa: E402,F401  (the fixtures)

from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402

expect = sync_api.expect
pytestmark = pytest.mark.integration


def test_attempts_table_and_partial_map_summary(page, db):  # noqa: F811
    oom = ff.hungry_flow.run(store=db, executor="local://processes?workers=1", return_run=True)
    part = ff.partial_flow.run(n=2000, min_success=0.99, store=db, return_run=True)
    assert oom.state is State.SUCCEEDED and part.state is State.SUCCEEDED
    with serve(app_for(db)) as url:
        page.goto(f"{url}/runs/{oom.id}/tasks/{oom.id}.1")
        attempts = page.get_by_test_id("task-drawer").get_by_test_id("attempts")
        expect(attempts.locator("tbody tr")).to_have_count(3)
        expect(attempts.locator("tbody tr").nth(0)).to_contain_text("OutOfMemory")
        expect(attempts.locator("tbody tr").nth(0)).to_contain_text("memory=64Mi")
        expect(attempts.locator("tbody tr").nth(1)).to_contain_text("memory=128Mi")
        expect(attempts.locator("tbody tr").nth(2)).to_contain_text("memory=256Mi")
        page.goto(f"{url}/runs/{part.id}")
        expect(page.get_by_test_id("run-maps")).to_have_text("map 'picky': 1,998 of 2,000 succeeded")
