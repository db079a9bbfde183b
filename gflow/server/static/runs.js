// The runs list: filters (flow, state, tag, time range) kept in the URL, live counts and progress bars,
// cursor paging (newer / older pages stay fast at 100,000 runs: each page is one indexed read).
import {gql, setConn} from "./api.js";
import {countsBar, countsChips, countsFromList, el, fmtAgo, fmtDur, fmtInt, fmtTime, nowSec, stateBadge,
        TERMINAL} from "./util.js";

const RUN_STATES = ["PENDING", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"];
const QUERY = `query($flow: String, $state: State, $tag: String, $since: Float, $until: Float, $after: String, $first: Int!) {
  runs(flow: $flow, state: $state, tag: $tag, since: $since, until: $until, first: $first, after: $after) {
    items { id flow state created started ended duration tags executor imageTag
            countsByState { state count } taskRunCount }
    nextCursor hasNextPage } }`;
const PAGE = 50;

function toLocalInput(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

export class RunsPage {
  constructor(app) {
    this.app = app;
    this.cursors = [null];  // cursor of each page visited, for "newer"
    this.page = 0;
    this.dead = false;
    this.timer = null;
    this.loading = false;
  }

  mount(main) {
    const q = new URLSearchParams(location.search);
    this.form = el("form", {class: "filters", id: "filters", role: "search", "aria-label": "filter runs"},
      el("label", null, "flow", el("input", {name: "flow", size: 16, value: q.get("flow") || ""})),
      el("label", null, "state", el("select", {name: "state"}, el("option", {value: ""}, "any"),
        ...RUN_STATES.map((s) => el("option", {value: s, selected: q.get("state") === s}, s)))),
      el("label", null, "tag", el("input", {name: "tag", size: 12, value: q.get("tag") || ""})),
      el("label", null, "from", el("input", {name: "since", type: "datetime-local",
        value: toLocalInput(Number(q.get("since")) || 0)})),
      el("label", null, "to", el("input", {name: "until", type: "datetime-local",
        value: toLocalInput(Number(q.get("until")) || 0)})),
      el("button", {class: "primary"}, "filter"),
      el("button", {type: "button", on: {click: () => { this.form.reset(); for (const i of this.form.elements) if (i.name) i.value = ""; this.apply(); }}}, "clear"));
    this.form.addEventListener("submit", (e) => { e.preventDefault(); this.apply(); });
    this.tbody = el("tbody");
    this.table = el("table", {id: "runs", class: "list", "data-testid": "runs", "aria-label": "runs"},
      el("thead", null, el("tr", null, ...["run", "flow", "state", "progress", "created", "duration", "executor",
        "image", "tags"].map((h) => el("th", {scope: "col"}, h)))), this.tbody);
    this.newer = el("button", {type: "button", id: "runs-newer", on: {click: () => this.go(this.page - 1)}}, "← newer");
    this.older = el("button", {type: "button", id: "runs-more", on: {click: () => this.go(this.page + 1)}}, "older →");
    this.pageInfo = el("span", {class: "muted"});
    main.replaceChildren(el("h1", {class: "sr-only"}, "Runs"), this.form, this.table,
      el("div", {class: "pager"}, this.newer, this.older, this.pageInfo));
    this.app.setCrumbs();
    this.load();
    this.timer = setInterval(() => this.load(true), 3000);
  }

  vars() {
    const f = new FormData(this.form);
    const v = {first: PAGE};
    for (const k of ["flow", "state", "tag"]) if (f.get(k)) v[k] = String(f.get(k)).trim();
    for (const k of ["since", "until"]) {
      const s = f.get(k);
      if (s) v[k] = new Date(String(s)).getTime() / 1000;
    }
    return v;
  }

  apply() {
    const v = this.vars();
    const q = new URLSearchParams();
    for (const k of ["flow", "state", "tag", "since", "until"]) if (v[k] !== undefined) q.set(k, String(v[k]));
    history.replaceState(null, "", q.toString() ? `/?${q}` : "/");
    this.cursors = [null];
    this.go(0);
  }

  go(page) {
    if (page < 0 || page >= this.cursors.length) return;
    this.page = page;
    this.load();
  }

  async load(background) {
    if (this.loading && background) return;
    this.loading = true;
    try {
      const d = await gql(QUERY, {...this.vars(), after: this.cursors[this.page]}, {quiet: background});
      if (this.dead) return;
      this.render(d.runs.items);
      this.cursors.length = this.page + 1;
      if (d.runs.nextCursor) this.cursors.push(d.runs.nextCursor);
      this.newer.disabled = this.page === 0;
      this.older.disabled = !d.runs.nextCursor;
      this.pageInfo.textContent = `page ${this.page + 1} · ${d.runs.items.length} runs · updated ${new Date().toLocaleTimeString()}`;
      setConn("live", "live");
      this.app.notice("");
    } catch (e) {
      if (this.dead) return;
      if (e.code === "NETWORK" || e.code === "BAD_RESPONSE") setConn("reconnecting", "reconnecting…");
      else this.app.notice(e.message);
      if (e.code === "UNAUTHENTICATED") this.app.showTokenForm();
    } finally {
      this.loading = false;
    }
  }

  render(items) {
    const sig = JSON.stringify(items);
    if (sig === this.sig) return;  // nothing changed: keep the DOM (and the keyboard focus) as it is
    this.sig = sig;
    const focused = document.activeElement && document.activeElement.closest && document.activeElement.closest("tr");
    const focusedId = focused && this.tbody.contains(focused) ? focused.dataset.runId : null;
    const rows = items.map((r) => {
      const counts = countsFromList(r.countsByState);
      let done = 0;
      for (const s of ["SUCCEEDED", "CACHED", "FAILED", "CANCELLED"]) done += counts[s] || 0;
      const dur = r.started ? (r.ended || nowSec()) - r.started : null;
      const link = el("a", {href: `/runs/${r.id}`, "data-nav": "", class: "mono"}, r.id);
      const tr = el("tr", {class: "clickable", data: {runId: r.id}},
        el("td", null, link), el("td", null, r.flow),
        el("td", null, stateBadge(r.state, `run-state-${r.id}`)),
        el("td", {class: "progress", "data-testid": `run-counts-${r.id}`},
          countsBar(counts, r.taskRunCount), countsChips(counts),
          el("span", {class: "muted"}, `${fmtInt(done)}/${fmtInt(r.taskRunCount)}`)),
        el("td", {title: fmtTime(r.created)}, fmtAgo(r.created)),
        el("td", null, `${fmtDur(dur)}${r.started && !TERMINAL.has(r.state) ? "…" : ""}`),
        el("td", null, r.executor || "–"),
        el("td", {class: "mono", title: r.imageTag || ""}, r.imageTag ? r.imageTag.split(":").pop().slice(0, 12) : "–"),
        el("td", null, r.tags.join(", ")));
      tr.addEventListener("click", (e) => { if (!e.target.closest("a")) link.click(); });
      return tr;
    });
    if (!rows.length) rows.push(el("tr", null, el("td", {colspan: "9", class: "muted"}, "no runs match")));
    this.tbody.replaceChildren(...rows);
    if (focusedId) {
      const link = this.tbody.querySelector(`tr[data-run-id="${CSS.escape(focusedId)}"] a`);
      if (link) link.focus();
    }
  }

  destroy() {
    this.dead = true;
    clearInterval(this.timer);
  }
}
