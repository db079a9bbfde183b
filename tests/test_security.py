"""Issue 9 §1: decoding stored data never runs code; pickle only signed and only for tasks that opted in.

Each test here reproduces an exploit or a hostile value found by probing (they fail on the code before
the fix) and asserts what gflow does now: a typed gflow error, and nothing executed.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
import sys
import textwrap

import pytest
from conftest import cli

import gflow
from gflow.artifacts import LocalArtifactStore
from gflow.errors import ArtifactCorrupt, ArtifactNotFound, SerializationError
from gflow.executors.base import Call
from gflow.images.protocol import outcome_slot, read_outcome, to_outcome, write_call_spec
from gflow.images.worker import run_spec
from gflow.serialization import TAG, decode, encode, from_jsonable

KEY = "k" * 32


def _no_blobs(d):
    raise AssertionError(f"no blob expected, asked for {d}")


def _exploit(tmp_path, tag: str, target: str) -> tuple[dict, object]:
    """A stored value naming a callable that would leave a file behind if it ran."""
    marker = tmp_path / f"pwned-{tag}-{target.replace(':', '_')}"
    cmd = f"touch {marker}"
    if tag == "enum":
        return {TAG: "enum", "type": target, "v": cmd}, marker
    if tag == "model":
        return {TAG: "model", "type": target, "data": cmd}, marker
    return {TAG: "dataclass", "type": target, "data": {"args": cmd}}, marker


@pytest.mark.parametrize("tag", ["enum", "model", "dataclass"])
@pytest.mark.parametrize("target", ["os:system", "subprocess:Popen", "builtins:eval", "subprocess:check_call",
                                    "os:popen", "builtins:exec"])
def test_a_stored_value_naming_a_callable_is_refused_and_nothing_runs(tmp_path, tag, target):
    tree, marker = _exploit(tmp_path, tag, target)
    with pytest.raises(SerializationError, match=target.split(":")[1]):
        from_jsonable(tree, _no_blobs)
    with pytest.raises(SerializationError):
        decode(json.dumps(tree))
    assert not marker.exists()


def test_enum_exploit_from_the_issue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = '{"__gflow__":"enum","type":"os:system","v":"id > pwned.txt"}'
    with pytest.raises(SerializationError, match="os:system.*not an Enum"):
        decode(text)
    assert not (tmp_path / "pwned.txt").exists()


def test_decoding_never_imports_a_module(tmp_path, monkeypatch):
    """Resolving ``module:qualname`` only looks in modules already imported: importing runs module code."""
    (tmp_path / "sidefx_mod.py").write_text(textwrap.dedent(f"""
        import enum, pathlib
        pathlib.Path({str(tmp_path / 'imported')!r}).touch()
        class Color(enum.Enum):
            RED = 1
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "sidefx_mod", raising=False)
    tree = {TAG: "enum", "type": "sidefx_mod:Color", "v": 1}
    with pytest.raises(SerializationError, match="sidefx_mod.*not imported"):
        from_jsonable(tree, _no_blobs)
    assert not (tmp_path / "imported").exists() and "sidefx_mod" not in sys.modules
    for path in ("antigravity:x", "this:s", "pip.__main__:x", "json.tool:main"):
        # another test (or a library) may have imported it already: forget it, so an import would show
        monkeypatch.delitem(sys.modules, path.partition(":")[0], raising=False)
        with pytest.raises(SerializationError):
            from_jsonable({TAG: "model", "type": path, "data": {}}, _no_blobs)
        assert path.partition(":")[0] not in sys.modules
    import sidefx_mod  # once the program itself imported it, its types decode

    assert from_jsonable(tree, _no_blobs) is sidefx_mod.Color.RED


