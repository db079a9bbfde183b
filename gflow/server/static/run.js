// The run page: header (flow, params as written, image, links, actions), live counts, the DAG, the
// timeline and the task table, all fed by one overview query and then the run's event stream.
import {actionMessage, ApiError, Feed, gql, setConn} from "./api.js";
import {Dag} from "./dag.js";
import {RunModel} from "./model.js";
import {TaskTable} from "./table.js";
import {Timeline} from "./timeline.js";
import {copyButton, countsBar, countsChips, el, fmtAgo, fmtBytes, fmtDur, fmtInt, fmtTime, nowSec, pretty, stateBadge,
        TERMINAL} from "./util.js";

const RUN_FIELDS = `id flow flowPath state paramsDisplay imageTag executor created started ended duration tags
  host pid parentRun resumedFrom replayOf errorExcerpt { text truncated size } extra`;
const OVERVIEW = `query($id: ID!) { runOverview(runId: $id) { run { ${RUN_FIELDS} } groups { key name }
  edges { source target count } rows rowCount taskRunCount truncated lastEventSeq lastRowId } }`;
const SHAPE = `query($id: ID!) { runOverview(runId: $id, maxRows: 0) { groups { key name } edges { source target count } } }`;
const ROWS = `query($id: ID!, $after: ID) { taskRunRows(runId: $id, afterId: $after) { rows count lastId hasMore } }`;
const TIMELINE = `query($id: ID!) { runTimeline(runId: $id) }`;
const HEADER = `query($id: ID!) { run(id: $id) { ${RUN_FIELDS} } }`;
const LAUNCH = "runId kind sourceRun taskRun pid host logFile command started exitCode ended state";
const LINKS = `query($id: ID!) { run(id: $id) { derivedRuns { id state flow resumedFrom replayOf parentRun created }
  launches { ${LAUNCH} logTail(maxBytes: 4000) } launch { ${LAUNCH} logTail(maxBytes: 4000) } } }`;
const EVENTS = `subscription($id: ID!, $after: Int!) { runEventBatches(runId: $id, after: $after) {
  seq taskRunId state attempt ts message } }`;
const USAGE = `query($id: ID!) { run(id: $id) { usage { currency total { measured cpuSeconds wallSeconds cost }
  tasks { name isMap calls measured cpuSeconds peakMemoryBytes requestedMemoryBytes gpuPeakMemoryBytes memoryRatio cost } } } }`;
const POLL = `query($id: ID!, $after: Int!) { runEvents(runId: $id, after: $after, first: 5000) {
  items { seq taskRunId state attempt ts message } lastSeq hasMore } }`;
const CANCEL = `mutation($id: ID!) { cancelRun(id: $id) { run { id state } unfinishedTaskRuns } }`;
const REPLAY = `mutation($id: ID!) { replayRun(id: $id) { ${LAUNCH} } }`;

export function launchLine(x) {
  const what = x.kind === "resume" ? (x.taskRun ? `retry of ${x.taskRun}` : "resume") : "replay";
  const st = x.state === "exited" ? `exited ${x.exitCode}` : x.state;
  return `${what} → run ${x.runId} · driver pid ${x.pid} on ${x.host} (${st}) · log ${x.logFile}`;
}

export class RunPage {
  constructor(runId, app) {
    this.id = runId;
    this.app = app;
    this.m = new RunModel(runId);
    this.lastSeq = 0;
    this.feed = null;
    this.dead = false;
    this.dirty = new Set();
    this.raf = 0;
    this.timers = [];
    this.fetchingRows = false;
    this.moreRows = false;
    // events of task runs not known yet: replayed once fetchRows brings their rows (a row fetched while its
    // later events were already on their way would otherwise keep the older state it was read in)
    this.unknownEvents = [];
    this.shapeAt = 0;
    this.lastTimeline = 0;
    this.stats = window.__gflowStats || null;  // set by the benchmark: lag samples
  }

