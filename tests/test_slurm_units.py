"""The Slurm executor's pure parts: sbatch scripts, squeue/sacct/scontrol parsing, the state -> gflow error
map, pending reasons, URL and profile options. (Behaviour on a real cluster: tests/test_slurm.py.)"""

from __future__ import annotations

import pytest

import gflow
from gflow.errors import ConfigError, ExecutorError, NodeFailure, OutOfMemory, Preempted, TaskTimeout
from gflow.executors import get_executor
from gflow.executors.slurm import SlurmExecutor
from gflow.executors.slurm._commands import (
    Row,
    error_of,
    parse_config,
    parse_indices,
    parse_job_id,
    parse_sacct,
    parse_squeue,
)
from gflow.executors.slurm._options import merge, parse_url
from gflow.executors.slurm._script import Resources, Script, array_option, time_option
from gflow.executors.slurm._status import failure, pending_text
from gflow.images.worker import array_index


def test_array_option_whole_throttled_and_retried_indices():
    assert array_option(range(1000), 50) == "0-999%50"
    assert array_option([3, 17, 42]) == "3,17,42"
    assert array_option([42, 3, 4, 5, 17]) == "3-5,17,42"
    assert array_option([7]) == "7"


def test_time_from_timeout_in_whole_minutes_with_a_margin():
    assert time_option(None) is None
    assert time_option(3) == "2"  # 3 s + 60 s margin -> 2 minutes
    assert time_option(600, chunk=2, margin=0) == "20"


def test_resources_become_sbatch_options():
    r = Resources.of(gflow.Resources(cpu=2.5, memory="3Gi", gpu=2, gang=True), timeout=120, gang_nodes=4)
    opts = r.options()
    assert opts == ["--cpus-per-task=3", "--mem=3072M", "--gres=gpu:2", "--nodes=4", "--ntasks=4",
                    "--ntasks-per-node=1", "--time=3"]
    assert "--gpus=2" in r.options("gpus")
    with pytest.raises(ConfigError, match="gpu_option"):
        r.options("cards")
    assert Resources.of(gflow.Resources(), timeout=None).options() == ["--cpus-per-task=1"]


def _script(**kw) -> Script:
    base = {"name": "gflow-t-run", "partition": "gpu", "manifest": "sha256:" + "a" * 64, "log_dir": "/shared/logs",
            "resources": Resources(cpus=1, mem_mib=512), "indices": range(10), "throttle": 4, "account": "lab",
            "qos": "high", "python": "/opt/py/bin/python", "environment": {"GFLOW_ARTIFACTS": "file:///shared/a b"}}
    return Script(**{**base, **kw})


def test_array_script_and_its_sbatch_command():
    s = _script()
    argv = s.argv("/shared/logs/x.sh")
    assert argv[:2] == ["sbatch", "--parsable"] and argv[-1] == "/shared/logs/x.sh"
    assert {"--partition=gpu", "--account=lab", "--qos=high", "--array=0-9%4", "--output=/shared/logs/%A_%a.out",
            "--error=/shared/logs/%A_%a.err", "--mem=512M"} <= set(argv)
    text = s.render()
    assert "export GFLOW_ARTIFACTS='file:///shared/a b'" in text
    assert text.rstrip().endswith(f"exec /opt/py/bin/python -m gflow.executors.slurm.element sha256:{'a' * 64}")


def test_plain_job_script_runs_index_zero():
    s = _script(indices=None, throttle=None)
    assert "--output=/shared/logs/%j.out" in s.directives() and not any("--array" in d for d in s.directives())
    assert s.command()[-2:] == ["--index", "0"]


def test_apptainer_wraps_the_worker_in_the_image():
    s = _script(container="apptainer", image="ghcr.io/lab/design:abc", binds=["/shared/arts", "/shared/logs"],
                resources=Resources(cpus=1, gpus=1))
    assert s.command() == ["apptainer", "exec", "--nv", "--bind", "/shared/arts", "--bind", "/shared/logs",
                           "docker://ghcr.io/lab/design:abc", "gflow", "worker", "sha256:" + "a" * 64]
    with pytest.raises(ConfigError, match="needs an image reference"):
        _script(container="apptainer", image=None).command()


