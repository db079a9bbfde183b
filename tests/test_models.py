"""gflow.models: a folder becomes a Model artifact; its files are materialized once per host, under a lock."""

from __future__ import annotations

import json
import multiprocessing
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import gflow
from gflow.artifacts import LocalArtifactStore
from gflow.errors import ArtifactNotFound
from gflow.models import ModelError, dataset_from, from_dir, materialize, resolve_model, use_artifacts
from gflow.objects import Dataset, Model
from gflow.objects.model import FileEntry, manifest_digest
from gflow.serialization import decode, encode
from gflow.testing import run_flow


class CountingStore(LocalArtifactStore):
    """The real local store, counting reads (to show what is fetched, and how often)."""

    def __init__(self, root: str | Path) -> None:
        super().__init__(root)
        self.gets: list[str] = []

    def get(self, digest: str) -> bytes:
        self.gets.append(digest)
        return super().get(digest)


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my-model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text(json.dumps({"hidden": 8}))
    (d / "model.safetensors").write_bytes(bytes(range(256)) * 40)
    (d / "sub" / "vocab.txt").write_text("A\nC\n")
    return d


def test_from_dir_makes_an_artifact_model(model_dir: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "arts")
    m = from_dir(model_dir, artifacts=store)
    assert m.kind == "artifact" and m.name == "my-model"
    assert [f.path for f in m.files] == ["config.json", "model.safetensors", "sub/vocab.txt"]
    assert m.size == sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    assert m.source == manifest_digest(m.files)
    for f in m.files:
        assert store.get(f.digest) == (model_dir / f.path).read_bytes()
    assert decode(encode(m).data) == m
    assert from_dir(model_dir, artifacts=store) == m  # same files, same object, same cache keys
    assert resolve_model(m.source, artifacts=store).files == m.files  # a digest names the manifest blob


def test_bad_folders_and_objects_are_refused(tmp_path: Path, model_dir: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        from_dir(tmp_path / "missing")
    empty = tmp_path / "noweights"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="has no weights"):
        from_dir(empty)
    with pytest.raises(ValidationError, match="not the digest of the files"):
        Model(name="x", source="sha256:" + "0" * 64, files=(FileEntry(path="a", digest="sha256:" + "1" * 64, size=1),))
    with pytest.raises(ValidationError, match="must be relative"):
        FileEntry(path="../etc/passwd", digest="sha256:" + "1" * 64, size=1)
    with pytest.raises(ValidationError, match="neither an artifact digest"):
        Model(name="x", source="not a hub id!")


def test_hub_ids_come_from_the_local_cache_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not in the local Hugging Face cache.*never downloads"):
        resolve_model("facebook/esm2_t6_8M_UR50D")
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model("./no/such/model")


def test_materialize_fetches_once_and_verifies(model_dir: Path, tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "arts")
    m = from_dir(model_dir, artifacts=store)
    cache = tmp_path / "cache"
    first = materialize(m, artifacts=store, cache_dir=cache)
    assert sorted(store.gets) == sorted(f.digest for f in m.files)
    assert (first / "sub" / "vocab.txt").read_text() == "A\nC\n"
    for _ in range(3):
        assert materialize(m, artifacts=store, cache_dir=cache) == first
    assert len(store.gets) == len(m.files)  # never re-fetched per call
    assert from_dir(first, artifacts=store) == m.with_(name=first.name)  # the same bytes, the same manifest


def test_materialize_refuses_a_corrupt_or_missing_blob(model_dir: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "arts")
    m = from_dir(model_dir, artifacts=store)
    weights = m.file("model.safetensors")
    assert weights is not None
    Path(store.path(weights.digest)).write_bytes(b"tampered")
    with pytest.raises(ModelError, match="the artifact store is corrupt"):
        materialize(m, artifacts=store, cache_dir=tmp_path / "c1")
    assert not (tmp_path / "c1" / m.source.removeprefix("sha256:")).exists()  # nothing half-made is left
    Path(store.path(weights.digest)).unlink()
    with pytest.raises(ArtifactNotFound):
        materialize(m, artifacts=store, cache_dir=tmp_path / "c2")


def _worker(args: tuple[str, str, str]) -> int:
    arts, cache, model_json = args
    from gflow.models import materialize as mat
    from gflow.objects import Model as M

    store = CountingStore(arts)
    folder = mat(M.model_validate_json(model_json), artifacts=store, cache_dir=cache)
    assert (folder / "config.json").is_file()
    return len(store.gets)


def test_concurrent_processes_on_one_host_fetch_once(model_dir: Path, tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "arts")
    m = from_dir(model_dir, artifacts=store)
    args = (str(tmp_path / "arts"), str(tmp_path / "cache"), m.model_dump_json())
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        fetched = pool.map(_worker, [args] * 4)
    assert sum(fetched) == len(m.files)  # one process fetched; the others waited on the lock and reused it
    assert _worker(args) == 0  # a later process fetches nothing


@gflow.task(cache=True)
def read_config(model: Model) -> int:
    return int(json.loads((materialize(model) / "config.json").read_text())["hidden"])


@gflow.flow
def config_flow(path: str) -> int:
    return read_config(from_dir(path))  # made in the flow body: the run's artifact store


def test_a_task_taking_a_model_gets_its_files(model_dir: Path, gflow_home: Path) -> None:
    result = run_flow(config_flow, str(model_dir), executor="local://processes?workers=1")
    assert result.state is gflow.State.SUCCEEDED and result.value == 8


def test_dataset_from_a_file_and_use_artifacts(tmp_path: Path) -> None:
    lib = tmp_path / "lib.csv"
    lib.write_text("id,sequence\na,MKT\n")
    with use_artifacts(LocalArtifactStore(tmp_path / "arts")) as store:
        ds = dataset_from(lib)
        assert isinstance(ds, Dataset) and ds.format == "csv" and ds.size == lib.stat().st_size
        assert store.exists(ds.files[0].digest)
        folder = materialize(ds, cache_dir=tmp_path / "cache")
    assert (folder / "lib.csv").read_text() == lib.read_text()
    assert sys.modules["gflow.models"].cache_root().name == "models"
