import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "tests" / "resources"
sys.path.insert(0, str(RESOURCES))
# spawned process-pool workers inherit sys.path, so they import test task modules by name too

from gflow.testing import isolated_home  # noqa: E402

EXECUTORS = ["inline", "local", "local://processes?workers=2"]


@pytest.fixture(autouse=True)
def gflow_home(tmp_path, monkeypatch):
    """Every test gets its own gflow home and no GFLOW_* settings from the environment."""
    monkeypatch.chdir(tmp_path)
    with isolated_home(tmp_path / "home") as home:
        yield home


@pytest.fixture(params=EXECUTORS)
def executor(request):
    return request.param


@pytest.fixture
def store(gflow_home):
    from gflow.store import open_store

    st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    yield st
    st.close()


@pytest.fixture
def work(tmp_path):
    d = tmp_path / "work"
    d.mkdir()
    return str(d)


def cli(*args, env=None, timeout=120, cwd=None):
    """Run the gflow CLI in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join([str(RESOURCES), str(ROOT), full_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "gflow", *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=cwd)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real single-node Slurm cluster (munged, slurmctld, slurmd) for the session (tests/slurm_env.py);
    skipped, with the reason, only where slurm-wlm/munge are not installed."""
    import slurm_env

    gone = slurm_env.missing()
    if gone:
        pytest.skip(f"Slurm is not installed (missing {', '.join(gone)}): apt-get install slurm-wlm munge")
    cluster = slurm_env.SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    try:
        yield cluster
    finally:
        cluster.stop()
