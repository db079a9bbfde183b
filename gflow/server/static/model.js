// A run's task runs held as columns (parallel arrays), updated in place by live events with the store's
// forward-only rule, with counts by state kept per run and per task group as they change.
import {RANK, TERMINAL} from "./util.js";

export class RunModel {
  constructor(runId) {
    this.runId = runId;
    this.prefix = `${runId}.`;
    this.t0 = null;
    this.n = 0;
    this.ids = []; this.short = []; this.seq = []; this.group = []; this.state = []; this.attempt = [];
    this.map = []; this.created = []; this.started = []; this.ended = []; this.queued = []; this.err = [];
    this.index = new Map();
    this.groups = [];  // {key, name, total, counts, isMap}
    this.groupIndex = new Map();
    this.counts = {};
    this.edges = [];
  }

  groupFor(key, name) {
    let gi = this.groupIndex.get(key);
    if (gi === undefined) {
      gi = this.groups.length;
      this.groupIndex.set(key, gi);
      this.groups.push({key, name: name || key, total: 0, counts: {}, isMap: false});
    }
    return gi;
  }

  /** Add (or refresh) task runs from the server's column format; returns how many were new. */
  addRows(p) {
    if (this.t0 === null) this.t0 = p.t0;
    const abs = (v) => (v === null || v === undefined ? null : p.t0 + v / 1e6);  // columns hold µs after t0
    const gmap = p.groups.map((g) => this.groupFor(g.key, g.name));
    let added = 0;
    for (let k = 0; k < p.id.length; k++) {
      const short = p.id[k];
      const isShort = /^\d+$/.test(short);
      const id = isShort ? p.prefix + short : short;
      const state = p.states[p.s[k]];
      const existing = this.index.get(id);
      if (existing !== undefined) {
        this.move(existing, state, p.a[k]);
        this.started[existing] = abs(p.t[k]);
        this.ended[existing] = abs(p.e[k]);
        this.err[existing] = p.err[k];
        continue;
      }
      const i = this.n++;
      this.index.set(id, i);
      this.ids.push(id);
      this.short.push(isShort ? `#${short}` : short);
      this.seq.push(isShort ? Number(short) : i);
      const gi = gmap[p.g[k]];
      this.group.push(gi);
      this.state.push(state);
      this.attempt.push(p.a[k]);
      this.map.push(p.m[k]);
      this.created.push(abs(p.c[k]));
      this.started.push(abs(p.t[k]));
      this.ended.push(abs(p.e[k]));
      this.queued.push(null);
      this.err.push(p.err[k]);
      const g = this.groups[gi];
      g.total += 1;
      g.counts[state] = (g.counts[state] || 0) + 1;
      if (p.m[k] !== null) g.isMap = true;
      this.counts[state] = (this.counts[state] || 0) + 1;
      added += 1;
    }
    return added;
  }

  move(i, state, attempt) {
    const old = this.state[i];
    if (old === state && this.attempt[i] === attempt) return false;
    if (TERMINAL.has(old)) return false;
    if (attempt < this.attempt[i] || (attempt === this.attempt[i] && RANK[state] <= RANK[old])) return false;
    const g = this.groups[this.group[i]];
    g.counts[old] -= 1;
    g.counts[state] = (g.counts[state] || 0) + 1;
    this.counts[old] -= 1;
    this.counts[state] = (this.counts[state] || 0) + 1;
    this.state[i] = state;
    this.attempt[i] = attempt;
    return true;
  }

  /** Apply one task-run event; returns true if the row changed, null if the task run is not known yet. */
  apply(ev) {
    const i = this.index.get(ev.taskRunId);
    if (i === undefined) return null;
    const fresh = this.attempt[i] !== ev.attempt;
    if (!this.move(i, ev.state, ev.attempt)) return false;
    if (fresh) { this.started[i] = null; this.ended[i] = null; this.queued[i] = null; }
    if (ev.state === "QUEUED") this.queued[i] = ev.ts;
    else if (ev.state === "RUNNING") this.started[i] = ev.ts;
    else if (TERMINAL.has(ev.state) || ev.state === "RETRYING") {
      this.ended[i] = ev.ts;
      if (ev.state === "FAILED" && ev.message) this.err[i] = ev.message.split("\n", 1)[0].slice(0, 160);
    }
    return true;
  }

  setQueued(p) {
    for (let k = 0; k < p.id.length; k++) {
      const short = p.id[k];
      const i = this.index.get(/^\d+$/.test(short) ? p.prefix + short : short);
      if (i !== undefined && this.queued[i] === null) this.queued[i] = p.t0 + p.q[k] / 1e6;
    }
  }

  get lastId() { return this.n ? this.ids[this.n - 1] : null; }
  get total() { return this.n; }
}
