"""The Slurm executor on a REAL single-node Slurm cluster (tests/slurm_env.py: munged, slurmctld, slurmd
started by the session fixture). Each array element costs about half a second of Slurm launch here, so
maps are small."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import slurm_tasks
from conftest import cli

from gflow.errors import ConfigError, TaskFailed
from gflow.executors.slurm import SlurmExecutor
from gflow.states import State
from gflow.usage import usage_of

pytestmark = [pytest.mark.integration]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def slurm(slurm_cluster, monkeypatch, tmp_path):
    """Slurm's commands point at the test cluster; ``make()`` gives an executor with fast polling."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    made: list[SlurmExecutor] = []

    class Env:
        cluster = slurm_cluster
        logs = tmp_path / "slurm-logs"
        arts = str(tmp_path / "arts")
        store = f"sqlite:///{tmp_path / 'gflow.db'}"

        @staticmethod
        def make(partition: str = "debug", **kw) -> SlurmExecutor:
            ex = SlurmExecutor(partition, log_dir=str(Env.logs), poll_min=0.2, poll_max=1.0, **kw)
            made.append(ex)
            return ex

        @staticmethod
        def run(flow, ex, **params):
            return flow.run(executor=ex, artifacts=Env.arts, store=Env.store, **params)

        @staticmethod
        def squeue(job: str) -> list[str]:
            return slurm_cluster.run(["squeue", "--noheader", "--states=all", "-r", "--jobs", job,
                                      "-o", "%i|%T|%r"]).stdout.split()

    yield Env
    for ex in made:
        ex.close()
    slurm_cluster.cancel_all()


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def running(ex: SlurmExecutor, n: int = 1):
    live = [t for t in ex.monitor.live() if t.state is State.RUNNING]
    return live if len(live) >= n else None


def test_map_reduce_is_one_array_and_one_job(slurm):
    ex = slurm.make()
    assert slurm.run(slurm_tasks.squares, ex, n=5) == sum(i * i for i in range(5))
    assert dict(ex.submissions) == {"array": 1, "job": 1}  # the map: one sbatch --array; the reduce: a plain job
    assert ex.handler.squeue_calls_per_cycle and set(ex.handler.squeue_calls_per_cycle) == {1}
    outs = sorted(p.name for p in slurm.logs.glob("*.out"))
    assert len(outs) == 6 and sum("_" in n for n in outs) == 5  # one stdout file per element, and the reduce's
    script = next(slurm.logs.glob("gflow-square-*.sh")).read_text()
    assert "--array=0-4" in script and "--mem=200M" in script and "--cpus-per-task=1" in script


def test_logs_of_an_element_through_the_cli(slurm):
    ex = slurm.make()
    run = slurm.run(slurm_tasks.squares, ex, n=2, return_run=True)
    from gflow.store import open_store

    st = open_store(slurm.store)
    try:
        tr = next(t for t in st.task_runs(run.id) if t.name == "square")
    finally:
        st.close()
    assert tr.info["stdout"].endswith(".out") and "job=" in tr.handle
    u = usage_of(tr.info)  # measured by the worker in the Slurm job (issue 22)
    assert u["peak_memory_bytes"] > 0 and u["cpu_seconds"] >= 0 and u["wall_seconds"] > 0
    p = cli("logs", run.id, "--task-run", tr.id, "--store", slurm.store)
    assert p.returncode == 0, p.stderr
    assert "--- backend log" in p.stdout and '"gflow.outcome": "ok"' in p.stdout


def test_retries_resubmit_only_the_failed_indices(slurm, tmp_path):
    ex = slurm.make()
    marks = tmp_path / "marks"
    marks.mkdir()
    got = slurm.run(slurm_tasks.flaky_map, ex, n=6, marker_dir=str(marks), fail_on=[1, 4])
    assert got == [0, 10, 20, 30, 40, 50]
    arrays = sorted(p.read_text().split("--array=")[1].split()[0] for p in slurm.logs.glob("gflow-flaky-*.sh"))
    # failures seen in one poll cycle are retried as one array ("1,4"); seen in two cycles, as two ("1", "4")
    assert arrays in (["0-5", "1,4"], ["0-5", "1", "4"]), arrays
    assert ex.submissions["array"] == 1 and ex.submissions["retry"] == len(arrays) - 1
    # the retried elements keep their index: their log files are <retry job>_1 and <retry job>_4
    assert len(list(slurm.logs.glob("*_1.out"))) == 2 and len(list(slurm.logs.glob("*_4.out"))) == 2


