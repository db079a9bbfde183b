"""Reading Volcano Job and pod objects (raw dicts from the watch) into what gflow needs: a pod's phase, node,
exit code and the kubelet's or scheduler's reason; and the one-line errors for pods that ended or stalled
without an outcome record (each names the Job, the pod and the fix)."""

from __future__ import annotations

from dataclasses import dataclass

from gflow.executors.volcano._k8s import parse_time

#: Job phases after which Volcano starts no more pods
JOB_FINAL = frozenset({"Completed", "Failed", "Aborted", "Terminated"})
#: container waiting reasons that mean the image cannot be had (InvalidImageName never heals)
PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                         "RegistryUnavailable"})
CONFIG_ERRORS = frozenset({"CreateContainerConfigError", "CreateContainerError"})


@dataclass(slots=True)
class PodView:
    name: str
    phase: str
    node: str | None = None
    started: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    waiting: str | None = None  # a container waiting reason (ErrImagePull, ...)
    unschedulable: str | None = None  # the scheduler's message while it cannot place the pod
    deleting: bool = False

    @property
    def finished(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def pod_view(pod: dict) -> PodView:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    v = PodView(meta.get("name", ""), status.get("phase") or "Pending", node=(pod.get("spec") or {}).get("nodeName"),
                reason=status.get("reason"), message=status.get("message"),
                deleting=bool(meta.get("deletionTimestamp")))
    for cs in status.get("containerStatuses") or ():
        state = cs.get("state") or {}
        if "running" in state:
            v.started = parse_time(state["running"].get("startedAt"))
        elif "terminated" in state:
            t = state["terminated"]
            v.exit_code = t.get("exitCode")
            v.started = parse_time(t.get("startedAt"))
            v.reason = v.reason or t.get("reason")
            v.message = v.message or t.get("message")
        elif "waiting" in state:
            v.waiting = state["waiting"].get("reason")
            v.message = state["waiting"].get("message") or v.message
        break  # one container per pod
    if v.started is None and v.phase != "Pending":
        v.started = parse_time(status.get("startTime"))
    for c in status.get("conditions") or ():
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            v.unschedulable = c.get("message") or "no node fits the pod"
    return v


def job_phase(job: dict) -> tuple[str, str]:
    """(phase, 'reason: message') of a Volcano Job's status."""
    state = (job.get("status") or {}).get("state") or {}
    why = ": ".join(x for x in (state.get("reason"), state.get("message")) if x)
    return state.get("phase") or "Pending", why


def where(ns: str, job: str, pod: str) -> str:
    return f"pod {pod} of Volcano Job {ns}/{job}"


def ended_without_record(ns: str, job: str, v: PodView) -> tuple[str, str]:
    """(error type, one line) for a pod that ended without writing its outcome record."""
    at = where(ns, job, v.name)
    if v.reason == "Evicted":
        return ("gflow.PodEvicted", f"{at} was evicted by the kubelet ({v.message or 'node pressure'}); fix: raise "
                f"the task's Resources (memory) or give it retries")
    if v.reason == "OOMKilled":
        return ("gflow.OutOfMemory", f"{at} was killed: out of memory (exit code {v.exit_code}); fix: raise the "
                f"task's Resources.memory")
    if v.reason == "DeadlineExceeded":
        return ("gflow.TaskTimeout", f"{at} ran past its activeDeadlineSeconds and was stopped by the kubelet; "
                f"fix: raise the task's timeout")
    if v.phase == "Succeeded":
        return ("gflow.ExecutorError", f"{at} exited 0 but left no outcome record in the artifact store; fix: give "
                f"the pods the run's artifact store (a shared volume mounted at the same path, or an S3 URL)")
    return ("gflow.ExecutorError", f"{at} ended {v.phase} without an outcome record (exit code {v.exit_code}, "
            f"{v.reason or 'no reason given'}); fix: check that the image has gflow and the artifact store is "
            f"reachable from the pods (gflow logs --task-run shows the pod log)")


def unschedulable_error(ns: str, job: str, pod: str, seconds: float, message: str) -> str:
    return (f"{where(ns, job, pod)} could not be scheduled for {seconds:.0f}s: {message}; fix: ask for resources a "
            f"node of the queue has (Resources cpu/memory/gpu), or add nodes, tolerations or node selectors that "
            f"match them (the Job was deleted)")


def pull_error(ns: str, job: str, pod: str, image: str, reason: str, message: str | None) -> str:
    return (f"{where(ns, job, pod)} cannot pull image {image} ({reason}: {message or 'no detail'}); fix: push the "
            f"image to a registry the cluster reaches (gflow build --push REGISTRY) and give image_pull_secrets if "
            f"it is private (the Job was deleted)")


def config_error(ns: str, job: str, pod: str, reason: str, message: str | None) -> str:
    return (f"{where(ns, job, pod)} cannot start its container ({reason}: {message or 'no detail'}); fix: create "
            f"the secret, config map or volume it names (the Job was deleted)")


def gone_error(ns: str, job: str, pod: str, phase: str, why: str, evictions: int) -> str:
    extra = f" after {evictions} eviction(s)" if evictions else ""
    return (f"{where(ns, job, pod)} did not finish{extra}: the Job ended {phase}" + (f" ({why})" if why else "") +
            "; fix: raise max_retry if pods were evicted, or see the Job's events (kubectl describe vcjob)")


def deleted_error(ns: str, job: str, pod: str) -> str:
    return (f"Volcano Job {ns}/{job} was deleted while {pod} had not finished; fix: nothing in gflow deleted it: "
            f"check who did (kubectl get events -n {ns})")
