"""The dashboard in headless Chromium (issue 13): a 10,000-task run page and a run updating live.

Against a real ``gflow server`` app (uvicorn on 127.0.0.1, in this process's thread) over an SQLite
store filled with synthetic runs (the same records the engine writes), Debian's ``chromium`` driven
by Playwright measures:

- **first render**: navigation start -> DAG + task table + counts + timeline in the DOM (performance
  mark ``gflow:first-render``) and painted (``gflow:first-paint``); the overview query's server time
  is reported apart ("once the server answers"). Goal for 10,000 task runs: <= 1 s.
- **scroll**: the task table scrolled end to end (~12 rows a frame, rAF-driven), frame times from
  rAF timestamps; p95 goal <= 20 ms (no dropped frames at 60 Hz), plus the longest frame.
- **memory**: the tab's JS heap and DOM node count (Chrome DevTools Protocol ``Performance.getMetrics``).
- **runs list at 100,000 runs**: the ``runs`` page query (50 runs with their counts) for the newest
  page and for a page 99,900 runs deep (keyset cursor: the same indexed read), over HTTP, and the
  browser's runs list from navigation to painted rows.
- **live**: a writer thread moves task runs QUEUED -> RUNNING -> SUCCEEDED at a fixed rate of
  transitions a second while the page follows the run; lag = a transition's timestamp (taken just
  before ``store.apply``) -> the frame after the page drew it. p95 goal <= 500 ms at 1,000/s, and no
  long task (main thread blocked > 50 ms) over 200 ms ("without freezing").

The baseline, in the same command: a 100-task run for first render / scroll / memory, and 100
transitions a second for the live lag.

    python benchmarks/bench_dashboard.py [--reps 5] [--rate 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import table  # noqa: E402

from gflow.server.app import create_app  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.states import State  # noqa: E402
from gflow.store import RunRecord, Transition, open_store  # noqa: E402

CHROMIUM = os.environ.get("GFLOW_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def finished_run(st, run_id: str, n: int) -> None:
    """A finished run: one upstream task and a map of n - 1 elements, a few of them failed."""
    now = time.time() - 3600
    st.create_run(RunRecord(id=run_id, flow="bench", flow_path="bench:flow", created=now, executor="local",
                            params=f'{{"n":{n}}}'))
    st.set_run_state(run_id, State.RUNNING, now)
    trs = [Transition(f"{run_id}.1", run_id, State.PENDING, 1, now, task="b:prep", name="prep"),
           Transition(f"{run_id}.1", run_id, State.SUCCEEDED, 1, now + 1)]
    for i in range(n - 1):
        tid = f"{run_id}.{i + 2}"
        t = now + 2 + i * 0.002
        failed = i % 1000 == 999
        trs += [Transition(tid, run_id, State.PENDING, 1, t, task="b:score", name="score", map_index=i,
                           upstream=[f"{run_id}.1"]),
                Transition(tid, run_id, State.QUEUED, 1, t + 0.01),
                Transition(tid, run_id, State.RUNNING, 1, t + 0.3),
                Transition(tid, run_id, State.FAILED if failed else State.SUCCEEDED, 1, t + 0.8 + (i % 7) * 0.1,
                           error="ValueError: synthetic failure" if failed else None,
                           result_inline=None if failed else "0.5")]
    for k in range(0, len(trs), 20_000):
        st.apply(trs[k:k + 20_000])
    st.set_run_state(run_id, State.FAILED, now + 60, error="TaskFailed: score")


def pending_run(st, run_id: str, n: int) -> None:
    now = time.time()
    st.create_run(RunRecord(id=run_id, flow="live", flow_path="bench:live", created=now))
    st.set_run_state(run_id, State.RUNNING, now)
    st.apply([Transition(f"{run_id}.{i + 1}", run_id, State.PENDING, 1, now, task="b:work", name="work",
                         map_index=i) for i in range(n)])


def first_render(browser, url: str, run_id: str) -> dict:
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    page = ctx.new_page()
    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_function("performance.getEntriesByName('gflow:first-paint').length > 0", timeout=30_000)
    t = page.evaluate("""() => {
        const m = (n) => performance.getEntriesByName(n)[0].startTime;
        const q = performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/graphql'))[0];
        return {rendered: m('gflow:first-render'), painted: m('gflow:first-paint'),
                server: q.responseEnd - q.requestStart, answered: m('gflow:overview-answered'),
                dagNodes: document.querySelectorAll('[data-testid=dag-node]').length,
                rows: document.querySelectorAll('[data-testid=task-table] tbody tr').length};
    }""")
    ctx.close()
    return t


def scroll_and_memory(browser, url: str, run_id: str) -> dict:
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.add_init_script("window.__gflowStats = {pending: [], lags: []};")
    page = ctx.new_page()
    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_function("performance.getEntriesByName('gflow:first-paint').length > 0", timeout=30_000)
    page.wait_for_timeout(500)
    frames = page.evaluate("""() => new Promise((done) => {
        const s = document.querySelector('[data-testid=task-table] .scroller');
        const deltas = [];
        let last = null;
        const step = 12 * 28;  // ~12 rows a frame: 10,000 rows in ~14 s at 60 Hz
        const tick = (ts) => {
          if (last !== null) deltas.push(ts - last);
          last = ts;
          if (s.scrollTop + s.clientHeight >= s.scrollHeight - 1) { done(deltas); return; }
          s.scrollTop += step;
          requestAnimationFrame(tick);
        };
        requestAnimationFrame(tick);
    })""")
    idle = page.evaluate("""() => new Promise((done) => {
        const deltas = []; let last = null; let n = 0;
        const tick = (ts) => { if (last !== null) deltas.push(ts - last); last = ts;
                               if (++n > 120) done(deltas); else requestAnimationFrame(tick); };
        requestAnimationFrame(tick);
    })""")
    work = page.evaluate("window.__gflowStats.tableRender || []")
    cdp = ctx.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    last_row = page.locator("[data-testid=task-table] tbody tr").last.get_attribute("data-task-run-id")
    ctx.close()
    return {"p95": pct(frames, 95), "max": max(frames), "frames": len(frames), "idle_p95": pct(idle, 95),
            "work_p95": pct(work, 95), "over20": 100 * sum(f > 20 for f in frames) / max(1, len(frames)),
            "heap_mb": metrics["JSHeapUsedSize"] / 2**20, "nodes": int(metrics["Nodes"]), "last_row": last_row}


RUNS_Q = """query($after: String) { runs(first: 50, after: $after) { items { id state countsByState { state count }
  taskRunCount } nextCursor } }"""


def many_runs(st, n: int) -> float:
    """n runs, one a second up to now; returns the first one's creation time."""
    base = time.time() - n
    for i in range(n):
        st.create_run(RunRecord(id=f"20250101-000000-{i:06x}", flow=f"flow{i % 7}", created=base + i,
                                tags=["a" if i % 2 else "b"]))
    return base


