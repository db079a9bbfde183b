// The task-run drawer: attempts with timings, error and traceback (a 5 MB one is cut, with "show all"),
// the result and inputs rendered as objects (sequence, SMILES with a depiction, scores), the backend
// handle, logs, lineage links, and "Retry task".
import {actionMessage, ApiError, gql} from "./api.js";
import {launchLine} from "./run.js";
import {valueView} from "./objects.js";
import {$, copyButton, download, el, fmtBytes, fmtDur, fmtTime, stateBadge} from "./util.js";

const VALUE = "display size truncated source table objects { kind type data depictionSvg view }";
const TASK = `query($id: ID!) {
  taskRun(id: $id) {
    id runId task name state attempt cacheKey created started ended duration executorHandle mapIndex resultRef
    pendingReason
    errorExcerpt(head: 4000, tail: 4000) { text truncated size }
    tracebackExcerpt { text truncated size omitted }
    attempts { attempt state queued started ended message errorType asked cpuSeconds wallSeconds peakMemoryBytes
      gpuPeakMemoryBytes gpuUtilization requestedMemoryBytes cost }
    cost
    output { ${VALUE} }
    upstream { id name state output { display truncated table objects { kind data depictionSvg view } } }
    objects { inputs outputs }
    logs { kind command }
    events { seq state attempt ts message }
  }
  lineage(taskRunId: $id, depth: 1) { downstream { id name state } truncated }
}`;
const FULL_TB = `query($id: ID!) { taskRun(id: $id) { traceback } }`;
const RETRY = `mutation($id: ID!) { retryTask(taskRunId: $id) {
  runId kind sourceRun taskRun pid host logFile command started exitCode ended state } }`;

/** A very long text (all of a 5 MB traceback) in a scroll box that draws only the lines on screen. */
function bigText(text, testid) {
  const LINE = 16;
  const lines = text.split("\n");
  const inner = el("pre", {class: "bigtext-lines"});
  const sizer = el("div", {style: `height:${lines.length * LINE}px`});
  const box = el("div", {class: "bigtext", tabindex: "0", "data-testid": testid, role: "document",
    "aria-label": `text of ${lines.length} lines`, data: {chars: String(text.length), lines: String(lines.length)}},
    sizer, inner);
  let raf = 0;
  const draw = () => {
    raf = 0;
    const first = Math.max(0, Math.floor(box.scrollTop / LINE) - 20);
    const last = Math.min(lines.length, first + Math.ceil((box.clientHeight || 400) / LINE) + 40);
    inner.style.transform = `translateY(${first * LINE}px)`;
    inner.textContent = lines.slice(first, last).join("\n");
  };
  box.addEventListener("scroll", () => { if (!raf) raf = requestAnimationFrame(draw); }, {passive: true});
  requestAnimationFrame(draw);
  draw();
  return box;
}

const WHY = `query($r: ID!, $t: String!) { cacheExplain(runId: $r, task: $t) }`;

/** "Why did this run?": the nearest earlier call of the task and what differs (gflow cache explain). */
function cacheSection(t) {
  const out = el("pre", {class: "json", "data-testid": "cache-explain", hidden: true});
  const btn = el("button", {type: "button", class: "ghost", on: {click: async () => {
    btn.disabled = true;
    try {
      const d = await gql(WHY, {r: t.runId, t: t.id});
      out.textContent = d.cacheExplain.map((x) => x.lines.join("\n")).join("\n\n");
    } catch (e) {
      out.textContent = e.message;
    }
    out.hidden = false;
    btn.disabled = false;
  }}}, "why did this run (not from the cache)?");
  return el("section", null, el("h3", null, "cache"), btn, out);
}

export class Drawer {
  constructor(app) {
    this.app = app;
    this.box = $("#drawer");
    this.id = null;
    this.box.addEventListener("keydown", (e) => { if (e.key === "Escape") this.app.closeTask(); });
  }

  get isOpen() { return !this.box.hidden; }

  close() {
    this.id = null;
    this.box.hidden = true;
    this.box.replaceChildren();
    if (this.returnFocus && document.contains(this.returnFocus)) this.returnFocus.focus();
  }

  /** Fetch the open task run again (its run moved on), keeping focus and scroll where they are. */
  async refresh() {
    const id = this.id;
    if (!id || this.refreshing) return;
    this.refreshing = true;
    try {
      const d = await gql(TASK, {id}, {quiet: true});
      const typing = this.box.contains(document.activeElement) && document.activeElement.tagName !== "BUTTON";
      if (this.id !== id || typing) return;
      const top = this.box.scrollTop;
      const closeBtn = this.box.querySelector("button.close");
      const hadFocus = document.activeElement === closeBtn;
      const msg = this.box.querySelector("[data-testid=task-action-message]");
      this.render(d.taskRun, d.lineage, closeBtn);
      if (msg && msg.textContent) this.box.querySelector("[data-testid=task-action-message]").replaceWith(msg);
      this.box.scrollTop = top;
      if (hadFocus) closeBtn.focus();
    } catch { /* the next event tries again */ } finally {
      this.refreshing = false;
    }
  }

