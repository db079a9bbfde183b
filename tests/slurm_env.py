"""A real single-node Slurm cluster for the tests, in a temporary folder.

Debian's ``slurm-wlm`` and ``munge`` (scripts/apt-packages.txt): a ``munged`` with its own key and socket,
a ``slurmctld`` and a ``slurmd`` on free loopback ports, all their state, logs and spool under one folder,
and the Slurm commands pointed at it by ``SLURM_CONF``. Nothing is written to /etc.

Choices (docs/slurm.md, "What the tests cover"):
- ``ProctrackType=proctrack/linuxproc``, ``TaskPlugin=task/none``: no cgroups needed in a container.
- ``SelectType=select/cons_tres`` and ``SlurmdParameters=config_overrides``: the node declares
  :data:`CPUS` CPUs whatever the machine has, so arrays run wide.
- ``JobAcctGatherType=jobacct_gather/linux`` + ``JobAcctGatherParams=OverMemoryKill``: ``--mem`` is
  enforced by sampling (every second), so a task that allocates past it ends OUT_OF_MEMORY.
- No slurmdbd: ``AccountingStorageType=accounting_storage/none`` (``sacct`` answers "accounting storage
  is disabled"), ``JobCompType=jobcomp/filetxt`` keeps a completion log. Finished jobs stay visible to
  ``squeue --states=all`` for ``MinJobAge`` seconds, which is where the executor reads terminal states
  when accounting is off.
- Partitions: ``debug`` (default) and ``tiny`` (``MaxTime=1``); accounts and QOS are not enforced
  without slurmdbd, so "unknown account" cannot be tested here (it can on a real cluster).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

CPUS = 16
MEMORY_MB = 16000
PARTITION = "debug"
MIN_JOB_AGE = 3600
NEEDED = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol")
_SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in _SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing() -> list[str]:
    """Programs of slurm-wlm/munge that are not installed (empty: the cluster can start)."""
    return [n for n in NEEDED if _which(n) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root`` (a temporary folder); :meth:`stop` ends them.

    Attributes:
        conf: The slurm.conf path (``SLURM_CONF`` for the commands).
        env: Environment for Slurm commands (``SLURM_CONF``).
    """

    def __init__(self, root: Path, *, cpus: int = CPUS, memory_mb: int = MEMORY_MB, min_job_age: int = MIN_JOB_AGE):
        self.root = Path(root)
        self.cpus, self.memory_mb, self.min_job_age = cpus, memory_mb, min_job_age
        self.host = socket.gethostname().split(".")[0]
        self.node = "gflow-node"
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.procs: dict[str, subprocess.Popen] = {}
        self.env = {"SLURM_CONF": str(self.conf)}

    # -- configuration --------------------------------------------------------------------------------
    def write_config(self) -> None:
        r = self.root
        for d in ("munge", "state", f"spool/{self.node}", "log", "out"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o711)
        ctl, slurmd = free_port(), free_port()
        node = (f"NodeName={self.node} NodeHostname={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} "
                f"RealMemory={self.memory_mb} State=UNKNOWN")
        self.conf.write_text(f"""\
ClusterName=gflowtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctl}
SlurmdPort={slurmd}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd-%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.txt
MinJobAge={self.min_job_age}
MaxArraySize=1001
MaxJobCount=100000
KillWait=2
InactiveLimit=0
ReturnToService=2
SchedulerParameters=bf_interval=1
DefMemPerCPU=100
SchedulerType=sched/backfill
MpiDefault=none
LaunchParameters=use_interactive_step
PropagateResourceLimits=NONE
{node}
PartitionName={PARTITION} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=tiny Nodes={self.node} Default=NO MaxTime=1 State=UP
""")

    # -- processes -------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
                             start_new_session=True)
        log.close()
        self.procs[name] = p
        return p

    def start(self, timeout: float = 30.0) -> SlurmCluster:
        self.write_config()
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        m = self.root / "munge"
        self._spawn("munged", [_which("munged") or "munged", "--foreground", "--force", f"--key-file={key}",
                               f"--socket={self.munge_socket}", f"--pid-file={m}/munged.pid",
                               f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed", "--num-threads=2"])
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged socket")
        self._spawn("slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self._idle, timeout, "the node to be idle")
        return self

    def _idle(self) -> bool:
        p = self.run(["sinfo", "-h", "-N", "-o", "%T"], check=False)
        return p.returncode == 0 and bool(p.stdout.split()) and set(p.stdout.split()) <= {"idle", "mixed", "allocated"}

    def _wait(self, ok, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}:\n{self.logs()}")
            if ok():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out waiting for {what}:\n{self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")) + [self.root / "munge" / "munged.log"]:
            if f.is_file():
                out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)

    def run(self, argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run a Slurm command against this cluster."""
        exe = _which(argv[0]) or argv[0]  # found even where a test emptied PATH
        return subprocess.run([exe, *argv[1:]], capture_output=True, text=True, env={**os.environ, **self.env},
                              check=check, timeout=timeout)

    def cancel_all(self) -> None:
        self.run(["scancel", "--full", "--partition", PARTITION], check=False)
        self.run(["scancel", "--full", "--partition", "tiny"], check=False)

    def stop(self) -> None:
        self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()
