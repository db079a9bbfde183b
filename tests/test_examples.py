"""The seed workloads as examples: ESM-2 scoring, precalc and the multi-image design loop, on a tiny random ESM-2.

The model is built here (random weights, ESM-2's architecture) and saved with save_pretrained into a
temporary folder: no weights are downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import gflow
from gflow._loader import load_target
from gflow.objects import Design, Experiment, Protein
from gflow.store import open_store
from gflow.testing import run_flow

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("rdkit")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FASTA = EXAMPLES / "data" / "proteins.fasta"
LIBRARY = EXAMPLES / "data" / "library.csv"

esm_scoring = load_target(f"{EXAMPLES / 'esm_scoring.py'}:score_fasta").fn.__globals__
precalc_mod = load_target(f"{EXAMPLES / 'precalc.py'}:precalc").fn.__globals__
design_mod = load_target(f"{EXAMPLES / 'design_loop.py'}:design_loop").fn.__globals__


@pytest.fixture(scope="session")
def tiny_esm(tmp_path_factory: pytest.TempPathFactory) -> str:
    return esm_scoring["save_random_esm"](tmp_path_factory.mktemp("esm") / "tiny", preset="tiny", seed=1)


def _states(home: Path, run_id: str) -> dict[str, list[str]]:
    store = open_store(f"sqlite:///{home / 'gflow.db'}")
    try:
        out: dict[str, list[str]] = {}
        for rec in store.task_runs(run_id):
            out.setdefault(rec.task.split(":")[-1].split(".")[-1], []).append(str(rec.state.value))
        return out
    finally:
        store.close()


def _naive_pll(folder: str, sequence: str) -> float:
    from transformers import AutoTokenizer, EsmForMaskedLM

    tok = AutoTokenizer.from_pretrained(folder)
    net = EsmForMaskedLM.from_pretrained(folder).eval()
    ids = tok([sequence], return_tensors="pt")["input_ids"]
    total = 0.0
    with torch.no_grad():
        for pos in range(1, len(sequence) + 1):
            masked = ids.clone()
            masked[0, pos] = tok.mask_token_id
            total += float(net(input_ids=masked).logits[0, pos].log_softmax(-1)[ids[0, pos]])
    return total


def test_score_fasta(tiny_esm: str, gflow_home: Path) -> None:
    flow = load_target(f"{EXAMPLES / 'esm_scoring.py'}:score_fasta")
    result = run_flow(flow, str(FASTA), model=tiny_esm, batch_size=3)
    assert result.state is gflow.State.SUCCEEDED, result.error
    proteins = Protein.from_fasta(FASTA)
    scores = result.value
    assert [s.provenance["protein"] for s in scores] == [p.name for p in proteins]
    trp = next(i for i, p in enumerate(proteins) if p.name == "trp_cage")
    assert scores[trp].value == pytest.approx(_naive_pll(tiny_esm, proteins[trp].sequence), abs=1e-3)
    for p, s in zip(proteins, scores, strict=True):
        assert float(s.provenance["pll_per_residue"]) == pytest.approx(s.value / len(p), abs=1e-5)
        assert s.provenance["protein_id"] == p.content_id
    embedding = esm_scoring["load_embedding"](scores[0])
    assert embedding.shape == (32,) and torch.isfinite(embedding).all()
    states = _states(gflow_home, result.id)
    assert states == {"score_proteins": ["SUCCEEDED"] * len(proteins)}  # one task run per protein
    again = run_flow(flow, str(FASTA), model=tiny_esm, batch_size=3)
    assert again.value == scores
    assert set(_states(gflow_home, again.id)["score_proteins"]) == {"CACHED"}


def test_score_fasta_bad_input_fails_before_work(tiny_esm: str, tmp_path: Path, gflow_home: Path) -> None:
    flow = load_target(f"{EXAMPLES / 'esm_scoring.py'}:score_fasta")
    bad = tmp_path / "bad.fasta"
    bad.write_text(">ok\nMKT\n>broken\nMK1T\n")
    result = run_flow(flow, str(bad), model=tiny_esm)
    assert result.state is gflow.State.FAILED
    assert "FASTA record 'broken' (record 2, line 3): invalid residue '1'" in str(result.error)
    assert _states(gflow_home, result.id) == {}
    no_weights = tmp_path / "empty-model"
    no_weights.mkdir()
    (no_weights / "config.json").write_text("{}")
    result = run_flow(flow, str(FASTA), model=str(no_weights))
    assert "has no weights" in str(result.error) and _states(gflow_home, result.id) == {}


def test_precalc_chunks_sample_and_rerun(tiny_esm: str, gflow_home: Path) -> None:
    flow = load_target(f"{EXAMPLES / 'precalc.py'}:precalc")
    small = run_flow(flow, str(LIBRARY), tiny_esm, sample=10, workers=50)
    assert small.state is gflow.State.SUCCEEDED, small.error
    assert small.value.entries == 10 and len(small.value.chunks) == 10  # never an empty worker
    full = run_flow(flow, str(LIBRARY), tiny_esm, workers=5)
    res = full.value
    assert [len(c.predictions) for c in res.chunks] == [13, 13, 13, 13, 12]
    keys = [line.split(",")[0] for line in LIBRARY.read_text().splitlines()[1:]]
    assert [p.key for p in res.predictions()] == keys
    assert all(p.model == res.model and p.score < 0 for p in res.predictions())
    assert res.lookup("trp_cage") is not None and res.lookup("nope") is None
    rerun = run_flow(flow, str(LIBRARY), tiny_esm, workers=5)
    assert rerun.value == res
    assert set(_states(gflow_home, rerun.id)["predict_entries"]) == {"CACHED"}  # nothing recomputed
    assert len(_states(gflow_home, rerun.id)["predict_entries"]) == 64  # one task run per entry
    # the predictions are a queryable table: by model and input key, through GraphQL as well
    table = gflow.tables.rows("predictions", {"model": res.model, "key": "trp_cage"})
    assert [(r["key"], r["score"], r["_run_id"]) for r in table] == [
        ("trp_cage", res.lookup("trp_cage").score, rerun.id)]
    pytest.importorskip("strawberry")
    from gflow.server.app import create_app
    from gflow.server.testing import serve
    from gflow.store import open_store

    with serve(create_app(open_store(f"sqlite:///{gflow_home / 'gflow.db'}"), close_store=True)) as url:
        import httpx

        q = "query($m: String!, $k: [String!]) { predictions(model: $m, keys: $k) { key score runId } }"
        got = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"m": res.model, "k": ["trp_cage", "nope"]}})
        assert got.json()["data"]["predictions"] == [
            {"key": "trp_cage", "score": res.lookup("trp_cage").score, "runId": rerun.id}]
        # the model's name finds the same rows as its digest (issue 22 item 7); an unknown name is one line
        by_name = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"m": res.model_name, "k": ["trp_cage"]}})
        assert by_name.json()["data"]["predictions"] == got.json()["data"]["predictions"]
        bad = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"m": "no-such-model"}}).json()
        assert bad["errors"][0]["message"].startswith("no model named 'no-such-model' is recorded")
        # tableRows pages like every other list: {items nextCursor hasNextPage}
        tq = "query($a: String) { tableRows(table: \"predictions\", first: 40, after: $a) { items nextCursor } }"
        page = httpx.post(f"{url}/graphql", json={"query": tq, "variables": {"a": None}}).json()["data"]["tableRows"]
        assert len(page["items"]) == 40 and page["nextCursor"]
        rest = httpx.post(f"{url}/graphql", json={"query": tq, "variables": {"a": page["nextCursor"]}}).json()
        last = rest["data"]["tableRows"]
        assert len(page["items"]) + len(last["items"]) == 64 and last["nextCursor"] is None  # one row per (model, key)


def test_precalc_bad_input(tiny_esm: str, tmp_path: Path) -> None:
    flow = load_target(f"{EXAMPLES / 'precalc.py'}:precalc")
    too_many = run_flow(flow, str(LIBRARY), tiny_esm, sample=1000)
    assert "sample=1000 is larger than the library (64 entries)" in str(too_many.error)
    lib = tmp_path / "lib.csv"
    lib.write_text("id,sequence\na,MKT\nb,MKTQ\na,MK\n")
    assert "line 4: id 'a' repeats line 2" in str(run_flow(flow, str(lib), tiny_esm).error)
    lib.write_text("id,sequence\na,MKT\nb,MK-T\n")
    assert "line 3: invalid residue '-'" in str(run_flow(flow, str(lib), tiny_esm).error)
    lib.write_text("name,seq\na,MKT\n")
    assert "needs 'id' and 'sequence' columns" in str(run_flow(flow, str(lib), tiny_esm).error)
    prediction = precalc_mod["Prediction"]
    with pytest.raises(ValueError):
        prediction(key="a", model="m", score=float("nan"), length=3)


def test_design_loop_rounds_lineage_and_summary(tiny_esm: str, tmp_path: Path) -> None:
    flow = load_target(f"{EXAMPLES / 'design_loop.py'}:design_loop")
    parent = Protein(sequence="NLYIQWLKDGGPSSGRPPPS", name="trpcage")
    result = run_flow(flow, parent, rounds=2, per_round=6, model=tiny_esm, elite=2, out_dir=str(tmp_path / "out"))
    assert result.state is gflow.State.SUCCEEDED, result.error
    exp: Experiment = result.value
    assert len(exp.designs) == 1 + 2 * 6 and exp.designs[0].protein == parent
    finals: list[Design] = design_mod["final_designs"](exp)
    assert len(finals) == 2
    for design in finals:
        chain = exp.ancestors(design.content_id)
        assert len(chain) == 2 and chain[-1] == exp.designs[0].content_id  # back to the parent, round by round
        assert design.molecule is not None and design.score("esm2_pll") is not None
    png = Path(str(exp.metadata["summary_png"]))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert exp.description and exp.description.count("\n") == 2
    header, *rows = (line.split("\t") for line in exp.description.splitlines())
    assert header == ["round", "designs", "passed", "elite_top_pll", "max_pll", "mean_pll"]
    for row in rows:  # the columns hold what they are named for: the top elite never beats the round's best
        assert float(row[3]) <= float(row[4]) and float(row[5]) <= float(row[4])


def test_design_loop_stages_have_their_own_images() -> None:
    images = {name: design_mod[name].options.image for name in ("score_batch", "developability", "summary_png")}
    assert images["score_batch"] is esm_scoring["ESM_IMAGE"]
    assert "torch==2.13.0" in images["score_batch"].packages and "rdkit" in images["developability"].packages
    assert len({img.model_dump_json() for img in images.values()}) == 3
    assert design_mod["propose"].options.image is None  # the flow's plain image