def test_array_index_reads_slurm_array_task_id():
    assert array_index(None, {"SLURM_ARRAY_TASK_ID": "17"}) == 17


def test_parse_squeue_rows_pending_ranges_and_wait_status():
    out = ("3|3|N/A|COMPLETED|None|0|2026-12-06T02:36:25|2026-12-06T02:36:26|gflow-node|\n"
           "6|1|2|FAILED|NonZeroExitCode|768|2026-12-06T02:36:25|2026-12-06T02:36:25|gflow-node|\n"
           "1|1|3-5%3|PENDING|JobArrayTaskLimit|0|N/A|N/A||\n"
           "9|1|7|OUT_OF_MEMORY|OutOfMemory|9|2026-12-06T02:36:25|2026-12-06T02:36:27|n1|\n")
    rows = parse_squeue(out)
    assert [(r.job, r.indices, r.state) for r in rows] == [
        ("3", None, "COMPLETED"), ("1", [2], "FAILED"), ("1", [3, 4, 5], "PENDING"), ("1", [7], "OUT_OF_MEMORY")]
    assert rows[1].exit_code == 3 and rows[1].reason == "NonZeroExitCode" and rows[1].start
    assert rows[3].signal == 9 and rows[3].nodes == "n1"
    assert rows[0].reason == "" and rows[2].start is None


def test_parse_sacct_config_and_job_id():
    rows = parse_sacct("12_4|CANCELLED by 1000|0:15|2026-12-06T02:00:00|2026-12-06T02:01:00|n2|None\n"
                       "13|TIMEOUT|0:0|2026-12-06T02:00:00|2026-12-06T03:00:00|n3|TimeLimit\n")
    assert (rows[0].job, rows[0].indices, rows[0].state, rows[0].signal) == ("12", [4], "CANCELLED", 15)
    assert (rows[1].job, rows[1].indices, rows[1].state) == ("13", None, "TIMEOUT")
    conf = parse_config("Configuration data as of 2026\nMaxArraySize            = 1001\n"
                        "AccountingStorageType   = accounting_storage/none\n")
    assert conf["MaxArraySize"] == "1001" and conf["AccountingStorageType"] == "accounting_storage/none"
    assert parse_job_id("1234;cluster\n") == "1234" and parse_job_id("77\n") == "77"
    with pytest.raises(ExecutorError, match="did not print a job id"):
        parse_job_id("sbatch: warning: something\n")
    assert parse_indices("[0-2,9%2]") == [0, 1, 2, 9]


