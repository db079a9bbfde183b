// The run's DAG: one node per task (a 10,000-element map is one node with a progress ring), edges
// from the recorded upstream lists, coloured by state; pan (drag, arrow keys), zoom (wheel, +/-), fit (0).
import {BAR_ORDER, el, fmtInt, svg} from "./util.js";

const W = 188, H = 54, GX = 64, GY = 22, R = 16, RING = 5;
const CIRC = 2 * Math.PI * R;

export function groupState(counts, total) {
  if (counts.FAILED) return "FAILED";
  if (counts.RUNNING || counts.RETRYING) return "RUNNING";
  if (counts.QUEUED) return "QUEUED";
  if (counts.PENDING) return "PENDING";
  if (counts.CANCELLED) return "CANCELLED";
  if (total && (counts.CACHED || 0) === total) return "CACHED";
  return "SUCCEEDED";
}

function layout(groups, edges) {
  const index = new Map(groups.map((g, i) => [g.key, i]));
  const layer = new Array(groups.length).fill(0);
  const ins = groups.map(() => []);
  for (const e of edges) {
    const s = index.get(e.source), t = index.get(e.target);
    if (s === undefined || t === undefined || s === t) continue;
    if (s < t) ins[t].push(s);  // an edge from a later group is drawn, but does not push layers (loops)
  }
  for (let t = 0; t < groups.length; t++) for (const s of ins[t]) layer[t] = Math.max(layer[t], layer[s] + 1);
  const layers = [];
  groups.forEach((g, i) => { (layers[layer[i]] = layers[layer[i]] || []).push(i); });
  const slot = new Array(groups.length).fill(0);
  for (const ids of layers) {
    if (!ids) continue;
    const bary = (i) => (ins[i].length ? ins[i].reduce((a, s) => a + slot[s], 0) / ins[i].length : i);
    ids.sort((a, b) => bary(a) - bary(b) || a - b);
    ids.forEach((i, k) => { slot[i] = k; });
  }
  const tallest = Math.max(1, ...layers.map((l) => (l ? l.length : 0)));
  const pos = groups.map((g, i) => {
    const n = layers[layer[i]].length;
    const off = ((tallest - n) * (H + GY)) / 2;
    return {x: layer[i] * (W + GX), y: off + slot[i] * (H + GY)};
  });
  return {pos, width: layers.length * (W + GX) - GX, height: tallest * (H + GY) - GY};
}

