"""Usage per attempt (issue 22 item 1) measured on every executor, and cost from a price table (item 2).
How it is measured and what it means: docs/usage.md."""

from __future__ import annotations

import sys
import types

import pytest
import usage_flows as uf

from gflow import usage as U
from gflow.states import State

MB = 1_000_000


def _usage(store, run_id):
    (tr,) = store.task_runs(run_id)
    u = U.usage_of(tr.info)
    assert u is not None, tr.info
    return u


def test_threads_record_thread_cpu_and_wall(store):
    res = uf.burn_flow.run(0.2, executor="local", return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    u = _usage(store, res.id)
    assert 0.15 <= u["cpu_seconds"] <= u["wall_seconds"] + 0.05
    assert u["peak_memory_bytes"] >= 0 and "requested" not in u  # the default ask is not recorded


def test_processes_record_200_mb_peak_and_cpu(store):
    res = uf.hold_flow.run(200, executor="local://processes?workers=1", return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    u = _usage(store, res.id)
    assert u["peak_memory_bytes"] >= 200 * MB
    assert u["cpu_seconds"] > 0 and u["wall_seconds"] > 0
    assert u["requested"]["memory_bytes"] == 2**30 and u["requested"]["cpu"] == 2
    # the peak is per call, not the worker's since it started: a small call after it reads far less
    res2 = uf.hold_flow.run(5, executor="local://processes?workers=1", return_run=True)
    assert _usage(store, res2.id)["peak_memory_bytes"] < 200 * MB


def test_every_map_element_has_its_usage(store):
    res = uf.burn_map.run(3, executor="local", return_run=True)
    trs = store.task_runs(res.id)
    assert len(trs) == 3 and all(U.usage_of(t.info)["cpu_seconds"] > 0.02 for t in trs)


def test_a_retried_call_keeps_each_attempts_usage(store):
    uf._tries["n"] = 0
    res = uf.flaky_flow.run(executor="local", return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    (tr,) = store.task_runs(res.id)
    assert sorted(tr.info["usage_by_attempt"]) == ["1", "2"]


def test_dask_records_usage(store):
    pytest.importorskip("distributed")
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        res = uf.burn_flow.run(0.1, executor=f"dask://{cluster.scheduler_address[len('tcp://'):]}",
                               return_run=True)
    assert res.state is State.SUCCEEDED, res.error
    u = _usage(store, res.id)
    assert u["cpu_seconds"] >= 0.08


def test_worker_outcome_record_carries_usage(tmp_path, monkeypatch):
    """What every remote backend runs (gflow worker): the outcome record has the usage, the engine reads it."""
    from gflow.artifacts import open_artifacts
    from gflow.executors.base import Call
    from gflow.images.protocol import read_outcome, to_outcome, write_call_spec
    from gflow.images.worker import run_spec

    arts = open_artifacts(str(tmp_path / "arts"))
    spec = write_call_spec(arts, Call("r.1", "r", uf.hold, (210,), {}))
    assert run_spec(arts, spec) == 0
    rec = read_outcome(arts, spec)
    assert rec["usage"]["peak_memory_bytes"] >= 210 * MB
    out = to_outcome(arts, rec)
    assert out.ok and out.info["usage"]["peak_memory_bytes"] >= 210 * MB


def test_stored_usage_is_untrusted():
    bad = {"cpu_seconds": "1; drop", "wall_seconds": float("nan"), "peak_memory_bytes": -5, "scope": "x",
           "gpu_peak_memory_bytes": 10.0, "requested": {"cpu": "x", "spot": 1}, "evil": {"__class__": 1}}
    assert U.clean_usage(bad) == {"gpu_peak_memory_bytes": 10, "requested": {"spot": False}}
    assert U.clean_usage([1]) is None and U.usage_of("x") is None


class _FakeNvml(types.ModuleType):
    """A stand-in for nvidia-ml-py with one device whose used memory rises on each read."""

    def __init__(self, devices=1):
        super().__init__("pynvml")
        self.devices = devices
        self.used = 1_000

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        self.used += 1_000_000
        return types.SimpleNamespace(used=self.used)

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=73)


def test_gpu_peak_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml())
    monkeypatch.setattr(U, "_nvml", None)
    u = U.process_meter().stop(uf.hold)
    assert u["gpu_peak_memory_bytes"] >= 2_000_000 and u["gpu_utilization"] == 73


@pytest.mark.parametrize("mod", [None, "no-devices"])
def test_no_gpu_no_gpu_fields(monkeypatch, mod):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(0) if mod else None)  # None: the import fails
    monkeypatch.setattr(U, "_nvml", None)
    u = U.process_meter().stop(None)
    assert "gpu_peak_memory_bytes" not in u and "requested" not in u


# -- item 2: cost from the profile's price table ----------------------------------------------------------------

PRICES = "[profiles.default.prices]\nvcpu_hour = 0.04\ngib_hour = 0.005\ngpu_hour = 2.5\nspot_factor = 0.3\n"


@pytest.mark.parametrize("table, words", [
    ("vcpu_hour = -1\ngib_hour = 0\ngpu_hour = 0", "vcpu_hour is negative (-1); prices must be >= 0"),
    ("vcpu_hour = 1\ngib_hour = 0", "missing price 'gpu_hour'"),
    ("vcpu_hour = 1\ngib_hour = 0\ngpu_hour = '3'", "gpu_hour must be a number"),
    ("vcpu_hour = 1\ngib_hour = 0\ngpu_hour = 0\ncpu_hour = 2", "unknown key 'cpu_hour'"),
])
def test_bad_price_table_is_one_clear_line(gflow_home, table, words):
    from conftest import cli

    (gflow_home.parent / "gflow.toml").write_text(f"[profiles.default.prices]\n{table}\n")
    r = cli("runs", "ls", cwd=str(gflow_home.parent), env={"GFLOW_HOME": str(gflow_home)})
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "[prices]" in lines[0], r.stderr


