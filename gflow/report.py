"""``gflow report RUN_ID -o report.html``: one self-contained HTML file about a run, to attach to a lab notebook
or a pull request. Inline CSS, SVG and script only: the file requests nothing, from anywhere.

Sections (each a ``<section id=...>``): **summary** (flow, state, times, counts by state, parameters, tags,
the runs it came from), **timeline** (a bar per task run, or per task past :data:`MAX_BARS`), **dag** (one
node per task, the edges recorded between their calls), **usage** (used vs requested per task where the
attempts recorded usage: CPU seconds, peak memory; "not recorded" otherwise), **cost** (an estimate where
the attempts recorded one; "not recorded" otherwise), **failures** (every failed task run's message),
**versions** (the run's image and each task's code version and image, as noted when the run called it),
and **outputs** (the run's result, its gflow objects drawn as in the dashboard: a molecule's depiction, a
sequence with its mutations, a structure in the bundled 3Dmol.js viewer, tables).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

from gflow.errors import GflowError, StoreError
from gflow.states import State

__all__ = ["ReportError", "render_report", "write_report"]

MAX_BARS = 2000
_COLOR = {"SUCCEEDED": "#16a34a", "CACHED": "#0891b2", "FAILED": "#dc2626", "CANCELLED": "#ca8a04",
          "RUNNING": "#2563eb", "RETRYING": "#c026d3", "QUEUED": "#6b7280", "PENDING": "#9ca3af"}
_USAGE_KEYS = ("cpu_seconds", "wall_seconds", "peak_memory_bytes", "gpu_peak_memory_bytes")
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;max-width:1100px;padding:24px;
color:#111}h1{font-size:1.4rem}h2{font-size:1.1rem;border-bottom:1px solid #e5e7eb;padding-bottom:4px;margin-top:28px}
.muted{color:#6b7280}.mono,code,pre{font-family:ui-monospace,Menlo,Consolas,monospace}
table.data{border-collapse:collapse;font-size:13px}table.data td,table.data th{border:1px solid #e5e7eb;padding:3px 8px;
text-align:left}.badge{display:inline-block;padding:1px 8px;border-radius:9px;color:#fff;font-size:12px}
pre.json,pre.err{background:#f9fafb;border:1px solid #e5e7eb;padding:8px;overflow:auto;max-height:360px;
white-space:pre-wrap}.obj{border:1px solid #e5e7eb;border-radius:6px;padding:8px 10px;margin:8px 0}
.seq{font-family:ui-monospace,Menlo,monospace;word-break:break-all}mark.mut{background:#fde68a;color:#92400e;
font-weight:600}.structure{position:relative;width:100%;height:360px;border:1px solid #e5e7eb}
svg text{font:12px system-ui,sans-serif}
"""


class ReportError(GflowError):
    """An unknown run."""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _ts(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t)) if t else "–"


