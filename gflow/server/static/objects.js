// Objects people can look at, in the drawer: a molecule's 2D depiction (RDKit SVG drawn by the server, shown
// as an <img> so nothing in it runs), a sequence with its mutations highlighted, a structure in the bundled
// 3D viewer (3Dmol.js from /static/vendor: no CDN), scores as numbers, lists of records as tables; the raw
// JSON of each one click away. Text from the server is always set as text.
import {el, pretty} from "./util.js";

const MUT_STYLE = "background:#fde68a;color:#92400e;font-weight:600;border-radius:2px";
let threeDmol = null;

/** Load the vendored 3Dmol.js once (a same-origin script: the page's CSP allows it). */
function load3Dmol() {
  if (window.$3Dmol) return Promise.resolve(window.$3Dmol);
  if (!threeDmol) {
    threeDmol = new Promise((resolve, reject) => {
      const s = el("script", {src: "/static/vendor/3Dmol-min.js"});
      s.addEventListener("load", () => resolve(window.$3Dmol));
      s.addEventListener("error", () => { threeDmol = null; reject(new Error("could not load the 3D viewer")); });
      document.head.append(s);
    });
  }
  return threeDmol;
}

function rawJson(data) {
  return el("details", {class: "raw", "data-testid": "raw-json"}, el("summary", null, "raw JSON"),
    el("pre", {class: "json"}, pretty(data)));
}

export function sequenceView(v) {
  const muts = new Map((v.mutations || []).map((m) => [m.position, m]));
  const seq = el("div", {class: "seq", "data-testid": "sequence-view",
    style: "font-family:monospace;word-break:break-all;line-height:1.6"});
  let run = "";
  const flush = () => { if (run) { seq.append(run); run = ""; } };
  for (let i = 0; i < v.sequence.length; i++) {
    const m = muts.get(i + 1);
    if (m) {
      flush();
      seq.append(el("mark", {class: "mut", title: `${m.wt}${m.position}${m.mt}`, style: MUT_STYLE}, v.sequence[i]));
    } else {
      run += v.sequence[i];
    }
  }
  flush();
  const label = (v.mutations || []).map((m) => `${m.wt}${m.position}${m.mt}`).join(", ");
  const parts = [el("div", {class: "muted"}, `${v.sequence.length} residues`,
    label ? ` · mutations against its parent: ${label}` : ""), seq];
  for (const s of v.scores || []) {
    parts.push(el("div", null, el("span", {class: "mono"}, String(s.name)), " = ",
      el("b", {class: "mono"}, String(s.value)), s.units ? ` ${s.units}` : ""));
  }
  return parts;
}

function structureView(v) {
  const box = el("div", {class: "structure", "data-testid": "structure-view",
    style: "position:relative;width:100%;height:320px;border:1px solid #ddd;border-radius:4px"});
  const msg = el("p", {class: "muted"}, v.truncated ? "structure cut for display" : "");
  load3Dmol().then(($3Dmol) => {
    const viewer = $3Dmol.createViewer(box, {backgroundColor: "white"});
    viewer.addModel(v.text, v.format === "cif" ? "cif" : "pdb");
    viewer.setStyle({}, {cartoon: {color: "spectrum"}, stick: {radius: 0.15}});
    viewer.zoomTo();
    viewer.render();
    box.dataset.rendered = "true";
  }).catch((e) => { msg.textContent = e.message; });
  return [box, msg];
}

export function objectView(o) {
  const d = o.data || {};
  const v = o.view;
  const box = el("div", {class: "obj", "data-testid": `object-${o.kind}`}, el("strong", null, o.kind),
    d.name ? el("span", {class: "muted"}, ` ${d.name}`) : null);
  if (v && v.type === "molecule") {
    box.append(el("div", {class: "seq", "data-testid": "smiles"}, v.smiles));
    const svgText = v.svg || o.depictionSvg;
    if (svgText) {
      box.append(el("img", {alt: `2D depiction of ${v.smiles}`, "data-testid": "depiction",
        src: `data:image/svg+xml;charset=utf-8,${encodeURIComponent(svgText)}`}));
    }
  } else if (v && v.type === "sequence") {
    box.append(...sequenceView(v));
  } else if (v && v.type === "structure") {
    box.append(...structureView(v));
  } else if (v && v.type === "score") {
    box.append(el("div", null, el("span", {class: "mono", style: "font-size:1.1rem"}, String(v.value)),
      v.units ? ` ${v.units}` : "", d.higher_is_better === false ? el("span", {class: "muted"}, " (lower is better)") : null));
  } else {
    box.append(el("pre", {class: "json"}, pretty(d)));
    return box;
  }
  box.append(rawJson(d));
  return box;
}

export function tableView(t) {
  const head = el("tr", null, ...t.columns.map((c) => el("th", null, String(c))));
  const rows = t.rows.map((r) => el("tr", null, ...r.map((c) => el("td", null, c === null ? "" : String(c)))));
  return el("div", {style: "overflow:auto;max-height:360px"},
    el("table", {class: "data", "data-testid": "value-table"}, head, ...rows),
    t.truncated ? el("p", {class: "muted"}, "first rows only") : null);
}

export function valueView(v, testid) {
  if (!v) return el("p", {class: "muted"}, "no stored value");
  const box = el("div", {"data-testid": testid});
  for (const o of v.objects || []) box.append(objectView(o));
  if (v.table) {
    box.append(tableView(v.table), rawJson(v.display));
    return box;
  }
  const onlyObject = (v.objects || []).length === 1 && typeof v.display === "object";
  if (!onlyObject || v.truncated) {
    box.append((v.objects || []).length ? rawJson(v.display) : el("pre", {class: "json"}, pretty(v.display)));
  }
  return box;
}
