"""A PENDING Slurm job's reason in ``gflow runs show`` while it waits, on the REAL single-node Slurm cluster
(tests/slurm_env.py), then the run is cancelled and no reason is shown any more (issue 20 item 5)."""

from __future__ import annotations

import threading
import time

import pytest
import slurm_tasks
from conftest import cli

from gflow.executors.slurm import SlurmExecutor
from gflow.states import State

pytestmark = [pytest.mark.integration]


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def waiting_lines(run_id: str, db: str) -> list[str]:
    shown = cli("runs", "show", run_id, "--store", db)
    assert shown.returncode == 0, shown.stderr
    return [line.strip() for line in shown.stdout.splitlines() if line.strip().startswith("waiting ")]


def test_a_job_slurm_will_not_start_shows_why_in_runs_show_until_cancelled(slurm_cluster, monkeypatch, tmp_path):
    from gflow.flows._flow import cancel_run
    from gflow.store import open_store

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    db = f"sqlite:///{tmp_path / 'gflow.db'}"
    # partition tiny has MaxTime=1 minute: a task with the default 600 s timeout asks for --time=11, never starts
    ex = SlurmExecutor("tiny", log_dir=str(tmp_path / "logs"), poll_min=0.2, poll_max=1.0)
    box: dict = {}

    def go():
        try:
            box["run"] = slurm_tasks.patients.run(n=2, executor=ex, artifacts=str(tmp_path / "arts"), store=db,
                                                  return_run=True)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=go)
    th.start()
    try:
        run_id = wait_for(lambda: ex.monitor.live() and ex.monitor.live()[0].call.run_id, 30, "calls submitted")
        lines = wait_for(lambda: len(got := waiting_lines(run_id, db)) == 2 and got, 60, "two waiting lines")
        # Slurm 22.05 says PartitionConfig here (PartitionTimeLimit on some versions), in words
        assert all(("QUEUED (Slurm: PartitionConfig: " in line or "QUEUED (Slurm: PartitionTimeLimit: " in line)
                   and "will not start" in line for line in lines), lines
        with open_store(db) as st:
            assert {t.state for t in st.task_runs(run_id)} == {State.QUEUED}
        cancel_run(run_id, store=db)
        th.join(60)
        assert not th.is_alive()
        with open_store(db) as st:
            assert st.get_run(run_id).state is State.CANCELLED
        assert waiting_lines(run_id, db) == []
    finally:
        ex.close()
        slurm_cluster.cancel_all()
        th.join(30)


def test_a_node_full_of_other_work_shows_resources_until_cancelled(slurm_cluster, monkeypatch, tmp_path):
    """Another job holds every CPU of the one node: the call waits with Slurm's ``Resources`` or ``Priority``.

    A drained node (``ReqNodeNotAvail``) cannot be tested here: sbatch --test-only, gflow's preflight, refuses
    the job when the only node is drained, before anything is submitted."""
    from gflow.flows._flow import cancel_run

    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    db = f"sqlite:///{tmp_path / 'gflow.db'}"
    hog = slurm_cluster.run(["sbatch", "--parsable", "-p", "debug", "-c", str(slurm_cluster.cpus), "-o", "/dev/null",
                             "--wrap", "sleep 300"]).stdout.strip().split(";")[0]
    ex = SlurmExecutor("debug", log_dir=str(tmp_path / "logs"), poll_min=0.2, poll_max=1.0)
    box: dict = {}

    def go():
        try:
            box["run"] = slurm_tasks.patients.run(n=1, executor=ex, artifacts=str(tmp_path / "arts"), store=db,
                                                  return_run=True)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=go)
    try:
        th.start()
        run_id = wait_for(lambda: box or (ex.monitor.live() and ex.monitor.live()[0].call.run_id), 30, "submitted")
        assert isinstance(run_id, str), box
        lines = wait_for(lambda: len(got := waiting_lines(run_id, db)) == 1 and got, 60, "a waiting line")
        # Slurm says Resources, or Priority once its scheduler has planned the job behind the other one
        assert ("QUEUED (Slurm: Resources: waiting for free resources)" in lines[0]
                or "QUEUED (Slurm: Priority: jobs of higher priority go first)" in lines[0]), lines
        cancel_run(run_id, store=db)
        th.join(60)
        assert not th.is_alive()
        assert waiting_lines(run_id, db) == []
    finally:
        slurm_cluster.run(["scancel", hog], check=False)
        ex.close()
        slurm_cluster.cancel_all()
        th.join(30)
