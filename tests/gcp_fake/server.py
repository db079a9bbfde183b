"""A fake Google Cloud Batch v1 REST server on 127.0.0.1 for the gcp-batch executor's tests (Google ships no
Batch emulator). It speaks the REST paths and JSON the official ``google-cloud-batch`` client uses with
``transport="rest"``:

- ``POST   /v1/projects/P/locations/R/jobs?jobId=ID``   jobs.create: the body is checked against the v1 Job
  message (the client package's own protobuf types: a field the v1 API does not have is refused with 400
  INVALID_ARGUMENT, as Google's front end does), and against Batch's limits: 100,000 tasks per task group,
  5,000 parallel tasks, a 1 MB job definition, known machine types, job ids of ``[a-z][a-z0-9-]{0,62}``.
- ``GET    .../jobs/ID``                                 jobs.get (status: state, per-group task counts)
- ``GET    .../jobs``                                    jobs.list (pages)
- ``DELETE .../jobs/ID``                                 jobs.delete (a long-running operation; the job's
  running tasks are killed and the job disappears)
- ``GET    .../jobs/ID/taskGroups/group0/tasks``         tasks.list (pages; ``filter=State=S`` as v1 documents it)
- ``GET    .../jobs/ID/taskGroups/group0/tasks/N``       tasks.get

Errors have Google's JSON shape (``{"error": {"code", "message", "status", "details": [ErrorInfo]}}``), so
``google-api-core`` raises its own exception classes with ``reason`` set. ``disabled`` answers every request
with 403 SERVICE_DISABLED (the API is not enabled in the project); ``regions`` limits the locations;
``mutations_per_minute`` / ``reads_per_minute`` answer 429 RESOURCE_EXHAUSTED past Batch's quotas (6,000 and
15,000 by default, per region); ``faults`` injects answers. ``requests`` counts calls by operation. What
happens to the tasks is :mod:`tests.gcp_fake.controller`'s.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

MAX_TASKS = 100_000
MAX_PARALLEL = 5_000
MAX_JOB_BYTES = 1 << 20
_BASE = r"^/v1/projects/([^/]+)/locations/([^/]+)"
_JOBS = re.compile(_BASE + r"/jobs(?:/([^/]+))?$")
_TASKS = re.compile(_BASE + r"/jobs/([^/]+)/taskGroups/([^/]+)/tasks(?:/([^/]+))?$")
_JOB_ID = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 409: "ALREADY_EXISTS",
           429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}
#: machine type families Compute Engine offers (the fake refuses others, as Batch does)
MACHINE = re.compile(r"^(e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|c4|t2d|t2a|m1|m2|m3|a2|a3|g2|h3)-"
                     r"(standard|highmem|highcpu|highgpu|ultragpu|megagpu|medium|small|micro|custom)(-\d+)?(-lssd)?$")
REGIONS = ("us-central1", "us-east1", "europe-west4", "asia-southeast1")


def now_rfc3339(t: float | None = None) -> str:
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


class ApiError(Exception):
    def __init__(self, code: int, message: str, reason: str = ""):
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason

    def body(self) -> dict:
        err: dict[str, Any] = {"code": self.code, "message": self.message, "status": _STATUS.get(self.code, "UNKNOWN")}
        if self.reason:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": self.reason,
                               "domain": "googleapis.com", "metadata": {"service": "batch.googleapis.com"}}]
        return {"error": err}


@dataclass
class Fault:
    """Answer ``times`` requests of operation ``op`` (``create``, ``get``, ``list``, ``delete``, ``tasks.list``,
    ``tasks.get``) with ``code`` (``times`` None: every one). ``after``: do the work first, then answer with
    the error (an answer lost on the way)."""

    op: str
    code: int
    message: str = "injected"
    reason: str = ""
    times: int | None = 1
    after: bool = False


def schema_errors(body: Any) -> list[str]:
    """What in ``body`` is not a v1 Job (unknown fields, wrong types), by the client package's protobuf types."""
    from google.cloud import batch_v1
    from google.protobuf import json_format

    if not isinstance(body, dict):
        return ["the request body is not a JSON object"]
    try:
        json_format.ParseDict(body, batch_v1.Job.pb()(), ignore_unknown_fields=False)
    except json_format.ParseError as e:
        return [str(e)]
    return []


