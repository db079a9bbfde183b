"""A stand-in for what Google Cloud Batch does with a job's tasks, against :class:`~tests.gcp_fake.server.FakeBatch`.

- ``runner="process"``: each task runs its container runnable's command as a local process (``python -m gflow
  COMMANDS`` for the image's ``gflow`` entrypoint, or the runnable's own entrypoint), with the job's
  environment plus ``BATCH_TASK_INDEX``, ``BATCH_TASK_COUNT`` and ``BATCH_TASK_RETRY_ATTEMPT``; the image is
  recorded (``images``), not pulled. At most ``min(parallelism, slots)`` tasks of a job run at once.
- ``runner="none"``: nothing runs; tests and benchmarks move tasks with :meth:`FakeBatchController.move`.
- A task's exit decides: 0 SUCCEEDED; an exit code a ``FAIL_TASK`` lifecycle policy names: FAILED at once; a
  ``RETRY_TASK`` one, or any other non-zero code while retries are left (``maxRetryCount``): run again; else
  FAILED. ``maxRunDuration`` kills a task (exit code 50005). :meth:`preempt` takes the task's Spot VM away
  (exit code 50001, retried like any failure while retries are left), as Batch reports a preemption.
- A deleted job's running tasks are killed, and it disappears after ``delete_delay`` seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .server import FakeBatch, Job, Task

PREEMPTED, TIMED_OUT = 50001, 50005


def _seconds(v: Any) -> float | None:
    if not v:
        return None
    return float(str(v).rstrip("s"))


class FakeBatchController:
    def __init__(self, fake: FakeBatch, *, runner: str = "process", slots: int = 4, tick: float = 0.02,
                 extra_env: dict[str, str] | None = None, delete_delay: float = 0.2,
                 python_path: list[str] | None = None):
        self.fake = fake
        self.runner = runner
        self.slots = slots
        self.tick = tick
        self.extra_env = dict(extra_env or {})
        self.python_path = list(python_path or [])
        self.delete_delay = delete_delay
        self.images: list[str] = []
        self.envs: list[dict[str, str]] = []
        self.logdir = tempfile.mkdtemp(prefix="fake-batch-")
        self._queue: dict[str, list[int]] = {}  # job name -> tasks to run (retries first), in order
        self._next: dict[str, int] = {}
        self._running: dict[str, dict[int, Task]] = {}
        self._deleted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-batch-controller", daemon=True)
        fake.listeners.append(self._on_event)

    def __enter__(self) -> FakeBatchController:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        with self.fake.lock:
            for tasks in self._running.values():
                for t in tasks.values():
                    if t.proc is not None and t.proc.poll() is None:
                        t.proc.kill()

    def _on_event(self, kind: str, job: Job) -> None:
        with self.fake.lock:
            if kind == "created":
                self.images.append(job.spec["runnables"][0].get("container", {}).get("imageUri", ""))
                self._queue[job.name] = []
                self._next[job.name] = 0
                self._running[job.name] = {}
            elif kind == "deleted":
                self._deleted[job.name] = time.monotonic()

    # -- for tests ---------------------------------------------------------------------------------------
    def move(self, job: Job, indexes: range | list[int], state: str, exit_code: int | None = None,
             description: str = "") -> None:
        """Move tasks to ``state`` by hand (``runner="none"``)."""
        with self.fake.lock:
            for i in indexes:
                job.move(job.task(i), state, description, exit_code)

    def preempt(self, job: Job, index: int) -> None:
        """Take task ``index``'s Spot VM away (it must be running)."""
        with self.fake.lock:
            t = self._running[job.name].get(index)
            if t is None:
                raise AssertionError(f"task {index} of {job.name} is not running")
            t.proc.kill()
            t.proc.wait()
            self._ended(job, t, PREEMPTED, "Task state is updated from RUNNING to FAILED on zones/"
                        f"{job.name.split('/')[3]}-a/instances/vm-{index} due to Spot VM preemption with exit "
                        f"code {PREEMPTED}.")

    def wait_running(self, job: Job, n: int = 1, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.fake.lock:
                if len(self._running.get(job.name, {})) >= n:
                    return
            time.sleep(0.02)
        raise AssertionError(f"{job.name}: fewer than {n} tasks running after {timeout}s")

    def log_of(self, job: Job, index: int) -> str:
        try:
            with open(os.path.join(self.logdir, f"{job.uid}-{index}.log")) as f:
                return f.read()
        except OSError:
            return ""

    # -- the loop ----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            with self.fake.lock:
                for name in list(self._running):
                    job = self.fake.jobs.get(name)
                    if job is None:
                        continue
                    if job.deleting:
                        self._kill_all(job)
                        if time.monotonic() - self._deleted.get(name, 0) >= self.delete_delay:
                            self.fake.forget(job)
                            self._running.pop(name, None)
                        continue
                    self._reap(job)
                    if self.runner == "process":
                        self._start(job)

    def _kill_all(self, job: Job) -> None:
        for t in list(self._running.get(job.name, {}).values()):
            if t.proc is not None and t.proc.poll() is None:
                t.proc.kill()
                t.proc.wait()
        self._running[job.name] = {}

    def _start(self, job: Job) -> None:
        running = self._running[job.name]
        limit = min(job.parallelism, self.slots)
        q = self._queue[job.name]
        while len(running) < limit:
            if q:
                i = q.pop(0)
            elif self._next[job.name] < job.count:
                i = self._next[job.name]
                self._next[job.name] += 1
            else:
                return
            t = job.task(i)
            job.move(t, "ASSIGNED")
            t.proc = self._spawn(job, t)
            t.started = time.monotonic()
            running[i] = t
            job.move(t, "RUNNING")

    def _spawn(self, job: Job, t: Task) -> Any:
        runnable = job.spec["runnables"][0]
        c = runnable.get("container") or {}
        env = {**os.environ, **self.extra_env}
        env.update((job.spec.get("environment") or {}).get("variables") or {})
        env.update((runnable.get("environment") or {}).get("variables") or {})
        env.update(BATCH_TASK_INDEX=str(t.index), BATCH_TASK_COUNT=str(job.count),
                   BATCH_TASK_RETRY_ATTEMPT=str(t.retries), BATCH_JOB_UID=job.uid)
        if self.python_path:
            env["PYTHONPATH"] = os.pathsep.join(self.python_path + [env.get("PYTHONPATH", "")])
        self.envs.append({k: v for k, v in env.items() if k.startswith(("BATCH_", "GFLOW_", "STORAGE_"))})
        entry = c.get("entrypoint")
        cmd = ([entry] if entry else [sys.executable, "-m", "gflow"]) + list(c.get("commands") or [])
        log = open(os.path.join(self.logdir, f"{job.uid}-{t.index}.log"), "ab")
        try:
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.logdir)
        finally:
            log.close()

    def _reap(self, job: Job) -> None:
        limit = _seconds(job.spec.get("maxRunDuration"))
        for t in list(self._running[job.name].values()):
            code = t.proc.poll()
            if code is None and limit is not None and time.monotonic() - t.started > limit:
                t.proc.kill()
                t.proc.wait()
                self._ended(job, t, TIMED_OUT, f"Task state is updated from RUNNING to FAILED: the task exceeded "
                                               f"its max run duration with exit code {TIMED_OUT}.")
            elif code is not None:
                self._ended(job, t, code)

    def _action(self, job: Job, code: int) -> str | None:
        for p in job.spec.get("lifecyclePolicies") or []:
            if code in [int(c) for c in (p.get("actionCondition") or {}).get("exitCodes") or []]:
                return str(p.get("action"))
        return None

    def _ended(self, job: Job, t: Task, code: int, description: str = "") -> None:
        self._running[job.name].pop(t.index, None)
        t.proc = None
        if code == 0:
            job.move(t, "SUCCEEDED", description, 0)
            return
        action = self._action(job, code)
        retries = int(job.spec.get("maxRetryCount") or 0)
        desc = description or f"Task state is updated from RUNNING to FAILED with exit code {code}."
        if action != "FAIL_TASK" and t.retries < retries:
            t.retries += 1
            job.move(t, "PENDING", f"{desc} Task is retried (attempt {t.retries + 1}).", code)
            self._queue[job.name].append(t.index)
            return
        job.move(t, "FAILED", desc, code)