def test_gflow_objects_resolve_without_a_prior_import():
    """gflow's own object modules are the one exception: known code, imported on demand."""
    import subprocess

    code = textwrap.dedent("""
        import sys
        from gflow.serialization import decode
        assert "gflow.objects.protein" not in sys.modules
        p = decode('{"__gflow__":"model","type":"gflow.objects.protein:Protein","data":{"sequence":"MKT"}}')
        print(type(p).__name__, p.sequence)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["Protein", "MKT"]


@dataclasses.dataclass
class Noisy:
    path: str
    derived: int = dataclasses.field(default=0, init=False)

    def __post_init__(self):
        with open(self.path, "a") as f:
            f.write("post-init ran\n")


def test_dataclasses_are_restored_without_running_their_init(tmp_path):
    target = tmp_path / "written-by-post-init"
    tree = {TAG: "dataclass", "type": f"{__name__}:Noisy", "data": {"path": str(target), "derived": 7}}
    back = from_jsonable(tree, _no_blobs)
    assert type(back) is Noisy and back.path == str(target) and back.derived == 7  # init=False fields too
    assert not target.exists()
    with pytest.raises(SerializationError, match="no field 'nope'"):
        from_jsonable({TAG: "dataclass", "type": f"{__name__}:Noisy", "data": {"nope": 1}}, _no_blobs)


@dataclasses.dataclass
class Cleanup:
    path: str

    def __del__(self):
        import os

        if os.path.exists(self.path):
            os.unlink(self.path)


def test_types_with_finalizers_are_never_constructed(tmp_path):
    keep = tmp_path / "precious"
    keep.write_text("data")
    with pytest.raises(SerializationError, match="__del__"):
        from_jsonable({TAG: "dataclass", "type": f"{__name__}:Cleanup", "data": {"path": str(keep)}}, _no_blobs)
    import gc

    gc.collect()
    assert keep.exists()


def test_dunder_and_private_lookups_are_refused():
    for path in ("os:system.__globals__", f"{__name__}:Noisy.__init__.__globals__", "gflow:__builtins__",
                 "os:path.os.system", "builtins:__import__"):
        with pytest.raises(SerializationError):
            from_jsonable({TAG: "enum", "type": path, "v": "x"}, _no_blobs)


# -- pickle: only for tasks that opted in, only signed --------------------------------------------------------
class Opaque:
    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return type(other) is Opaque and other.n == self.n


def _evil_pickle(marker) -> bytes:
    class _P:
        def __reduce__(self):
            return (eval, (f"open({str(marker)!r}, 'w').close()",))

    return pickle.dumps(_P())


def test_pickle_is_refused_unless_the_caller_allows_it(tmp_path):
    marker = tmp_path / "unpickled"
    raw = _evil_pickle(marker)
    digest = gflow.artifacts.digest_of(raw)
    tree = {TAG: "pickle", "blob": digest}
    with pytest.raises(SerializationError, match="pickle"):
        decode(json.dumps(tree), {digest: raw}.__getitem__)
    assert not marker.exists()


def test_unsigned_or_tampered_pickle_is_refused_even_when_allowed(tmp_path):
    marker = tmp_path / "unpickled"
    raw = _evil_pickle(marker)
    digest = gflow.artifacts.digest_of(raw)
    blobs = {digest: raw}
    with pytest.raises(SerializationError, match="not signed"):
        decode(json.dumps({TAG: "pickle", "blob": digest}), blobs.__getitem__, allow_pickle=True, signing_key=KEY)
    from gflow._signing import sign

    forged = sign(digest, key="another key, not ours, 32 bytes!")
    with pytest.raises(SerializationError, match="signature"):
        decode(json.dumps({TAG: "pickle", "blob": digest, "sig": forged}), blobs.__getitem__, allow_pickle=True,
               signing_key=KEY)
    assert not marker.exists()
    # a valid signature over one blob does not cover another blob swapped in under the same digest
    good = encode(Opaque(3), allow_pickle=True, signing_key=KEY)
    (d,) = good.blobs
    with pytest.raises(SerializationError, match="does not match its digest"):
        decode(good.data, {d: raw}.__getitem__, allow_pickle=True, signing_key=KEY)
    assert not marker.exists()


def test_signed_pickle_round_trips():
    e = encode({"x": Opaque(5)}, allow_pickle=True, signing_key=KEY)
    assert b'"sig":"hmac-sha256:' in e.data
    assert decode(e.data, e.blobs.__getitem__, allow_pickle=True, signing_key=KEY) == {"x": Opaque(5)}
    with pytest.raises(SerializationError, match="pickle"):
        decode(e.data, e.blobs.__getitem__)  # the default is safe: no pickle


def test_default_signing_key_is_per_home_and_private(gflow_home, monkeypatch):
    from gflow._signing import signing_key

    monkeypatch.delenv("GFLOW_SIGNING_KEY", raising=False)
    key = signing_key()
    path = gflow_home / "signing.key"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600 and len(key) >= 32
    assert signing_key() == key
    monkeypatch.setenv("GFLOW_SIGNING_KEY", KEY)
    assert signing_key() == KEY.encode()
    monkeypatch.setenv("GFLOW_SIGNING_KEY", "short")
    with pytest.raises(gflow.ConfigError, match="GFLOW_SIGNING_KEY.*at least"):
        signing_key()
    monkeypatch.delenv("GFLOW_SIGNING_KEY")
    from gflow import _signing

    _signing.configure("p" * 40)  # a profile's signing_key
    try:
        assert signing_key() == b"p" * 40
        monkeypatch.setenv("GFLOW_SIGNING_KEY", KEY)  # the environment wins, as for every profile setting
        assert signing_key() == KEY.encode()
        monkeypatch.delenv("GFLOW_SIGNING_KEY")
    finally:
        _signing.configure(None)
    assert signing_key() == key
    path.chmod(0o644)
    with pytest.raises(gflow.ConfigError, match="chmod 600"):
        signing_key()


# -- the cache: a rewritten stored result runs nothing ----------------------------------------------------
def test_rewritten_cached_result_in_sqlite_runs_nothing(tmp_path, gflow_home, monkeypatch):
    import flows_basic as fb

    monkeypatch.chdir(tmp_path)
    work = tmp_path / "w"
    work.mkdir()

    @gflow.task(cache=True)
    def seven(n: int) -> int:
        fb.bump(str(work), "seven")
        return 7 * n

    @gflow.flow
    def f() -> int:
        return seven(1).result()

    assert f.run(executor="inline") == 7
    db = sqlite3.connect(gflow_home / "gflow.db")
    exploit = '{"__gflow__":"enum","type":"os:system","v":"id > pwned.txt"}'
    n = db.execute("UPDATE task_runs SET result_inline = ? WHERE result_inline IS NOT NULL", (exploit,)).rowcount
    db.commit()
    db.close()
    assert n >= 1
    assert f.run(executor="inline") == 7  # the unreadable cache entry is recomputed
    assert not (tmp_path / "pwned.txt").exists()
    assert fb.count(str(work), "seven") == 2


# -- artifacts are verified against their digest ---------------------------------------------------------
def test_a_blob_that_does_not_match_its_digest_is_refused(tmp_path):
    arts = LocalArtifactStore(tmp_path / "a")
    d = arts.put(b"the real content")
    with open(arts.path(d), "wb") as f:
        f.write(b"something else")
    with pytest.raises(ArtifactCorrupt, match=f"{d}.*{arts.url}"):
        arts.get(d)
    with pytest.raises(ArtifactNotFound):  # a corrupt blob is a missing blob to callers that recompute
        arts.get(d)
    with pytest.raises(ArtifactCorrupt, match="hashes to"):
        arts.put(b"x", "sha256:" + "0" * 64)


def test_outcome_slots_are_named_not_content_addressed(tmp_path):
    arts = LocalArtifactStore(tmp_path / "a")
    slot = outcome_slot("sha256:" + "1" * 64)
    assert arts.get_slot(slot) is None
    arts.put_slot(slot, b'{"first":1}')
    arts.put_slot(slot, b'{"second":2}')  # a later attempt's record replaces it
    assert arts.get_slot(slot) == b'{"second":2}'
    with pytest.raises(ArtifactCorrupt):  # a slot is not a blob: get() verifies and refuses it
        arts.get(slot)


# -- the worker: the same rules ----------------------------------------------------------------------------
@pytest.fixture
def pickle_tasks(tmp_path, monkeypatch):
    (tmp_path / "pickle_tasks.py").write_text(textwrap.dedent("""
        import gflow

        class Box:
            def __init__(self, n):
                self.n = n

        @gflow.task(pickle=True)
        def unbox(b) -> int:
            return b.n

        @gflow.task(pickle=True)
        def box(n: int):
            return Box(n)

        @gflow.task
        def plain(b) -> str:
            return repr(b)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GFLOW_SIGNING_KEY", KEY)
    import pickle_tasks

    yield pickle_tasks
    sys.modules.pop("pickle_tasks", None)


def _spec_with_inputs(arts, task, inputs_tree: dict, blobs: dict, *, pickle_flag: bool) -> str:
    from gflow.serialization import canonical_json

    arts.put_many(blobs)
    inputs = arts.put(canonical_json(inputs_tree).encode())
    spec = {"kind": "gflow.call/v1", "task": task.identity, "version": task.version, "name": task.name,
            "inputs": inputs, "pickle": pickle_flag, "run_id": "r", "call_id": "r.1", "attempt": 1, "key": None,
            "image": None, "bundle": None, "gflow": gflow.__version__}
    return arts.put(canonical_json(spec).encode())


def test_worker_refuses_a_pickle_payload_when_the_spec_says_no_pickle(tmp_path, pickle_tasks):
    marker = tmp_path / "unpickled"
    raw = _evil_pickle(marker)
    arts = LocalArtifactStore(tmp_path / "arts")
    digest = gflow.artifacts.digest_of(raw)
    from gflow._signing import sign

    tree = {"args": [{TAG: "pickle", "blob": digest, "sig": sign(digest, key=KEY)}], "kwargs": {}}
    spec = _spec_with_inputs(arts, pickle_tasks.plain, tree, {digest: raw}, pickle_flag=False)
    res = cli("worker", spec, "--artifacts", arts.url, env={"PYTHONPATH": str(tmp_path), "GFLOW_SIGNING_KEY": KEY})
    assert res.returncode == 2, res.stderr
    rec = read_outcome(arts, spec)
    assert rec["ok"] is False and rec["stage"] == "inputs"
    assert rec["error_type"] == "gflow.errors.SerializationError" and "pickle" in rec["error_message"]
    assert not marker.exists()
    # a spec claiming pickle for a task that did not opt in is refused too (the task's own code decides)
    spec = _spec_with_inputs(arts, pickle_tasks.plain, tree, {digest: raw}, pickle_flag=True)
    assert run_spec(arts, spec) == 2
    assert "pickle" in read_outcome(arts, spec)["error_message"] and not marker.exists()


def test_worker_refuses_unsigned_pickles_for_a_pickle_task(tmp_path, pickle_tasks):
    marker = tmp_path / "unpickled"
    raw = _evil_pickle(marker)
    arts = LocalArtifactStore(tmp_path / "arts")
    digest = gflow.artifacts.digest_of(raw)
    tree = {"args": [{TAG: "pickle", "blob": digest}], "kwargs": {}}
    spec = _spec_with_inputs(arts, pickle_tasks.unbox, tree, {digest: raw}, pickle_flag=True)
    assert run_spec(arts, spec) == 2
    rec = read_outcome(arts, spec)
    assert rec["stage"] == "inputs" and "not signed" in rec["error_message"] and not marker.exists()


def test_worker_runs_signed_pickles_for_a_pickle_task(tmp_path, pickle_tasks):
    arts = LocalArtifactStore(tmp_path / "arts")
    spec = write_call_spec(arts, Call("r.1", "r", pickle_tasks.unbox, (pickle_tasks.Box(4),), {}))
    assert run_spec(arts, spec) == 0
    assert to_outcome(arts, read_outcome(arts, spec), allow_pickle=True).value == 4
    spec = write_call_spec(arts, Call("r.2", "r", pickle_tasks.box, (9,), {}))
    assert run_spec(arts, spec) == 0
    rec = read_outcome(arts, spec)
    assert to_outcome(arts, rec, allow_pickle=True).value.n == 9
    refused = to_outcome(arts, rec)  # the driver decodes pickles only for the task that opted in
    assert not refused.ok and refused.error_type.endswith("SerializationError") and "pickle" in refused.error_message


def test_worker_never_imports_a_spec_module_that_is_not_a_task(tmp_path):
    arts = LocalArtifactStore(tmp_path / "arts")
    (tmp_path / "sidefx_worker.py").write_text(f"import pathlib\npathlib.Path({str(tmp_path / 'ran')!r}).touch()\n")
    for task_path in ("os:system", "builtins:eval", "sidefx_worker.__main__:x", "a b:c", "os:path.os.system"):
        spec = arts.put(json.dumps({"kind": "gflow.call/v1", "task": task_path, "version": "1", "inputs":
                                    "sha256:" + "0" * 64, "pickle": False}).encode())
        assert run_spec(arts, spec) == 2
        rec = read_outcome(arts, spec)
        assert rec["stage"] in ("spec", "import") and rec["error_type"].startswith("gflow.")
    assert not (tmp_path / "ran").exists()


def test_a_pickle_tasks_cached_result_is_reused(tmp_path, pickle_tasks):
    import flows_basic as fb

    work = tmp_path / "w"
    work.mkdir()
    box = pickle_tasks.box.with_options(cache=True)

    @gflow.flow
    def f() -> int:
        fb.bump(str(work), "flow")
        return box(3).result().n

    assert f.run(executor="inline") == 3
    assert f.run(executor="inline") == 3
    db = sqlite3.connect(gflow.config.gflow_home() / "gflow.db")
    states = [r[0] for r in db.execute("SELECT state FROM task_runs ORDER BY rowid")]
    db.close()
    assert states[-1] == "CACHED"
