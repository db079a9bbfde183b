"""Images without an engine: tags, contexts, ignore rules, locks, the worker protocol, the CLI's dry run."""

from __future__ import annotations

import importlib
import io
import json
import os
import shutil
import sys
import tarfile
import textwrap
import time
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest
from conftest import cli
from pydantic import ValidationError

from gflow.artifacts import LocalArtifactStore
from gflow.executors.base import Call
from gflow.images import Image, LockError, UnpinnedDependency
from gflow.images.context import render
from gflow.images.ignore import IgnoreRules, walk
from gflow.images.lock import LockEntry, parse_lock
from gflow.images.protocol import read_outcome, write_array_spec, write_call_spec
from gflow.images.worker import run_spec


def gflow_lock_text(*extra: str) -> str:
    """A lock that covers gflow's own requirements (host versions; fake hashes: nothing is fetched)."""
    names = ["pydantic", "rich", "click", *extra]
    return "".join(f"{n}=={installed_version(n)} --hash=sha256:{'0' * 64}\n" for n in names)


def make_project(root: Path, files: dict[str, str], lock: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    (root / "gflow.lock").write_text(lock if lock is not None else gflow_lock_text())
    return root


def tag_of(root: Path, image: Image | None = None, **kw) -> str:
    image = image or Image(base="base:1", lock="gflow.lock")
    return render(image, name="gflow-t", base_dir=str(root), **kw).tag


FLOW = textwrap.dedent('''
    import gflow
    from gflow.images import Image

    @gflow.task
    def double(x: int) -> int:
        return 2 * x

    @gflow.flow(image=Image(base="base:1", lock="gflow.lock"))
    def twice(x: int = 3) -> int:
        return double(x)
''')


# -- the Image spec ------------------------------------------------------------------------------------
def test_image_is_frozen_and_validated():
    img = Image(packages=["numpy==2.1.0", "scipy"], env={"B": "2", "A": "1"})
    with pytest.raises(ValidationError):
        img.base = "other"  # type: ignore[misc]
    assert list(img.env) == ["A", "B"]
    with pytest.raises(UnpinnedDependency, match="git=VERSION|name=version"):
        Image(apt_packages=["git"])
    assert Image(apt_packages=["git=1:2.39.5-0+deb12u2"]).apt_packages == ("git=1:2.39.5-0+deb12u2",)
    with pytest.raises(ValidationError, match="packages"):
        Image(packages=["-e ."])
    with pytest.raises(ValidationError, match="env"):
        Image(env={"1BAD": "x"})
    assert Image(python_packages=["six"]).packages == ("six",)


def test_with_helpers_copy():
    img = Image(base="a")
    img2 = img.with_packages("six==1.17.0").with_env(X="1").with_code("src").with_base("b").with_lock("l")
    assert img.packages == () and img.env == {} and img.base == "a"
    assert img2.packages == ("six==1.17.0",) and img2.env == {"X": "1"} and img2.code == ("src",)
    assert (img2.base, img2.lock) == ("b", "l")
    assert hash(img2) == hash(Image.model_validate(img2.model_dump()))


# -- tags ----------------------------------------------------------------------------------------------
def test_tag_is_deterministic_and_path_independent(tmp_path):
    a = make_project(tmp_path / "a" / "proj", {"flow.py": FLOW, "pkg/__init__.py": "", "pkg/m.py": "X = 1\n"})
    t1 = tag_of(a)
    assert t1 == tag_of(a)
    assert t1.startswith("gflow-t:") and len(t1.split(":")[1]) == 16
    b = tmp_path / "elsewhere" / "proj"
    shutil.copytree(a, b)
    os.utime(b / "flow.py", (1, 1))
    os.chmod(b / "pkg" / "m.py", 0o600)  # only the exec bit is part of the hash
    assert tag_of(b) == t1
    os.chmod(b / "pkg" / "m.py", 0o755)
    assert tag_of(b) != t1


def test_any_code_dependency_or_env_change_changes_the_tag(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    base = tag_of(p)
    (p / "flow.py").write_text(FLOW.replace("2 * x", "3 * x"))
    code_changed = tag_of(p)
    assert code_changed != base
    (p / "gflow.lock").write_text(gflow_lock_text() + f"six==1.16.0 --hash=sha256:{'0' * 64}\n")  # a new dependency
    dep_changed = tag_of(p)
    assert dep_changed not in (base, code_changed)
    assert tag_of(p, Image(base="base:1", lock="gflow.lock", env={"A": "1"})) != dep_changed
    assert tag_of(p, Image(base="base:2", lock="gflow.lock")) != dep_changed


def test_lock_formatting_does_not_change_the_tag(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    t = tag_of(p)
    lines = gflow_lock_text().splitlines()
    (p / "gflow.lock").write_text("# a comment\n\n" + "\n".join(reversed(lines)).replace("pydantic", "Pydantic") + "\n")
    assert tag_of(p) == t


def test_gitignore_and_dockerignore_are_respected(tmp_path):
    p = make_project(tmp_path / "proj", {
        "flow.py": FLOW, ".gitignore": "*.log\nbuild/\n!keep.log\n", ".dockerignore": "data\n",
        "sub/.gitignore": "local.txt\n", "sub/local.txt": "x", "sub/kept.txt": "y",
        "a.log": "log", "keep.log": "kept", "build/out.bin": "o", "data/big.csv": "1,2",
        "sub/data/nested.csv": "kept: .dockerignore patterns are anchored at the root",
        "__pycache__/flow.cpython-311.pyc": "", ".git/HEAD": "ref"})
    files = [rel for rel, _ in walk(str(p))]
    assert files == [".dockerignore", ".gitignore", "flow.py", "gflow.lock", "keep.log", "sub/.gitignore",
                     "sub/data/nested.csv", "sub/kept.txt"]
    t = tag_of(p)
    for ignored in ("a.log", "build/out.bin", "data/big.csv", "sub/local.txt", "__pycache__/flow.cpython-311.pyc"):
        (p / ignored).write_text("changed")
    (p / "build" / "new.bin").write_text("new")
    assert tag_of(p) == t
    (p / "keep.log").write_text("changed")
    assert tag_of(p) != t


def test_ignore_rule_semantics():
    r = IgnoreRules(())
    for line in ("*.tmp", "/only-top", "docs/*.md", "a/**/z", "cache/", "# comment", "", "!important.tmp"):
        r.add_line(line)
    assert r.ignored("x.tmp", False) and r.ignored("deep/x.tmp", False) and not r.ignored("important.tmp", False)
    assert r.ignored("only-top", False) and not r.ignored("sub/only-top", False)
    assert r.ignored("docs/a.md", False) and not r.ignored("docs/sub/a.md", False)
    assert r.ignored("a/z", False) and r.ignored("a/b/c/z", False)
    assert r.ignored("x/cache", True) and not r.ignored("x/cache", False)


def test_tag_of_a_thousand_files_is_fast(tmp_path):
    files = {f"pkg{i // 100}/mod{i % 100}.py": f"VALUE = {i}\n" * 20 for i in range(1000)}
    files.update({f"pkg{j}/__init__.py": "" for j in range(10)})
    p = make_project(tmp_path / "proj", {"flow.py": FLOW, **files})
    tag_of(p)  # warm the file cache and imports
    t0 = time.perf_counter()
    ctx = render(Image(base="base:1", lock="gflow.lock"), name="gflow-t", base_dir=str(p))
    elapsed = time.perf_counter() - t0
    assert len(ctx.code) >= 1010
    assert elapsed < 0.5, f"tag of a 1,000-file project took {elapsed:.3f}s"


def test_context_layers_code_last_and_dev_mode_leaves_code_out(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    image = Image(base="base:1", lock="gflow.lock", env={"A": "1"})
    ctx = render(image, name="gflow-t", base_dir=str(p))
    df = ctx.dockerfile.splitlines()
    order = [next(i for i, ln in enumerate(df) if ln.startswith(prefix)) for prefix in (
        "FROM base:1", "RUN python3 -m venv", "COPY requirements.lock", "COPY wheels/gflow/", 'ENV A="1"',
        "COPY code/")]
    assert order == sorted(order)
    assert "--require-hashes" in ctx.dockerfile and "--no-index" in ctx.dockerfile
    dev = render(image, name="gflow-t-deps", base_dir=str(p), dev=True)
    assert "COPY code/" not in dev.dockerfile and not any(f.path.startswith("code/") for f in dev.files)
    (p / "flow.py").write_text(FLOW.replace("2 * x", "5 * x"))
    dev2 = render(image, name="gflow-t-deps", base_dir=str(p), dev=True)
    assert dev2.tag == dev.tag  # the deps-only image does not depend on the code ...
    assert dev2.bundle() != dev.bundle()  # ... the bundle does
    assert dev2.bundle() == render(image, name="x", base_dir=str(p), dev=True).bundle()
    with tarfile.open(fileobj=io.BytesIO(dev2.bundle())) as tar:
        names = tar.getnames()
    assert names[0] == "gflow-bundle.json" and "code/proj/flow.py" in names


def test_context_tar_is_reproducible(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    ctx = render(Image(base="base:1", lock="gflow.lock"), name="gflow-t", base_dir=str(p))
    a, b = io.BytesIO(), io.BytesIO()
    ctx.write_tar(a)
    os.utime(p / "flow.py", (5, 5))
    ctx.write_tar(b)
    assert a.getvalue() == b.getvalue()
    from gflow.images.wheel import gflow_wheel

    assert gflow_wheel() == gflow_wheel()


# -- locks ---------------------------------------------------------------------------------------------
def test_lock_needs_exact_pins():
    with pytest.raises(UnpinnedDependency, match="line 2.*six>=1"):
        parse_lock("click==8.1.7\nsix>=1\n", "my.lock")
    lock = parse_lock("Six==1.17.0 \\\n    --hash=sha256:abc\n# comment\nclick===8.1.7\n")
    assert lock.entries == (LockEntry("click", "8.1.7"), LockEntry("six", "1.17.0", ("sha256:abc",)))
    assert not lock.hashed


def test_a_stale_lock_file_is_refused(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    with pytest.raises(LockError, match="'six==1.17.0' is missing"):
        tag_of(p, Image(base="b", lock="gflow.lock", packages=["six==1.17.0"]))
    (p / "gflow.lock").write_text(gflow_lock_text() + "six==1.16.0\n")
    with pytest.raises(LockError, match="locked at 1.16.0"):
        tag_of(p, Image(base="b", lock="gflow.lock", packages=["six==1.17.0"]))
    assert tag_of(p, Image(base="b", lock="gflow.lock", packages=["six>=1.10"]))


def test_unpinned_packages_resolve_to_an_exact_lock(tmp_path, monkeypatch):
    """Resolution is pip's job (needs the index); stand it in and check what happens around it."""
    from gflow.images import lock as lock_mod

    calls = []

    def fake_resolve(requirements, target, requirements_file=None, constraints=()):
        calls.append(list(requirements))
        return parse_lock(gflow_lock_text() + "six==1.17.0 --hash=sha256:2\n")

    monkeypatch.setattr(lock_mod, "resolve", fake_resolve)
    monkeypatch.setenv("GFLOW_CACHE", str(tmp_path / "cache"))
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    (p / "gflow.lock").unlink()
    img = Image(base="b", packages=["six"], lock="gflow.lock")
    t1 = tag_of(p, img)
    assert (p / "gflow.lock").read_text().endswith("six==1.17.0 --hash=sha256:2\n")
    assert tag_of(p, img) == t1 and len(calls) == 1  # the written lock is used from now on
    cached = Image(base="b", packages=["six"])
    t2 = tag_of(p, cached)
    assert tag_of(p, cached) == t2 and len(calls) == 2  # the per-request cache
    assert list((tmp_path / "cache" / "locks").iterdir())


# -- the worker protocol -------------------------------------------------------------------------------
def _call(task, *args, **kwargs) -> Call:
    return Call("run-1.1", "run-1", task, args, kwargs, attempt=1)


def test_worker_runs_a_call_and_writes_its_outcome(tmp_path):
    from flows_basic import add

    arts = LocalArtifactStore(tmp_path / "arts")
    spec = write_call_spec(arts, _call(add, 2, 3), image="gflow-x:1")
    assert read_outcome(arts, spec) is None
    assert run_spec(arts, spec) == 0
    rec = read_outcome(arts, spec)
    assert rec["ok"] and rec["kind"] == "gflow.outcome/v1" and rec["task"] == add.identity
    from gflow.serialization import decode

    assert decode(arts.get(rec["result"])) == 5
    stored = json.loads(arts.get(spec))
    assert stored["kind"] == "gflow.call/v1" and stored["version"] == add.version and stored["image"] == "gflow-x:1"


def test_worker_reports_task_errors_and_version_mismatch(tmp_path):
    from flows_basic import add, boom

    arts = LocalArtifactStore(tmp_path / "arts")
    spec = write_call_spec(arts, _call(boom, 7))
    assert run_spec(arts, spec) == 1
    rec = read_outcome(arts, spec)
    assert not rec["ok"] and rec["stage"] == "run" and rec["error_type"] == "ValueError"
    assert "7" in rec["error_message"] and "Traceback" in rec["traceback"]
    stale = add.with_options(version="0000")
    spec = write_call_spec(arts, _call(stale, 1, 2))
    assert run_spec(arts, spec) == 2
    rec = read_outcome(arts, spec)
    assert rec["stage"] == "import" and rec["error_type"] == "gflow.images.errors.TaskVersionMismatch"
    assert "version" in rec["error_message"] and "0000" in rec["error_message"]


def test_worker_array_index_from_flag_or_environment(tmp_path, monkeypatch):
    from flows_basic import add

    arts = LocalArtifactStore(tmp_path / "arts")
    specs = [write_call_spec(arts, Call(f"r.{i}", "r", add, (i, 10), {})) for i in range(3)]
    array = write_array_spec(arts, specs)
    assert run_spec(arts, array, None) == 2  # no index: a worker error
    from gflow.images.worker import array_index

    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "1")
    assert run_spec(arts, array, array_index()) == 0
    monkeypatch.delenv("AWS_BATCH_JOB_ARRAY_INDEX")
    monkeypatch.setenv("VC_TASK_INDEX", "2")
    assert run_spec(arts, array, array_index()) == 0
    assert run_spec(arts, array, array_index(0)) == 0
    from gflow.serialization import decode

    assert [decode(arts.get(read_outcome(arts, s)["result"])) for s in specs] == [10, 11, 12]
    assert run_spec(arts, array, 7) == 2


def test_worker_cli_and_bundle(tmp_path):
    """`gflow worker` in a subprocess, with the task's code only in a dev-mode bundle."""
    proj = make_project(tmp_path / "bundled_proj", {"bundled_tasks.py": textwrap.dedent('''
        import gflow

        @gflow.task
        def shout(word: str) -> str:
            return word.upper() + "!"
    ''')})
    sys.path.insert(0, str(proj))
    try:
        mod = importlib.import_module("bundled_tasks")
    finally:
        sys.path.remove(str(proj))
        sys.modules.pop("bundled_tasks", None)
    ctx = render(Image(base="b", lock="gflow.lock"), name="x", base_dir=str(proj), dev=True)
    arts = LocalArtifactStore(tmp_path / "arts")
    bundle = arts.put(ctx.bundle())
    spec = write_call_spec(arts, _call(mod.shout, "hey"), bundle=bundle)
    shutil.rmtree(proj)  # the worker gets the code from the bundle only
    res = cli("worker", spec, "--artifacts", arts.url)
    assert res.returncode == 0, res.stderr
    from gflow.serialization import decode

    assert decode(arts.get(read_outcome(arts, spec)["result"])) == "HEY!"
    res = cli("worker", "sha256:" + "1" * 64, "--artifacts", arts.url)
    assert res.returncode == 2 and "missing" in res.stderr


# -- the CLI without an engine ---------------------------------------------------------------------------
def test_build_dry_run_prints_the_tag(tmp_path):
    p = make_project(tmp_path / "proj", {"flow.py": FLOW})
    from gflow._loader import load_target
    from gflow.flows import Flow
    from gflow.images.context import flow_context

    expected = flow_context(load_target(f"{p}/flow.py:twice", Flow)).tag
    res = cli("build", f"{p}/flow.py:twice", "--dry-run", "--context-out", str(tmp_path / "ctx"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == expected
    assert (tmp_path / "ctx" / "Dockerfile").is_file() and (tmp_path / "ctx" / "code" / "proj" / "flow.py").is_file()
    res = cli("build", f"{p}/flow.py:twice", "--dry-run", "--push", "registry.example:5000")
    assert res.stdout.strip() == f"registry.example:5000/{expected}"


def test_replay_of_an_unknown_run_is_a_clear_error():
    res = cli("replay", "no-such-run")
    assert res.returncode == 1
    assert "no run 'no-such-run'" in res.stderr


def test_docker_executor_spec():
    from gflow.errors import ConfigError
    from gflow.executors import get_executor
    from gflow.executors.docker import DockerExecutor, split_image_record

    ex = get_executor("docker://?image=gflow-x:1&dev=1&max=3&network=host&host=unix:///tmp/d.sock")
    try:
        assert isinstance(ex, DockerExecutor)
        assert (ex.image, ex.dev, ex.max_containers, ex.network, ex.base_url) == (
            "gflow-x:1", True, 3, "host", "unix:///tmp/d.sock")
    finally:
        ex.close()
    with pytest.raises(ConfigError, match="unknown options"):
        get_executor("docker://?imgae=x")
    assert split_image_record("gflow-x:1#bundle=sha256:ab") == ("gflow-x:1", "sha256:ab")
    assert split_image_record("gflow-x:1") == ("gflow-x:1", None)
