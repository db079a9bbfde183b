// The dashboard's shell: routes (/, /runs/ID, /runs/ID/tasks/ID; no full-page reloads), the token,
// the colour theme, notices and the not-found page.
import {getToken, setToken, tokenRejected, whenTokenRejected} from "./api.js";
import {Drawer} from "./drawer.js";
import {RunPage} from "./run.js";
import {RunsPage} from "./runs.js";
import {$, el} from "./util.js";

class App {
  constructor() {
    this.view = null;
    this.drawer = new Drawer(this);
    this.main = $("#main");
    this.bindShell();
  }

  bindShell() {
    document.addEventListener("click", (e) => {
      const a = e.target.closest && e.target.closest("a[data-nav]");
      if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
      e.preventDefault();
      this.navigate(a.getAttribute("href"));
    });
    window.addEventListener("popstate", () => this.route());
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && this.drawer.isOpen) { e.preventDefault(); this.closeTask(); }
      if (e.key === "/" && !/^(INPUT|SELECT|TEXTAREA)$/.test(document.activeElement.tagName)) {
        const f = $("#main input");
        if (f) { e.preventDefault(); f.focus(); }
      }
    });
    $("#token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      setToken($("#token").value);  // empty: forget the token
      $("#token").value = "";
      this.showTokenState();
      this.notice("");
      this.reload();
    });
    this.showTokenState();
    whenTokenRejected(() => {
      this.notice("");
      this.showTokenState();
    });
    // theme: auto (follows the system), light, dark
    const media = matchMedia("(prefers-color-scheme: dark)");
    const apply = () => {
      const pref = localStorage.getItem("gflow.theme") || "auto";
      const dark = pref === "dark" || (pref === "auto" && media.matches);
      document.documentElement.dataset.theme = dark ? "dark" : "light";
      $("#theme").textContent = `theme: ${pref}`;
      if (this.view && this.view.mark) this.view.mark("timeline");
    };
    media.addEventListener("change", apply);
    $("#theme").addEventListener("click", () => {
      const order = ["auto", "light", "dark"];
      const cur = localStorage.getItem("gflow.theme") || "auto";
      localStorage.setItem("gflow.theme", order[(order.indexOf(cur) + 1) % 3]);
      apply();
    });
    apply();
  }

  showTokenState() {
    $("#token-state").textContent = !getToken() ? "none set" : tokenRejected() ? "✗ not accepted" : "✓ set";
  }

  /** Draw the eye to the token field (an action needs a token, or reads do). */
  showTokenForm() {
    const input = $("#token");
    input.classList.add("wanted");
    setTimeout(() => input.classList.remove("wanted"), 2500);
  }

  notice(msg) {
    if (!msg && tokenRejected()) {
      msg = "The token you set was not accepted (expired or mistyped). Reads work without it; actions need a " +
            "valid write token: set one in the token field.";
    }
    const n = $("#notice");
    n.textContent = msg || "";
    n.hidden = !msg;
    if (msg && /needs a token/.test(msg)) this.showTokenForm();
  }

  setCrumbs(runId, taskId) {
    const c = $("#crumbs");
    const parts = [el("a", {href: "/", "data-nav": ""}, "runs")];
    if (runId) parts.push(" / ", el("a", {href: `/runs/${runId}`, "data-nav": "", class: "mono"}, runId));
    if (taskId) parts.push(" / ", el("span", {class: "mono"}, taskId));
    c.replaceChildren(...parts);
  }

  navigate(href) {
    if (href === location.pathname + location.search) return;
    history.pushState(null, "", href);
    this.route();
  }

  reload() {
    if (this.view) this.view.destroy();
    this.view = null;
    this.route();
  }

  route() {
    const legacy = location.hash.match(/^#run=(.+)$/);  // old links: /#run=ID
    if (legacy) history.replaceState(null, "", `/runs/${legacy[1]}`);
    const path = location.pathname.replace(/\/+$/, "") || "/";
    let m;
    if (path === "/" || path === "/runs") {
      this.drawer.close();
      if (!(this.view instanceof RunsPage)) this.show(new RunsPage(this));
      return;
    }
    if ((m = path.match(/^\/runs\/([^/]+)(?:\/tasks\/([^/]+))?$/))) {
      const runId = decodeURIComponent(m[1]);
      const taskId = m[2] ? decodeURIComponent(m[2]) : null;
      if (!(this.view instanceof RunPage) || this.view.id !== runId) {
        this.show(new RunPage(runId, this));
        this.view.load();
      }
      this.setCrumbs(runId, taskId);
      if (taskId) {
        if (this.drawer.id !== taskId) this.drawer.open(taskId, runId);
        this.view.table.select(taskId);
      } else {
        this.drawer.close();
        this.view.table.select(null);
      }
      return;
    }
    this.notFound("Page not found", `nothing lives at ${location.pathname}`);
  }

  show(view) {
    if (this.view) this.view.destroy();
    this.view = view;
    this.notice("");
    view.mount(this.main);
  }

  afterRunLoad(page) {
    const m = location.pathname.match(/\/tasks\/([^/]+)$/);
    if (m) page.table.select(decodeURIComponent(m[1]));
  }

  openTask(taskRunId) {
    if (!(this.view instanceof RunPage)) return;
    this.navigate(`/runs/${encodeURIComponent(this.view.id)}/tasks/${encodeURIComponent(taskRunId)}`);
  }

  closeTask() {
    if (this.view instanceof RunPage) this.navigate(`/runs/${encodeURIComponent(this.view.id)}`);
    else this.drawer.close();
  }

  notFound(title, detail, runId) {
    if (this.view) this.view.destroy();
    this.view = null;
    this.drawer.close();
    this.main.replaceChildren(el("div", {class: "notfound", "data-testid": "not-found"},
      el("h1", null, title), el("p", {class: "muted"}, detail || ""),
      el("p", null, runId ? el("a", {href: `/runs/${runId}`, "data-nav": ""}, `back to run ${runId}`) : null,
        runId ? " · " : null, el("a", {href: "/", "data-nav": ""}, "all runs"))));
    document.title = `gflow: ${title}`;
  }
}

window.gflowApp = new App();
window.gflowApp.route();