  // -- DOM -----------------------------------------------------------------------------------------
  mount(main) {
    this.stateEl = el("span", {"data-testid": "run-state"});
    this.title = el("h1", null, el("span", {class: "mono", id: "run-id"}, this.id), this.stateEl);
    this.actionMsg = el("span", {class: "action-msg", role: "status", "data-testid": "action-message"});
    this.actions = el("div", {class: "actions"});
    this.facts = el("dl", {class: "facts"});
    this.links = el("div", {class: "links", "data-testid": "run-links"});
    this.errorBox = el("div");
    this.bar = el("div");
    this.countsEl = el("div", {"data-testid": "run-counts"});
    this.liveEl = el("span", {class: "muted", id: "live", "data-testid": "live"});
    this.dag = new Dag({onPick: (gi) => this.table.setFilter({group: gi < 0 ? "" : String(gi)})});
    this.timeline = new Timeline({onOpen: (i) => this.openRow(i)});
    this.table = new TaskTable(this.m, {onOpen: (i) => this.openRow(i),
      onFilter: (f) => this.renderCounts(f.state)});
    const head = el("section", {class: "run-head panel", "aria-label": "run"},
      el("div", {class: "actions"}, this.title, el("span", {class: "spacer"}), this.actions),
      this.actionMsg, this.facts, this.errorBox, this.links);
    const counts = el("section", {class: "panel", "aria-label": "progress"},
      el("div", {class: "counts-line"}, this.countsEl, this.liveEl), this.bar);
    const viz = el("div", {class: "viz"},
      el("section", {class: "panel", "aria-label": "graph"},
        el("div", {class: "viz-head"}, el("h2", null, "Graph"), el("span", {class: "spacer"}), this.dag.tools),
        this.dag.box),
      el("section", {class: "panel", "aria-label": "timeline"},
        el("div", {class: "viz-head"}, el("h2", null, "Timeline"), el("span", {class: "spacer"}),
          el("span", {class: "legend"}, el("span", null, el("i", {style: "background:var(--queue)"}), "queued"),
            el("span", null, el("i", {style: "background:var(--RUNNING)"}), "running"),
            el("span", null, el("i", {style: "background:var(--SUCCEEDED)"}), "done"),
            el("span", null, el("i", {style: "background:var(--FAILED)"}), "failed"))),
        this.timeline.box));
    const tasks = el("section", {"aria-label": "task runs"}, this.table.tools, this.table.root);
    this.usageEl = el("section", {class: "panel", "aria-label": "usage", "data-testid": "run-usage"});
    main.replaceChildren(head, counts, viz, this.usageEl, tasks);
    this.timers.push(setInterval(() => this.tick(), 1000));
  }

  // -- loading -------------------------------------------------------------------------------------
  async load() {
    let data;
    try {
      data = await gql(OVERVIEW, {id: this.id});
      performance.mark("gflow:overview-answered");
    } catch (e) {
      if (this.dead) return;
      if (e.code === "NOT_FOUND" || e.code === "BAD_USER_INPUT") this.app.notFound(`No run ${this.id}`, e.message);
      else this.app.notice(e.message);
      return;
    }
    if (this.dead) return;
    const ov = data.runOverview;
    if (ov.run.id !== this.id) {  // a unique prefix was given: show the canonical address
      history.replaceState(null, "", location.pathname.replace(this.id, ov.run.id));
      this.id = ov.run.id;
      this.m = new RunModel(ov.run.id);
      this.table.m = this.m;
    }
    this.app.notice("");
    this.run = ov.run;
    this.lastSeq = ov.lastEventSeq;
    this.m.addRows(ov.rows);
    this.m.edges = ov.edges;
    this.renderHeader();
    this.table.setGroups(this.m.groups);
    this.renderAll();
    performance.mark("gflow:first-render");  // DAG, table, counts and timeline are in the DOM
    requestAnimationFrame(() => requestAnimationFrame(() => performance.mark("gflow:first-paint")));  // on screen
    this.app.setCrumbs(this.id);
    if (ov.truncated) this.moreRows = true;
    this.afterFirstRender();
  }

  async afterFirstRender() {
    if (TERMINAL.has(this.run.state)) {
      this.liveEl.textContent = "run finished";
      setConn("live", "live");
    } else {
      this.follow();
    }
    if (this.moreRows) this.fetchRows();
    this.loadTimeline();
    this.loadLinks();
    this.loadUsage();
    this.app.afterRunLoad(this);
  }