  async open(taskRunId, runId) {
    if (!this.isOpen) this.returnFocus = document.activeElement;
    this.id = taskRunId;
    this.box.hidden = false;
    const closeBtn = el("button", {type: "button", class: "close ghost", "aria-label": "close",
      on: {click: () => this.app.closeTask()}}, "✕ close");
    this.box.replaceChildren(closeBtn, el("h2", {id: "drawer-title"}, taskRunId), el("p", {class: "muted"}, "loading…"));
    closeBtn.focus();
    let d;
    try {
      d = await gql(TASK, {id: taskRunId});
    } catch (e) {
      if (this.id !== taskRunId) return;
      if (e.code === "NOT_FOUND" || e.code === "BAD_USER_INPUT") {
        this.close();
        this.app.notFound(`No task run ${taskRunId}`, e.message, runId);
      } else {
        this.box.replaceChildren(closeBtn, el("h2", {id: "drawer-title"}, taskRunId),
          el("p", {class: "action-msg err", role: "alert"}, e.message));
      }
      return;
    }
    if (this.id !== taskRunId) return;
    const t = d.taskRun;
    if (runId && t.runId !== runId) {
      this.close();
      this.app.notFound(`No task run ${taskRunId} in run ${runId}`, `it belongs to run ${t.runId}`, runId);
      return;
    }
    this.render(t, d.lineage, closeBtn);
  }

  render(t, lineage, closeBtn) {
    const msg = el("span", {class: "action-msg", role: "status", "data-testid": "task-action-message"});
    const actions = el("div", {class: "actions"});
    if (t.state === "FAILED" || t.state === "CANCELLED") {
      const b = el("button", {type: "button", class: "primary", "data-testid": "retry-task"}, "Retry task");
      b.addEventListener("click", () => this.retry(t, b, msg));
      actions.append(b);
    }
    actions.append(msg);
    const facts = el("dl", {class: "facts"});
    const add = (k, ...v) => facts.append(el("dt", null, k), el("dd", null, ...v));
    add("task", el("span", {class: "mono"}, t.task));
    add("attempt", String(t.attempt));
    add("created", fmtTime(t.created));
    add("duration", fmtDur(t.duration));
    add("started", fmtTime(t.started));
    add("ended", fmtTime(t.ended));
    if (t.mapIndex !== null) add("map index", String(t.mapIndex));
    // why a QUEUED call still waits on its backend (Slurm: ReqNodeNotAvail: ...), as the executor last said
    if (t.pendingReason) add("waiting", el("span", {"data-testid": "pending-reason"}, `QUEUED (${t.pendingReason})`));
    add("backend", t.executorHandle ? el("span", {class: "mono", "data-testid": "handle"}, t.executorHandle) : "–");
    if (t.cacheKey) add("cache key", el("span", {class: "mono"}, `${t.cacheKey.slice(0, 24)}…`), copyButton(t.cacheKey));
    if (t.resultRef) add("result", el("span", {class: "mono"}, `${t.resultRef.slice(0, 24)}…`), copyButton(t.resultRef));

    const parts = [closeBtn,
      el("h2", {id: "drawer-title"}, `${t.name}${t.mapIndex !== null ? `[${t.mapIndex}]` : ""} `, stateBadge(t.state, "drawer-state")),
      el("p", {class: "mono muted"}, t.id, copyButton(t.id)), actions, facts];

    parts.push(this.attempts(t));
    if (t.errorExcerpt || t.tracebackExcerpt) parts.push(this.errorSection(t));
    parts.push(el("section", null, el("h3", null, "output"), valueView(t.output, "task-output")));
    if (["SUCCEEDED", "FAILED"].includes(t.state) && t.task !== "gflow:map") parts.push(cacheSection(t));
    const up = t.upstream.map((u) => el("li", null, el("a", {href: `/runs/${t.runId}/tasks/${u.id}`, "data-nav": ""}, `${u.name} ${u.id}`),
      " ", stateBadge(u.state), u.output ? valueView(u.output) : null));
    parts.push(el("section", {"data-testid": "lineage"}, el("h3", null, "inputs: produced from"),
      up.length ? el("ul", {class: "links"}, ...up) : el("p", {class: "muted"}, "no task inputs (only literal arguments)"),
      el("h3", null, "used by"),
      lineage.downstream.length ? el("ul", {class: "links"}, ...lineage.downstream.map((x) => el("li", null,
        el("a", {href: `/runs/${t.runId}/tasks/${x.id}`, "data-nav": ""}, `${x.name} ${x.id}`), " ", stateBadge(x.state))))
        : el("p", {class: "muted"}, "nothing yet")));
    if (t.objects.inputs.length || t.objects.outputs.length) {
      parts.push(el("section", null, el("h3", null, "objects (content ids)"),
        el("p", {class: "mono muted"}, `read: ${t.objects.inputs.join(", ") || "–"}`),
        el("p", {class: "mono muted"}, `produced: ${t.objects.outputs.join(", ") || "–"}`)));
    }
    parts.push(el("section", null, el("h3", null, "logs"),
      el("p", null, el("span", {class: "mono"}, t.logs.command), copyButton(t.logs.command)),
      el("table", {class: "mini"}, el("tbody", null, ...t.events.map((e) => el("tr", null,
        el("td", null, fmtTime(e.ts)), el("td", null, stateBadge(e.state)), el("td", null, `try ${e.attempt}`),
        el("td", {class: "muted"}, e.message || "")))))));
    this.box.replaceChildren(...parts);
  }