def _dur(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _badge(state: str) -> str:
    return f'<span class="badge" style="background:{_COLOR.get(state, "#6b7280")}">{_e(state)}</span>'


def _summary(run: Any, trs: list[Any]) -> str:
    counts: dict[str, int] = {}
    for t in trs:
        counts[t.state.value] = counts.get(t.state.value, 0) + 1
    rows = [("run", f"<code>{_e(run.id)}</code>"), ("flow", f"{_e(run.flow)} <span class='muted'>{_e(run.flow_path)}"
            "</span>"), ("state", _badge(run.state.value)), ("created", _ts(run.created)),
            ("started", _ts(run.started)), ("ended", _ts(run.ended)), ("duration", _dur(run.duration)),
            ("executor", _e(run.executor)), ("task runs", f"{len(trs)}: " + ", ".join(
                f"{_e(k)} {v}" for k, v in sorted(counts.items()))),
            ("tags", _e(", ".join(run.tags) or "–"))]
    for label, attr in (("parent run", "parent_run"), ("resumed from", "resumed_from"), ("replay of", "replay_of")):
        if getattr(run, attr):
            rows.append((label, f"<code>{_e(getattr(run, attr))}</code>"))
    if run.error:
        rows.append(("error", f"<span style='color:#dc2626'>{_e(run.error.splitlines()[0][:500])}</span>"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    params = _e(json.dumps(_display(run.params), indent=2)[:20_000])
    return f'<table class="data">{body}</table><h3>parameters</h3><pre class="json">{params}</pre>'


def _display(text: str | None) -> Any:
    from gflow.server.display import display_params

    try:
        return display_params(text)
    except Exception:  # noqa: BLE001 - stored data is untrusted: show it as text
        return text


def _groups(trs: list[Any]) -> tuple[list[str], dict[str, list[Any]], dict[tuple[str, str], int]]:
    by: dict[str, list[Any]] = {}
    for t in trs:
        by.setdefault(t.name or t.task, []).append(t)
    names = list(by)
    of = {t.id: (t.name or t.task) for t in trs}
    edges: dict[tuple[str, str], int] = {}
    for t in trs:
        for u in dict.fromkeys(t.upstream):
            if u in of and of[u] != of[t.id]:
                k = (of[u], of[t.id])
                edges[k] = edges.get(k, 0) + 1
    return names, by, edges


def _timeline(run: Any, trs: list[Any]) -> str:
    timed = [t for t in trs if t.started]
    if not timed:
        return '<p class="muted">no task run started</p>'
    t0 = min([run.started or run.created or timed[0].started, *[t.started for t in timed]])
    t1 = max([t.ended or t.started for t in timed] + [run.ended or 0])
    span = max(t1 - t0, 1e-6)
    width, left = 1000, 170
    names, by, _ = _groups(timed)
    rows: list[tuple[str, list[Any]]] = []
    if len(timed) <= MAX_BARS:
        rows = [(f"{t.name}{'' if t.map_index is None else f'[{t.map_index}]'}", [t]) for n in names for t in by[n]]
    else:  # one bar per task, from its first start to its last end
        rows = [(f"{n} ×{len(by[n])}", by[n]) for n in names]
    h = 14
    parts = []
    for i, (label, ts) in enumerate(rows):
        y = i * (h + 4) + 20
        a = min(t.started for t in ts)
        b = max((t.ended or t1) for t in ts)
        state = ts[0].state.value if len(ts) == 1 else ("FAILED" if any(t.state is State.FAILED for t in ts)
                                                          else "SUCCEEDED")
        x = left + (a - t0) / span * (width - left)
        w = max(1.5, (b - a) / span * (width - left))
        parts.append(f'<text x="0" y="{y + 11}">{_e(label[:26])}</text><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                     f'height="{h}" fill="{_COLOR.get(state, "#6b7280")}"><title>{_e(label)}: {_e(state)}, '
                     f'{_dur(b - a)}</title></rect>')
    height = len(rows) * (h + 4) + 30
    axis = (f'<text x="{left}" y="12" class="muted">0</text><text x="{width - 60}" y="12">{_dur(span)}</text>')
    return (f'<svg data-testid="timeline" width="100%" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg">{axis}{"".join(parts)}</svg>')


def _dag(trs: list[Any]) -> str:
    names, by, edges = _groups(trs)
    if not names:
        return '<p class="muted">no task runs</p>'
    layer = dict.fromkeys(names, 0)
    for _ in range(len(names)):  # longest path from a source (the groups are few)
        changed = False
        for (a, b) in edges:
            if layer[b] < layer[a] + 1:
                layer[b] = layer[a] + 1
                changed = True
        if not changed:
            break
    cols: dict[int, list[str]] = {}
    for n in names:
        cols.setdefault(layer[n], []).append(n)
    bw, bh, gx, gy = 170, 46, 60, 18
    pos = {n: (c * (bw + gx) + 10, r * (bh + gy) + 10) for c, ns in cols.items() for r, n in enumerate(ns)}
    parts = []
    for (a, b), count in edges.items():
        (x1, y1), (x2, y2) = pos[a], pos[b]
        parts.append(f'<line x1="{x1 + bw}" y1="{y1 + bh / 2}" x2="{x2}" y2="{y2 + bh / 2}" stroke="#9ca3af" '
                     f'stroke-width="1.5" data-edge="{_e(a)}->{_e(b)}"><title>{count} calls</title></line>')
    for n, (x, y) in pos.items():
        ts = by[n]
        failed = sum(t.state is State.FAILED for t in ts)
        state = "FAILED" if failed else ts[0].state.value if len(ts) == 1 else "SUCCEEDED"
        parts.append(f'<g data-node="{_e(n)}"><rect x="{x}" y="{y}" width="{bw}" height="{bh}" rx="6" fill="#fff" '
                     f'stroke="{_COLOR.get(state, "#6b7280")}" stroke-width="2"/><text x="{x + 8}" y="{y + 19}">'
                     f'{_e(n[:24])}</text><text x="{x + 8}" y="{y + 36}" fill="#6b7280">{len(ts)} call'
                     f'{"s" if len(ts) != 1 else ""}{f", {failed} failed" if failed else ""}</text></g>')
    w = (max(cols) + 1) * (bw + gx) + 20
    h = max(len(v) for v in cols.values()) * (bh + gy) + 20
    return (f'<svg data-testid="dag" width="{w}" viewBox="0 0 {w} {h}" style="max-width:100%;height:auto" '
            f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _usage_of(t: Any) -> dict[str, Any]:
    info: dict[str, Any] = t.info if isinstance(t.info, dict) else {}
    nested = info.get("usage")
    usage: dict[str, Any] = nested if isinstance(nested, dict) else info
    return {k: usage[k] for k in _USAGE_KEYS if isinstance(usage.get(k), (int, float))}


def _usage(trs: list[Any], notes: dict[str, dict[str, Any]]) -> str:
    rows = []
    for t in trs:
        u = _usage_of(t)
        if u:
            req = (notes.get(t.task, {}).get("options") or {}).get("resources") or {}
            rows.append(f"<tr><td>{_e(t.name)}</td><td><code>{_e(t.id)}</code></td><td>{_e(u.get('cpu_seconds'))}"
                        f"</td><td>{_e(u.get('peak_memory_bytes'))}</td><td>{_e(req.get('cpu'))} CPU, "
                        f"{_e(req.get('memory'))} memory, {_e(req.get('gpu'))} GPU</td></tr>")
    if not rows:
        return '<p class="muted" data-testid="usage-not-recorded">Usage: not recorded for this run\'s attempts.</p>'
    return ('<table class="data"><tr><th>task</th><th>task run</th><th>CPU s</th><th>peak memory (bytes)</th>'
            f'<th>requested</th></tr>{"".join(rows)}</table>')


def _cost(trs: list[Any], prices: Any = None) -> str:
    if prices is not None:
        from gflow.usage import summarize

        total, tasks = summarize(trs, prices)
        if total.cost is not None:
            cur = _e(prices.currency)
            rows = "".join(f"<tr><td>{_e(s.name)}</td><td>{s.calls}{' (map)' if s.is_map else ''}</td>"
                           f"<td>{s.cost or 0:.4f} {cur}</td></tr>" for s in tasks)
            return (f'<p data-testid="cost-total">estimated total {total.cost:.4f} {cur} (from the profile\'s price '
                    f'table; an estimate, not a bill)</p><table class="data"><tr><th>task</th><th>calls</th>'
                    f'<th>cost</th></tr>{rows}</table>')
    costs = [(t, t.info["cost"]) for t in trs if isinstance(t.info, dict) and isinstance(t.info.get("cost"),
                                                                                          (int, float))]
    if not costs:
        return '<p class="muted" data-testid="cost-not-recorded">Cost: not recorded (no price table applied).</p>'
    total = sum(c for _, c in costs)
    rows = "".join(f"<tr><td>{_e(t.name)}</td><td><code>{_e(t.id)}</code></td><td>{c:.4f}</td></tr>" for t, c in costs)
    return f'<p>estimated total {total:.4f}</p><table class="data">{rows}</table>'


def _failures(trs: list[Any]) -> str:
    failed = [t for t in trs if t.state is State.FAILED]
    if not failed:
        return '<p class="muted">no task run failed</p>'
    out = []
    for t in failed[:200]:
        out.append(f'<div class="failure" data-testid="failure"><b>{_e(t.name)}</b> <code>{_e(t.id)}</code> '
                   f'attempt {t.attempt}<pre class="err">{_e((t.error or "")[:4000])}</pre>'
                   + (f'<details><summary>traceback</summary><pre class="err">{_e((t.traceback or "")[-8000:])}'
                      f'</pre></details>' if t.traceback else "") + "</div>")
    more = f'<p class="muted">and {len(failed) - 200} more</p>' if len(failed) > 200 else ""
    return "".join(out) + more


def _versions(run: Any, trs: list[Any], notes: dict[str, dict[str, Any]]) -> str:
    rows = []
    for task in dict.fromkeys(t.task for t in trs if t.task != "gflow:map"):
        n = notes.get(task, {})
        rows.append(f"<tr><td><code>{_e(task)}</code></td><td><code>{_e(n.get('version') or 'not recorded')}</code>"
                    f"</td><td><code>{_e(n.get('image') or run.image_tag or '–')}</code></td></tr>")
    return (f"<p>run image: <code>{_e(run.image_tag or 'none (ran on this host)')}</code></p>"
            f'<table class="data"><tr><th>task</th><th>code version</th><th>image</th></tr>{"".join(rows)}</table>')


def _outputs(run: Any, artifacts: Any) -> tuple[str, bool]:
    from gflow.server.depict import object_html, table_html, table_of
    from gflow.server.display import value_info

    text = run.result_inline
    if text is None and run.result_ref and artifacts is not None:
        try:
            text = artifacts.get(run.result_ref).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001 - a missing or unreadable artifact: say so below
            text = None
    info = value_info(text, "inline")
    if info is None:
        where = f" (artifact {_e(run.result_ref)})" if run.result_ref else ""
        return f'<p class="muted">no stored result{where}</p>', False
    parts = [object_html(o.kind, o.data, i) for i, o in enumerate(info.objects)]
    d = info.display
    inner = d if isinstance(d, list) else list(d.values()) if isinstance(d, dict) else []
    for candidate in [d, *inner[:50]]:  # the result, or a list of records inside it
        table = table_of(candidate)
        if table:
            parts.append(table_html(table))
    raw = _e(json.dumps(info.display, indent=2, default=str)[:200_000])
    parts.append(f'<details><summary>raw JSON</summary><pre class="json">{raw}</pre></details>')
    return "".join(parts), any(o.kind == "Structure" for o in info.objects)


_VIEWER_INIT = """
document.querySelectorAll("script.structure-data").forEach(function (s) {
  var d = JSON.parse(s.textContent), box = document.getElementById(s.dataset.target);
  var v = $3Dmol.createViewer(box, {backgroundColor: "white"});
  v.addModel(d.text, d.format); v.setStyle({}, {cartoon: {color: "spectrum"}, stick: {radius: 0.15}});
  v.zoomTo(); v.render(); box.dataset.rendered = "true";
});
"""


def render_report(store: Any, run_id: str, artifacts: Any = None, prices: Any = None) -> str:
    """The report of ``run_id`` as HTML text; ``prices`` (:class:`gflow.usage.Prices`) gives the cost section.

    Raises:
        ReportError: naming the run the store does not know.
    """
    try:
        run = store.get_run(run_id)
    except (LookupError, StoreError) as e:
        raise ReportError(f"no run {run_id!r} in {store.url}") from e
    trs = store.task_runs(run_id)
    notes: dict[str, dict[str, Any]] = {}
    try:
        from gflow.flows import PROVENANCE_TABLE

        for r in store.get_rows(PROVENANCE_TABLE, {"run": run_id}, limit=1000):
            notes[str(r.get("task"))] = r
    except (StoreError, GflowError):
        pass
    outputs, has_structure = _outputs(run, artifacts)
    sections = [("summary", "Summary", _summary(run, trs)), ("timeline", "Timeline", _timeline(run, trs)),
                ("dag", "Task graph", _dag(trs)), ("usage", "Usage vs requested", _usage(trs, notes)),
                ("cost", "Cost", _cost(trs, prices)), ("failures", "Failures", _failures(trs)),
                ("versions", "Images and code versions", _versions(run, trs, notes)),
                ("outputs", "Outputs", outputs)]
    body = "".join(f'<section id="{sid}" data-testid="section-{sid}"><h2>{title}</h2>{content}</section>'
                   for sid, title, content in sections)
    script = ""
    if has_structure:
        js = (Path(__file__).parent / "server" / "static" / "vendor" / "3Dmol-min.js").read_text(encoding="utf-8")
        js = js.replace("</script", "<\\/script")
        script = f"<script>{js}</script><script>{_VIEWER_INIT}</script>"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>gflow report {_e(run.id)}</title>'
            f'<meta name="generator" content="gflow report"><style>{_CSS}</style></head><body>'
            f'<h1>{_e(run.flow)} <span class="muted">run {_e(run.id)}</span> {_badge(run.state.value)}</h1>'
            f'<p class="muted">written {_ts(time.time())} by gflow report</p>{body}{script}</body></html>')


def write_report(store: Any, run_id: str, path: str | Path, artifacts: Any = None, prices: Any = None) -> Path:
    """Write the report of ``run_id`` to ``path``; returns the path."""
    out = Path(path)
    out.write_text(render_report(store, run_id, artifacts, prices), encoding="utf-8")
    return out