def test_cost_of_an_attempt():
    p = U.parse_prices({"vcpu_hour": 0.04, "gib_hour": 0.005, "gpu_hour": 2.5, "spot_factor": 0.3})
    u = {"wall_seconds": 3600.0, "peak_memory_bytes": 2**29,
         "requested": {"cpu": 2.0, "memory_bytes": 4 * 2**30, "gpu": 1.0, "spot": False}}
    assert U.attempt_cost(u, p) == pytest.approx(2 * 0.04 + 4 * 0.005 + 2.5)
    spot = {**u, "requested": {**u["requested"], "spot": True}}
    assert U.attempt_cost(spot, p) == pytest.approx((2 * 0.04 + 4 * 0.005 + 2.5) * 0.3)
    # memory not asked for counts as the measured peak; a batch's calls share one measurement
    bare = {"wall_seconds": 1800.0, "peak_memory_bytes": 2**30, "requested": {"cpu": 1.0, "spot": False},
            "batch": 2}
    assert U.attempt_cost(bare, p) == pytest.approx(0.5 * (0.04 + 0.005) / 2)
    assert U.attempt_cost(u, None) is None and U.attempt_cost({"cpu_seconds": 1.0}, p) is None


def test_cost_per_attempt_task_map_and_run_in_graphql_runs_show_and_report(store, gflow_home):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("strawberry")
    from conftest import cli

    from gflow.report import render_report
    from gflow.server.app import create_app
    from gflow.server.testing import serve
    from gflow.store import open_store

    uf._tries["n"] = 0
    res = uf.burn_map.run(3, executor="local", return_run=True)
    flaky = uf.flaky_flow.run(executor="local", return_run=True)
    prices = U.parse_prices({"vcpu_hour": 3600.0, "gib_hour": 0, "gpu_hour": 0})  # 1 per CPU-second: easy sums
    q = """query($id: ID!, $t: ID!) {
      run(id: $id) { usage { currency total { calls measured cpuSeconds cost } tasks { name isMap calls cost } } }
      taskRun(id: $t) { cost attempts { attempt cpuSeconds wallSeconds peakMemoryBytes gpuPeakMemoryBytes cost } }
    }"""
    (ftr,) = store.task_runs(flaky.id)
    with serve(create_app(open_store(store.url), close_store=True, prices=prices)) as url:
        r = httpx.post(f"{url}/graphql", json={"query": q, "variables": {"id": res.id, "t": ftr.id}}, timeout=30)
    data = r.json()["data"]
    usage = data["run"]["usage"]
    walls = [U.usage_of(t.info)["wall_seconds"] for t in store.task_runs(res.id)]
    assert usage["currency"] == "USD" and usage["total"]["calls"] == 3 and usage["total"]["measured"] == 3
    assert usage["total"]["cost"] == pytest.approx(sum(walls))
    assert usage["tasks"] == [{"name": "burn", "isMap": True, "calls": 3, "cost": pytest.approx(sum(walls))}]
    atts = data["taskRun"]["attempts"]
    assert [a["attempt"] for a in atts] == [1, 2] and all(a["cpuSeconds"] is not None for a in atts)
    assert all(a["gpuPeakMemoryBytes"] is None for a in atts)
    assert data["taskRun"]["cost"] == pytest.approx(sum(a["cost"] for a in atts))

    (gflow_home.parent / "gflow.toml").write_text(PRICES)
    shown = cli("runs", "show", res.id, "--store", store.url, cwd=str(gflow_home.parent),
                env={"GFLOW_HOME": str(gflow_home)})
    assert shown.returncode == 0, shown.stderr
    assert "usage        CPU " in shown.stdout and "cost         0.0" in shown.stdout
    assert "burn (map of 3): CPU " in shown.stdout

    html = render_report(store, res.id, prices=prices)
    assert 'data-testid="cost-total"' in html and "cost-not-recorded" not in html
    assert "usage-not-recorded" not in html


def test_a_spawned_worker_does_not_report_its_big_parents_peak(tmp_path):
    """ru_maxrss of a spawned pool worker starts at its parent's (inherited at exec): a 5 MB call in a worker
    of a 600 MB driver read ~600 MB. The peak is the call's own (VmHWM after clear_refs)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "big_driver.py"
    script.write_text(
        "import os, sys\n"
        "import usage_flows as uf\n"
        "from gflow.store import open_store\n"
        "import gflow.usage as U\n"
        "if __name__ == '__main__':\n"
        "    big = bytearray(600 * 1024 * 1024)\n"
        "    for i in range(0, len(big), 4096):\n"
        "        big[i] = 1\n"
        "    res = uf.hold_flow.run(5, executor='local://processes?workers=1', return_run=True)\n"
        "    st = open_store(f\"sqlite:///{os.environ['GFLOW_HOME']}/gflow.db\")\n"
        "    print(max(U.usage_of(t.info)['peak_memory_bytes'] for t in st.task_runs(res.id) if U.usage_of(t.info)))\n")
    from conftest import RESOURCES, ROOT

    env = {**os.environ, "GFLOW_HOME": str(tmp_path / "home"),
           "PYTHONPATH": os.pathsep.join([str(RESOURCES), str(ROOT)])}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 200 * MB