  attempts(t) {
    // used vs requested: the peak beside what the attempt asked for (docs/usage.md); "–" where nothing was measured
    const mem = (a) => a.peakMemoryBytes == null ? "–" :
      fmtBytes(a.peakMemoryBytes) + (a.requestedMemoryBytes ? ` of ${fmtBytes(a.requestedMemoryBytes)}` : "");
    const rows = t.attempts.map((a) => el("tr", null, el("td", null, String(a.attempt)), el("td", null, stateBadge(a.state)),
      el("td", null, a.queued && a.started ? fmtDur(a.started - a.queued) : "–"),
      el("td", null, a.started && a.ended ? fmtDur(a.ended - a.started) : a.started ? "running" : "–"),
      el("td", null, fmtTime(a.started)),
      el("td", {"data-testid": "attempt-cpu"}, a.cpuSeconds == null ? "–" : `${a.cpuSeconds.toFixed(2)} s`),
      el("td", {"data-testid": "attempt-memory"}, mem(a)),
      el("td", null, a.gpuPeakMemoryBytes == null ? "–" : `${fmtBytes(a.gpuPeakMemoryBytes)} ${a.gpuUtilization ?? 0}%`),
      el("td", null, a.cost == null ? "–" : a.cost.toFixed(4)),
      el("td", null, a.errorType || ""), el("td", null, a.asked || ""),
      el("td", {class: "muted"}, a.message || "")));
    const heads = ["try", "state", "queued", "ran", "started", "CPU", "peak memory", "GPU", "cost", "error", "asked",
      "message"];
    return el("section", null, el("h3", null, "attempts"), el("table", {class: "mini", "data-testid": "attempts"},
      el("thead", null, el("tr", null, ...heads.map((h) => el("th", null, h)))),
      el("tbody", null, ...rows)));
  }

  errorSection(t) {
    const sec = el("section", {"data-testid": "task-error"}, el("h3", {class: "FAILED"}, "error"));
    if (t.errorExcerpt) sec.append(el("pre", {class: "text"}, t.errorExcerpt.text));
    const tb = t.tracebackExcerpt;
    if (tb) {
      const pre = el("pre", {class: "text tb", "data-testid": "traceback"}, tb.text);
      const note = el("p", {class: "muted", "data-testid": "traceback-note"});
      const buttons = el("div", {class: "actions"});
      const full = async () => {
        try {
          return (await gql(FULL_TB, {id: t.id})).taskRun.traceback;
        } catch (e) { note.textContent = e.message; return null; }
      };
      if (tb.truncated) {
        note.textContent = `traceback: ${tb.size.toLocaleString("en-US")} characters; showing the first and last part`;
        buttons.append(el("button", {type: "button", "data-testid": "traceback-all", on: {click: async (e) => {
          e.target.disabled = true;
          const text = await full();
          if (text !== null) {
            const view = bigText(text, "traceback");
            pre.replaceWith(view);
            note.textContent = `full traceback (${text.length.toLocaleString("en-US")} characters, ` +
              `${view.dataset.lines} lines; only the lines on screen are drawn)`;
            e.target.remove();
          } else e.target.disabled = false;
        }}}, "Show all"));
      }
      buttons.append(el("button", {type: "button", on: {click: async () => {
        const text = tb.truncated ? await full() : tb.text;
        if (text !== null) download(`${t.id}.traceback.txt`, text);
      }}}, "Download"));
      sec.append(el("h3", null, "traceback"), note, pre, buttons);
    }
    return sec;
  }

  async retry(t, button, msg) {
    button.disabled = true;
    msg.className = "action-msg";
    msg.textContent = "Retry task…";
    try {
      const d = await gql(RETRY, {id: t.id});
      const x = d.retryTask;
      msg.className = "action-msg ok";
      msg.replaceChildren("started: ", el("a", {href: `/runs/${x.runId}`, "data-nav": "", "data-testid": "new-run-link"}, x.runId),
        el("span", {class: "muted"}, ` · ${launchLine(x)}`));
    } catch (e) {
      msg.className = "action-msg err";
      msg.textContent = actionMessage("Retry task", e instanceof ApiError ? e : new ApiError(String(e)));
      if (e.code === "UNAUTHENTICATED" || e.code === "FORBIDDEN") this.app.showTokenForm();
    } finally {
      button.disabled = false;
    }
  }
}
