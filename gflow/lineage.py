"""Lineage per output: which task runs made an object, from which inputs, code, images and models.

:func:`walk` starts from a gflow object's content id (``sha256:...``), a registry id (``key:model:sha256:...``)
or a task run id, and follows two kinds of edge back until nothing is left (or ``max_nodes``):

- the task runs recorded as its ``upstream`` (futures passed in; a map element's edges included), and for
  a map over a future (task ``gflow:map``), its elements;
- for every object a task run read, the task runs that produced that object (values that went through
  ``.result()`` in the flow body and came back as arguments keep their history this way).

Each node names its task, code version (noted per run and task, ``gflow.flows._provenance``), the image
its run recorded, the models it read (``key:model:<digest>``: a ``gflow.models`` artifact model used by
a call is an input like any other) and its run. :func:`ro_crate` writes one lineage as an RO-Crate
(``ro-crate-metadata.json``, JSON-LD, RO-Crate 1.1): the task runs are ``CreateAction``\\ s whose
``instrument`` is the task at its code version, ``object`` the inputs, ``result`` the outputs.
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gflow.errors import GflowError, StoreError

__all__ = ["LineageNode", "LineageGraph", "LineageNotFound", "ro_crate", "walk"]

_MODEL_PREFIXES = ("key:model:", "key:dataset:")


class LineageNotFound(GflowError):
    """The id is no recorded object, registry key or task run."""


@dataclass
class LineageNode:
    """One task run in a lineage."""

    id: str
    run_id: str
    task: str
    name: str
    state: str
    version: str | None = None
    image: str | None = None
    run_image: str | None = None
    flow: str | None = None
    key: str | None = None
    map_index: int | None = None
    started: float | None = None
    ended: float | None = None
    upstream: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)


@dataclass
class LineageGraph:
    """What :func:`walk` found: nodes nearest first, data-flow edges ``(upstream, downstream)``."""

    root: str
    nodes: list[LineageNode]
    edges: list[tuple[str, str]]
    truncated: bool = False
    #: for an input nobody in the store produced (a model's digest, a parameter): the task runs that read it
    read_by: list[str] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        """Digests of every model or dataset artifact any node read."""
        return list(dict.fromkeys(m for n in self.nodes for m in n.models))

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root, "nodes": [asdict(n) for n in self.nodes],
                "edges": [list(e) for e in self.edges], "models": self.models, "truncated": self.truncated,
                "read_by": self.read_by}


def _start(store: Any, ident: str) -> tuple[list[Any], list[str]]:
    """The task runs that produced ``ident`` (or the task run it names); else, for an input nobody in the store
    produced (a model's digest, a parameter object), the ids of the task runs that read it."""
    if not isinstance(ident, str) or not ident.strip() or len(ident) > 1000:
        raise LineageNotFound("give an object content id, a model/data set digest, a key:KIND:KEY registry id or a "
                              "task run id")
    ident = ident.strip()
    forms = [ident] + ([p + ident for p in _MODEL_PREFIXES] if ident.startswith("sha256:") else [])
    read_by: list[str] = []
    for form in forms:
        got = store.lineage(form)
        if got["produced_by"]:
            return list(got["produced_by"]), []
        read_by += [t.id for t in got["consumed_by"] if t.id not in read_by]
    if read_by:
        return [], read_by
    try:
        return [store.get_task_run(ident)], []
    except (LookupError, StoreError, GflowError):
        pass
    raise LineageNotFound(f"{ident!r} is no object, registry key or task run recorded in {store.url}")


def walk(store: Any, ident: str, max_nodes: int = 2000) -> LineageGraph:
    """The lineage of ``ident`` (see the module docs).

    Raises:
        LineageNotFound: naming the id, when the store knows nothing of it.
    """
    start, read_by = _start(store, ident)
    versions: dict[tuple[str, str], dict[str, Any]] = {}
    runs: dict[str, Any] = {}
    nodes: list[LineageNode] = []
    edges: dict[tuple[str, str], None] = {}
    seen = {t.id for t in start}
    queue = deque(start)
    truncated = False
    while queue:
        t = queue.popleft()
        objs = store.objects_of(t.id)
        if t.run_id not in runs:
            runs[t.run_id] = store.get_runs([t.run_id]).get(t.run_id)
        vk = (t.run_id, t.task)
        if vk not in versions:
            rows = _rows(store, t.run_id, t.task)
            versions[vk] = rows[0] if rows else {}
        note = versions[vk]
        run = runs[t.run_id]
        node = LineageNode(id=t.id, run_id=t.run_id, task=t.task, name=t.name, state=str(t.state.value),
                           version=note.get("version"), image=note.get("image") or None,
                           run_image=getattr(run, "image_tag", None), flow=getattr(run, "flow", None), key=t.key,
                           map_index=t.map_index, started=t.started, ended=t.ended, upstream=list(t.upstream),
                           inputs=list(objs["inputs"]), outputs=list(objs["outputs"]),
                           models=[i.split(":", 2)[2] for i in objs["inputs"] if i.startswith(_MODEL_PREFIXES)])
        nodes.append(node)
        parents: list[str] = list(t.upstream)
        if t.task == "gflow:map" and t.name.endswith(".map"):  # a map over a future: its elements made its list
            ups = set(t.upstream)
            parents += [e.id for e in store.task_runs(t.run_id, task=t.name[:-4])
                        if e.map_index is not None and ups <= set(e.upstream)]
        for cid in objs["inputs"]:
            if cid.startswith("key:"):
                continue
            parents += [p.id for p in store.lineage(cid)["produced_by"] if p.id != t.id]
        for p in dict.fromkeys(parents):
            edges[(p, t.id)] = None
            if p in seen:
                continue
            if len(seen) >= max_nodes:
                truncated = True
                continue
            seen.add(p)
            rec = store.get_task_runs([p]).get(p)
            if rec is not None:
                queue.append(rec)
    return LineageGraph(root=ident, nodes=nodes, edges=list(edges), truncated=truncated, read_by=read_by)


def _rows(store: Any, run_id: str, task: str) -> list[dict[str, Any]]:
    from gflow.flows import PROVENANCE_TABLE as TABLE

    try:
        return list(store.get_rows(TABLE, {"run": run_id, "task": task}, limit=1))
    except (StoreError, GflowError):
        return []


def ro_crate(graph: LineageGraph, folder: str | Path) -> Path:
    """Write ``graph`` as an RO-Crate into ``folder`` (created): returns the ``ro-crate-metadata.json`` path."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    entities: dict[str, dict[str, Any]] = {}

    def thing(cid: str) -> dict[str, str]:
        ident = f"#object-{cid}"
        if ident not in entities:
            if cid.startswith(_MODEL_PREFIXES):
                kind, digest = cid.split(":", 2)[1:]
                entities[ident] = {"@id": ident, "@type": "Dataset", "name": f"{kind} {digest}",
                                   "identifier": digest, "additionalType": kind}
            else:
                entities[ident] = {"@id": ident, "@type": "CreativeWork", "name": cid, "identifier": cid}
        return {"@id": ident}

    actions = []
    for n in graph.nodes:
        tool = f"#task-{n.task}@{n.version or 'unknown'}"
        entities.setdefault(tool, {"@id": tool, "@type": "SoftwareApplication", "name": n.task,
                                   "version": n.version or "not recorded"})
        if n.image or n.run_image:
            entities.setdefault(f"#image-{n.image or n.run_image}", {
                "@id": f"#image-{n.image or n.run_image}", "@type": "SoftwareApplication",
                "name": f"image {n.image or n.run_image}", "identifier": n.image or n.run_image})
        run = f"#run-{n.run_id}"
        entities.setdefault(run, {"@id": run, "@type": "OrganizeAction", "name": f"gflow run {n.run_id}",
                                  "description": n.flow or "", "identifier": n.run_id})
        action: dict[str, Any] = {
            "@id": f"#task-run-{n.id}", "@type": "CreateAction", "name": f"{n.name} ({n.id})",
            "identifier": n.id, "actionStatus": {"@id": "http://schema.org/CompletedActionStatus"}
            if n.state in ("SUCCEEDED", "CACHED") else {"@id": "http://schema.org/FailedActionStatus"},
            "instrument": [{"@id": tool}] + ([{"@id": f"#image-{n.image or n.run_image}"}]
                                             if n.image or n.run_image else []),
            "object": [thing(c) for c in n.inputs] + [{"@id": f"#task-run-{u}"} for u in n.upstream
                                                     if any(m.id == u for m in graph.nodes)],
            "result": [thing(c) for c in n.outputs],
            "isPartOf": {"@id": run},
        }
        for attr, key in (("started", "startTime"), ("ended", "endTime")):
            v = getattr(n, attr)
            if v:
                action[key] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(v))
        actions.append(action)
    graph_ld: list[dict[str, Any]] = [
        {"@id": "ro-crate-metadata.json", "@type": "CreativeWork",
         "conformsTo": {"@id": "https://w3id.org/ro/crate/1.1"}, "about": {"@id": "./"}},
        {"@id": "./", "@type": "Dataset", "name": f"gflow lineage of {graph.root}",
         "description": "Task runs that produced this output, with their code versions, images, models and runs "
                        "(written by gflow lineage --ro-crate).",
         "datePublished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "license": {"@id": "https://spdx.org/licenses/CC0-1.0"},
         "mentions": [{"@id": a["@id"]} for a in actions], "hasPart": []},
        {"@id": "https://spdx.org/licenses/CC0-1.0", "@type": "CreativeWork", "name": "CC0-1.0"},
        *actions, *entities.values()]
    doc = {"@context": "https://w3id.org/ro/crate/1.1/context", "@graph": graph_ld}
    path = out / "ro-crate-metadata.json"
    path.write_text(json.dumps(doc, indent=2, sort_keys=False))
    return path
