"""sbatch submissions, as plain functions over plain data: resources, arrays, logs, the worker command.

A fan-out is one job array. Element ``i`` runs ``gflow worker ARRAY_DIGEST`` (in the driver's environment:
``python -m gflow.executors.slurm.element ARRAY_DIGEST``, the same worker) and finds its call(s) by
``SLURM_ARRAY_TASK_ID`` (``gflow.images.worker.INDEX_VARS``); a single call is a plain job run with
``--index 0``. Each element writes its stdout and stderr to its own files in the log folder
(``%A_%a.out`` / ``.err`` for an array, ``%j.out`` / ``.err`` for a plain job).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gflow.errors import ConfigError

_MIB = 1 << 20
GPU_OPTIONS = ("gres", "gpus")


def array_option(indices: Sequence[int], throttle: int | None = None) -> str:
    """The value of ``--array``: ``0-(N-1)`` for a whole array, ``3,17,42`` (runs as ``a-b``) for some
    of its indices, with ``%K`` for at most K elements at once."""
    if not indices:
        raise ValueError("an array needs at least one index")
    parts: list[str] = []
    ordered = sorted(set(indices))
    start = prev = ordered[0]
    for i in [*ordered[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts) + (f"%{throttle}" if throttle else "")


def time_option(timeout: float | None, chunk: int = 1, margin: float = 60.0) -> str | None:
    """``--time`` in whole minutes from a task's timeout (seconds per call) for ``chunk`` calls per element,
    plus ``margin`` seconds: gflow's own timeout normally fires first; Slurm's is the backstop for a driver
    that is gone. None: no timeout (the partition's default limit applies)."""
    if not timeout:
        return None
    return str(max(1, math.ceil((timeout * chunk + margin) / 60)))


def job_name(prefix: str, label: str) -> str:
    """A job name without characters that trouble ``squeue`` output or shells."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{prefix}-{label}")[:100]


@dataclass
class Resources:
    """What one element asks Slurm for."""

    cpus: int = 1
    mem_mib: int | None = None
    gpus: int = 0
    gang_nodes: int = 0
    time_minutes: str | None = None

    @classmethod
    def of(cls, resources: object, *, timeout: float | None, chunk: int = 1, gang_nodes: int = 1,
           time_margin: float = 60.0) -> Resources:
        cpu = float(getattr(resources, "cpu", 1) or 1)
        mem = getattr(resources, "memory", None)
        gpu = int(getattr(resources, "gpu", 0) or 0)
        gang = bool(getattr(resources, "gang", False))
        return cls(cpus=max(1, math.ceil(cpu)), mem_mib=max(1, math.ceil(mem / _MIB)) if mem else None, gpus=gpu,
                   gang_nodes=max(1, gang_nodes) if gang else 0,
                   time_minutes=time_option(timeout, chunk, time_margin))

    def options(self, gpu_option: str = "gres") -> list[str]:
        if gpu_option not in GPU_OPTIONS:
            raise ConfigError(f"slurm executor: gpu_option must be one of {GPU_OPTIONS}, got {gpu_option!r}")
        out = [f"--cpus-per-task={self.cpus}"]
        if self.mem_mib:
            out.append(f"--mem={self.mem_mib}M")
        if self.gpus:
            out.append(f"--gres=gpu:{self.gpus}" if gpu_option == "gres" else f"--gpus={self.gpus}")
        if self.gang_nodes:
            out += [f"--nodes={self.gang_nodes}", f"--ntasks={self.gang_nodes}", "--ntasks-per-node=1"]
        if self.time_minutes:
            out.append(f"--time={self.time_minutes}")
        return out


@dataclass
class Script:
    """One sbatch submission: an array (``indices`` given) or a plain job (``indices`` None)."""

    name: str
    partition: str
    manifest: str
    log_dir: str
    resources: Resources
    indices: Sequence[int] | None = None
    throttle: int | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    constraint: str | None = None
    gpu_option: str = "gres"
    python: str = "python3"
    environment: dict[str, str] = field(default_factory=dict)
    container: str | None = None
    apptainer: str = "apptainer"
    image: str | None = None
    binds: Sequence[str] = ()
    extra: Sequence[str] = ()

    def directives(self) -> list[str]:
        out = [f"--job-name={self.name}", f"--partition={self.partition}"]
        for opt, value in (("account", self.account), ("qos", self.qos), ("reservation", self.reservation),
                           ("constraint", self.constraint)):
            if value:
                out.append(f"--{opt}={value}")
        if self.indices is not None:
            out.append(f"--array={array_option(self.indices, self.throttle)}")
            stem = f"{self.log_dir}/%A_%a"
        else:
            stem = f"{self.log_dir}/%j"
        out += [f"--output={stem}.out", f"--error={stem}.err", "--open-mode=append"]
        out += self.resources.options(self.gpu_option)
        out += list(self.extra)
        return out

    def command(self) -> list[str]:
        worker = ["worker", self.manifest] + ([] if self.indices is not None else ["--index", "0"])
        if self.container == "apptainer":
            if not self.image:
                raise ConfigError("slurm executor: container = \"apptainer\" needs an image reference for the task "
                                  "(image = \"REGISTRY/NAME:TAG\" in the [slurm] table, or a task image given as a "
                                  "reference string)")
            ref = self.image if "://" in self.image else f"docker://{self.image}"
            binds = [a for b in self.binds for a in ("--bind", b)]
            gpu = ["--nv"] if self.resources.gpus else []
            return [self.apptainer, "exec", *gpu, *binds, ref, "gflow", *worker]
        if self.container not in (None, ""):
            raise ConfigError(f"slurm executor: container must be \"apptainer\" or unset, got {self.container!r}")
        return [self.python, "-m", "gflow.executors.slurm.element", *worker[1:]]

    def render(self) -> str:
        """The script's text: the environment and the worker command (the directives go on sbatch's command
        line, :meth:`argv`, and are repeated here as a comment so the file tells how it was submitted)."""
        lines = ["#!/bin/bash", "# submitted by gflow as: sbatch --parsable " + " ".join(shlex.quote(d) for d in
                                                                                       self.directives()),
                 "# each element runs its call(s) by SLURM_ARRAY_TASK_ID (gflow worker)"]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(self.environment.items())]
        lines.append("exec " + " ".join(shlex.quote(a) for a in self.command()))
        return "\n".join(lines) + "\n"

    def argv(self, script_path: str, sbatch: str = "sbatch") -> list[str]:
        """The sbatch command that submits this script (``--parsable``: it prints ``JOBID[;CLUSTER]``)."""
        return [sbatch, "--parsable", *self.directives(), script_path]


def pythonpath(paths: Iterable[str], existing: str | None = None) -> str:
    """The driver's import path for the elements (its ``sys.path`` entries that are folders, then what
    ``PYTHONPATH`` already held), without duplicates, so tasks import exactly as they do in the driver."""
    import os

    out: list[str] = []
    for p in [*paths, *(existing.split(os.pathsep) if existing else [])]:
        p = os.path.abspath(p) if p else os.getcwd()
        if p not in out and os.path.isdir(p):
            out.append(p)
    return os.pathsep.join(out)