def normalized(body: dict) -> dict:
    """``body`` as the API keeps it: camelCase names, enums by name (the client sends them as numbers)."""
    from google.cloud import batch_v1
    from google.protobuf import json_format

    return json_format.MessageToDict(json_format.ParseDict(body, batch_v1.Job.pb()()))


class Task:
    """One task of a job (made when first touched: a 100,000-task job keeps only the tasks that moved)."""

    __slots__ = ("events", "exit_code", "index", "proc", "retries", "started", "state")

    def __init__(self, index: int):
        self.index = index
        self.state = "PENDING"
        self.events: list[dict] = []
        self.retries = 0
        self.proc: Any = None
        self.started = 0.0
        self.exit_code: int | None = None


class Job:
    def __init__(self, name: str, body: dict):
        self.name = name
        self.body = body
        self.uid = f"{name.rsplit('/', 1)[1][:40]}-{uuid.uuid4().hex[:8]}"
        self.created = time.time()
        self.state = "QUEUED"
        group = body["taskGroups"][0]
        self.count = int(group.get("taskCount") or 1)
        self.parallelism = int(group.get("parallelism") or 0) or self.count
        self.spec = group.get("taskSpec") or {}
        self.tasks: dict[int, Task] = {}
        self.counts: Counter[str] = Counter({"PENDING": self.count})
        self.events: list[dict] = []
        self.deleting = False

    def task(self, i: int) -> Task:
        t = self.tasks.get(i)
        if t is None:
            t = self.tasks[i] = Task(i)
        return t

    def move(self, t: Task, state: str, description: str = "", exit_code: int | None = None) -> None:
        """Move task ``t`` (the server's lock held)."""
        if t.state == state:
            return
        ev: dict[str, Any] = {"type": "STATUS_CHANGED", "eventTime": now_rfc3339(), "taskState": state,
                              "description": description or f"Task state is updated from {t.state} to {state}"}
        if exit_code is not None:
            ev["taskExecution"] = {"exitCode": exit_code}
            t.exit_code = exit_code
        self.counts[t.state] -= 1
        if not self.counts[t.state]:
            del self.counts[t.state]
        self.counts[state] += 1
        t.state = state
        t.events.append(ev)
        if state == "RUNNING" and self.state in ("QUEUED", "SCHEDULED"):
            self.state = "RUNNING"
        done = self.counts.get("SUCCEEDED", 0) + self.counts.get("FAILED", 0)
        if done == self.count and self.state not in ("SUCCEEDED", "FAILED"):
            self.state = "FAILED" if self.counts.get("FAILED") else "SUCCEEDED"
            self.events.append({"type": "STATUS_CHANGED", "eventTime": now_rfc3339(),
                                "description": f"Job state is set from RUNNING to {self.state}"})

    def resource(self, full: bool = True) -> dict:
        counts = {k: str(v) for k, v in self.counts.items() if v}
        status = {"state": self.state, "statusEvents": self.events[-10:],
                  "taskGroups": {"group0": {"counts": counts, "instances": []}}}
        out = {**self.body, "name": self.name, "uid": self.uid, "createTime": now_rfc3339(self.created),
               "updateTime": now_rfc3339(), "status": status}
        if not full:
            out.pop("taskGroups", None)
        return out

    def task_resource(self, t: Task) -> dict:
        return {"name": f"{self.name}/taskGroups/group0/tasks/{t.index}",
                "status": {"state": t.state, "statusEvents": t.events}}


