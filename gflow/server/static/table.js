// The task-run table: filters, sorting and virtualized scrolling (only the rows on screen exist in the
// DOM, recycled as it scrolls), so 10,000+ rows scroll as smoothly as 10. Keyboard: arrows, Page
// Up/Down, Home/End move; Enter opens the drawer.
import {el, fmtDur, fmtInt, fmtTime, nowSec, RANK, STATES, TERMINAL} from "./util.js";

const ROW = 28;
const OVERSCAN = 8;
const COLS = [
  {key: "id", label: "task run", width: "9%"},
  {key: "task", label: "task", width: "21%"},
  {key: "state", label: "state", width: "11%"},
  {key: "attempt", label: "try", width: "5%"},
  {key: "wait", label: "queued", width: "9%"},
  {key: "duration", label: "duration", width: "10%"},
  {key: "started", label: "started", width: "12%"},
  {key: "error", label: "error", width: "23%"},
];

function colgroup() {
  return el("colgroup", null, ...COLS.map((c) => el("col", {style: `width:${c.width}`})));
}

export class TaskTable {
  /** model: the run's columns (see run.js); onOpen(i): open row i in the drawer. */
  constructor(model, {onOpen, onFilter}) {
    this.m = model;
    this.onOpen = onOpen;
    this.onFilter = onFilter || (() => {});
    this.filter = {state: "", group: "", text: ""};
    this.sort = {key: "", dir: 1};
    this.view = [];  // row indices shown, in order
    this.viewDirty = true;
    this.active = 0;  // position in view of the keyboard cursor
    this.selectedId = null;
    this.pool = [];
    this.renderedKey = "";
    this.build();
  }

  build() {
    this.stateSel = el("select", {"aria-label": "state", "data-testid": "task-filter-state", name: "state"},
      el("option", {value: ""}, "any state"), ...STATES.map((s) => el("option", {value: s}, s)));
    this.groupSel = el("select", {"aria-label": "task", "data-testid": "task-filter-task", name: "task"},
      el("option", {value: ""}, "any task"));
    this.textIn = el("input", {type: "search", "aria-label": "search task runs", placeholder: "id, task or error",
      "data-testid": "task-filter-text", size: 22});
    this.countOut = el("span", {class: "muted", "data-testid": "task-table-count", "aria-live": "polite"});
    this.stateSel.addEventListener("change", () => this.setFilter({state: this.stateSel.value}));
    this.groupSel.addEventListener("change", () => this.setFilter({group: this.groupSel.value}));
    let t = null;
    this.textIn.addEventListener("input", () => {
      clearTimeout(t);
      t = setTimeout(() => this.setFilter({text: this.textIn.value.trim().toLowerCase()}), 120);
    });
    this.tools = el("div", {class: "table-tools"},
      el("label", null, "state", this.stateSel), el("label", null, "task", this.groupSel),
      el("label", null, "search", this.textIn), this.countOut);

    this.headCells = COLS.map((c) => {
      const b = el("button", {type: "button"}, c.label);
      b.addEventListener("click", () => this.setSort(c.key));
      return el("th", {scope: "col", "aria-sort": "none", data: {key: c.key}}, b);
    });
    const head = el("table", {role: "presentation"}, colgroup(), el("thead", null, el("tr", null, ...this.headCells)));
    this.tbody = el("tbody");
    this.bodyTable = el("table", {id: "tasks", class: "body", "aria-label": "task runs", "aria-rowcount": "0"},
      colgroup(), this.tbody);
    this.sizer = el("div", {class: "sizer"});
    this.empty = el("div", {class: "empty", hidden: true}, "no task runs match");
    this.scroller = el("div", {class: "scroller"}, this.sizer, this.bodyTable, this.empty);
    this.root = el("div", {class: "vtable", "data-testid": "task-table"}, head, this.scroller);
    this.scroller.addEventListener("scroll", () => this.requestRender(), {passive: true});
    this.scroller.addEventListener("keydown", (e) => this.onKey(e));
    this.tbody.addEventListener("click", (e) => {
      const tr = e.target.closest("tr");
      if (tr && tr.dataset.pos !== undefined) {
        this.active = Number(tr.dataset.pos);
        this.onOpen(this.view[this.active]);
      }
    });
    new ResizeObserver(() => this.requestRender()).observe(this.scroller);
  }

  setGroups(groups) {
    const cur = this.groupSel.value;
    const opts = [el("option", {value: ""}, "any task")];
    groups.forEach((g, i) => opts.push(el("option", {value: String(i)}, `${g.name} (${fmtInt(g.total)})`)));
    this.groupSel.replaceChildren(...opts);
    this.groupSel.value = cur;
  }

  setFilter(f) {
    Object.assign(this.filter, f);
    if (f.state !== undefined) this.stateSel.value = f.state;
    if (f.group !== undefined) this.groupSel.value = f.group;
    this.active = 0;
    this.scroller.scrollTop = 0;
    this.invalidate();
    this.onFilter(this.filter);
  }

  setSort(key) {
    this.sort = this.sort.key === key ? {key, dir: -this.sort.dir} : {key, dir: 1};
    for (const th of this.headCells) {
      th.setAttribute("aria-sort", th.dataset.key !== key ? "none" : this.sort.dir > 0 ? "ascending" : "descending");
    }
    this.invalidate();
  }

  invalidate() {
    this.viewDirty = true;
    this.requestRender();
  }

