"""A test controller playing Volcano (job controller + scheduler) and the kubelet of one node, against
:class:`~tests.k8s_fake.server.FakeKube`. It is a stand-in: what it does mirrors Volcano's behaviour for
what gflow relies on, in a few hundred lines.

- For each new Job it creates the pods ``JOB-TASK-INDEX`` of every task (labels ``volcano.sh/job-name``,
  ``volcano.sh/task-spec``, an owner reference), adding ``VC_TASK_INDEX``/``VK_TASK_INDEX`` when the ``env``
  plugin is on.
- The scheduler binds pods to ``node-1`` while they fit its CPUs, memory, GPUs, labels and pod slots; one that
  never fits (or waits for a slot) gets the ``PodScheduled=False, Unschedulable`` condition with the
  scheduler's message. A gang Job (``minAvailable`` > 1) is bound all at once or not at all.
- The kubelet runs each bound pod's container command as a local process with the pod's env (``runner=
  "process"``; the image's environment is this Python's, plus ``extra_env``), or calls the gflow worker in
  this process (``runner="inline"``, for benchmarks). Images in ``bad_images`` fail to pull (ErrImagePull).
  It enforces ``activeDeadlineSeconds`` and the container's memory limit (a process whose resident memory
  passes it is killed: exit 137, reason ``OOMKilled``, as the kernel's cgroup OOM killer does), keeps each
  pod's log for ``/log``; a failed container's last log
  lines become its termination message (``FallbackToLogsOnError``).
- :meth:`evict` kills a pod the way a preemption or drain does (deleted: Volcano's ``PodEvicted`` policy
  restarts it, up to ``maxRetry``) or the way node pressure does (``kubelet=True``: phase Failed, reason
  Evicted, no restart). Job status (phase, counts, retryCount) follows the pods; deleting a Job deletes its
  pods in the background.
"""

from __future__ import annotations

import copy
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from .server import FakeKube, now_rfc3339


def _qty(v: Any) -> float:
    s = str(v)
    for suf, mul in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("m", 1e-3)):
        if s.endswith(suf):
            return float(s[: -len(suf)]) * mul
    return float(s)


class _Run:
    __slots__ = ("deadline", "limit", "log", "proc", "started")

    def __init__(self, proc: Any, log: str, started: float, deadline: float | None, limit: float | None = None):
        self.proc, self.log, self.started, self.deadline, self.limit = proc, log, started, deadline, limit


