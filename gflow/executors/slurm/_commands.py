"""Slurm's own commands, run on the machine of the driver (a login node): ``sbatch --parsable``, one
``squeue`` per poll cycle, ``sacct`` where accounting is on, ``scancel``, ``scontrol show config``; their
machine formats parsed here, and their failures turned into gflow errors with Slurm's own message.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from gflow.errors import ConfigError, ExecutorError

#: squeue's fields (``--Format`` names), in order; ``:|`` ends each with a '|' and no padding
SQUEUE_FIELDS = ("JobID", "ArrayJobID", "ArrayTaskID", "State", "Reason", "exit_code", "StartTime", "EndTime",
                 "NodeList")
SACCT_FIELDS = ("JobID", "State", "ExitCode", "Start", "End", "NodeList", "Reason")
NOT_ON_PATH = ("{cmd} is not on PATH: run the driver on a login node of the Slurm cluster (where sbatch, squeue and "
               "scancel are installed), or put Slurm's bin folder on PATH")
_MUNGE = ("munge", "Munge", "MUNGE", "auth_g_", "Zero Bytes were transmitted", "Unable to contact slurm controller",
          "Socket timed out", "Connection refused")


@dataclass(slots=True)
class Row:
    """One line of squeue (or sacct): a plain job, one array element, or pending elements of an array.

    Attributes:
        job: The id gflow submitted under (the array's id for its elements).
        indices: Array indices the line stands for (``None``: a plain job).
        state: Slurm's job state (``PENDING``, ``RUNNING``, ``COMPLETED``, ``OUT_OF_MEMORY`` ...).
        reason: Why it is pending, or why it ended (``None`` is empty).
        exit_code: The exit status of the batch script (``None`` unknown), and ``signal`` that killed it.
        start, end: Seconds since the epoch, where Slurm says.
    """

    job: str
    indices: list[int] | None
    state: str
    reason: str = ""
    exit_code: int | None = None
    signal: int | None = None
    start: float | None = None
    end: float | None = None
    nodes: str = ""


def parse_indices(text: str) -> list[int]:
    """``3``, ``0-999%10``, ``3,17,42``, ``[3-5%2]`` -> the indices."""
    text = text.strip().strip("[]").split("%", 1)[0]
    out: list[int] = []
    for part in filter(None, text.split(",")):
        a, dash, b = part.partition("-")
        out.extend(range(int(a), int(b) + 1) if dash else [int(a)])
    return out


def parse_time(text: str) -> float | None:
    """Slurm's ``2026-12-06T02:36:25`` (the cluster's local time) -> seconds since the epoch."""
    text = text.strip()
    if not text or text in ("N/A", "Unknown", "None") or not text[:1].isdigit():
        return None
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _wait_status(text: str) -> tuple[int | None, int | None]:
    """squeue's ``exit_code`` (a raw wait status, ``768``) or sacct's ``ExitCode`` (``3:0``) -> (exit, signal)."""
    text = text.strip()
    if ":" in text:
        a, _, b = text.partition(":")
        return (int(a), int(b) or None) if a.isdigit() and b.isdigit() else (None, None)
    if not text.isdigit():
        return None, None
    status = int(text)
    return (status >> 8) & 0xFF, (status & 0x7F) or None


def parse_squeue(out: str) -> list[Row]:
    """Lines of ``squeue --noheader --Format=F1:|,F2:|,...`` (:data:`SQUEUE_FIELDS`) -> rows."""
    rows = []
    for line in out.splitlines():
        f = line.split("|")
        if len(f) < len(SQUEUE_FIELDS):
            continue
        job_id, array_job, task, state, reason, code, start, end, nodes = (x.strip() for x in f[:9])
        array = task not in ("N/A", "")
        exit_code, sig = _wait_status(code)
        rows.append(Row(job=array_job if array else job_id, indices=parse_indices(task) if array else None,
                        state=state.split()[0] if state else "UNKNOWN", reason="" if reason == "None" else reason,
                        exit_code=exit_code, signal=sig, start=parse_time(start), end=parse_time(end),
                        nodes="" if nodes in ("(null)", "N/A") else nodes))
    return rows


def parse_sacct(out: str) -> list[Row]:
    """Lines of ``sacct --parsable2 --noheader -X --format=...`` (:data:`SACCT_FIELDS`) -> rows."""
    rows = []
    for line in out.splitlines():
        f = line.split("|")
        if len(f) < len(SACCT_FIELDS):
            continue
        job_id, state, code, start, end, nodes, reason = (x.strip() for x in f[:7])
        job, us, idx = job_id.partition("_")
        exit_code, sig = _wait_status(code)
        rows.append(Row(job=job, indices=parse_indices(idx) if us else None,
                        state=state.split()[0] if state else "UNKNOWN", reason="" if reason == "None" else reason,
                        exit_code=exit_code, signal=sig, start=parse_time(start), end=parse_time(end),
                        nodes="" if nodes in ("None assigned", "(null)") else nodes))
    return rows


def parse_config(out: str) -> dict[str, str]:
    """``scontrol show config`` -> ``{name: value}``."""
    conf = {}
    for line in out.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() and " " not in key.strip():
            conf[key.strip()] = value.strip()
    return conf


def parse_job_id(out: str) -> str:
    """``sbatch --parsable`` prints ``JOBID`` or ``JOBID;CLUSTER``."""
    job = out.strip().splitlines()[-1].split(";", 1)[0].strip() if out.strip() else ""
    if not job.isdigit():
        raise ExecutorError(f"sbatch did not print a job id (it printed {out.strip()[:200]!r})")
    return job


class Slurm:
    """Runs Slurm commands (counting them) and translates their failures.

    Args:
        env: Extra environment for the commands (``SLURM_CONF`` of a test cluster).
        timeout: Seconds one command may take.
    """

    def __init__(self, env: dict[str, str] | None = None, timeout: float = 60.0):
        self.env = dict(env or {})
        self.timeout = timeout
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def which(self, cmd: str) -> str:
        path = (self.env.get("PATH") or os.environ.get("PATH")) or None
        found = shutil.which(cmd, path=path)
        if found is None:
            raise ConfigError(NOT_ON_PATH.format(cmd=cmd))
        return found

    def run(self, argv: Sequence[str], *, what: str = "", tolerate: tuple[str, ...] = ()) -> str:
        """Run ``argv`` and return its stdout (empty where it failed with a message in ``tolerate``).

        Raises:
            ConfigError: the command is missing, or munge / the controller does not answer.
            ExecutorError: anything else it refused, with Slurm's own message.
        """
        cmd = argv[0]
        exe = self.which(cmd)
        with self._lock:
            self.calls[cmd] += 1
        try:
            p = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=self.timeout,
                               env={**os.environ, **self.env} if self.env else None)
        except subprocess.TimeoutExpired:
            raise ExecutorError(f"{cmd} did not answer in {self.timeout:g} s{what}: the Slurm controller may be "
                                f"overloaded") from None
        except OSError as e:
            raise ExecutorError(f"cannot run {cmd}{what}: {e}") from None
        if p.returncode != 0:
            if any(m in p.stderr for m in tolerate):
                return p.stdout
            raise error_of(cmd, p.stderr or p.stdout, what)
        return p.stdout


def error_of(cmd: str, stderr: str, what: str = "") -> Exception:
    """The gflow error for a failed Slurm command, with Slurm's own message (its last meaningful lines)."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    msg = "; ".join(lines[-2:])[:500] or "no message"
    if any(m in stderr for m in _MUNGE):
        return ConfigError(f"{cmd} cannot reach the Slurm controller{what}: {msg} (is munged running on this host, "
                           f"with the cluster's key? 'munge -n | unmunge' tests it; 'scontrol ping' tests the "
                           f"controller)")
    low = stderr.lower()
    if any(s in low for s in ("invalid partition", "invalid account", "invalid qos", "invalid reservation",
                              "invalid feature", "invalid generic resource", "job violates accounting", "time limit",
                              "requested node configuration is not available")):
        return ConfigError(f"Slurm refused the job{what}: {msg}")
    return ExecutorError(f"{cmd} failed{what}: {msg}")