def runs_list(browser, url: str, n: int, base: float, reps: int) -> dict:
    import httpx

    from gflow.server.schema import _encode_cursor

    deep = n - 100  # created order = index: a page that starts ~99,900 runs down
    cursor = _encode_cursor("runs", [base + deep, f"20250101-000000-{deep:06x}"])
    out: dict = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for label, after in (("first page", None), ("page 99,900 runs deep", cursor)):
            times = []
            for _ in range(reps * 4):
                t = time.perf_counter()
                r = c.post("/graphql", json={"query": RUNS_Q, "variables": {"after": after}})
                times.append((time.perf_counter() - t) * 1000)
                assert len(r.json()["data"]["runs"]["items"]) == 50
            out[label] = statistics.median(times)
    paints = []
    for _ in range(reps):
        ctx = browser.new_context(viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        page.goto(f"{url}/")
        page.wait_for_function("document.querySelectorAll('[data-testid=runs] tbody tr[data-run-id]').length === 50")
        paints.append(page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => "
                                    "r(performance.now()))))"))
        ctx.close()
    out["browser"] = statistics.median(paints)
    return out


def live(browser, url: str, st, run_id: str, n: int, rate: int, seconds: float) -> dict:
    ctx = browser.new_context(viewport={"width": 1440, "height": 900})
    ctx.add_init_script("window.__gflowStats = {pending: [], lags: []};")
    page = ctx.new_page()
    page.goto(f"{url}/runs/{run_id}")
    page.wait_for_function("performance.getEntriesByName('gflow:first-paint').length > 0", timeout=30_000)
    page.evaluate("""() => { window.__longtasks = [];
        new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__longtasks.push(e.duration); })
          .observe({entryTypes: ['longtask']}); }""")
    page.wait_for_function("document.querySelector('[data-testid=live]').textContent === 'live'", timeout=30_000)
    plan = [(i, s) for s in (State.QUEUED, State.RUNNING, State.SUCCEEDED) for i in range(n)]
    total = min(len(plan), int(rate * seconds))
    per_batch = max(1, rate // 100)  # 100 batches a second, like the engine's recorder under load
    t0 = time.monotonic()
    written = 0
    while written < total:
        due = t0 + written / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        batch = plan[written:written + per_batch]
        ts = time.time()
        st.apply([Transition(f"{run_id}.{i + 1}", run_id, s, 1, ts) for i, s in batch])
        written += len(batch)
    elapsed = time.monotonic() - t0
    page.wait_for_function(f"window.__gflowStats.lags.length >= {written}", timeout=60_000)
    lags = page.evaluate("window.__gflowStats.lags")
    longtasks = page.evaluate("window.__longtasks")
    ctx.close()
    return {"rate": round(written / elapsed), "events": len(lags), "p50": pct(lags, 50) * 1000,
            "p95": pct(lags, 95) * 1000, "max": max(lags) * 1000, "longest_task": max(longtasks, default=0),
            "long_tasks": len(longtasks)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="gflow-bench-dash-"))
    url_db = f"sqlite:///{tmp / 'gflow.db'}"
    st = open_store(url_db)
    finished_run(st, "big-10k", 10_001)
    finished_run(st, "small-100", 101)
    live_n = int(args.rate * args.seconds / 3) + 1
    pending_run(st, "live-fast", live_n)
    pending_run(st, "live-slow", 400)
    base = many_runs(st, 100_000 - 4)
    try:
        with serve(create_app(open_store(url_db), close_store=True)) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            first_render(browser, url, "small-100")  # warm the server and the browser cache
            renders = {rid: [first_render(browser, url, rid) for _ in range(args.reps)]
                       for rid in ("small-100", "big-10k")}
            scroll = {rid: scroll_and_memory(browser, url, rid) for rid in ("small-100", "big-10k")}
            listing = runs_list(browser, url, 100_000 - 4, base, args.reps)
            base = live(browser, url, st, "live-slow", 400, 100, min(args.seconds, 10.0))
            fast = live(browser, url, st, "live-fast", live_n, args.rate, args.seconds)
            browser.close()
    finally:
        st.close()
        shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    for rid, label in (("small-100", "100 task runs (baseline)"), ("big-10k", "10,000 task runs")):
        def med(k: str, rs: list = renders[rid]) -> float:
            return statistics.median(r[k] for r in rs)

        rows.append({"run": label, "server answer ms": f"{med('server'):.0f}",
                     "navigation -> rendered ms": f"{med('rendered'):.0f}",
                     "navigation -> painted ms": f"{med('painted'):.0f}",
                     "after the answer ms": f"{med('painted') - med('answered'):.0f}",
                     "DAG nodes": renders[rid][0]["dagNodes"], "rows in DOM": renders[rid][0]["rows"]})
    print(f"## First render (median of {args.reps})\n")
    print(table(rows, list(rows[0])))
    srows = [{"run": label, "frames": s["frames"], "p95 frame ms": f"{s['p95']:.1f}",
              "max frame ms": f"{s['max']:.1f}", "frames > 20 ms": f"{s['over20']:.1f}%",
              "idle p95 ms": f"{s['idle_p95']:.1f}",
              "table render p95 ms": f"{s['work_p95']:.2f}",
              "JS heap MB": f"{s['heap_mb']:.1f}", "DOM nodes": s["nodes"]}
             for label, s in (("100 task runs (baseline)", scroll["small-100"]),
                              ("10,000 task runs", scroll["big-10k"]))]
    print("\n## Scrolling the task table end to end, and the tab's memory\n")
    print(table(srows, list(srows[0])))
    print("\n## Runs list with 100,000 runs stored\n")
    lst = {"runs query, first page ms": f"{listing['first page']:.0f}",
           "runs query, 99,900 deep ms": f"{listing['page 99,900 runs deep']:.0f}",
           "browser: navigation -> 50 rows painted ms": f"{listing['browser']:.0f}"}
    print(table([lst], list(lst)))
    lrows = [{"writes/s": x["rate"], "events": x["events"], "lag p50 ms": f"{x['p50']:.0f}",
              "lag p95 ms": f"{x['p95']:.0f}", "lag max ms": f"{x['max']:.0f}",
              "long tasks": x["long_tasks"], "longest task ms": f"{x['longest_task']:.0f}"} for x in (base, fast)]
    print("\n## Live: transitions written -> drawn on the page\n")
    print(table(lrows, list(lrows[0])))
    big, small = renders["big-10k"], renders["small-100"]
    ratio = statistics.median(r["painted"] for r in big) / statistics.median(r["painted"] for r in small)
    print(f"\nload average when done: {os.getloadavg()[0]:.1f} (2 cores)")
    print(f"\n10,000 vs 100 task runs, navigation -> painted: {ratio:.1f}x;"
          f" scroll p95 {scroll['big-10k']['p95']:.1f} ms vs idle {scroll['big-10k']['idle_p95']:.1f} ms;"
          f" live lag p95 {fast['p95']:.0f} ms at {fast['rate']}/s vs {base['p95']:.0f} ms at {base['rate']}/s")


if __name__ == "__main__":
    main()