export class Dag {
  constructor({onPick}) {
    this.onPick = onPick;
    this.view = {x: 0, y: 0, k: 1};
    this.sig = "";
    this.nodes = new Map();
    this.selected = -1;
    this.edgesG = svg("g");
    this.nodesG = svg("g");
    this.world = svg("g", null, this.edgesG, this.nodesG);
    const defs = svg("defs", null, svg("marker", {id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5",
      markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse"},
      svg("path", {d: "M 0 0 L 10 5 L 0 10 z", fill: "currentColor", class: "arrowhead"})));
    this.svg = svg("svg", {role: "group", "aria-label": "task graph: one node per task"}, defs, this.world);
    this.box = el("div", {class: "dag", tabindex: "0", "data-testid": "run-dag",
      "aria-label": "run graph; arrow keys pan, + and - zoom, 0 fits; Tab reaches the tasks"}, this.svg);
    const zoom = (f) => () => this.zoomBy(f);
    this.tools = el("span", {class: "actions"},
      el("button", {type: "button", class: "ghost", title: "zoom in", "aria-label": "zoom in", on: {click: zoom(1.25)}}, "+"),
      el("button", {type: "button", class: "ghost", title: "zoom out", "aria-label": "zoom out", on: {click: zoom(0.8)}}, "−"),
      el("button", {type: "button", class: "ghost", title: "fit the graph", on: {click: () => this.fit()}}, "fit"));
    this.bindPanZoom();
  }

  bindPanZoom() {
    let drag = null;
    this.box.addEventListener("pointerdown", (e) => {
      if (e.target.closest(".node")) return;
      drag = {x: e.clientX, y: e.clientY, vx: this.view.x, vy: this.view.y};
      this.box.setPointerCapture(e.pointerId);
      this.box.style.cursor = "grabbing";
    });
    this.box.addEventListener("pointermove", (e) => {
      if (!drag) return;
      this.view.x = drag.vx + e.clientX - drag.x;
      this.view.y = drag.vy + e.clientY - drag.y;
      this.apply();
    });
    const end = () => { drag = null; this.box.style.cursor = ""; };
    this.box.addEventListener("pointerup", end);
    this.box.addEventListener("pointercancel", end);
    this.box.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = this.box.getBoundingClientRect();
      this.zoomBy(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
    }, {passive: false});
    this.box.addEventListener("keydown", (e) => {
      if (e.target !== this.box) return;
      const step = 40;
      const moves = {ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step]};
      if (moves[e.key]) { this.view.x += moves[e.key][0]; this.view.y += moves[e.key][1]; this.apply(); }
      else if (e.key === "+" || e.key === "=") this.zoomBy(1.25);
      else if (e.key === "-") this.zoomBy(0.8);
      else if (e.key === "0") this.fit();
      else return;
      e.preventDefault();
    });
  }

  zoomBy(f, cx, cy) {
    const w = this.box.clientWidth, h = this.box.clientHeight;
    cx = cx ?? w / 2;
    cy = cy ?? h / 2;
    const k = Math.max(0.05, Math.min(4, this.view.k * f));
    const real = k / this.view.k;
    this.view.x = cx - (cx - this.view.x) * real;
    this.view.y = cy - (cy - this.view.y) * real;
    this.view.k = k;
    this.apply();
  }

  apply() {
    this.world.setAttribute("transform", `translate(${this.view.x},${this.view.y}) scale(${this.view.k})`);
  }

  fit() {
    const w = this.box.clientWidth || 600, h = this.box.clientHeight || 260;
    const lw = Math.max(this.size.width, 1), lh = Math.max(this.size.height, 1);
    const k = Math.max(0.05, Math.min(1.2, (w - 24) / lw, (h - 24) / lh));
    this.view = {k, x: (w - lw * k) / 2, y: (h - lh * k) / 2};
    this.apply();
  }

  /** groups: [{key, name, total, counts, isMap}] in first-seen order; edges: [{source, target, count}]. */
  update(groups, edges) {
    const sig = groups.map((g) => g.key).join("\n") + "|" + edges.map((e) => `${e.source}>${e.target}`).join("\n");
    if (sig !== this.sig) {
      this.sig = sig;
      this.relayout(groups, edges);
    }
    groups.forEach((g, i) => this.paint(this.nodes.get(i), g));
  }

  relayout(groups, edges) {
    const first = this.nodes.size === 0;
    const {pos, width, height} = layout(groups, edges);
    this.size = {width, height};
    this.pos = pos;
    const index = new Map(groups.map((g, i) => [g.key, i]));
    this.edgesG.replaceChildren();
    for (const e of edges) {
      const s = index.get(e.source), t = index.get(e.target);
      if (s === undefined || t === undefined) continue;
      const a = pos[s], b = pos[t];
      let d;
      if (s === t) {  // a task that feeds itself (a loop in the flow): a small arc on top
        d = `M ${a.x + W * 0.6} ${a.y} C ${a.x + W * 0.6} ${a.y - 26}, ${a.x + W * 0.9} ${a.y - 26}, ${a.x + W * 0.85} ${a.y}`;
      } else {
        const x1 = a.x + W, y1 = a.y + H / 2, x2 = b.x, y2 = b.y + H / 2;
        const mx = (x1 + x2) / 2;
        d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2 - 2} ${y2}`;
      }
      const p = svg("path", {class: "edge", d, "marker-end": "url(#arrow)", "data-source": e.source, "data-target": e.target});
      p.append(svg("title", null, `${groups[t].name} took ${e.count} result(s) of ${groups[s].name}`));
      this.edgesG.append(p);
    }
    this.nodesG.replaceChildren();
    this.nodes.clear();
    groups.forEach((g, i) => {
      const node = this.makeNode(g, i);
      node.g.setAttribute("transform", `translate(${pos[i].x},${pos[i].y})`);
      this.nodes.set(i, node);
      this.nodesG.append(node.g);
    });
    if (first) requestAnimationFrame(() => this.fit());
  }

  makeNode(g, i) {
    const segs = BAR_ORDER.map((s) => svg("circle", {cx: R + 10, cy: H / 2, r: R, fill: "none",
      "stroke-width": RING, stroke: `var(--${s})`, transform: `rotate(-90 ${R + 10} ${H / 2})`, "data-state": s}));
    const ring = svg("g", {"data-testid": "dag-ring"},
      svg("circle", {class: "ring-bg", cx: R + 10, cy: H / 2, r: R, "stroke-width": RING}), ...segs);
    const pct = svg("text", {x: R + 10, y: H / 2 + 3.5, "text-anchor": "middle", class: "sub", "font-size": "9"});
    const name = svg("text", {x: 2 * R + 20, y: 22});
    const sub = svg("text", {x: 2 * R + 20, y: 39, class: "sub", "data-testid": "dag-count"});
    const bar = svg("rect", {x: 0, y: 0, width: 4, height: H, rx: 2});
    const title = svg("title");
    const box = svg("rect", {class: "box", width: W, height: H, rx: 8});
    const node = svg("g", {class: "node", tabindex: "0", role: "button", "data-testid": "dag-node", "data-key": g.key,
      "data-index": String(i)}, title, box, bar, ring, pct, name, sub);
    const pick = () => {
      this.selected = this.selected === i ? -1 : i;
      for (const [j, n] of this.nodes) n.g.classList.toggle("selected", j === this.selected);
      this.onPick(this.selected);
    };
    node.addEventListener("click", pick);
    node.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); }
    });
    const label = g.name.length > 22 ? `${g.name.slice(0, 21)}…` : g.name;
    name.textContent = label;
    return {g: node, segs, pct, sub, bar, title, name};
  }

  paint(node, g) {
    if (!node) return;
    const total = g.total || 0;
    let offset = 0;
    for (const seg of node.segs) {
      const n = g.counts[seg.dataset.state] || 0;
      const len = total ? (CIRC * n) / total : 0;
      seg.setAttribute("stroke-dasharray", `${len} ${CIRC - len}`);
      seg.setAttribute("stroke-dashoffset", String(-offset));
      seg.style.display = n ? "" : "none";
      offset += len;
    }
    let done = 0;
    for (const s of ["SUCCEEDED", "CACHED", "FAILED", "CANCELLED"]) done += g.counts[s] || 0;
    const state = groupState(g.counts, total);
    node.bar.setAttribute("fill", `var(--${state})`);
    node.g.dataset.state = state;
    node.pct.textContent = total ? `${Math.floor((100 * done) / total)}%` : "";
    const failed = g.counts.FAILED ? ` · ${fmtInt(g.counts.FAILED)} failed` : "";
    const running = g.counts.RUNNING ? ` · ${fmtInt(g.counts.RUNNING)} running` : "";
    node.sub.textContent = `${fmtInt(done)}/${fmtInt(total)}${g.isMap ? " map" : ""}${failed || running}`;
    const desc = `${g.name}: ${fmtInt(done)} of ${fmtInt(total)} done` +
      BAR_ORDER.filter((s) => g.counts[s]).map((s) => `, ${g.counts[s]} ${s.toLowerCase()}`).join("");
    node.title.textContent = `${g.key}\n${desc}`;
    node.g.setAttribute("aria-label", `${desc}. Enter shows them in the table.`);
  }
}