  requestRender() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => { this.raf = 0; this.render(); });
  }

  value(i, key, now) {
    const m = this.m;
    switch (key) {
      case "id": return m.seq[i];
      case "task": return m.groups[m.group[i]].name;
      case "state": return RANK[m.state[i]] * 10 + STATES.indexOf(m.state[i]);
      case "attempt": return m.attempt[i];
      case "wait": return m.started[i] === null ? -1 : m.started[i] - (m.queued[i] ?? m.created[i] ?? m.started[i]);
      case "duration": return m.started[i] === null ? -1 : (m.ended[i] ?? now) - m.started[i];
      case "started": return m.started[i] ?? Infinity;
      case "error": return m.err[i] || "";
      default: return 0;
    }
  }

  computeView() {
    const m = this.m;
    const {state, group, text} = this.filter;
    const g = group === "" ? -1 : Number(group);
    const out = [];
    for (let i = 0; i < m.n; i++) {
      if (state && m.state[i] !== state) continue;
      if (g >= 0 && m.group[i] !== g) continue;
      if (text && !(m.ids[i].toLowerCase().includes(text) || m.groups[m.group[i]].name.toLowerCase().includes(text)
                    || (m.err[i] && m.err[i].toLowerCase().includes(text)))) continue;
      out.push(i);
    }
    if (this.sort.key) {
      const now = nowSec();
      const key = this.sort.key;
      const vals = new Map(out.map((i) => [i, this.value(i, key, now)]));
      const dir = this.sort.dir;
      out.sort((a, b) => {
        const va = vals.get(a), vb = vals.get(b);
        return (va < vb ? -1 : va > vb ? 1 : a - b) * dir;
      });
    }
    this.view = out;
    this.viewDirty = false;
    this.countOut.textContent = out.length === m.n ? `${fmtInt(m.n)} task runs` : `${fmtInt(out.length)} of ${fmtInt(m.n)} task runs`;
    this.bodyTable.setAttribute("aria-rowcount", String(out.length));
    this.sizer.style.height = `${out.length * ROW}px`;
    this.empty.hidden = out.length > 0 || m.n === 0;
  }

  render() {
    const t0 = performance.now();
    if (this.viewDirty) this.computeView();
    const height = this.scroller.clientHeight || 400;
    const top = this.scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.view.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    const want = last - first;
    while (this.pool.length < want) this.pool.push(this.makeRow());
    const rows = this.pool.slice(0, want);
    if (this.tbody.childElementCount !== want) this.tbody.replaceChildren(...rows);
    this.bodyTable.style.transform = `translateY(${first * ROW}px)`;
    const now = nowSec();
    const hadFocus = this.scroller.contains(document.activeElement);
    for (let k = 0; k < want; k++) this.fill(rows[k], first + k, now);
    if (hadFocus) this.focusActive();
    if (window.__gflowStats) (window.__gflowStats.tableRender ||= []).push(performance.now() - t0);  // benchmark only
  }

  makeRow() {
    const tr = el("tr", {tabindex: "-1"});
    for (const c of COLS) {
      tr.append(el("td", {class: c.key === "error" ? "err" : c.key === "id" ? "mono" : ""},
        c.key === "state" ? el("span") : null));
    }
    return tr;
  }

  fill(tr, pos, now) {
    const m = this.m;
    const i = this.view[pos];
    const id = m.ids[i];
    const s = m.state[i];
    tr.dataset.pos = String(pos);
    tr.dataset.taskRunId = id;
    tr.setAttribute("aria-rowindex", String(pos + 1));
    tr.tabIndex = pos === this.active ? 0 : -1;
    tr.classList.toggle("sel", id === this.selectedId);
    const c = tr.children;
    c[0].textContent = m.short[i];
    c[0].title = id;
    const g = m.groups[m.group[i]];
    c[1].textContent = m.map[i] === null ? g.name : `${g.name}[${m.map[i]}]`;
    c[1].title = g.key;
    const st = c[2].firstChild;
    st.className = `state ${s}`;
    st.textContent = s;
    st.dataset.testid = `task-state-${id}`;
    c[3].textContent = String(m.attempt[i]);
    const started = m.started[i];
    const since = m.queued[i] ?? m.created[i];
    c[4].textContent = started !== null && since !== null ? fmtDur(started - since)
      : since !== null && !TERMINAL.has(s) ? `${fmtDur(now - since)}…` : "–";
    c[5].textContent = started === null ? "–" : m.ended[i] === null ? (TERMINAL.has(s) ? "–" : `${fmtDur(now - started)}…`)
      : fmtDur(m.ended[i] - started);
    c[6].textContent = started === null ? "–" : fmtTime(started);
    c[7].textContent = m.err[i] || "";
    c[7].title = m.err[i] || "";
  }

  focusActive() {
    const tr = this.tbody.querySelector(`tr[data-pos="${this.active}"]`);
    if (tr && document.activeElement !== tr) tr.focus({preventScroll: true});
  }

  select(id) {
    this.selectedId = id;
    this.requestRender();
  }

  onKey(e) {
    const n = this.view.length;
    if (!n) return;
    const page = Math.max(1, Math.floor(this.scroller.clientHeight / ROW) - 1);
    let pos = this.active;
    if (e.key === "ArrowDown") pos += 1;
    else if (e.key === "ArrowUp") pos -= 1;
    else if (e.key === "PageDown") pos += page;
    else if (e.key === "PageUp") pos -= page;
    else if (e.key === "Home") pos = 0;
    else if (e.key === "End") pos = n - 1;
    else if (e.key === "Enter" || e.key === " ") { e.preventDefault(); this.onOpen(this.view[this.active]); return; }
    else return;
    e.preventDefault();
    this.active = Math.max(0, Math.min(n - 1, pos));
    const top = this.active * ROW;
    const sc = this.scroller;
    if (top < sc.scrollTop) sc.scrollTop = top;
    else if (top + ROW > sc.scrollTop + sc.clientHeight) sc.scrollTop = top + ROW - sc.clientHeight;
    this.render();
    this.focusActive();
  }
}
