"""Faults that must lose nothing (issue: reliability): killed workers, a killed driver, timeouts that must
really stop a task, a full artifact disk, concurrent resumes. Figures: docs/RELIABILITY.md."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import flows_basic as fb
import pytest
from conftest import RESOURCES, ROOT, cli

import gflow
from gflow.executors.local import LocalExecutor
from gflow.states import State

FLOWS = str(RESOURCES / "flows_basic.py")
TRIALS = int(os.environ.get("GFLOW_FAULT_TRIALS", "20"))


def _succeeded_events(store, run_id) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in store.events(run_id):
        if e.task_run_id and e.state is State.SUCCEEDED:
            out[e.task_run_id] = out.get(e.task_run_id, 0) + 1
    return out


@pytest.mark.slow
def test_killing_a_process_pool_worker_loses_nothing(store, tmp_path):
    """SIGKILL one worker mid-task, TRIALS times: only its call is retried; every result is there, once."""
    n = 6
    lost = dup = retried = 0
    with LocalExecutor(workers=2, processes=True) as ex:
        for trial in range(TRIALS):
            work = tmp_path / f"t{trial}"
            work.mkdir()

            def kill_one() -> None:
                time.sleep(0.1 + random.random() * 0.2)
                pids = ex.worker_pids()
                if pids:
                    os.kill(random.choice(pids), signal.SIGKILL)

            killer = threading.Thread(target=kill_one)
            killer.start()
            res = fb.marked_map.run(str(work), n, 0.15, executor=ex, return_run=True)
            killer.join()
            assert res.state is State.SUCCEEDED, res.error
            assert res.value == sum(i * i for i in range(n))
            trs = [t for t in store.task_runs(res.id) if t.name == "marked"]
            lost += sum(1 for t in trs if t.state is not State.SUCCEEDED)
            dup += sum(c - 1 for c in _succeeded_events(store, res.id).values())
            retried += sum(1 for t in trs if t.attempt > 1)
    assert (lost, dup) == (0, 0)
    assert retried >= TRIALS // 2  # the kills did hit running calls (most trials), and those were retried
    print(f"\nprocess pool worker SIGKILL: {TRIALS} trials, lost 0, duplicated 0, retried {retried}")


def test_a_timed_out_process_task_is_killed_and_the_run_ends(store, work):
    t0 = time.monotonic()
    res = fb.spin_flow.run(work, executor="local://processes?workers=1", return_run=True)
    took = time.monotonic() - t0
    assert res.state is State.FAILED and "TaskTimeout" in str(res.error)
    assert took < 10
    (pid_file,) = Path(work).glob("spin-pid-*")
    pid = int(pid_file.name.rsplit("-", 1)[1])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.05)
    assert not _alive(pid), "the timed-out task's process is still running"


def test_gflow_run_exits_after_a_process_task_times_out(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    r = cli("run", f"{FLOWS}:spin_flow", "-p", f"folder={work}", "-e", "local://processes?workers=1",
            "--no-progress", timeout=60)
    assert r.returncode == 1 and "timeout" in r.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_pool_workers_exit_when_the_driver_is_killed(gflow_home, tmp_path):
    psutil = pytest.importorskip("psutil")
    work = tmp_path / "w"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    proc = subprocess.Popen([sys.executable, "-m", "gflow", "run", f"{FLOWS}:marked_map", "-p", f"folder={work}",
                             "-p", "n=4", "-p", "seconds=3", "-e", "local://processes?workers=2", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        workers: list = []
        while time.monotonic() < deadline and len(workers) < 2:
            time.sleep(0.1)
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "multiprocessing" in " ".join(c.cmdline())
                       and "resource_tracker" not in " ".join(c.cmdline())]
        assert len(workers) == 2
        time.sleep(0.5)  # the tasks are running (3 s each)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5 and any(_alive(w.pid) for w in workers):
            time.sleep(0.05)
        gone_after = time.monotonic() - t0
        assert not any(_alive(w.pid) for w in workers), "pool workers outlived the driver"
        time.sleep(3)
        assert not list(work.glob("done-*")), "a worker finished its task after the driver was gone"
        print(f"\nworkers gone {gone_after * 1000:.0f} ms after the driver's SIGKILL")
    finally:
        if proc.poll() is None:
            proc.kill()


def test_two_concurrent_resumes_of_one_run_only_one_runs(gflow_home, tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    r = cli("run", f"{FLOWS}:resumable", "-p", f"folder={work}", "-p", "n=30", "--no-progress")
    assert r.returncode == 1
    run_id = r.stderr.split("run ")[1].split()[0]
    (work / "allow").touch()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    procs = [subprocess.Popen([sys.executable, "-m", "gflow", "resume", run_id, "--no-progress"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outs
    loser = outs[[p.returncode for p in procs].index(1)][1]
    assert "being resumed by" in loser or "already resumed" in loser
    assert all(fb.count(str(work), f"record-{i}") == 1 for i in range(30))  # no finished call ran twice
    assert fb.count(str(work), "gate") == 1
    again = cli("resume", run_id, "--no-progress")
    assert again.returncode == 1 and "already resumed by" in again.stderr and "--force" in again.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A real 1 MiB tmpfs for the artifact store (root can mount one here and in CI)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_artifact_disk_full_mid_run_ends_failed_and_resumable(store, work, tiny_disk):
    res = fb.big_results.run(work, 60, executor="local", artifacts=str(tiny_disk), return_run=True)
    assert res.state is State.FAILED
    assert str(tiny_disk) in str(res.error) and "No space left" in str(res.error)
    run = store.get_run(res.id)
    assert run.state is State.FAILED and "artifact store" in run.error
    arts = gflow.artifacts.open_artifacts(str(tiny_disk)) if hasattr(gflow, "artifacts") else None
    from gflow.artifacts import open_artifacts

    arts = open_artifacts(str(tiny_disk))
    trs = [t for t in store.task_runs(res.id) if t.name == "big_result"]
    ok = [t for t in trs if t.state is State.SUCCEEDED]
    assert ok and len(ok) < 60
    for t in ok:  # every result the store claims can be read
        assert len(arts.get(t.result_ref)) > 40_000
    assert all(t.state in (State.FAILED, State.CANCELLED) for t in trs if t.state is not State.SUCCEEDED)
    subprocess.run(["mount", "-o", "remount,size=16m", str(tiny_disk)], check=True)
    again = fb.big_results.run(work, 60, executor="local", artifacts=str(tiny_disk), resume_from=res.id,
                               return_run=True)
    assert again.state is State.SUCCEEDED and again.value == 60 * 40_000
    for t in ok:  # what was stored was kept and reused
        assert fb.count(work, f"big-{t.map_index}") == 1
