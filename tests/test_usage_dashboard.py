"""The dashboard shows usage (issue 22 item 1-2): the run page's per-task panel (used vs requested, outliers
first, maps as maps, cost) and the drawer's attempts table, in headless Chromium."""

from __future__ import annotations

import pytest

pytest.importorskip("strawberry")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

import usage_flows as uf  # noqa: E402
from playwright.sync_api import expect  # noqa: E402
from test_dashboard import app_for, browser, db, page, shots  # noqa: E402,F401 - the dashboard's fixtures

from gflow.server.testing import serve  # noqa: E402
from gflow.usage import parse_prices  # noqa: E402


def test_run_usage_panel_and_attempts_table(page, db, shots):  # noqa: F811
    r = uf.burn_map.run(3, store=db, executor="local", return_run=True)
    prices = parse_prices({"vcpu_hour": 3600.0, "gib_hour": 0, "gpu_hour": 0, "currency": "EUR"})
    with serve(app_for(db, prices=prices)) as url:
        page.goto(f"{url}/runs/{r.id}")
        panel = page.get_by_test_id("run-usage")
        expect(panel).to_contain_text("map of 3")
        expect(panel).to_contain_text("EUR")
        expect(panel.get_by_test_id("usage-row")).to_have_count(1)
        page.goto(f"{url}/runs/{r.id}/tasks/{r.id}.1")
        attempts = page.get_by_test_id("attempts")
        expect(attempts.get_by_test_id("attempt-cpu")).to_contain_text(" s")
        expect(attempts.get_by_test_id("attempt-memory")).not_to_have_text("–")
        page.screenshot(path=str(shots / "usage.png"))

