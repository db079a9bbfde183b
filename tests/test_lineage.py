"""Lineage per output (issue 22 item 5): from a design_loop design back to the model digest and the first proposal,
through map elements' edges; the RO-Crate export; bad ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import gflow
from gflow._loader import load_target
from gflow.cli import main
from gflow.lineage import LineageNotFound, ro_crate, walk
from gflow.objects import Protein
from gflow.store import open_store
from gflow.testing import run_flow

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("rdkit")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def tiny_esm(tmp_path_factory: pytest.TempPathFactory) -> str:
    mod = load_target(f"{EXAMPLES / 'esm_scoring.py'}:score_fasta").fn.__globals__
    return str(mod["save_random_esm"](tmp_path_factory.mktemp("esm") / "tiny", preset="tiny", seed=1))


def _check_crate(doc: dict) -> None:
    """The RO-Crate 1.1 structure: context, descriptor about the root dataset, every reference resolves."""
    assert doc["@context"] == "https://w3id.org/ro/crate/1.1/context"
    by_id = {e["@id"]: e for e in doc["@graph"]}
    assert len(by_id) == len(doc["@graph"])  # ids are unique
    meta = by_id["ro-crate-metadata.json"]
    assert meta["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"} and meta["about"] == {"@id": "./"}
    root = by_id["./"]
    assert root["@type"] == "Dataset" and root["datePublished"] and root["name"]

    def refs(v: object) -> list[str]:
        if isinstance(v, dict):
            return ([v["@id"]] if set(v) == {"@id"} else []) + [r for x in v.values() for r in refs(x)]
        if isinstance(v, list):
            return [r for x in v for r in refs(x)]
        return []

    for e in doc["@graph"]:
        for r in refs({k: v for k, v in e.items() if k != "@id"}):
            assert r in by_id or r.startswith("http"), f"{e['@id']} refers to {r}, not in the crate"


def test_design_loop_lineage_reaches_model_and_first_proposal(tiny_esm: str, tmp_path: Path, gflow_home) -> None:
    flow = load_target(f"{EXAMPLES / 'design_loop.py'}:design_loop")
    result = run_flow(flow, Protein(sequence="NLYIQWLKDGGPSSGRPPPS", name="trpcage"), rounds=2, per_round=4,
                      model=tiny_esm, elite=2, out_dir=str(tmp_path / "out"))
    assert result.state is gflow.State.SUCCEEDED, result.error
    final = str(result.value.metadata["final_elite"]).split(",")[0]
    store = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    try:
        trs = store.task_runs(result.id)
        model_digest = result.value.metadata["model"]
        graph = walk(store, final)
        names = [n.name for n in graph.nodes]
        assert names[0] == "rank_round"
        proposals = sorted((t for t in trs if t.name == "propose"), key=lambda t: t.created or 0)
        assert proposals[0].id in {n.id for n in graph.nodes}  # back to round 1's proposal
        assert model_digest.startswith("sha256:") and model_digest in graph.models  # the ESM weights read
        scorers = [n for n in graph.nodes if n.name == "score_batch"]
        assert scorers and all(n.models == [model_digest] for n in scorers)
        assert all(n.version for n in graph.nodes if n.task != "gflow:map")  # code versions noted per run
        crate = json.loads(ro_crate(graph, tmp_path / "crate").read_text())
        _check_crate(crate)
        assert any(e.get("identifier") == model_digest for e in crate["@graph"])
    finally:
        store.close()
    res = CliRunner().invoke(main, ["lineage", final, "--output", "json", "--ro-crate", str(tmp_path / "c2")])
    assert res.exit_code == 0, res.output
    assert model_digest in json.loads(res.stdout)["models"]
    # the model's digest itself (an artifact id): an input nobody produced, read by the scoring calls
    res = CliRunner().invoke(main, ["lineage", model_digest])
    assert res.exit_code == 0 and "an input no task run in this store produced; read by" in res.output
    assert (tmp_path / "c2" / "ro-crate-metadata.json").exists()


def test_lineage_bad_id(store) -> None:
    with pytest.raises(LineageNotFound, match="'sha256:nothing' is no object"):
        walk(store, "sha256:nothing")
    res = CliRunner().invoke(main, ["lineage", "no-such-thing"])
    assert res.exit_code == 1 and "is no object, registry key or task run" in res.output