def _rss(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


class FakeVolcano:
    def __init__(self, kube: FakeKube, *, cpu: float = 64, memory: float = 256 * 2**30, gpu: int = 0,
                 labels: dict[str, str] | None = None, slots: int = 4, runner: str = "process",
                 extra_env: dict[str, str] | None = None, bad_images: tuple[str, ...] = ()):
        self.kube = kube
        self.cap = {"cpu": cpu, "memory": memory, "nvidia.com/gpu": gpu}
        self.node_labels = {"kubernetes.io/hostname": "node-1", **(labels or {})}
        self.slots = slots
        self.runner = runner
        self.extra_env = dict(extra_env or {})
        self.bad_images = set(bad_images)
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.runs: dict[tuple[str, str], _Run] = {}
        self.bound: set[tuple[str, str]] = set()
        self.retries: dict[tuple[str, str], int] = {}
        # indexes kept from the store's change feed (under _idx; never call the store while holding it)
        self._idx = threading.Lock()
        self.phase: dict[tuple[str, str], str] = {}
        self.members: dict[tuple[str, str], set[str]] = {}
        self.pending: dict[tuple[str, str], None] = {}
        self._dirty_jobs: set[tuple[str, str]] = set()
        self._wake = True
        self.logdir = tempfile.mkdtemp(prefix="fake-kubelet-")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-volcano", daemon=True)
        kube.listeners.append(self._on_change)

    def __enter__(self) -> FakeVolcano:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for run in self.runs.values():
            if run.proc is not None and run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()

    # -- events from the store (called under the store's lock: only queue them) -----------------------
    def _on_change(self, kind: str, etype: str, obj: dict) -> None:
        meta = obj["metadata"]
        if kind == "jobs" and etype in ("ADDED", "DELETED"):
            self.q.put((etype, meta["namespace"], meta["name"]))
        if kind != "pods":
            return
        key = (meta["namespace"], meta["name"])
        jk = (meta["namespace"], (meta.get("labels") or {}).get("volcano.sh/job-name", ""))
        with self._idx:
            if etype == "DELETED":
                self.phase.pop(key, None)
                self.pending.pop(key, None)
                self.members.get(jk, set()).discard(meta["name"])
                self._wake = True
            else:
                new = obj["status"]["phase"]
                if self.phase.get(key) != new:
                    self.phase[key] = new
                    self._dirty_jobs.add(jk)
                self.members.setdefault(jk, set()).add(meta["name"])
                if etype == "ADDED" and new == "Pending":
                    self.pending[key] = None
                    self._wake = True
                elif new != "Pending":
                    self.pending.pop(key, None)
            self._dirty_jobs.add(jk)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                while True:
                    etype, ns, name, *rest = self.q.get_nowait()
                    if etype == "ADDED":
                        self._create_pods(ns, name)
                    elif etype == "EVICT":
                        self._evict(ns, name, kubelet=rest[0])
                    else:
                        self._delete_pods(ns, name)
            except queue.Empty:
                pass
            try:
                with self._idx:
                    wake, self._wake = self._wake, False
                if wake:
                    self._schedule()
                self._reap()
                with self._idx:
                    dirty, self._dirty_jobs = self._dirty_jobs, set()
                for ns, job in dirty:
                    self._sync_job(ns, job)
            except Exception:  # noqa: BLE001 - a stand-in must not die silently mid-test
                import traceback

                traceback.print_exc()
            self._stop.wait(0.01)

    # -- Volcano's job controller ---------------------------------------------------------------------
    def _pods_of(self, ns: str, job: str) -> list[tuple[str, str]]:
        """(name, phase) of the job's pods."""
        with self._idx:
            return [(n, self.phase.get((ns, n), "Pending")) for n in sorted(self.members.get((ns, job), ()))]

    def _create_pods(self, ns: str, name: str, only: set[str] | None = None) -> None:
        job = self.kube.get("jobs", ns, name)
        if job is None:
            return
        spec = job["spec"]
        env_plugin = "env" in (spec.get("plugins") or {})
        for task in spec["tasks"]:
            for i in range(task.get("replicas", 0)):
                pod_name = f"{name}-{task['name']}-{i}"
                if (only is not None and pod_name not in only) or self.kube.get("pods", ns, pod_name) is not None:
                    continue
                tmpl = copy.deepcopy(task["template"])
                meta = tmpl.get("metadata") or {}
                pod_spec = tmpl["spec"]
                if env_plugin:
                    for c in pod_spec["containers"]:
                        c["env"] = [*(c.get("env") or []), {"name": "VC_TASK_INDEX", "value": str(i)},
                                    {"name": "VK_TASK_INDEX", "value": str(i)}]
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                    "name": pod_name, "namespace": ns,
                    "labels": {**(meta.get("labels") or {}), "volcano.sh/job-name": name,
                               "volcano.sh/task-spec": task["name"], "volcano.sh/queue-name": spec.get("queue")},
                    "annotations": {**(meta.get("annotations") or {}), "volcano.sh/job-name": name,
                                    "volcano.sh/task-spec": task["name"], "volcano.sh/task-index": str(i),
                                    "scheduling.k8s.io/group-name": f"{name}-{job['metadata']['uid']}"},
                    "ownerReferences": [{"apiVersion": "batch.volcano.sh/v1alpha1", "kind": "Job", "name": name,
                                         "uid": job["metadata"]["uid"], "controller": True}]},
                    "spec": pod_spec, "status": {"phase": "Pending", "conditions": []}}
                self.kube.put("pods", pod, "ADDED")
        self._sync_job(ns, name)

    def _delete_pods(self, ns: str, name: str) -> None:
        for pod, _ in self._pods_of(ns, name):
            self._kill(ns, pod)
            self.kube.delete("pods", ns, pod)

    def _sync_job(self, ns: str, name: str, phase: str | None = None, message: str = "") -> None:
        pods = self._pods_of(ns, name)
        count = {k: sum(ph == k for _, ph in pods) for k in ("Pending", "Running", "Succeeded", "Failed")}

        def fn(job: dict) -> None:
            st = job.setdefault("status", {})
            old = (st.get("state") or {}).get("phase")
            if old in ("Failed", "Aborted", "Terminated"):
                return
            new = phase
            total = sum(t.get("replicas", 0) for t in job["spec"]["tasks"])
            if new is None:
                done = count["Succeeded"] + count["Failed"]
                new = ("Completed" if count["Failed"] == 0 else "Failed") if total and done == total and \
                    len(pods) == total else "Running" if count["Running"] or done else "Pending"
            st.update({"pending": count["Pending"], "running": count["Running"], "succeeded": count["Succeeded"],
                       "failed": count["Failed"], "retryCount": self.retries.get((ns, name), 0)})
            if new != old or message:
                st["state"] = {"phase": new, "lastTransitionTime": now_rfc3339(),
                               **({"reason": "PodEvicted", "message": message} if message else {})}

        job = self.kube.get("jobs", ns, name)
        if job is not None:
            before = job.get("status")
            probe = copy.deepcopy(job)
            fn(probe)
            if probe.get("status") != before:
                self.kube.update("jobs", ns, name, fn)

    def evict(self, ns: str, pod: str, *, kubelet: bool = False) -> None:
        """Evict a pod: deleted (preemption/drain: Volcano's PodEvicted policy applies) or, with ``kubelet``,
        failed with reason Evicted (node pressure: Volcano sees a failed pod and restarts nothing)."""
        self.q.put(("EVICT", ns, pod, kubelet))

    def _evict(self, ns: str, pod: str, *, kubelet: bool) -> None:
        self._kill(ns, pod)
        if kubelet:
            def fn(p: dict) -> None:
                p["status"].update({"phase": "Failed", "reason": "Evicted", "message":
                                    "The node was low on resource: memory. Threshold quantity: 100Mi."})
                p["status"]["containerStatuses"] = [{"name": "worker", "ready": False, "restartCount": 0, "state": {
                    "terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_rfc3339()}}}]
            obj = self.kube.update("pods", ns, pod, fn)
            if obj is not None:
                self._sync_job(ns, obj["metadata"]["labels"]["volcano.sh/job-name"])
            return
        obj = self.kube.delete("pods", ns, pod)
        if obj is None:
            return
        job_name = obj["metadata"]["labels"]["volcano.sh/job-name"]
        task_name = obj["metadata"]["labels"]["volcano.sh/task-spec"]
        job = self.kube.get("jobs", ns, job_name)
        if job is None:
            return
        task = next(t for t in job["spec"]["tasks"] if t["name"] == task_name)
        action = next((p.get("action") for p in task.get("policies") or job["spec"].get("policies") or ()
                       if p.get("event") == "PodEvicted"), None)
        key = (ns, job_name)
        self.retries[key] = self.retries.get(key, 0) + 1
        if action is None:
            return self._sync_job(ns, job_name)
        if self.retries[key] > job["spec"].get("maxRetry", 3):
            for p, ph in self._pods_of(ns, job_name):
                if ph not in ("Succeeded", "Failed"):
                    self._kill(ns, p)
                    self.kube.delete("pods", ns, p)
            return self._sync_job(ns, job_name, "Failed", f"retried {self.retries[key] - 1} times (maxRetry)")
        if action == "RestartTask":  # every unfinished pod of the task goes, then all come back
            for p, ph in self._pods_of(ns, job_name):
                if p.startswith(f"{job_name}-{task_name}-") and ph not in ("Succeeded", "Failed"):
                    self._kill(ns, p)
                    self.kube.delete("pods", ns, p)
            self._create_pods(ns, job_name)
        elif action == "RestartPod":
            self._create_pods(ns, job_name, only={pod})

    # -- scheduler and kubelet ------------------------------------------------------------------------
    def _requests(self, pod: dict) -> dict[str, float]:
        req: dict[str, float] = {}
        for c in pod["spec"]["containers"]:
            for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
                req[k] = req.get(k, 0) + _qty(v)
        return req

    def _misfit(self, pod: dict) -> str | None:
        sel = pod["spec"].get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in sel.items()):
            return "0/1 nodes are unavailable: 1 node(s) didn't match Pod's node affinity/selector."
        for k, v in self._requests(pod).items():
            if v > self.cap.get(k, 0):
                return f"0/1 nodes are unavailable: 1 Insufficient {k}."
        return None

    def _set_unschedulable(self, pod: dict, message: str) -> None:
        conds = pod["status"].get("conditions") or []
        if any(c.get("reason") == "Unschedulable" and c.get("message") == message for c in conds):
            return

        def fn(p: dict) -> None:
            p["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                          "message": message, "lastTransitionTime": now_rfc3339()}]
        self.kube.update("pods", pod["metadata"]["namespace"], pod["metadata"]["name"], fn)

    def _schedule(self) -> None:
        with self._idx:
            keys = [k for k in self.pending if k not in self.bound]
        pending = [p for p in (self.kube.get("pods", ns, n) for ns, n in keys) if p is not None]
        free = self.slots - len(self.bound)
        gangs: dict[str, list[dict]] = {}
        for p in pending:
            why = self._misfit(p)
            if why:
                self._set_unschedulable(p, why)
                continue
            job = self.kube.get("jobs", p["metadata"]["namespace"], p["metadata"]["labels"]["volcano.sh/job-name"])
            if job is not None and job["spec"].get("minAvailable", 1) > 1:
                gangs.setdefault(job["metadata"]["name"], []).append(p)
                continue
            if free <= 0:
                self._set_unschedulable(p, "0/1 nodes are unavailable: 1 Too many pods.")
                continue
            free -= 1
            self._bind(p)
        for members in gangs.values():
            if len(members) <= free:
                free -= len(members)
                for p in members:
                    self._bind(p)
            else:
                for p in members:
                    self._set_unschedulable(p, f"0/1 nodes are unavailable: 1 Too many pods. (gang of {len(members)}"
                                               f" waits for {len(members)} slots)")

    def _bind(self, pod: dict) -> None:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        self.bound.add((ns, name))
        container = pod["spec"]["containers"][0]
        if container["image"] in self.bad_images:
            def pull_failed(p: dict) -> None:
                p["spec"]["nodeName"] = "node-1"
                p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
                p["status"]["containerStatuses"] = [{"name": "worker", "ready": False, "restartCount": 0, "state": {
                    "waiting": {"reason": "ErrImagePull", "message": f'rpc error: code = NotFound desc = failed to '
                                f'pull and unpack image "{container["image"]}": not found'}}}]
            self.kube.update("pods", ns, name, pull_failed)
            return
        started = time.time()
        log = os.path.join(self.logdir, f"{ns}_{name}.log")
        env = {**os.environ, **self.extra_env,
               "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
               **{e["name"]: e.get("value", "") for e in container.get("env") or ()}}
        proc = None
        if self.runner == "process":
            with open(log, "wb") as f:
                proc = subprocess.Popen([*container.get("command", []), *container.get("args", [])], env=env,
                                        stdout=f, stderr=subprocess.STDOUT, cwd=self.logdir)
        ads = pod["spec"].get("activeDeadlineSeconds")
        mem = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        self.runs[(ns, name)] = _Run(proc, log, started, started + ads if ads else None,
                                     _qty(mem) if mem is not None else None)

        def running(p: dict) -> None:
            p["spec"]["nodeName"] = "node-1"
            p["status"].update({"phase": "Running", "startTime": now_rfc3339(started), "hostIP": "10.0.0.1",
                                "conditions": [{"type": "PodScheduled", "status": "True"}],
                                "containerStatuses": [{"name": "worker", "ready": True, "restartCount": 0, "state": {
                                    "running": {"startedAt": now_rfc3339(started)}}}]})
        self.kube.update("pods", ns, name, running)
        if self.runner == "inline":
            self._finish(ns, name, self._inline(container, env))

    def _inline(self, container: dict, env: dict) -> int:
        from gflow.artifacts import open_artifacts
        from gflow.images.worker import run_spec

        args = container["args"]
        index = int(args[args.index("--index") + 1]) if "--index" in args else int(env.get("VC_TASK_INDEX", "0"))
        return run_spec(open_artifacts(args[args.index("--artifacts") + 1]), args[1], index)

    def _reap(self) -> None:
        now = time.time()
        for (ns, name), run in list(self.runs.items()):
            if run.proc is None:
                continue
            code = run.proc.poll()
            if code is None and run.limit is not None and _rss(run.proc.pid) > run.limit:
                run.proc.kill()
                run.proc.wait()
                self._finish(ns, name, 137, term_reason="OOMKilled")
            elif code is None and run.deadline is not None and now > run.deadline:
                run.proc.kill()
                run.proc.wait()
                self._finish(ns, name, 137, reason="DeadlineExceeded")
            elif code is not None:
                self._finish(ns, name, code)

    def _finish(self, ns: str, name: str, code: int, reason: str | None = None,
                term_reason: str | None = None) -> None:
        run = self.runs.pop((ns, name), None)
        self.bound.discard((ns, name))
        self._wake = True
        text = ""
        if run is not None and os.path.exists(run.log):
            with open(run.log, errors="replace") as f:
                text = f.read()
        self.kube.logs[(ns, name)] = text
        tail = "\n".join(text.splitlines()[-80:])[-2048:]

        def fn(p: dict) -> None:
            term = {"exitCode": code, "reason": term_reason or ("Completed" if code == 0 else "Error"),
                    "startedAt": now_rfc3339(run.started if run else None), "finishedAt": now_rfc3339()}
            if code and tail:
                term["message"] = tail
            p["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            if reason:
                p["status"].update({"reason": reason, "message": "Pod was active on the node longer than the "
                                    "specified deadline"})
            p["status"]["containerStatuses"] = [{"name": "worker", "ready": False, "restartCount": 0,
                                                 "state": {"terminated": term}}]
        self.kube.update("pods", ns, name, fn)

    def _kill(self, ns: str, name: str) -> None:
        run = self.runs.pop((ns, name), None)
        self.bound.discard((ns, name))
        self._wake = True
        if run is not None and run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