  async loadTimeline() {
    try {
      const d = await gql(TIMELINE, {id: this.id}, {quiet: true});
      if (this.dead) return;
      this.m.setQueued(d.runTimeline);
      this.mark("timeline", "table");
    } catch { /* the timeline falls back to created times */ }
  }

  async loadUsage() {
    try {
      const d = await gql(USAGE, {id: this.id}, {quiet: true});
      if (!this.dead) this.renderUsage(d.run.usage);
    } catch { /* usage is extra */ }
  }

  /** Used vs requested per task and per map, outliers (peak furthest from the ask) first (docs/usage.md). */
  renderUsage(u) {
    if (!u.total.measured) {
      this.usageEl.replaceChildren(el("h2", null, "Usage"), el("p", {class: "muted"}, "not recorded"));
      return;
    }
    const cur = u.currency ? ` ${u.currency}` : "";
    const total = `CPU ${u.total.cpuSeconds.toFixed(2)} s, wall ${u.total.wallSeconds.toFixed(2)} s` +
      (u.total.cost == null ? ", no price table" : `, estimated ${u.total.cost.toFixed(4)}${cur}`);
    const rows = u.tasks.map((t) => el("tr", {"data-testid": "usage-row"}, el("td", null, t.name),
      el("td", null, t.isMap ? `map of ${t.calls}` : String(t.calls)), el("td", null, `${t.cpuSeconds.toFixed(2)} s`),
      el("td", null, fmtBytes(t.peakMemoryBytes) + (t.requestedMemoryBytes ? ` of ${fmtBytes(t.requestedMemoryBytes)}` : "")),
      el("td", null, t.memoryRatio == null ? "–" : `${Math.round(t.memoryRatio * 100)}%`),
      el("td", null, t.gpuPeakMemoryBytes == null ? "–" : fmtBytes(t.gpuPeakMemoryBytes)),
      el("td", null, t.cost == null ? "–" : t.cost.toFixed(4))));
    this.usageEl.replaceChildren(el("h2", null, "Usage"), el("p", {class: "muted"}, total),
      el("table", {class: "mini"}, el("thead", null, el("tr", null,
        ...["task", "calls", "CPU", "peak memory", "of asked", "GPU", "cost"].map((h) => el("th", null, h)))),
      el("tbody", null, ...rows)));
  }

  async loadLinks() {
    try {
      const d = await gql(LINKS, {id: this.id}, {quiet: true});
      if (!this.dead) this.renderLinks(d.run);
    } catch { /* links are extra */ }
  }

  async fetchRows() {
    if (this.fetchingRows) { this.moreRows = true; return; }
    this.fetchingRows = true;
    try {
      do {
        this.moreRows = false;
        const d = await gql(ROWS, {id: this.id, after: this.m.lastId}, {quiet: true});
        if (this.dead) return;
        const before = this.m.groups.length;
        this.m.addRows(d.taskRunRows.rows);
        this.replayUnknown();
        if (this.m.groups.length !== before) { this.table.setGroups(this.m.groups); this.refreshShape(); }
        if (d.taskRunRows.hasMore) this.moreRows = true;
        this.mark("counts", "dag", "table", "timeline", "view");
      } while (this.moreRows);
    } catch { /* retried on the next unknown event */ } finally {
      this.fetchingRows = false;
    }
  }

  /** Apply the events that came before their rows did (states only move forward, so a replay is safe). */
  replayUnknown() {
    if (this.unknownEvents.length) this.unknownEvents = this.unknownEvents.filter((ev) => this.applyEvent(ev) === null);
  }

  /** Apply one task-run event to the model (see RunModel.apply); an open drawer on a moved row goes stale. */
  applyEvent(ev) {
    const r = this.m.apply(ev);
    if (r && ev.taskRunId === this.app.drawer.id) this.drawerStale = true;
    return r;
  }

