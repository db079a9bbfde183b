"""The lineage views over GraphQL (issue 22 items 4-5): a map element's drawer shows the call it was fanned out
from (no more "no task inputs"), `provenance` walks an output back, `cacheExplain` says why a call ran."""

from __future__ import annotations

import flows_basic as fb
import pytest

pytest.importorskip("strawberry")
httpx = pytest.importorskip("httpx")

from gflow.server.app import create_app  # noqa: E402
from gflow.server.testing import serve  # noqa: E402
from gflow.store import open_store  # noqa: E402


def _q(url: str, query: str, **variables: object) -> dict:
    return httpx.post(f"{url}/graphql", json={"query": query, "variables": variables}).json()


def test_map_element_upstream_provenance_and_cache_explain(gflow_home, work) -> None:
    db = f"sqlite:///{gflow_home / 'gflow.db'}"
    r = fb.map_over_future.run(3, store=db, executor="inline", return_run=True)
    c1 = fb.cached_square.run(work, 3, store=db, executor="inline", return_run=True)
    c2 = fb.cached_square.run(work, 4, store=db, executor="inline", return_run=True)
    trs = open_store(db).task_runs(r.id)
    element = next(t for t in trs if t.name == "scale")
    make = next(t for t in trs if t.name == "make_list")
    with serve(create_app(open_store(db), close_store=True)) as url:
        got = _q(url, "query($id: ID!) { taskRun(id: $id) { upstream { id name } } }", id=element.id)
        assert make.id in [u["id"] for u in got["data"]["taskRun"]["upstream"]]
        graph = _q(url, "query($id: String!) { provenance(id: $id) }", id=element.id)["data"]["provenance"]
        assert [n["name"] for n in graph["nodes"]][:1] == ["scale"] and make.id in [n["id"] for n in graph["nodes"]]
        assert [make.id, element.id] in graph["edges"]
        total = next(t for t in trs if t.name == "total")
        back = _q(url, "query($id: String!) { provenance(id: $id) }", id=total.id)["data"]["provenance"]
        names = sorted(n["name"] for n in back["nodes"])  # through the map node to its elements, and to k's inc
        assert names == ["inc", "make_list", "scale", "scale", "scale", "scale.map", "total"]
        bad = _q(url, "query { provenance(id: \"sha256:none\") }")
        assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "is no object, registry key or task run" in bad["errors"][0]["message"]
        assert db not in bad["errors"][0]["message"]  # the store's URL is not shown
        why = _q(url, "query($r: ID!) { cacheExplain(runId: $r, task: \"cached_square\") }", r=c2.id)
        (d,) = why["data"]["cacheExplain"]
        assert d["earlier_run"] == c1.id and [i[0] for i in d["inputs"]] == ["x"]
        assert any(line.startswith("  argument 'x': sha256:") for line in d["lines"])
        none = _q(url, "query { cacheExplain(runId: \"nope\", task: \"x\") }")
        assert none["errors"][0]["message"].startswith("no run 'nope'")
