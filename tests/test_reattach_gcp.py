"""Reattach after a lost driver on Google Cloud Batch (issue 19 item 4): the real google-cloud-batch client
against the fake Batch v1 server (tests/gcp_fake), artifacts through gcp-storage-emulator. The driver is a real
``gflow run`` process, SIGKILLed once its map's job is created (the tasks wait for a gate file); ``gflow resume``
follows the job instead of creating it again. Job creates are counted by the fake server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("google.cloud.batch_v1")
pytest.importorskip("gcp_storage_emulator")

import test_gcp_batch as shared  # noqa: E402
from reattach_support import queued_run  # noqa: E402

from gflow.states import State  # noqa: E402
from tests.conftest import RESOURCES, ROOT, cli  # noqa: E402
from tests.gcp_fake.controller import FakeBatchController  # noqa: E402
from tests.gcp_fake.server import FakeBatch  # noqa: E402

emulator, ARTS = shared.emulator, shared.ARTS
N = int(os.environ.get("GFLOW_REATTACH_N", "20"))


@pytest.fixture
def gcp(emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator.url)
    with FakeBatch() as fake, FakeBatchController(fake, python_path=[str(ROOT), str(RESOURCES)]) as ctl:
        fake.controller = ctl
        yield fake


def test_resume_after_the_driver_is_killed_follows_the_batch_job(gcp, store, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    spec = shared.url(gcp)
    before = {r.id for r in store.list_runs()}
    drv = subprocess.Popen([sys.executable, "-m", "gflow", "run", "volcano_flows:gated_fan", "-p", f"n={N}", "-p",
                            f"folder={tmp_path}", "-e", spec, "--artifacts", ARTS, "--no-progress"], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        run_id = queued_run(store, N, before, name="gated_square")
        assert gcp.requests["create"] == 1
        drv.send_signal(signal.SIGKILL)
        drv.wait(30)
    finally:
        if drv.poll() is None:
            drv.kill()
    (tmp_path / "open").touch()
    res = cli("resume", run_id, "-e", spec, "--artifacts", ARTS, "--no-progress", timeout=300)
    assert res.returncode == 0, res.stderr
    new = store.get_run(run_id).resumed_by
    assert new is not None and store.get_run(new).state is State.SUCCEEDED
    assert gcp.requests["create"] == 2  # the map's job once, then total's
    trs = [t for t in store.task_runs(new) if t.name == "gated_square"]
    assert len(trs) == N and all(t.state is State.SUCCEEDED for t in trs)
    assert len([e for e in store.events(new) if "adopted" in (e.message or "")]) == N
