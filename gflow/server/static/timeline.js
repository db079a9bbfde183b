// The run's timeline: a Gantt by task on a canvas (10,000 bars draw in a few ms). Each task run is
// queue time (QUEUED -> RUNNING, light) then run time (RUNNING -> end, its state's colour), so
// queueing and stragglers stand out. Hover for details; click opens the task run.
import {cssVar, el, fmtDur, STATES} from "./util.js";

const LABEL = 132, TOP = 20, PAD = 6;

export class Timeline {
  constructor({onOpen}) {
    this.onOpen = onOpen;
    this.canvas = el("canvas", {role: "img", "aria-label": "timeline of task runs"});
    this.tip = el("div", {class: "tip", hidden: true, role: "tooltip"});
    this.summary = el("p", {class: "sr-only", "aria-live": "off"});
    this.box = el("div", {class: "timeline", "data-testid": "run-timeline"}, this.canvas, this.summary);
    this.lanes = [];
    this.canvas.addEventListener("mousemove", (e) => this.hover(e));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.canvas.addEventListener("click", (e) => {
      const i = this.hit(e);
      if (i !== null) this.onOpen(i);
    });
    document.body.append(this.tip);
    new ResizeObserver(() => { if (this.m) this.draw(this.m, this.now); }).observe(this.box);
  }

  destroy() { this.tip.remove(); }

  layout(m) {
    const byGroup = m.groups.map(() => []);
    for (let i = 0; i < m.n; i++) byGroup[m.group[i]].push(i);
    let y = TOP;
    this.lanes = [];
    m.groups.forEach((g, gi) => {
      const members = byGroup[gi];
      if (!members.length) return;
      const rows = Math.min(members.length, 24);
      const rowH = members.length <= 8 ? 14 : 5;
      const lane = {gi, name: g.name, members, rows, rowH, y, h: rows * rowH + PAD};
      y += lane.h + 4;
      this.lanes.push(lane);
    });
    this.height = Math.max(y + 4, 60);
  }