  async refreshShape() {
    const now = Date.now();
    if (now - this.shapeAt < 1500) {
      clearTimeout(this.shapeTimer);
      this.shapeTimer = setTimeout(() => this.refreshShape(), 1500 - (now - this.shapeAt));
      return;
    }
    this.shapeAt = now;
    try {
      const d = await gql(SHAPE, {id: this.id}, {quiet: true});
      if (this.dead) return;
      for (const g of d.runOverview.groups) this.m.groupFor(g.key, g.name);
      this.m.edges = d.runOverview.edges;
      this.mark("dag");
    } catch { /* next time */ }
  }

  async refreshHeader() {
    try {
      const d = await gql(HEADER, {id: this.id}, {quiet: true});
      if (this.dead) return;
      this.run = d.run;
      this.renderHeader();
      this.loadLinks();
    } catch { /* shown on the next refresh */ }
  }

  // -- live ----------------------------------------------------------------------------------------
  follow() {
    this.liveEl.textContent = "live";
    this.feed = new Feed({
      query: EVENTS,
      variables: () => ({id: this.id, after: this.lastSeq}),
      onData: (d) => this.onEvents(d.runEventBatches),
      onDone: () => this.finished(),
      onFatal: (e) => { this.liveEl.textContent = `not live: ${e.message}`; this.app.notice(e.message); },
      poll: async () => {
        const d = await gql(POLL, {id: this.id, after: this.lastSeq}, {quiet: true});
        if (this.dead) return true;
        this.onEvents(d.runEvents.items);
        this.liveEl.textContent = "polling";
        return d.runEvents.items.some((e) => !e.taskRunId && TERMINAL.has(e.state)) && !d.runEvents.hasMore;
      },
    });
    const origLost = this.feed.lost.bind(this.feed);
    this.feed.lost = (...a) => { if (!this.dead) this.liveEl.textContent = "reconnecting…"; origLost(...a); };
  }

  onEvents(events) {
    if (this.dead || !events) return;
    let unknown = false;
    let runEnded = false;
    for (const ev of events) {
      if (ev.seq <= this.lastSeq) continue;
      this.lastSeq = ev.seq;
      if (!ev.taskRunId) {
        this.run.state = ev.state;
        if (TERMINAL.has(ev.state)) { this.run.ended = ev.ts; runEnded = true; }
        this.renderState();
        continue;
      }
      if (this.applyEvent(ev) === null) {
        unknown = true;
        if (this.unknownEvents.length < 200000) this.unknownEvents.push(ev);
      }
      if (this.stats) this.stats.pending.push(ev.ts);
    }
    if (this.liveEl.textContent !== "live" && this.feed && this.feed.ws) this.liveEl.textContent = "live";
    if (unknown) this.fetchRows();
    if (this.drawerStale) {  // the open task run moved on: show its new state (at most every 500 ms)
      this.drawerStale = false;
      clearTimeout(this.drawerTimer);
      this.drawerTimer = setTimeout(() => this.app.drawer.refresh(), 500);
    }
    if (runEnded) this.refreshHeader();
    this.mark("counts", "dag", "table", "timeline", this.table.filter.state || this.table.sort.key ? "view" : "");
  }

  finished() {
    if (this.dead) return;
    this.liveEl.textContent = "run finished";
    setConn("live", "live");
    this.fetchRows();
    this.refreshHeader();
    this.loadUsage();
  }

  // -- rendering -----------------------------------------------------------------------------------
  mark(...what) {
    for (const w of what) if (w) this.dirty.add(w);
    if (!this.raf) this.raf = requestAnimationFrame(() => this.flush());
  }

  flush() {
    this.raf = 0;
    if (this.dead) return;
    const d = this.dirty;
    this.dirty = new Set();
    if (d.has("counts")) this.renderCounts(this.table.filter.state);
    if (d.has("dag")) this.dag.update(this.m.groups, this.m.edges);
    if (d.has("view")) this.table.invalidate();
    if (d.has("table") || d.has("view")) this.table.render();
    if (d.has("timeline")) {
      const now = performance.now();
      if (now - this.lastTimeline > 700 || TERMINAL.has(this.run.state)) {
        this.lastTimeline = now;
        this.timeline.draw(this.m, nowSec());
      } else {
        this.dirty.add("timeline");
        clearTimeout(this.tlTimer);
        this.tlTimer = setTimeout(() => this.mark("timeline"), 750);
      }
    }
    if (this.stats && this.stats.pending.length) {
      // lag = event recorded in the store -> on screen: measured at the next frame, after this one painted
      const recorded = this.stats.pending;
      this.stats.pending = [];
      requestAnimationFrame(() => {
        const t = nowSec();
        for (const ts of recorded) this.stats.lags.push(t - ts);
      });
    }
  }

