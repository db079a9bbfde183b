"""The Slurm executor: ``executor="slurm://PARTITION?account=A&qos=Q&throttle=K"``.

Driven through Slurm's own commands on the machine where the driver runs (a login node): ``sbatch
--parsable`` per fan-out, one ``squeue`` per poll cycle for all of a run's jobs, ``sacct`` where
accounting is on, ``scancel``. No slurmrestd. Guide: ``docs/slurm.md``.

- Before the run is recorded (``preflight``; again at the first ``submit``): the commands are on PATH (else
  "run the driver on a login node"), the controller answers through munge, ``MaxArraySize`` and
  accounting are read from ``scontrol show config``, and ``sbatch --test-only`` checks the partition,
  account and QOS (Slurm's own message when it refuses them).
- A batch of calls of one task: one paged array manifest in the artifact store
  (:mod:`gflow.executors._batch`), one ``sbatch --array=0-(N-1)%K`` (split where N is above
  ``MaxArraySize``); a single call is a plain job. Element ``i`` runs ``python -m gflow worker MANIFEST``
  in the driver's Python environment and source tree (or ``apptainer exec docker://IMAGE gflow worker``),
  finding its call by ``SLURM_ARRAY_TASK_ID``.
- Retries of calls of one array are one array of only their indices (``--array=3,17,42``) over a manifest
  that holds the new attempts at the same positions, so their log files keep their index.
- Status and outcomes: :class:`~gflow.executors.slurm._status.SlurmHandler` on the shared
  :class:`~gflow.executors.polling.PollingMonitor`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from gflow.errors import ConfigError, ExecutorError
from gflow.executors._batch import RunArtifacts, group_by_task, per_job, split_sizes, write_paged_manifest
from gflow.executors.base import Call, Capabilities, Executor, JobStatus
from gflow.executors.events import Listener
from gflow.executors.polling import Cadence, PollingMonitor
from gflow.executors.slurm._commands import Slurm, parse_config, parse_job_id
from gflow.executors.slurm._options import merge, parse_url, render_url
from gflow.executors.slurm._script import GPU_OPTIONS, Resources, Script, job_name, pythonpath
from gflow.executors.slurm._status import Job, SlurmHandler, SlurmTracked, tail

log = logging.getLogger("gflow.executors.slurm")


def default_log_dir() -> str:
    """``$GFLOW_HOME/slurm/logs``: on a cluster the home folder is shared with the nodes."""
    from gflow.config import gflow_home

    return str(gflow_home() / "slurm" / "logs")


class SlurmExecutor(RunArtifacts, Executor):
    """Runs calls as Slurm jobs (job arrays for fan-outs). Options are described in docs/slurm.md.

    Args:
        partition: The partition (``slurm://PARTITION``).
        account, qos, reservation, constraint: Passed to sbatch as given.
        throttle: At most this many elements of one array run at once (``--array=...%K``).
        container: ``"apptainer"``: elements run ``apptainer exec docker://IMAGE gflow worker``; None: the
            driver's Python (``python``, default ``sys.executable``) with its ``sys.path``.
        image: The image reference for apptainer (else the task's image given as a reference string).
        log_dir: Where each element's stdout/stderr go (a folder the nodes share; default
            ``$GFLOW_HOME/slurm/logs``).
        gpu_option: ``"gres"`` (``--gres=gpu:N``) or ``"gpus"`` (``--gpus=N``).
        gang_nodes: Nodes of a gang task (``Resources(gang=True)``): ``--nodes=K --ntasks=K``.
        chunk: Calls per array element (for very short tasks).
        max_array_size: Elements per array (default: the cluster's ``MaxArraySize``).
        max_in_flight: Calls in flight at most (the engine keeps the rest).
        time_margin: Seconds added to a task's timeout for ``--time`` (gflow's own timeout fires first).
        sbatch_args: More sbatch options (a string, split like a shell would, or a list).
        environment: More environment for the elements.
        check: Check partition/account/QOS with ``sbatch --test-only`` before the first submission.
        slurm_env: Environment for Slurm's commands (e.g. ``SLURM_CONF``); not from URLs.
    """

    name = "slurm"
    capabilities = Capabilities(reports_start=True, array_jobs=True)

    def __init__(self, partition: str, *, account: str | None = None, qos: str | None = None,
                 throttle: int | None = None, container: str | None = None, apptainer: str = "apptainer",
                 image: str | None = None, image_registry: str | None = None, log_dir: str | None = None,
                 python: str | None = None, gpu_option: str = "gres", job_name_prefix: str = "gflow",
                 sbatch_args: str | Sequence[str] | None = None, environment: dict[str, str] | None = None,
                 chunk: int = 1, max_array_size: int | None = None, max_in_flight: int | None = None,
                 gang_nodes: int = 1, time_margin: float = 60.0, check: bool = True, array: bool = True,
                 reservation: str | None = None, constraint: str | None = None, poll_min: float = 1.0,
                 poll_max: float = 15.0, max_poll_errors: int = 10, artifacts: Any = None,
                 slurm_env: dict[str, str] | None = None, clock: Callable[[], float] | None = None):
        import shlex

        if not partition:
            raise ConfigError("slurm executor: no partition given (slurm://PARTITION)")
        if throttle is not None and throttle < 1:
            raise ConfigError(f"slurm executor: throttle must be at least 1, got {throttle}")
        if chunk < 1:
            raise ConfigError(f"slurm executor: chunk must be at least 1, got {chunk}")
        if max_array_size is not None and max_array_size < 1:
            raise ConfigError(f"slurm executor: max_array_size must be at least 1, got {max_array_size}")
        if container not in (None, "", "apptainer"):
            raise ConfigError(f"slurm executor: container must be \"apptainer\" or unset, got {container!r}")
        if gpu_option not in GPU_OPTIONS:
            raise ConfigError(f"slurm executor: gpu_option must be one of {', '.join(GPU_OPTIONS)}, got {gpu_option!r}")
        if not 0 < poll_min <= poll_max:
            raise ConfigError(f"slurm executor: need 0 < poll_min <= poll_max, got {poll_min}, {poll_max}")
        self.partition, self.account, self.qos = partition, account, qos
        self.reservation, self.constraint = reservation, constraint
        self.throttle, self.chunk, self.array = throttle, chunk, array
        self.container = container or None
        self.apptainer, self.image, self.image_registry = apptainer, image, image_registry
        self.log_dir = log_dir
        self.python = python or sys.executable
        self.gpu_option, self.gang_nodes, self.time_margin = gpu_option, gang_nodes, time_margin
        self.job_name_prefix = job_name_prefix
        self.sbatch_args = shlex.split(sbatch_args) if isinstance(sbatch_args, str) else list(sbatch_args or [])
        self.environment = {str(k): str(v) for k, v in (environment or {}).items()}
        self.max_array_size = max_array_size
        self.max_in_flight = max_in_flight or 1_000_000
        self.check = check
        self._use_artifacts(artifacts)
        self.slurm = Slurm(slurm_env)
        self.handler = SlurmHandler(self.slurm, lambda: self.artifacts)
        self.monitor = PollingMonitor(self.handler, cadence=Cadence(poll_min, poll_max), max_errors=max_poll_errors,
                                      fatal=(ConfigError,), clock=clock or time.monotonic)
        self.submissions: Counter[str] = Counter()  # sbatch calls that submitted work ("array", "job", "retry")
        self.submitted_at: float | None = None  # when the last sbatch of the last batch returned (benchmarks)
        self._placed: dict[str, tuple[Job, int, list[Call]]] = {}
        self._lock = threading.RLock()
        self._prepared = False
        self._closed = False

    @classmethod
    def from_spec(cls, spec: str, **settings: Any) -> SlurmExecutor:
        """``slurm://PARTITION?...`` over a profile's ``[slurm]`` table (the URL's own values win)."""
        return cls(**merge(spec, settings))

    @property
    def url(self) -> str:
        return render_url(self)

    # -- checks before anything is submitted ------------------------------------------------------------
    def prepare(self) -> None:
        """Commands on PATH, controller and munge answering, MaxArraySize and accounting read, partition/account/QOS
        accepted (``sbatch --test-only``). Once.

        Raises:
            ConfigError: naming what is wrong and the fix (Slurm's own message for what it refused).
        """
        with self._lock:
            if self._prepared:
                return
            for cmd in ("sbatch", "squeue", "scancel", "scontrol"):
                self.slurm.which(cmd)
            conf = parse_config(self.slurm.run(["scontrol", "show", "config"], what=" (reading the cluster's setup)"))
            try:
                cluster_max = int(conf.get("MaxArraySize", "1001"))
            except ValueError:
                cluster_max = 1001
            self.max_array_size = min(self.max_array_size or cluster_max, cluster_max)
            self.handler.accounting = conf.get("AccountingStorageType", "accounting_storage/none") not in (
                "accounting_storage/none", "")
            if self.check:
                self.slurm.run(["sbatch", "--test-only", *self._where(), "--wrap", "true"],
                               what=f" (checking partition {self.partition!r}"
                                    f"{f', account {self.account!r}' if self.account else ''}"
                                    f"{f', QOS {self.qos!r}' if self.qos else ''})")
            self._prepared = True

    def _where(self) -> list[str]:
        out = [f"--partition={self.partition}"]
        for opt, value in (("account", self.account), ("qos", self.qos), ("reservation", self.reservation)):
            if value:
                out.append(f"--{opt}={value}")
        return out

    def preflight(self) -> None:
        """Before the run is recorded: :meth:`prepare`, and an artifact store with a URL the nodes can open."""
        self.prepare()
        self._environment(self.artifacts)

    def image_tag_for(self, flow: Any) -> str | None:
        """Runs the checks (they are cached; the code is the driver's, so no image tag)."""
        self.prepare()
        return None

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self, listener: Listener) -> None:
        super().start(listener)
        self.monitor.start(listener)

    def _log_dir(self) -> str:
        d = os.path.abspath(os.path.expanduser(self.log_dir or default_log_dir()))
        os.makedirs(d, exist_ok=True)
        return d

    def _environment(self, arts: Any) -> dict[str, str]:
        url = str(getattr(arts, "url", "") or "")
        if not url:
            raise ConfigError(f"the slurm executor needs an artifact store with a URL the nodes can open, got {arts!r}")
        env = {"GFLOW_ARTIFACTS": url}
        if self.container is None:
            env["PYTHONPATH"] = pythonpath(sys.path, os.environ.get("PYTHONPATH"))
        return {**env, **self.environment}

    def _image(self, task: Any) -> str | None:
        img = task.options.image
        return img if isinstance(img, str) else self.image

    def _binds(self, arts: Any, log_dir: str) -> list[str]:
        root = getattr(arts, "root", None)
        return [p for p in (root, log_dir) if p]

    # -- submission -------------------------------------------------------------------------------------
    def submit(self, calls: Sequence[Call]) -> list[Any]:
        self.prepare()
        arts = self.artifacts
        env = self._environment(arts)
        log_dir = self._log_dir()
        handles: dict[str, SlurmTracked] = {}
        tracked: list[SlurmTracked] = []
        try:
            for group in group_by_task(calls):
                retry = self._retry_of(group)
                if retry is not None:
                    tracked += self._submit_retry(group, retry, arts, env, log_dir, handles)
                else:
                    tracked += self._submit_new(group, arts, env, log_dir, handles)
        except BaseException:
            # the engine fails the whole batch: what was submitted of it must not run on unseen
            if tracked:
                self.monitor.track(tracked, thread=False)
                self.monitor.cancel(tracked)
            raise
        self.monitor.track(tracked)
        self.submitted_at = time.time()
        return [handles[c.id] for c in calls]

    def reattach(self, calls: Sequence[Call], records: Sequence[Any]) -> list[Any]:
        """Follow the dead driver's Slurm jobs of ``calls`` (found by job name, each element by the call id its
        call spec names); None for calls whose job squeue no longer lists. See ``_reattach``."""
        from gflow.executors.slurm._reattach import reattach

        self.prepare()
        return reattach(self, calls, records)

    def _resources(self, task: Any, chunk: int | None = None) -> Resources:
        return Resources.of(task.options.resources, timeout=task.options.timeout, chunk=chunk or self.chunk,
                            gang_nodes=self.gang_nodes, time_margin=self.time_margin)

    def _sbatch(self, script: Script, log_dir: str, label: str) -> str:
        path = os.path.join(log_dir, f"{script.name}-{script.manifest.partition(':')[2][:12]}.sh")
        with open(path, "w") as f:
            f.write(script.render())
        what = f" (task '{label}', partition {self.partition!r})"
        return parse_job_id(self.slurm.run(script.argv(path), what=what))

    def _script(self, task: Any, manifest: str, log_dir: str, res: Resources, env: dict[str, str], arts: Any,
                indices: Sequence[int] | None, run_id: str) -> Script:
        return Script(name=job_name(self.job_name_prefix, f"{task.name}-{run_id}"), partition=self.partition,
                      manifest=manifest, log_dir=log_dir, resources=res, indices=indices,
                      throttle=self.throttle if indices is not None else None, account=self.account, qos=self.qos,
                      reservation=self.reservation, constraint=self.constraint, gpu_option=self.gpu_option,
                      python=self.python, environment=env, container=self.container, apptainer=self.apptainer,
                      image=self._image(task), binds=self._binds(arts, log_dir), extra=self.sbatch_args)

    def _submit_new(self, group: list[Call], arts: Any, env: dict[str, str], log_dir: str,
                    handles: dict[str, SlurmTracked]) -> list[SlurmTracked]:
        task = group[0].task
        k = per_job(task, len(group), self.chunk, self.max_array_size or 1001) if self.array else 1
        res = self._resources(task, k)
        out: list[SlurmTracked] = []
        parts = split_sizes(-(-len(group) // k), self.max_array_size or 1001) if self.array else [1] * len(group)
        start = 0
        for size in parts:
            part = group[start * k:(start + size) * k]
            start += size
            m = write_paged_manifest(arts, part, chunk=k)
            single = m.elements == 1 and len(part) == 1
            script = self._script(task, m.array, log_dir, res, env, arts, None if single else range(m.elements),
                                  part[0].run_id)
            job = Job(self._sbatch(script, log_dir, task.name), array=not single, manifest=m.array, log_dir=log_dir,
                      mem_mib=res.mem_mib, time_minutes=res.time_minutes, chunk=k)
            self.submissions["job" if single else "array"] += 1
            for pos, call in enumerate(part):
                t = SlurmTracked(call, job, pos // k, pos % k, m.specs[pos])
                job.elements.setdefault(t.index, []).append(t)
                handles[call.id] = t
                out.append(t)
                if job.array and k == 1:
                    self._placed[call.id] = (job, t.index, part)
        return out

    def _retry_of(self, group: list[Call]) -> tuple[Job, list[Call]] | None:
        """The array (and its calls by index) that every call of ``group`` ran in before, if there is one."""
        with self._lock:
            seen = [self._placed.get(c.id) for c in group]
        if not self.array or any(s is None for s in seen):
            return None
        jobs = {id(s[0]) for s in seen if s is not None}
        if len(jobs) != 1:
            return None
        job, _, calls = seen[0]  # type: ignore[misc]
        return job, calls

    def _submit_retry(self, group: list[Call], prev: tuple[Job, list[Call]], arts: Any, env: dict[str, str],
                      log_dir: str, handles: dict[str, SlurmTracked]) -> list[SlurmTracked]:
        """The failed calls of one array, again: one array of only their indices (``--array=3,17,42``) over a
        manifest with the new attempts at the same positions (the others are not run)."""
        _, calls = prev
        pos = {c.id: i for i, c in enumerate(calls)}
        merged = list(calls)
        for c in group:
            merged[pos[c.id]] = c
        task = group[0].task
        res = self._resources(task)
        m = write_paged_manifest(arts, merged, chunk=1)
        indices = sorted(pos[c.id] for c in group)
        script = self._script(task, m.array, log_dir, res, env, arts, indices, group[0].run_id)
        job = Job(self._sbatch(script, log_dir, task.name), array=True, manifest=m.array, log_dir=log_dir,
                  mem_mib=res.mem_mib, time_minutes=res.time_minutes)
        self.submissions["retry"] += 1
        out = []
        for c in group:
            i = pos[c.id]
            t = SlurmTracked(c, job, i, 0, m.specs[i])
            job.elements[i] = [t]
            handles[c.id] = t
            out.append(t)
            self._placed[c.id] = (job, i, merged)
        return out

    # -- the engine's other questions ---------------------------------------------------------------------
    def poll(self, handles: Sequence[Any]) -> list[JobStatus]:
        return [JobStatus(h.state) for h in handles]

    def cancel(self, handles: Sequence[Any]) -> None:
        self.monitor.cancel([h for h in handles if isinstance(h, SlurmTracked)])

    def capacity(self) -> int:
        return self.max_in_flight - len(self.monitor.live())

    def describe_handle(self, handle: Any) -> str:
        h: SlurmTracked = handle
        return f"slurm job={h.job_id}" + (f" call={h.pos}" if h.job.chunk > 1 else "")

    def pending_reasons(self) -> dict[str, str]:
        """Call id -> why it has not started (squeue's reason in words) for the calls still pending."""
        out = {}
        for t in self.monitor.live():
            if isinstance(t, SlurmTracked):
                why = self.handler.pending(t)
                if why:
                    out[t.call.id] = why
        return out

    @classmethod
    def fetch_logs(cls, spec: str, handle: str, info: dict[str, Any] | None = None) -> str | None:
        """An element's stdout and stderr files (from the task run's info, else its handle's job id and the log
        folder of the recorded executor URL); an ExecutorError says why when there are none."""
        info = info or {}
        out, err = info.get("stdout"), info.get("stderr")
        if not out:
            import re

            m = re.search(r"job=(\d+(?:_\d+)?)", handle or "")
            if not m:
                raise ExecutorError(f"no Slurm job id in the task run's handle {handle!r} or info")
            kw = parse_url(spec, require_partition=False) if spec.startswith("slurm://") else {}
            stem = os.path.join(os.path.expanduser(kw.get("log_dir") or default_log_dir()), m.group(1))
            out, err = f"{stem}.out", f"{stem}.err"
        parts = []
        for name, path in (("stdout", out), ("stderr", err)):
            if path and os.path.exists(path):
                parts.append(f"== {name} ({path}) ==\n{tail(path, 1 << 20)}")
        if not parts:
            raise ExecutorError(f"no Slurm output file at {out} or {err} on this host: the job never started, the "
                                f"files were deleted, or log_dir is on a file system this host does not mount")
        return "\n".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        live = self.monitor.live()
        if live:
            log.warning("closing with %d Slurm calls unfinished: cancelling their jobs", len(live))
            self.monitor.cancel(live)
        self.monitor.close()