def test_a_batch_of_retried_calls_of_one_array_is_one_array_of_their_indices(slurm):
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call, CallDone

    ex = slurm.make()
    ex.attach_artifacts(open_artifacts(slurm.arts))
    done: list = []
    ex.start(lambda ev: isinstance(ev, CallDone) and done.append(ev))
    ex.submit([Call(f"r.{i}", "r", slurm_tasks.square, (i,), {}) for i in range(6)])
    wait_for(lambda: len(done) == 6, 60, "six calls done")
    ex.submit([Call(f"r.{i}", "r", slurm_tasks.square, (i,), {}, attempt=2) for i in (4, 1)])
    wait_for(lambda: len(done) == 8, 60, "the two retried calls done")
    assert [(e.call_id, e.attempt, e.outcome.value) for e in done[6:]] in (
        [("r.1", 2, 1), ("r.4", 2, 16)], [("r.4", 2, 16), ("r.1", 2, 1)])
    arrays = sorted(p.read_text().split("--array=")[1].split()[0] for p in slurm.logs.glob("gflow-square-*.sh"))
    assert arrays == ["0-5", "1,4"] and dict(ex.submissions) == {"array": 1, "retry": 1}


def test_scancel_of_one_element_from_outside_fails_that_call(slurm):
    ex = slurm.make()
    box: dict = {}

    def go():
        try:
            box["result"] = slurm.run(slurm_tasks.naps, ex, seconds=[1.0, 60.0, 1.0])
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=go)
    th.start()
    victim = wait_for(lambda: next((t for t in ex.monitor.live() if t.index == 1 and t.state is State.RUNNING),
                                   None), what="element 1 running")
    slurm.cluster.run(["scancel", victim.job_id])
    th.join(60)
    err = box.get("error")
    assert isinstance(err, TaskFailed), box
    assert err.error_type == "gflow.errors.ExecutorError"
    assert "cancelled outside gflow" in err.error_message and victim.job_id in err.error_message


def test_timeout_cancels_the_job(slurm):
    ex = slurm.make()
    t0 = time.monotonic()
    with pytest.raises(TaskFailed) as info:
        slurm.run(slurm_tasks.limited, ex, seconds=60.0)
    assert time.monotonic() - t0 < 30
    assert "TaskTimeout" in info.value.error_type
    job = next(iter(ex.handler.rows))[0]
    states = wait_for(lambda: (s := slurm.squeue(job)) and "CANCELLED" in s[0] and s, 20, "the job cancelled")
    assert states[0].startswith(f"{job}|CANCELLED")


def test_out_of_memory_is_gflow_out_of_memory(slurm):
    ex = slurm.make()
    with pytest.raises(TaskFailed) as info:
        slurm.run(slurm_tasks.hogging, ex, mib=600)
    assert info.value.error_type == "gflow.errors.OutOfMemory", info.value
    assert "--mem=100M" in info.value.error_message


def test_cancel_of_the_run_is_one_scancel_of_the_array(slurm):
    ex = slurm.make()
    box: dict = {}

    def go():
        try:
            box["result"] = slurm.run(slurm_tasks.naps, ex, seconds=[60.0] * 3)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=go)
    th.start()
    live = wait_for(lambda: running(ex, 3), what="three elements running")
    run_id = live[0].call.run_id
    before = ex.slurm.calls["scancel"]
    from gflow.flows._flow import cancel_run

    cancel_run(run_id, store=slurm.store)
    th.join(60)
    assert not th.is_alive() and "result" not in box
    assert ex.slurm.calls["scancel"] - before == 1
    job = live[0].job.id
    wait_for(lambda: all("CANCELLED" in line for line in slurm.squeue(job)), 20, "every element cancelled")


def test_unknown_partition_is_slurms_own_message_before_any_submission(slurm):
    ex = slurm.make("nope")
    with pytest.raises(ConfigError, match="(?i)invalid partition") as info:
        slurm.run(slurm_tasks.squares, ex, n=2)
    assert "'nope'" in str(info.value)
    assert not ex.submissions


