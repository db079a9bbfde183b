"""Objects people can look at (issue 22 item 6), in a real headless Chromium against a real server: a molecule's
2D depiction (RDKit SVG from the server), a design's sequence with its mutations highlighted, a structure in the
vendored 3Dmol.js viewer, a table; raw JSON one click away; nothing requested from outside the server.
Screenshots go to $GFLOW_TEST_ARTIFACTS (or the test's tmp dir)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("strawberry")
pytest.importorskip("rdkit")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
expect = sync_api.expect

import object_flows as OF  # noqa: E402

from gflow.server.app import create_app  # noqa: E402
from gflow.server.depict import mutations_of, table_of, view_of  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.store import open_store  # noqa: E402

CHROMIUM = os.environ.get("GFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]
VENDOR = Path(__file__).resolve().parents[1] / "gflow" / "server" / "static" / "vendor"


def test_views_from_stored_fields() -> None:
    assert mutations_of("wt_K2R_Y5W", "MRTAWIAKQR") == [{"position": 2, "wt": "K", "mt": "R"},
                                                        {"position": 5, "wt": "Y", "mt": "W"}]
    assert mutations_of("wt_K2R", "MKTAY") == []  # the record does not match the sequence: not a mutation
    assert mutations_of("T4L", "MKT") == [] and mutations_of(None, "MKT") == []
    mol = view_of("Molecule", {"smiles": "CCO"})
    assert mol is not None and mol["svg"] and "<svg" in mol["svg"]
    assert view_of("Structure", {"text": "ATOM", "format": "mmcif"}) == {
        "type": "structure", "format": "cif", "name": None, "text": "ATOM", "truncated": False}
    assert view_of("Score", {"value": "nan?"}) is None and view_of("Protein", ["not", "a", "dict"]) is None
    assert table_of([{"a": 1, "b": [1]}, {"a": 2, "b": None}]) == {
        "columns": ["a", "b"], "rows": [[1, "[1]"], [2, None]], "truncated": False}
    assert table_of([{"a": 1}, {"b": 2}]) is None and table_of([{"a": 1}]) is None


def test_vendored_viewer_is_small_licensed_and_packaged() -> None:
    js = VENDOR / "3Dmol-min.js"
    assert 100_000 < js.stat().st_size < 1_000_000
    assert "BSD" in (VENDOR / "3Dmol-LICENSE.txt").read_text()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '"static/vendor/*"' in pyproject


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
    base = os.environ.get("GFLOW_TEST_ARTIFACTS")
    d = Path(base) / request.node.name if base else tmp_path / "screenshots"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.mark.integration
def test_drawer_shows_molecule_sequence_structure_and_table(browser, gflow_home, shots) -> None:
    db = f"sqlite:///{gflow_home / 'gflow.db'}"
    r = OF.showcase.run(store=db, executor="inline", return_run=True)
    assert r.state.value == "SUCCEEDED", r.error
    ids = {t.name: t.id for t in open_store(db).task_runs(r.id)}
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    outside: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda q: outside.append(q.url) if not q.url.startswith(("http://127.0.0.1", "data:"))
            else None)
    try:
        with serve(create_app(open_store(db), close_store=True)) as url:
            drawer = page.get_by_test_id("task-drawer")
            page.goto(f"{url}/runs/{r.id}/tasks/{ids['make_molecule']}")
            mol = drawer.get_by_test_id("object-Molecule")
            expect(mol.get_by_test_id("smiles")).to_have_text("CC(=O)Oc1ccccc1C(=O)O")
            img = mol.get_by_test_id("depiction")
            expect(img).to_be_visible()
            assert page.evaluate("(i) => i.naturalWidth", img.element_handle()) > 0  # the SVG decoded
            mol.screenshot(path=str(shots / "molecule.png"))
            raw = mol.get_by_test_id("raw-json")
            raw.locator("summary").click()
            expect(raw.locator("pre")).to_contain_text('"smiles"')

            page.goto(f"{url}/runs/{r.id}/tasks/{ids['make_design']}")
            design = drawer.get_by_test_id("object-Design")
            seq = design.get_by_test_id("sequence-view")
            expect(seq).to_have_text("MRTAWIAKQR")
            expect(seq.locator("mark.mut")).to_have_count(2)
            expect(seq.locator("mark.mut").first).to_have_attribute("title", "K2R")
            expect(design).to_contain_text("mutations against its parent: K2R, Y5W")
            expect(design).to_contain_text("stability = -1.25 kcal/mol")
            design.screenshot(path=str(shots / "sequence.png"))

            page.goto(f"{url}/runs/{r.id}/tasks/{ids['make_structure']}")
            view = drawer.get_by_test_id("structure-view")
            expect(view).to_have_attribute("data-rendered", "true")
            expect(view.locator("canvas")).to_have_count(1)
            page.wait_for_timeout(300)
            view.screenshot(path=str(shots / "structure.png"))

            page.goto(f"{url}/runs/{r.id}/tasks/{ids['make_table']}")
            table = drawer.get_by_test_id("value-table")
            expect(table.locator("tr")).to_have_count(4)
            expect(table.locator("tr").nth(2)).to_contain_text("K2R")
            table.screenshot(path=str(shots / "table.png"))
            # "why did this run?" (gflow cache explain in the drawer): the first call of a task has no earlier one
            drawer.get_by_role("button", name="why did this run (not from the cache)?").click()
            expect(drawer.get_by_test_id("cache-explain")).to_contain_text("no earlier call of object_flows:make_table")
    finally:
        ctx.close()
    assert not errors, errors
    assert not outside, outside
