"""Objects people can look at: a view model per gflow object, for the dashboard's drawer and ``gflow report``.

:func:`view_of` turns one object's stored fields (untrusted JSON, as :mod:`gflow.server.display` finds
them; nothing is imported or constructed) into what a viewer needs:

- **Molecule**: a 2D depiction, RDKit SVG drawn on the server (:func:`gflow.server.display.depict`);
- **Protein / Design**: the sequence with its mutations against its parent. gflow's ``Protein.mutate``
  records each point mutation in the name (``parent_A23G``); those records, checked against the
  sequence, are the mutations shown (a name without records: no highlight, the plain sequence);
- **Structure**: its text (PDB or mmCIF) for the bundled 3D viewer (3Dmol.js, vendored under
  ``static/vendor/``: no CDN), cut at :data:`MAX_STRUCTURE_CHARS`;
- **Score**: the number with its units;
- a list of same-shaped records: a table (:func:`table_of`).

:func:`object_html` renders the same views as self-contained HTML (the report), every text escaped.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from gflow.server.display import depict

__all__ = ["MAX_STRUCTURE_CHARS", "mutations_of", "object_html", "table_of", "view_of"]

MAX_STRUCTURE_CHARS = 2_000_000
MAX_SEQUENCE = 100_000
_RECORD = re.compile(r"([A-Z])(\d+)([A-Z])")


def mutations_of(name: Any, sequence: str) -> list[dict[str, Any]]:
    """The point mutations a gflow-made name records (``parent_A23G_K5R``), each checked against ``sequence``."""
    if not isinstance(name, str) or "_" not in name:
        return []
    out = []
    for part in reversed(name.split("_")[1:]):
        m = _RECORD.fullmatch(part)
        if m is None:
            break
        pos = int(m.group(2))
        if not 1 <= pos <= len(sequence) or sequence[pos - 1] != m.group(3):
            break
        out.append({"position": pos, "wt": m.group(1), "mt": m.group(3)})
    return sorted(out, key=lambda r: r["position"])


def _protein(data: Any) -> dict[str, Any] | None:
    if not isinstance(data, dict) or not isinstance(data.get("sequence"), str):
        return None
    seq = data["sequence"][:MAX_SEQUENCE]
    return {"type": "sequence", "sequence": seq, "name": data.get("name"),
            "mutations": mutations_of(data.get("name"), seq), "truncated": len(data["sequence"]) > MAX_SEQUENCE}


def view_of(kind: str, data: Any) -> dict[str, Any] | None:
    """The view of one object (``kind``: its class name), or None when it has none beyond its JSON."""
    if not isinstance(data, dict):
        return None
    if kind == "Molecule" and isinstance(data.get("smiles"), str):
        return {"type": "molecule", "smiles": data["smiles"], "svg": depict(data["smiles"])}
    if kind == "Protein":
        return _protein(data)
    if kind == "Design":
        view = _protein(data.get("protein"))
        if view is None:
            return None
        scores = [s for s in data.get("scores") or () if isinstance(s, dict) and "value" in s]
        view["scores"] = [{"name": s.get("name"), "value": s.get("value"), "units": s.get("units")} for s in scores]
        view["parents"] = [p for p in data.get("parents") or () if isinstance(p, str)]
        return view
    if kind == "Structure" and isinstance(data.get("text"), str):
        text = data["text"]
        fmt = data.get("format") if data.get("format") in ("pdb", "cif", "mmcif") else "pdb"
        return {"type": "structure", "format": "cif" if fmt == "mmcif" else fmt, "name": data.get("name"),
                "text": text[:MAX_STRUCTURE_CHARS], "truncated": len(text) > MAX_STRUCTURE_CHARS}
    if kind == "Score" and isinstance(data.get("value"), (int, float)):
        return {"type": "score", "name": data.get("name"), "value": data["value"], "units": data.get("units")}
    return None


def table_of(value: Any, limit: int = 500) -> dict[str, Any] | None:
    """A list of at least two dicts sharing their keys (records, rows) as ``{columns, rows}``; else None."""
    if not isinstance(value, list) or len(value) < 2 or not all(isinstance(v, dict) for v in value[:limit]):
        return None
    columns = list(value[0])
    if not columns or len(columns) > 50 or any(list(v) != columns for v in value[:limit]):
        return None
    cell = (str, int, float, bool, type(None))
    rows = [[v[c] if isinstance(v[c], cell) else json.dumps(v[c])[:200] for c in columns] for v in value[:limit]]
    return {"columns": columns, "rows": rows, "truncated": len(value) > limit}


# -- HTML (the report) ---------------------------------------------------------------------------------------

def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def sequence_html(view: dict[str, Any]) -> str:
    muts = {m["position"]: m for m in view.get("mutations", [])}
    cells = []
    for i, aa in enumerate(view["sequence"], start=1):
        m = muts.get(i)
        if m:
            cells.append(f'<mark class="mut" title="{_e(m["wt"])}{i}{_e(m["mt"])}">{_e(aa)}</mark>')
        else:
            cells.append(_e(aa))
        if i % 10 == 0:
            cells.append('<span class="gap"> </span>')
    label = ", ".join(f'{m["wt"]}{m["position"]}{m["mt"]}' for m in view.get("mutations", []))
    return (f'<div class="seqview" data-testid="sequence-view"><div class="muted">{len(view["sequence"])} residues'
            f'{" · mutations " + _e(label) if label else ""}</div><div class="seq">{"".join(cells)}</div></div>')


def object_html(kind: str, data: Any, index: int = 0) -> str:
    """One object as HTML: its view, then its raw JSON one click away (a closed ``<details>``)."""
    view = view_of(kind, data)
    body = ""
    if view is not None and view["type"] == "molecule":
        body = f'<div class="seq">{_e(view["smiles"])}</div>'
        if view["svg"]:
            # as an <img>, so nothing in the SVG can run
            from urllib.parse import quote

            body += (f'<img data-testid="depiction" alt="2D depiction of {_e(view["smiles"])}" '
                     f'src="data:image/svg+xml;charset=utf-8,{quote(view["svg"])}">')
    elif view is not None and view["type"] == "sequence":
        body = sequence_html(view)
        for s in view.get("scores", []):
            body += f'<div><span class="mono">{_e(s["name"])}</span> = <b>{_e(s["value"])}</b> {_e(s["units"])}</div>'
    elif view is not None and view["type"] == "structure":
        payload = json.dumps({"format": view["format"], "text": view["text"]}).replace("</", "<\\/")
        body = (f'<div class="structure" data-testid="structure-view" id="structure-{index}"></div>'
                f'<script type="application/json" class="structure-data" data-target="structure-{index}">'
                f'{payload}</script>')
    elif view is not None and view["type"] == "score":
        body = f'<div><b class="mono">{_e(view["value"])}</b> {_e(view["units"])}</div>'
    raw = _e(json.dumps(data, indent=2, default=str)[:200_000])
    name = data.get("name") if isinstance(data, dict) else None
    return (f'<div class="obj" data-testid="object-{_e(kind)}"><strong>{_e(kind)}</strong> '
            f'<span class="muted">{_e(name)}</span>{body}'
            f'<details><summary>raw JSON</summary><pre class="json">{raw}</pre></details></div>')


def table_html(table: dict[str, Any]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in table["columns"])
    rows = "".join("<tr>" + "".join(f"<td>{_e(v)}</td>" for v in r) + "</tr>" for r in table["rows"])
    more = '<p class="muted">(first rows only)</p>' if table.get("truncated") else ""
    return f'<table class="data" data-testid="value-table"><tr>{head}</tr>{rows}</table>{more}'