def test_sbatch_missing_from_path_says_run_on_a_login_node(slurm, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    ex = slurm.make()
    with pytest.raises(ConfigError, match="run the driver on a login node"):
        slurm.run(slurm_tasks.squares, ex, n=2)


def test_munge_not_answering_is_one_clear_error(slurm, tmp_path):
    conf = tmp_path / "slurm.conf"
    text = slurm.cluster.conf.read_text().replace(str(slurm.cluster.munge_socket), str(tmp_path / "no.socket"))
    conf.write_text(text)
    ex = slurm.make(slurm_env={"SLURM_CONF": str(conf)})
    with pytest.raises(ConfigError, match="munged"):
        ex.prepare()


def test_url_and_profile_table(slurm, tmp_path, monkeypatch):
    (tmp_path / "gflow.toml").write_text(
        '[profiles.hpc]\nexecutor = "slurm://debug?throttle=2"\n'
        f'[profiles.hpc.slurm]\nlog_dir = "{slurm.logs}"\npoll_min = 0.2\npoll_max = 1.0\nthrottle = 5\n')
    monkeypatch.chdir(tmp_path)
    got = slurm_tasks.squares.run(n=3, profile="hpc", artifacts=slurm.arts, store=slurm.store)
    assert got == 5
    script = next(slurm.logs.glob("gflow-square-*.sh")).read_text()
    assert "--array=0-2%2" in script  # the URL's throttle wins over the table's


def test_driver_kill_and_resume(slurm, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "gflow.toml").write_text(
        '[profiles.default]\nexecutor = "slurm://debug"\n'
        f'artifacts = "{slurm.arts}"\nstore = "{slurm.store}"\n'
        f'[profiles.default.slurm]\nlog_dir = "{slurm.logs}"\npoll_min = 0.2\npoll_max = 1.0\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    (marks / "slow").touch()  # elements 1 and 2 nap until the driver is killed
    code = "import slurm_tasks, sys; print(slurm_tasks.resumable.run(n=3, marker_dir=sys.argv[1], seconds=120))"
    driver = subprocess.Popen([sys.executable, "-c", code, str(marks)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: len(list(marks.glob("ran-*"))) >= 3, 60, "all three elements started")
        time.sleep(1.0)  # element 0 returns at once: its outcome is recorded by the driver
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(10)
    finally:
        if driver.poll() is None:
            driver.kill()
    from gflow.store import open_store

    st = open_store(slurm.store)
    try:
        run_id = st.list_runs()[0].id
    finally:
        st.close()
    slurm.cluster.cancel_all()  # the orphaned elements (as an admin would, or they run on harmlessly)
    (marks / "slow").unlink()
    code = ("import slurm_tasks, sys; print(slurm_tasks.resumable.run(n=3, marker_dir=sys.argv[1], seconds=120, "
            "resume_from=sys.argv[2]))")
    p = subprocess.run([sys.executable, "-c", code, str(marks), run_id], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[0, 1, 2]"
    # element 0 finished before the kill: taken from the old run, not run again
    assert len(list(marks.glob("ran-0-*"))) == 1


def test_maps_above_max_array_size_are_split(slurm):
    ex = slurm.make(max_array_size=3)
    assert slurm.run(slurm_tasks.squares_one_per_job, ex, n=7) == sum(i * i for i in range(7))
    assert ex.submissions["array"] == 3
    arrays = sorted(s.read_text().split("--array=")[1].split()[0]
                    for s in slurm.logs.glob("gflow-square-*.sh"))
    assert arrays == ["0-1", "0-1", "0-2"]  # 7 = 3 + 2 + 2, never 3 + 3 + 1


def test_without_per_job_a_map_above_max_array_size_is_packed_into_one_array(slurm):
    ex = slurm.make(max_array_size=3)
    assert slurm.run(slurm_tasks.squares, ex, n=7) == sum(i * i for i in range(7))
    assert ex.submissions["array"] == 1  # 3 elements running 3 + 3 + 1 calls (issue 18)
    arrays = [s.read_text().split("--array=")[1].split()[0] for s in slurm.logs.glob("gflow-square-*.sh")]
    assert arrays == ["0-2"]


def test_pending_reason_is_shown_in_words(slurm):
    ex = slurm.make("tiny")  # MaxTime=1 minute: a task with a 600 s timeout asks for --time=11 and never starts
    box: dict = {}

    def go():
        try:
            box["result"] = slurm.run(slurm_tasks.patients, ex, n=2)
        except BaseException as e:  # noqa: BLE001
            box["error"] = e

    th = threading.Thread(target=go)
    th.start()
    try:
        reasons = wait_for(lambda: len(ex.pending_reasons()) == 2 and ex.pending_reasons(), 30, "pending reasons")
        # Slurm 22.05 says PartitionConfig here (PartitionTimeLimit on some versions): both in words
        assert all(r.split(":")[0] in ("PartitionConfig", "PartitionTimeLimit") and "will not start" in r
                   for r in reasons.values()), reasons
    finally:
        from gflow.flows._flow import cancel_run

        wait_for(lambda: ex.monitor.live(), 10, "calls live")
        cancel_run(ex.monitor.live()[0].call.run_id, store=slurm.store)
        th.join(60)


def test_a_batch_slurm_refuses_halfway_leaves_nothing_running(slurm):
    from gflow.executors.base import Call

    ex = slurm.make()
    from gflow.artifacts import open_artifacts

    ex.attach_artifacts(open_artifacts(slurm.arts))
    events: list = []
    ex.start(events.append)
    calls = [Call("r.1", "r", slurm_tasks.nap, (60.0,), {}), Call("r.2", "r", slurm_tasks.on_gpu, (1,), {})]
    with pytest.raises(ConfigError, match="(?i)gres|node configuration"):  # the node has no GPUs
        ex.submit(calls)
    job = next(slurm.logs.glob("gflow-nap-*.sh")).read_text()  # the first job was submitted ...
    assert ex.submissions["job"] == 1
    ids = [ln.split("|")[0] for ln in slurm.cluster.run(["squeue", "--noheader", "--states=all", "-o",
                                                          "%i|%j|%T"]).stdout.split() if "|gflow-nap-r|" in ln]
    assert ids and job
    # ... and undone
    wait_for(lambda: all("CANCELLED" in s for s in slurm.squeue(ids[0])), 20, "the first job cancelled")
    assert not ex.monitor.live() and not events