def test_slurm_errors_become_gflow_errors_with_slurms_message():
    e = error_of("sbatch", "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert isinstance(e, ConfigError) and "Invalid partition name specified" in str(e)
    e = error_of("sbatch", "sbatch: error: Batch job submission failed: Invalid account or account/partition "
                           "combination specified\n")
    assert isinstance(e, ConfigError) and "Invalid account" in str(e)
    e = error_of("sbatch", "sbatch: error: Batch job submission failed: Invalid qos specification\n")
    assert isinstance(e, ConfigError) and "qos" in str(e)
    e = error_of("squeue", "squeue: error: Munge encode failed: Failed to access \"/run/munge/munge.socket.2\"\n")
    assert isinstance(e, ConfigError) and "munged" in str(e)
    assert type(error_of("scancel", "scancel: error: Kill job error on job id 5: Access denied")) is ExecutorError


@pytest.mark.parametrize("state, cls, words", [
    ("OUT_OF_MEMORY", OutOfMemory, "more memory than --mem=100M"),
    ("TIMEOUT", TaskTimeout, "time limit (--time=2 min)"),
    ("NODE_FAIL", NodeFailure, "failed while running it"),
    ("BOOT_FAIL", NodeFailure, "failed while running it"),
    ("PREEMPTED", Preempted, "preempted"),
    ("CANCELLED", ExecutorError, "cancelled outside gflow"),
    ("FAILED", ExecutorError, "ended FAILED with exit code 2"),
])
def test_each_slurm_state_is_a_gflow_class_with_one_line(state, cls, words):
    row = Row(job="5", indices=[3], state=state, exit_code=2, nodes="n7")
    error, message = failure(state, row, "5_3", mem_mib=100, time_minutes="2", log_tail="")
    assert (type(error) if isinstance(error, BaseException) else error) is cls
    assert words in message and "5_3" in message and "\n" not in message


def test_out_of_memory_from_jobacct_gather_is_recognised_by_slurmstepds_message():
    row = Row(job="5", indices=None, state="CANCELLED")
    error, _ = failure("CANCELLED", row, "5", mem_mib=None, time_minutes=None,
                       log_tail="slurmstepd: error: Exceeded job memory limit\n")
    assert isinstance(error, OutOfMemory)


@pytest.mark.parametrize("reason, words", [
    ("ReqNodeNotAvail", "down, drained or reserved"), ("AssocGrpCpuLimit", "account's CPU limit"),
    ("PartitionConfig", "more than the partition allows"), ("QOSMaxJobsPerUserLimit", "per user"),
    ("ReqNodeNotAvail, UnavailableNodes:n[1-3]", "down, drained"),
])
def test_pending_reasons_in_words(reason, words):
    assert pending_text(reason).startswith(reason) and words in pending_text(reason)


def test_url_options_and_profile_table():
    assert parse_url("slurm://gpu?account=lab&qos=high&throttle=8&env.OMP_NUM_THREADS=1") == {
        "partition": "gpu", "account": "lab", "qos": "high", "throttle": 8, "environment": {"OMP_NUM_THREADS": "1"}}
    kw = merge("slurm://gpu?throttle=2", {"throttle": 5, "account": "lab", "logs": "/shared/logs"})
    assert kw == {"partition": "gpu", "throttle": 2, "account": "lab", "log_dir": "/shared/logs"}
    with pytest.raises(ConfigError, match="unknown option 'acount'"):
        parse_url("slurm://gpu?acount=lab")
    with pytest.raises(ConfigError, match="names no partition"):
        merge("slurm://", {})
    with pytest.raises(ConfigError, match="unknown keys"):
        merge("slurm://gpu", {"queue": "x"})
    with pytest.raises(ConfigError, match="is not a number"):
        parse_url("slurm://gpu?throttle=many")


def test_registered_by_url_with_its_table():
    ex = get_executor("slurm://debug?qos=q", {"account": "lab", "throttle": 3})
    assert isinstance(ex, SlurmExecutor) and (ex.partition, ex.account, ex.qos, ex.throttle) == ("debug", "lab",
                                                                                               "q", 3)
    assert ex.url.startswith("slurm://debug?") and "throttle=3" in ex.url
    ex.close()


@pytest.mark.parametrize("kw, words", [({"throttle": 0}, "throttle"), ({"chunk": 0}, "chunk"),
                                       ({"container": "docker"}, "apptainer"), ({"gpu_option": "x"}, "gpu_option")])
def test_bad_options_are_one_clear_line(kw, words):
    with pytest.raises(ConfigError, match=words):
        SlurmExecutor("debug", **kw)


def test_element_entry_point_refuses_bad_arguments_in_one_line(capsys):
    from gflow.executors.slurm.element import main

    assert main([]) == 2 and main(["sha256:x", "--index", "one"]) == 2
    err = capsys.readouterr().err
    assert err.count("usage: python -m gflow.executors.slurm.element SPEC_DIGEST [--index N]") == 2


def test_element_entry_point_does_not_load_the_driver_side():
    import subprocess
    import sys

    code = ("import sys, gflow.executors.slurm.element as e; "
            "print(sorted(m for m in sys.modules if m.startswith(('gflow.executors.slurm.', 'click', 'rich'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['gflow.executors.slurm.element']"
