"""Reattach after a lost driver on Slurm (issue 19 item 4), on the real single-node test cluster
(tests/slurm_env.py): the driver is SIGKILLed while its array's elements nap, then the run is resumed; the
array is followed (no new sbatch) and no element runs twice."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import test_slurm as shared
from reattach_support import wait_for

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration]
slurm = shared.slurm  # the fixture of tests/test_slurm.py


def test_resume_after_the_driver_is_killed_follows_the_slurm_array(slurm, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "gflow.toml").write_text(
        '[profiles.default]\nexecutor = "slurm://debug"\n'
        f'artifacts = "{slurm.arts}"\nstore = "{slurm.store}"\n'
        f'[profiles.default.slurm]\nlog_dir = "{slurm.logs}"\npoll_min = 0.2\npoll_max = 1.0\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}
    (marks / "slow").touch()  # elements 1..3 nap 10 s: they run on while no driver is alive
    code = "import slurm_tasks, sys; print(slurm_tasks.resumable.run(n=4, marker_dir=sys.argv[1], seconds=10))"
    driver = subprocess.Popen([sys.executable, "-c", code, str(marks)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for(lambda: len(list(marks.glob("ran-*"))) >= 4, 60, "all four elements started")
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
    scripts = sorted(slurm.logs.glob("gflow-touch_and_nap-*.sh"))
    assert len(scripts) == 1
    code = ("import slurm_tasks, sys; print(slurm_tasks.resumable.run(n=4, marker_dir=sys.argv[1], seconds=10, "
            "resume_from=sys.argv[2]))")
    p = subprocess.run([sys.executable, "-c", code, str(marks), run_id], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip().splitlines()[-1] == "[0, 1, 2, 3]"
    assert sorted(slurm.logs.glob("gflow-touch_and_nap-*.sh")) == scripts  # no sbatch: the array was followed
    for x in range(4):  # no element ran twice
        assert len(list(marks.glob(f"ran-{x}-*"))) == 1, x
    st = open_store(slurm.store)
    try:
        new = st.get_run(run_id).resumed_by
        assert new is not None
        adopted = [e for e in st.events(new) if "adopted" in (e.message or "")]
        assert len(adopted) == 3
    finally:
        st.close()
