"""Issue 16 (runtime faults found by probing): a bad setting found mid-run, a full state disk, private state
files, a killed driver while a worker holds the GIL. Figures: docs/RELIABILITY.md."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest
from conftest import cli

from gflow.errors import ConfigError
from gflow.states import State

KEY = "k" * 40


@pytest.fixture
def pickle_flow(tmp_path, monkeypatch):
    (tmp_path / "rt_pickle_flow.py").write_text(textwrap.dedent("""
        import gflow

        class Box:
            def __init__(self, n):
                self.n = n

        @gflow.task(pickle=True)
        def box(n: int):
            return Box(n)

        @gflow.task
        def plain(n: int) -> int:
            return n + 1

        @gflow.flow
        def boxed(n: int = 3):
            return box(plain(n))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    import rt_pickle_flow

    yield rt_pickle_flow
    sys.modules.pop("rt_pickle_flow", None)


# -- item 2: a configuration error found mid-run fails the run cleanly -------------------------------------
def _open_key(home) -> str:
    home.mkdir(parents=True, exist_ok=True)
    path = home / "signing.key"
    path.write_text("a" * 64 + "\n")
    os.chmod(path, 0o644)
    return str(path)


@pytest.mark.parametrize("executor", ["local", "local://processes?workers=1"])
def test_a_signing_key_others_can_read_fails_the_run_with_one_line(gflow_home, store, pickle_flow, executor):
    path = _open_key(gflow_home)
    res = pickle_flow.boxed.run(3, executor=executor, return_run=True)
    assert res.state is State.FAILED
    assert isinstance(res.error, ConfigError) and "chmod 600" in str(res.error)
    run = store.get_run(res.id)
    assert run.state is State.FAILED and run.error.startswith("ConfigError: signing key file") and path in run.error
    assert "crashed" not in run.error and "\n" not in run.error
    trs = {t.name: t for t in store.task_runs(res.id)}
    assert trs["plain"].state is State.SUCCEEDED
    assert trs["box"].state.terminal  # nothing left QUEUED or RUNNING
    # fixed, the run resumes: the call that succeeded is reused
    os.chmod(path, 0o600)
    again = pickle_flow.boxed.run(3, executor=executor, resume_from=res.id, return_run=True)
    assert again.state is State.SUCCEEDED and again.value.n == 4


def test_gflow_run_reports_the_open_signing_key_in_one_line(gflow_home, tmp_path, pickle_flow):
    _open_key(gflow_home)
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress",
            env={"PYTHONPATH": str(tmp_path), "GFLOW_HOME": str(gflow_home)})
    assert r.returncode == 1
    assert "chmod 600" in r.stderr and "crashed" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "FAILED" in r.stderr


def test_a_bug_in_the_engine_still_says_crashed(store, pickle_flow, monkeypatch):
    from gflow.flows._core import Core

    real = Core.handle_many

    def broken(self, events, now):
        if any(type(e).__name__ == "Finished" for e in events):
            raise KeyError("a bug")
        return real(self, events, now)

    monkeypatch.setattr(Core, "handle_many", broken)
    with pytest.raises(Exception, match="the gflow engine crashed: KeyError"):
        pickle_flow.boxed.run(3, executor="local")


# -- item 9: a short key names what the user set -------------------------------------------------------------
def test_a_short_signing_key_names_the_variable_the_user_set(tmp_path, pickle_flow):
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress",
            env={"PYTHONPATH": str(tmp_path), "GFLOW_SIGNING_KEY": "short"})
    assert r.returncode == 1 and "GFLOW_SIGNING_KEY: the signing key must be at least 32" in r.stderr, r.stderr
    assert "profile" not in r.stderr
    (tmp_path / "gflow.toml").write_text('[profiles.default]\nsigning_key = "short"\n')
    r = cli("run", f"{tmp_path / 'rt_pickle_flow.py'}:boxed", "--no-progress", cwd=str(tmp_path),
            env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1 and "profile setting signing_key" in r.stderr, r.stderr