  renderAll() {
    this.renderCounts("");
    this.dag.update(this.m.groups, this.m.edges);
    this.table.invalidate();
    this.table.render();
    this.timeline.draw(this.m, nowSec());
    this.lastTimeline = performance.now();
  }

  renderState() {
    this.stateEl.replaceChildren(this.run.state);
    this.stateEl.className = `state badge ${this.run.state}`;
    this.renderActions();
  }

  renderCounts(picked) {
    const m = this.m;
    let done = 0;
    for (const s of ["SUCCEEDED", "CACHED", "FAILED", "CANCELLED"]) done += m.counts[s] || 0;
    this.countsEl.replaceChildren(
      countsChips(m.counts, {picked, onPick: (s) => this.table.setFilter({state: s})}),
      el("span", {class: "muted"}, ` ${m.n} task runs`),
      el("span", {class: "muted"}, ` · ${fmtInt(done)} done (${m.n ? Math.floor((100 * done) / m.n) : 0}%)`));
    this.bar.replaceChildren(countsBar(m.counts, m.n, true));
  }

  renderHeader() {
    const r = this.run;
    this.renderState();
    const f = this.facts;
    f.replaceChildren();
    const add = (k, ...v) => f.append(el("dt", null, k), el("dd", null, ...v));
    add("flow", el("strong", null, r.flow), " ", el("span", {class: "muted mono"}, r.flowPath));
    add("executor", r.executor || "–");
    add("image", ...(r.imageTag ? [el("span", {class: "mono", "data-testid": "image-tag"}, r.imageTag), copyButton(r.imageTag)]
      : [el("span", {class: "muted"}, "none (ran from the local source tree)")]));
    add("driver", r.host ? `pid ${r.pid} on ${r.host}` : "–");
    add("created", el("span", {title: fmtTime(r.created)}, `${fmtTime(r.created)} (${fmtAgo(r.created)})`));
    this.durEl = el("span", {"data-testid": "run-duration"});
    add("duration", this.durEl);
    add("tags", ...(r.tags.length ? r.tags.map((t) => el("span", {class: "chip"}, t)) : ["–"]));
    const rel = [];
    const link = (label, id) => rel.push(el("span", null, `${label} `, el("a", {href: `/runs/${id}`, "data-nav": ""}, id), " "));
    if (r.resumedFrom) link("resumed from", r.resumedFrom);
    if (r.replayOf) link("replay of", r.replayOf);
    if (r.parentRun) link("subflow of", r.parentRun);
    add("linked", ...(rel.length ? rel : ["–"]));
    const maps = (r.extra && r.extra.maps) || [];  // partial maps (min_success): "9,997 of 10,000 succeeded"
    if (maps.length) add("maps", ...maps.map((m) => el("div", {"data-testid": "run-maps"}, String(m.summary))));
    const params = el("pre", {class: "json", "data-testid": "run-params"}, pretty(r.paramsDisplay));
    f.append(el("dt", null, "params"), el("dd", {style: "grid-column: 2 / -1"}, params));
    this.errorBox.replaceChildren();
    if (r.errorExcerpt) {
      this.errorBox.append(el("h2", {class: "FAILED"}, "error"),
        el("pre", {class: "text", "data-testid": "run-error"}, r.errorExcerpt.text));
    }
    this.tick();
  }