class FakeBatch:
    """The fake Batch v1 API (a context manager serving on 127.0.0.1). ``jobs`` by full name."""

    def __init__(self, *, regions: tuple[str, ...] = REGIONS, disabled: bool = False,
                 mutations_per_minute: int = 6000, reads_per_minute: int = 15000,
                 clock: Any = time.monotonic):
        self.regions = set(regions)
        self.disabled = disabled
        self.limits = {"mutation": mutations_per_minute, "read": reads_per_minute}
        self.clock = clock
        self.lock = threading.RLock()
        self.jobs: dict[str, Job] = {}
        self.requests: Counter[str] = Counter()
        self.refused: list[tuple[str, int, str]] = []
        self.faults: list[Fault] = []
        self._window: dict[str, deque] = {"mutation": deque(), "read": deque()}
        self.listeners: list[Any] = []  # called with (event, job) on "created" / "deleted"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                url = urlparse(self.path)
                try:
                    code, out = fake.handle(self.command, url.path, parse_qs(url.query), raw)
                except ApiError as e:
                    code, out = e.code, e.body()
                    with fake.lock:
                        fake.refused.append((f"{self.command} {url.path}", e.code, e.message))
                data = json.dumps(out).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-batch", daemon=True)

    def __enter__(self) -> FakeBatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- requests ----------------------------------------------------------------------------------------
    def _count(self, op: str, kind: str) -> Fault | None:
        """Count a request; raise an injected fault or 429 past the quota; return a fault to raise after the work."""
        with self.lock:
            self.requests[op] += 1
            for f in self.faults:
                if f.op == op and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    if f.after:
                        return f
                    raise ApiError(f.code, f.message, f.reason)
            now = self.clock()
            w = self._window[kind]
            while w and now - w[0] >= 60:
                w.popleft()
            if len(w) >= self.limits[kind]:
                self.requests["throttled"] += 1
                raise ApiError(429, f"Quota exceeded for quota metric '{kind} requests' and limit "
                                    f"'{kind} requests per minute per region' of service 'batch.googleapis.com'",
                               "RATE_LIMIT_EXCEEDED")
            w.append(now)
        return None

    def handle(self, method: str, path: str, query: dict[str, list[str]], raw: bytes) -> tuple[int, dict]:
        if path == "/_fake/move" and method == "POST":  # benchmarks move tasks in a fake run in another process
            req = json.loads(raw)
            with self.lock:
                job = self.jobs[req["job"]]
                for i in range(req["start"], req["stop"]):
                    job.move(job.task(i), req["state"], "", req.get("exitCode"))
            return 200, {}
        if path == "/_fake/requests":
            with self.lock:
                return 200, dict(self.requests)
        m = _TASKS.match(path)
        if m:
            project, region, job_id, group, index = m.groups()
            op = "tasks.get" if index else "tasks.list"
            self._count(op, "read")
            self._location(project, region)
            job = self._job(project, region, job_id)
            if group != "group0":
                raise ApiError(404, f"task group {group} not found")
            with self.lock:
                if index:
                    if not index.isdigit() or int(index) >= job.count:
                        raise ApiError(404, f"task {index} not found")
                    return 200, job.task_resource(job.tasks.get(int(index)) or Task(int(index)))
                return 200, self._list_tasks(job, query)
        m = _JOBS.match(path)
        if not m:
            raise ApiError(404, f"no such method: {method} {path}")
        project, region, job_id = m.groups()
        if method == "POST" and not job_id:
            lost = self._count("create", "mutation")
            self._location(project, region)
            out = self._create(project, region, (query.get("jobId") or [""])[0], raw)
            if lost is not None:
                raise ApiError(lost.code, lost.message, lost.reason)
            return 200, out
        if method == "GET" and job_id:
            self._count("get", "read")
            self._location(project, region)
            with self.lock:
                return 200, self._job(project, region, job_id).resource()
        if method == "GET":
            self._count("list", "read")
            self._location(project, region)
            return 200, self._list_jobs(project, region, query)
        if method == "DELETE" and job_id:
            self._count("delete", "mutation")
            self._location(project, region)
            return 200, self._delete(self._job(project, region, job_id))
        raise ApiError(404, f"no such method: {method} {path}")

    def _location(self, project: str, region: str) -> None:
        if self.disabled:
            raise ApiError(403, f"Batch API has not been used in project {project} before or it is disabled. Enable "
                                f"it by visiting https://console.developers.google.com/apis/api/batch.googleapis.com/"
                                f"overview?project={project} then retry.", "SERVICE_DISABLED")
        if region not in self.regions:
            raise ApiError(404, f"Location {region} is not found or access is unauthorized.")

    def _job(self, project: str, region: str, job_id: str) -> Job:
        job = self.jobs.get(f"projects/{project}/locations/{region}/jobs/{job_id}")
        if job is None:
            raise ApiError(404, f"Job projects/{project}/locations/{region}/jobs/{job_id} not found")
        return job

    def _create(self, project: str, region: str, job_id: str, raw: bytes) -> dict:
        if len(raw) > MAX_JOB_BYTES:
            raise ApiError(400, f"the job definition is {len(raw)} bytes; the limit is 1 MB")
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            raise ApiError(400, "Invalid JSON payload received.") from None
        errors = schema_errors(body)
        if errors:
            raise ApiError(400, f"Invalid JSON payload received. {errors[0]}")
        body = normalized(body)
        if not _JOB_ID.match(job_id):
            raise ApiError(400, f"job_id {job_id!r} must match [a-z]([a-z0-9-]{{0,61}}[a-z0-9])?")
        groups = body.get("taskGroups") or []
        if len(groups) != 1:
            raise ApiError(400, "exactly one task group is supported")
        g = groups[0]
        count, par = int(g.get("taskCount") or 1), int(g.get("parallelism") or 0)
        if count > MAX_TASKS:
            raise ApiError(400, f"task_count {count} exceeds the limit of {MAX_TASKS} tasks per task group")
        if par > MAX_PARALLEL:
            raise ApiError(400, f"parallelism {par} exceeds the limit of {MAX_PARALLEL} parallel tasks per job")
        runnables = (g.get("taskSpec") or {}).get("runnables") or []
        if not runnables:
            raise ApiError(400, "task_spec.runnables must not be empty")
        for inst in (body.get("allocationPolicy") or {}).get("instances") or []:
            mt = (inst.get("policy") or {}).get("machineType")
            if mt and not MACHINE.match(mt):
                raise ApiError(400, f"Invalid value for field 'machineType': '{mt}'. Machine type {mt} does not exist.")
        for k, v in (body.get("labels") or {}).items():
            if not re.match(r"^[a-z][a-z0-9_-]{0,62}$", k) or not re.match(r"^[a-z0-9_-]{0,63}$", str(v)):
                raise ApiError(400, f"invalid label {k}={v}: keys and values are lowercase letters, digits, _ and -")
        name = f"projects/{project}/locations/{region}/jobs/{job_id}"
        with self.lock:
            if name in self.jobs:
                raise ApiError(409, f"Job {name} already exists")
            job = self.jobs[name] = Job(name, body)
            out = job.resource()
        for cb in self.listeners:
            cb("created", job)
        return out

    def _list_jobs(self, project: str, region: str, query: dict[str, list[str]]) -> dict:
        prefix = f"projects/{project}/locations/{region}/jobs/"
        size = int((query.get("pageSize") or ["100"])[0])
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        with self.lock:
            names = sorted(n for n in self.jobs if n.startswith(prefix))
            page = [self.jobs[n].resource() for n in names[start:start + size]]
        out: dict[str, Any] = {"jobs": page}
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        return out

    def _list_tasks(self, job: Job, query: dict[str, list[str]]) -> dict:
        size = max(1, min(int((query.get("pageSize") or ["100"])[0]), 1000))
        start = int((query.get("pageToken") or ["0"])[0] or 0)
        flt = (query.get("filter") or [""])[0]
        want = None
        if flt:
            m = re.match(r'^(?:State|status\.state)\s*=\s*"?([A-Z_]+)"?$', flt.strip())  # v1's documented form
            if not m:
                raise ApiError(400, f"unsupported filter {flt!r}")
            want = m.group(1)
        if want == "PENDING":
            idx = [i for i in range(job.count) if i not in job.tasks or job.tasks[i].state == "PENDING"]
        elif want:
            idx = sorted(i for i, t in job.tasks.items() if t.state == want)
        else:
            idx = list(range(job.count))
        page = [job.task_resource(job.tasks.get(i) or Task(i)) for i in idx[start:start + size]]
        out: dict[str, Any] = {"tasks": page}
        if start + size < len(idx):
            out["nextPageToken"] = str(start + size)
        return out

    def _delete(self, job: Job) -> dict:
        with self.lock:
            job.deleting = True
            job.state = "DELETION_IN_PROGRESS"
        for cb in self.listeners:
            cb("deleted", job)
        return {"name": f"{job.name.split('/jobs/')[0]}/operations/delete-{job.uid}", "done": False,
                "metadata": {"@type": "type.googleapis.com/google.cloud.batch.v1.OperationMetadata",
                             "target": job.name, "verb": "delete"}}

    def forget(self, job: Job) -> None:
        """The job is gone (deletion finished)."""
        with self.lock:
            self.jobs.pop(job.name, None)

    # -- for tests ---------------------------------------------------------------------------------------
    def job_named(self, prefix: str = "") -> list[Job]:
        with self.lock:
            return [j for n, j in self.jobs.items() if n.rsplit("/", 1)[1].startswith(prefix)]