  range(m, now) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < m.n; i++) {
      const a = m.queued[i] ?? m.started[i] ?? m.ended[i] ?? m.created[i];
      if (a !== null && a < lo) lo = a;
      const b = m.ended[i] ?? (m.started[i] !== null || m.queued[i] !== null ? now : null);
      if (b !== null && b > hi) hi = b;
    }
    if (!Number.isFinite(lo)) lo = m.t0;
    if (!Number.isFinite(hi) || hi <= lo) hi = lo + 1;
    return [lo, hi];
  }

  draw(m, now) {
    this.m = m;
    this.now = now;
    this.layout(m);
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(200, this.box.clientWidth - 2);
    const h = this.height;
    if (this.canvas.width !== Math.round(w * dpr) || this.canvas.height !== Math.round(h * dpr)) {
      this.canvas.width = Math.round(w * dpr);
      this.canvas.height = Math.round(h * dpr);
      this.canvas.style.width = `${w}px`;
      this.canvas.style.height = `${h}px`;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const [lo, hi] = this.range(m, now);
    this.lo = lo;
    this.scale = (w - LABEL - 8) / (hi - lo);
    const X = (t) => LABEL + (t - lo) * this.scale;
    const fg = cssVar("--fg"), muted = cssVar("--muted"), line = cssVar("--line");
    // axis
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = muted;
    ctx.strokeStyle = line;
    ctx.lineWidth = 1;
    const span = hi - lo;
    const step = niceStep(span / 6);
    for (let t = 0; t <= span + 1e-9; t += step) {
      const x = Math.round(X(lo + t)) + 0.5;
      ctx.beginPath(); ctx.moveTo(x, TOP - 4); ctx.lineTo(x, h); ctx.stroke();
      ctx.fillText(`+${fmtDur(t)}`, x + 3, 12);
    }
    // bars: all queue parts first, then run parts by state (few fillStyle changes)
    const colors = Object.fromEntries(STATES.map((s) => [s, cssVar(`--${s}`)]));
    const barsByState = Object.fromEntries(STATES.map((s) => [s, []]));
    ctx.fillStyle = cssVar("--queue");
    for (const lane of this.lanes) {
      const bh = Math.max(2, lane.rowH - (lane.rowH > 6 ? 4 : 1));
      lane.members.forEach((i, k) => {
        const y = lane.y + (k % lane.rows) * lane.rowH + 2;
        const q = m.queued[i], s = m.started[i];
        if (q !== null && q !== undefined) {
          const end = s ?? (m.ended[i] ?? now);
          ctx.fillRect(X(q), y, Math.max(1, (end - q) * this.scale), bh);
        }
        if (s !== null) barsByState[m.state[i]].push(X(s), y, Math.max(1.5, ((m.ended[i] ?? now) - s) * this.scale), bh);
        else if (m.ended[i] !== null) barsByState[m.state[i]].push(X(m.ended[i]), y, 2, bh);  // cached: a tick
      });
    }
    for (const s of STATES) {
      const b = barsByState[s];
      if (!b.length) continue;
      ctx.fillStyle = colors[s];
      for (let k = 0; k < b.length; k += 4) ctx.fillRect(b[k], b[k + 1], b[k + 2], b[k + 3]);
    }
    // lane labels and separators
    for (const lane of this.lanes) {
      ctx.fillStyle = cssVar("--panel");
      ctx.fillRect(0, lane.y - 2, LABEL - 4, lane.h);
      ctx.fillStyle = fg;
      const label = lane.name.length > 18 ? `${lane.name.slice(0, 17)}…` : lane.name;
      ctx.fillText(label, 6, lane.y + Math.min(lane.h / 2 + 4, 14));
      ctx.fillStyle = muted;
      if (lane.h >= 26) ctx.fillText(`${lane.members.length.toLocaleString("en-US")} runs`, 6, lane.y + 27);
      ctx.strokeStyle = line;
      ctx.beginPath(); ctx.moveTo(0, lane.y + lane.h + 1.5); ctx.lineTo(w, lane.y + lane.h + 1.5); ctx.stroke();
    }
    this.summary.textContent = `${this.lanes.length} tasks over ${fmtDur(span)}`;
  }

  hit(e) {
    if (!this.m) return null;
    const r = this.canvas.getBoundingClientRect();
    const x = e.clientX - r.left, y = e.clientY - r.top;
    const lane = this.lanes.find((l) => y >= l.y && y < l.y + l.h);
    if (!lane || x < LABEL) return null;
    const row = Math.floor((y - lane.y - 2) / lane.rowH);
    const t = this.lo + (x - LABEL) / this.scale;
    const slack = 3 / this.scale;
    const m = this.m;
    let best = null;
    for (let k = row; k < lane.members.length; k += lane.rows) {
      const i = lane.members[k];
      const a = m.queued[i] ?? m.started[i] ?? m.ended[i];
      if (a === null || a === undefined) continue;
      const b = m.ended[i] ?? this.now;
      if (t >= a - slack && t <= b + slack) { best = i; break; }
    }
    return best;
  }

  hover(e) {
    const i = this.hit(e);
    if (i === null) { this.tip.hidden = true; this.canvas.style.cursor = ""; return; }
    const m = this.m;
    const q = m.queued[i], s = m.started[i], end = m.ended[i];
    this.tip.textContent = `${m.groups[m.group[i]].name} ${m.short[i]} · ${m.state[i]}` +
      (q !== null && s !== null ? ` · queued ${fmtDur(s - q)}` : "") +
      (s !== null ? ` · ran ${fmtDur((end ?? this.now) - s)}${end === null ? "…" : ""}` : "");
    this.tip.style.left = `${e.clientX + 12}px`;
    this.tip.style.top = `${e.clientY + 12}px`;
    this.tip.hidden = false;
    this.canvas.style.cursor = "pointer";
  }
}

function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  for (const f of [1, 2, 5, 10]) if (raw <= f * p) return f * p;
  return 10 * p;
}