  renderLinks(d) {
    const items = [];
    const log = (x) => (x.logTail ? el("details", null, el("summary", null, "driver output (last lines)"),
      el("pre", {class: "text", "data-testid": "driver-log"}, x.logTail)) : null);
    if (d.launch) items.push(el("li", null, "started by this server: ", launchLine(d.launch), log(d.launch)));
    for (const x of d.launches) {
      items.push(el("li", null, el("a", {href: `/runs/${x.runId}`, "data-nav": ""}, x.runId), " ", launchLine(x), log(x)));
    }
    for (const x of d.derivedRuns) {
      const how = x.resumedFrom === this.id ? "resume" : x.replayOf === this.id ? "replay" : "subflow";
      if (d.launches.some((l) => l.runId === x.id)) continue;
      items.push(el("li", null, `${how}: `, el("a", {href: `/runs/${x.id}`, "data-nav": ""}, x.id), " ",
        stateBadge(x.state)));
    }
    this.links.replaceChildren(...(items.length ? [el("h2", null, "related runs and drivers"), el("ul", {class: "links"}, ...items)] : []));
  }

  renderActions() {
    const r = this.run;
    const b = [];
    if (!TERMINAL.has(r.state)) {
      b.push(el("button", {type: "button", class: "danger", "data-testid": "cancel-run",
        on: {click: (e) => this.act(e.target, "Cancel run", () => gql(CANCEL, {id: this.id}), (d) => {
          const n = d.cancelRun.unfinishedTaskRuns;
          return `cancelled; ${n} unfinished task run(s) are being stopped`;
        })}}, "Cancel run"));
    } else {
      b.push(el("button", {type: "button", "data-testid": "replay-run",
        on: {click: (e) => this.act(e.target, "Replay run", () => gql(REPLAY, {id: this.id}), (d) => {
          this.watchLaunch(d.replayRun);
          return null;
        })}}, "Replay run"));
    }
    this.actions.replaceChildren(...b);
  }

  /** Run an action; its outcome (or why it failed) is shown next to the buttons. */
  async act(button, what, call, ok) {
    button.disabled = true;
    this.actionMsg.className = "action-msg";
    this.actionMsg.textContent = `${what}…`;
    try {
      const d = await call();
      const msg = ok(d);
      if (msg !== null) { this.actionMsg.className = "action-msg ok"; this.actionMsg.textContent = msg; }
    } catch (e) {
      this.actionMsg.className = "action-msg err";
      this.actionMsg.textContent = actionMessage(what, e instanceof ApiError ? e : new ApiError(String(e)));
      if (e.code === "UNAUTHENTICATED" || e.code === "FORBIDDEN") this.app.showTokenForm();
    } finally {
      button.disabled = false;
    }
  }

  /** Say where a started driver's run is, and link it once it exists. */
  watchLaunch(x, target = this.actionMsg) {
    const show = (state) => {
      target.className = "action-msg ok";
      target.replaceChildren(`started ${x.kind} driver (pid ${x.pid}): run `,
        el("a", {href: `/runs/${x.runId}`, "data-nav": "", "data-testid": "new-run-link"}, x.runId),
        state ? ` ${state}` : " (starting…)", el("span", {class: "muted"}, ` · log ${x.logFile}`));
    };
    show("");
    let tries = 0;
    const check = async () => {
      if (this.dead || tries++ > 120) return;
      try {
        const d = await gql(`query($id: ID!) { run(id: $id) { state } }`, {id: x.runId}, {quiet: true});
        show(d.run.state);
        this.loadLinks();
        return;
      } catch { /* not there yet */ }
      setTimeout(check, 500);
    };
    setTimeout(check, 300);
  }

  tick() {
    if (!this.run || this.dead) return;
    const r = this.run;
    if (this.durEl) {
      const d = r.started ? (r.ended || nowSec()) - r.started : null;
      this.durEl.textContent = `${fmtDur(d)}${r.ended || !r.started ? "" : "…"}` +
        (r.started ? ` (started ${fmtTime(r.started)}${r.ended ? `, ended ${fmtTime(r.ended)}` : ""})` : "");
    }
    if (!TERMINAL.has(r.state)) this.mark("table");
  }

  openRow(i) {
    this.app.openTask(this.m.ids[i]);
  }

  destroy() {
    this.dead = true;
    if (this.feed) this.feed.stop();
    for (const t of this.timers) clearInterval(t);
    clearTimeout(this.shapeTimer);
    clearTimeout(this.tlTimer);
    clearTimeout(this.drawerTimer);
    if (this.raf) cancelAnimationFrame(this.raf);
    this.timeline.destroy();
  }
}
