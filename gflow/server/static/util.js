// Small helpers shared by the views. Text from the server is always set as text, never parsed as HTML.

export const STATES = ["PENDING", "QUEUED", "RUNNING", "RETRYING", "SUCCEEDED", "FAILED", "CANCELLED", "CACHED"];
export const RANK = {PENDING: 0, QUEUED: 1, RUNNING: 2, RETRYING: 3, SUCCEEDED: 4, FAILED: 4, CANCELLED: 4, CACHED: 4};
export const TERMINAL = new Set(["SUCCEEDED", "CACHED", "FAILED", "CANCELLED"]);
// the order states are drawn in bars and rings: finished work first, then what is moving, then waiting
export const BAR_ORDER = ["SUCCEEDED", "CACHED", "FAILED", "CANCELLED", "RUNNING", "RETRYING", "QUEUED", "PENDING"];

export const $ = (sel, root = document) => root.querySelector(sel);

/** el("a", {href, class, data: {x: 1}, on: {click}}, child...) — children are nodes or text. */
export function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "data") Object.assign(e.dataset, v);
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) e.addEventListener(ev, fn);
      else if (k === "text") e.textContent = v;
      else if (k === "style") e.style.cssText = v;  // through the CSSOM: the CSP refuses style attributes
      else e.setAttribute(k, v === true ? "" : v);
    }
  }
  for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs, ...children) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

/** Seconds for people: 420 µs, 3.20 ms, 85 ms, 12.4 s, 3m 05s, 2h 10m. Never "0ms". */
export function fmtDur(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 0) s = 0;
  if (s === 0) return "0 s";
  if (s < 1e-6) return "<1 µs";
  if (s < 1e-3) return `${Math.round(s * 1e6)} µs`;
  if (s < 0.01) return `${(s * 1e3).toFixed(2)} ms`;
  if (s < 1) return `${Math.round(s * 1e3)} ms`;
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(Math.floor(s % 60)).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

/** Bytes as B, KiB, MiB or GiB. */
export function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${Math.round(n)} B` : `${n.toFixed(1)} ${units[i]}`;
}

export function fmtTime(ts) {
  if (!ts) return "–";
  const d = new Date(ts * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtAgo(ts) {
  if (!ts) return "–";
  const s = Date.now() / 1000 - ts;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export const fmtInt = (n) => Number(n).toLocaleString("en-US");
export const nowSec = () => (performance.timeOrigin + performance.now()) / 1000;

export function stateBadge(s, testid) {
  return el("span", {class: `state badge ${s}`, "data-testid": testid}, s);
}

export function stateText(s, testid) {
  return el("span", {class: `state ${s}`, "data-testid": testid}, s);
}

/** A stacked bar of state counts ({STATE: n}) out of total. */
export function countsBar(counts, total, big) {
  const bar = el("div", {class: big ? "bar big" : "bar", role: "img",
    "aria-label": BAR_ORDER.filter((s) => counts[s]).map((s) => `${counts[s]} ${s.toLowerCase()}`).join(", ") || "no task runs"});
  const n = Math.max(total, 1);
  for (const s of BAR_ORDER) {
    if (!counts[s]) continue;
    bar.append(el("span", {style: `width:${(100 * counts[s] / n).toFixed(3)}%;background:var(--${s})`, title: `${s} ${counts[s]}`}));
  }
  return bar;
}

/** "succeeded 5" chips; with onPick they are toggle buttons that filter by state. */
export function countsChips(counts, {onPick, picked} = {}) {
  const box = el("span", {class: "chips"});
  for (const s of BAR_ORDER) {
    if (!counts[s]) continue;
    const label = `${s.toLowerCase()} ${fmtInt(counts[s]).replace(/,/g, "")}`;
    if (onPick) {
      box.append(el("button", {type: "button", class: `chip ${s}`, "aria-pressed": picked === s ? "true" : "false",
        title: `show only ${s} task runs`, on: {click: () => onPick(picked === s ? "" : s)}},
        el("span", {class: "dot"}), label));
    } else {
      box.append(el("span", {class: `chip ${s}`, title: s}, el("span", {class: "dot"}), label));
    }
  }
  return box;
}

export function countsFromList(list) {
  const c = {};
  for (const x of list || []) c[x.state] = x.count;
  return c;
}

export function copyButton(text, label = "copy") {
  const b = el("button", {type: "button", class: "copy ghost", title: `copy ${text}`, "aria-label": `copy ${text}`}, label);
  b.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(text);
      b.textContent = "copied";
    } catch {
      // no clipboard permission (plain http on another host): select the text for the user instead
      const r = document.createRange();
      r.selectNodeContents(b.previousSibling || b);
      getSelection().removeAllRanges();
      getSelection().addRange(r);
      b.textContent = "selected";
    }
    setTimeout(() => { b.textContent = label; }, 1500);
  });
  return b;
}

export function pretty(value) {
  if (typeof value === "string") return value;
  try { return JSON.stringify(value, null, 2); } catch { return String(value); }
}

export function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

export function debounce(fn, ms) {
  let t = null;
  return (...a) => { clearTimeout(t); t = setTimeout(() => fn(...a), ms); };
}

export function download(name, text) {
  const url = URL.createObjectURL(new Blob([text], {type: "text/plain"}));
  const a = el("a", {href: url, download: name});
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
