"""The 10,000-task path on the local executor: correct, every task recorded, bounded driver memory."""

import json
import os
import subprocess
import sys

import pytest
from conftest import RESOURCES, ROOT

from gflow.store import open_store


@pytest.mark.slow
def test_10k_map_reduce_recorded_and_small(gflow_home):
    code = (
        "import json, flows_basic as fb\n"
        "r = fb.map_reduce.run(10_000, executor='local', return_run=True)\n"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"  # not ru_maxrss
        "print(json.dumps({'id': r.id, 'value': r.value, 'rss_mb': int(hwm.split()[1]) / 1024}))\n")
    env = {**os.environ, "GFLOW_HOME": str(gflow_home), "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["value"] == sum(range(1, 10_001))
    st = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    assert st.counts(res["id"]) == {"SUCCEEDED": 10_001}
    assert len(st.events(res["id"])) == 10_001 * 4 + 2  # every transition, plus the run's own
    assert res["rss_mb"] < 200, res
