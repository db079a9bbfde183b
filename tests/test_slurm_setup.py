"""Slurm, issue 23 items 3 and 9, on the REAL single-node cluster of tests/slurm_env.py (fixtures of
tests/test_slurm.py): setup errors are one line before the run is recorded, like every backend's (the one
pre-run check, ``Executor.preflight``), and ``gflow logs --task-run`` says why when the output files are gone."""

from __future__ import annotations

import os

import pytest
import slurm_tasks
import test_slurm as shared
from conftest import cli

from gflow.errors import ConfigError
from gflow.states import State
from gflow.store import open_store

pytestmark = [pytest.mark.integration]
slurm = shared.slurm  # the fixture of tests/test_slurm.py


def test_an_unknown_partition_is_one_line_and_no_run_is_recorded(slurm):
    ex = slurm.make("nope")
    with pytest.raises(ConfigError, match="(?i)invalid partition") as info:
        slurm.run(slurm_tasks.squares, ex, n=2)
    assert "\n" not in str(info.value) and not ex.submissions
    st = open_store(slurm.store)
    try:
        assert st.list_runs() == []
    finally:
        st.close()


def test_logs_say_why_when_the_output_files_are_gone(slurm):
    run = slurm.run(slurm_tasks.squares, slurm.make(), n=2, return_run=True)
    assert run.state is State.SUCCEEDED
    st = open_store(slurm.store)
    try:
        tr = next(t for t in st.task_runs(run.id) if t.name == "square")
    finally:
        st.close()
    for f in (tr.info["stdout"], tr.info["stderr"]):
        if os.path.exists(f):
            os.remove(f)
    p = cli("logs", run.id, "--task-run", tr.id, "--store", slurm.store)
    assert p.returncode == 0, p.stderr
    assert f"--- no backend log: no Slurm output file at {tr.info['stdout']}" in p.stdout, p.stdout
