"""The gflow CLI, run as a user would: a subprocess per command."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import RESOURCES, ROOT, cli

from gflow.states import State
from gflow.store import open_store

EXAMPLE = str(ROOT / "examples" / "protein_design.py")
FLOWS = str(RESOURCES / "flows_basic.py")


def _env(home):
    return {"GFLOW_HOME": str(home)}


def _start_killable(gflow_home, tmp_path, slow, n=40):
    """`gflow run killable` in the background (threads, 2 workers): returns (process, work dir, db path)."""
    env = {**os.environ, "GFLOW_HOME": str(gflow_home), "GFLOW_TEST_SLOW": str(slow),
           "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    work = tmp_path / "w"
    work.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "gflow", "run", f"{FLOWS}:killable", "--param", f"folder={work}",
                             "--param", f"n={n}", "--executor", "local://threads?workers=2", "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, work, gflow_home / "gflow.db"


def test_version():
    r = cli("version")
    assert r.returncode == 0 and r.stdout.startswith("gflow 0.")


def test_run_example_then_inspect(gflow_home):
    env = _env(gflow_home)
    r = cli("run", f"{EXAMPLE}:design", "--param", "rounds=1", "--param", "variants=12", "--param", "top=3",
            "--no-progress", env=env)
    assert r.returncode == 0, r.stderr
    designs = json.loads(r.stdout)
    assert len(designs) == 3 and all(d["scores"][0]["name"] == "developability" for d in designs)
    run_id = r.stderr.split("run ")[1].split()[0]
    ls = cli("runs", "ls", env=env)
    assert ls.returncode == 0 and run_id in ls.stdout and "SUCCEEDED" in ls.stdout
    show = cli("runs", "show", run_id, env=env)
    assert show.returncode == 0 and "mutate" in show.stdout and "score" in show.stdout and "rank" in show.stdout
    assert "SUCCEEDED=15" in show.stdout  # 1 mutate + 1 score.map + 12 score + 1 rank
    logs = cli("logs", run_id, env=env)
    assert logs.returncode == 0 and logs.stdout.count("QUEUED") == 14  # the map node is never queued


def test_param_becomes_protein(gflow_home):
    r = cli("run", f"{FLOWS}:protein_flow", "--param", "parent=MKTAYIAK", "--param", "n=2", "--no-progress",
            env=_env(gflow_home))
    assert r.returncode == 0, r.stderr
    assert [s["value"] for s in json.loads(r.stdout)] == [8.0, 8.0]


@pytest.mark.parametrize("args, message", [
    (["run", f"{FLOWS}:map_reduce", "--param", "n10"], "malformed --param 'n10': expected KEY=VALUE"),
    (["run", "no/such/file.py:flow"], "no such file: no/such/file.py"),
    (["run", f"{FLOWS}:nope"], "no flow or task named 'nope'"),
    (["run", "flows_basic"], "must look like"),
    (["run", f"{FLOWS}:map_reduce", "--param", "n=ten"], "flow 'map_reduce': argument 'n'"),
    (["run", f"{FLOWS}:map_reduce", "--param", "m=1"], "unexpected keyword argument 'm'"),
    (["run", f"{FLOWS}:protein_flow", "--param", "parent=MK1"], "invalid residue '1' at position 3"),
    (["run", f"{FLOWS}:map_reduce", "--executor", "warp"], "unknown executor 'warp'"),
    (["runs", "show", "20990101-000000-ffffff"], "no run '20990101-000000-ffffff'"),
    (["resume", "20990101-000000-ffffff"], "no run"),
])
def test_bad_input_one_line_error(gflow_home, args, message):
    r = cli(*args, env=_env(gflow_home))
    assert r.returncode != 0
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error:")


def test_bad_input_leaves_stored_runs_alone(gflow_home):
    env = _env(gflow_home)
    assert cli("run", f"{FLOWS}:map_reduce", "--param", "n=3", "--no-progress", env=env).returncode == 0
    db = gflow_home / "gflow.db"
    before = [(r.id, r.state) for r in open_store(f"sqlite:///{db}").list_runs()]
    cli("run", f"{FLOWS}:map_reduce", "--param", "n=oops", env=env)
    cli("run", f"{FLOWS}:map_reduce", "--param", "bad", env=env)
    after = [(r.id, r.state) for r in open_store(f"sqlite:///{db}").list_runs()]
    assert after == before


def test_corrupt_store_one_line_error(gflow_home):
    gflow_home.mkdir(parents=True, exist_ok=True)
    (gflow_home / "gflow.db").write_bytes(b"garbage" * 1000)
    r = cli("runs", "ls", env=_env(gflow_home))
    assert r.returncode != 0 and "corrupt or not a SQLite database" in r.stderr and "Traceback" not in r.stderr
    assert (gflow_home / "gflow.db").read_bytes() == b"garbage" * 1000


def test_failed_run_exit_code_and_resume(gflow_home, tmp_path):
    env = _env(gflow_home)
    work = tmp_path / "w"
    work.mkdir()
    r = cli("run", f"{FLOWS}:resumable", "--param", f"folder={work}", "--param", "n=4", "--no-progress", env=env)
    assert r.returncode == 1 and "gate closed" in r.stderr and "Original traceback" in r.stderr
    run_id = r.stderr.split("run ")[1].split()[0]
    (work / "allow").touch()
    r2 = cli("resume", run_id, "--no-progress", env=env)
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout) == 0 + 1 + 2 + 3
    assert all((work / f"record-{i}").read_text().count("x") == 1 for i in range(4))


def test_kill_driver_then_resume(gflow_home, tmp_path):
    """SIGKILL the driver mid-run; `gflow resume` finishes without redoing recorded tasks."""
    proc, work, db = _start_killable(gflow_home, tmp_path, 0.15)
    deadline = time.time() + 60
    run_id, done = None, 0
    while time.time() < deadline:
        time.sleep(0.2)
        if not db.exists():
            continue
        st = open_store(f"sqlite:///{db}")
        runs = st.list_runs()
        if runs:
            run_id = runs[0].id
            done = st.counts(run_id).get("SUCCEEDED", 0)
            if done >= 6:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert run_id and done >= 6
    st = open_store(f"sqlite:///{db}")
    assert st.get_run(run_id).state is State.RUNNING  # what a killed driver leaves behind
    ls = cli("runs", "ls", env={"GFLOW_HOME": str(gflow_home)})
    assert "driver gone" in ls.stdout  # the CLI says so rather than showing a live-looking run
    recorded = {t.map_index for t in st.task_runs(run_id, state="SUCCEEDED") if t.name == "slow_count"}
    ran_before = {i for i in range(40) if (work / f"slow-{i}").exists()}
    r = cli("resume", run_id, "--no-progress", env={"GFLOW_HOME": str(gflow_home), "GFLOW_TEST_SLOW": "0.01"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == sum(range(40))
    for i in recorded:  # recorded results were reused, not recomputed
        assert (work / f"slow-{i}").read_text().count("x") == 1
    assert all((work / f"slow-{i}").exists() for i in range(40))
    old = st.get_run(run_id)
    assert old.state is State.FAILED and "DriverLost" in old.error
    new = st.list_runs(limit=1)[0]
    assert new.resumed_from == run_id and st.counts(new.id).get("CACHED", 0) == len(recorded)
    assert ran_before >= recorded


def test_profiles_from_gflow_toml(gflow_home, tmp_path):
    cfg = tmp_path / "proj"
    cfg.mkdir()
    other = tmp_path / "other.db"
    (cfg / "gflow.toml").write_text(f'[profiles.alt]\nstore = "sqlite:///{other}"\nexecutor = "inline"\n')
    r = cli("run", f"{FLOWS}:map_reduce", "--param", "n=2", "--profile", "alt", "--no-progress",
            env=_env(gflow_home), cwd=cfg)
    assert r.returncode == 0, r.stderr
    (run,) = open_store(f"sqlite:///{other}").list_runs()
    assert run.executor == "inline"
    bad = cli("run", f"{FLOWS}:map_reduce", "--profile", "nope", env=_env(gflow_home), cwd=cfg)
    assert bad.returncode != 0 and "unknown profile 'nope'" in bad.stderr and "alt" in bad.stderr
    env_store = tmp_path / "env.db"
    r = cli("run", f"{FLOWS}:map_reduce", "--param", "n=2", "--no-progress",
            env={**_env(gflow_home), "GFLOW_STORE": f"sqlite:///{env_store}"}, cwd=tmp_path)
    assert r.returncode == 0 and len(open_store(f"sqlite:///{env_store}").list_runs()) == 1


def test_ctrl_c_cancels_then_resume(gflow_home, tmp_path):
    proc, work, db = _start_killable(gflow_home, tmp_path, 0.1)
    deadline = time.time() + 30
    while time.time() < deadline:
        time.sleep(0.1)
        if db.exists():
            runs = open_store(f"sqlite:///{db}").list_runs()
            if runs and open_store(f"sqlite:///{db}").counts(runs[0].id).get("SUCCEEDED", 0) >= 4:
                break
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "gflow resume" in stderr
    st = open_store(f"sqlite:///{db}")
    run = st.list_runs()[0]
    assert run.state is State.CANCELLED
    assert set(st.counts(run.id)) <= {"SUCCEEDED", "CANCELLED"}
    r = cli("resume", run.id, "--no-progress", env={"GFLOW_HOME": str(gflow_home), "GFLOW_TEST_SLOW": "0.01"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == sum(range(40))


def test_runs_cancel_command(gflow_home, tmp_path):
    proc, work, db = _start_killable(gflow_home, tmp_path, 0.2)
    deadline = time.time() + 30
    while time.time() < deadline and not (db.exists() and open_store(f"sqlite:///{db}").list_runs()):
        time.sleep(0.1)
    run_id = open_store(f"sqlite:///{db}").list_runs()[0].id
    r = cli("runs", "cancel", run_id, env={"GFLOW_HOME": str(gflow_home)})
    assert r.returncode == 0 and "CANCELLED" in r.stderr
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1 and "cancelled" in stderr.lower()
    assert open_store(f"sqlite:///{db}").get_run(run_id).state is State.CANCELLED
    again = cli("runs", "cancel", run_id, env={"GFLOW_HOME": str(gflow_home)})
    assert again.returncode != 0 and "refused" in again.stderr
