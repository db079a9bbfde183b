"""A small fake Kubernetes API server on 127.0.0.1 for the Volcano executor's tests (no kube-apiserver runs
on these machines). It speaks the real REST paths and JSON shapes the ``kubernetes`` client uses:

- Volcano Jobs (``/apis/batch.volcano.sh/v1alpha1/namespaces/NS/jobs``): create, get, list, watch, delete,
  merge-patch; every created Job is validated against the Volcano Job CRD schema (``crd.py``, unknown
  fields refused) and through a stand-in for Volcano's admission webhook (queue exists and is Open,
  minAvailable within replicas), with the real webhook's messages;
- Pods (``/api/v1/namespaces/NS/pods``): get, list, watch, delete, and ``/log``;
- Queues (``/apis/scheduling.volcano.sh/v1beta1/queues/NAME``) and namespaces: get.

Objects carry resourceVersions from one counter; watches resume from a resourceVersion and answer 410 Gone
(an ERROR event) once it is older than the kept history (``history``) or after :meth:`FakeKube.expire`.
Lists page with ``limit``/``continue``. ``forbid`` makes RBAC refuse a verb on a resource (403), a bearer
token is required (401). ``requests`` counts every call by (verb, resource). Cluster behaviour (pods,
kubelet, Volcano's controller) is in ``controller.py``.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import re
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from .crd import job_errors

TOKEN = "gflow-test-token"
USER = "system:serviceaccount:research:gflow"
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_JOBS = re.compile(r"^/apis/batch\.volcano\.sh/v1alpha1/namespaces/([^/]+)/jobs(?:/([^/]+))?(/status)?$")
_PODS = re.compile(r"^/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?(/log)?$")
_QUEUE = re.compile(r"^/apis/scheduling\.volcano\.sh/v1beta1/queues/([^/]+)$")
_NS = re.compile(r"^/api/v1/namespaces/([^/]+)$")
KNOWN_PLUGINS = {"env", "svc", "ssh", "mpi", "pytorch", "tensorflow", "ray", "hcclrank"}


def now_rfc3339(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str):
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def matches(labels: dict, selector: str | None) -> bool:
    for term in (selector or "").split(","):
        if not term:
            continue
        k, eq, v = term.partition("=")
        if eq and labels.get(k) != v:
            return False
        if not eq and k not in labels:
            return False
    return True


class FakeKube:
    """The object store, watch history and HTTP server. ``with FakeKube() as kube: kube.url``."""

    def __init__(self, *, history: int = 100_000, namespaces: tuple[str, ...] = ("default", "research")):
        self.cond = threading.Condition()
        self.rv = 0
        self.objects: dict[tuple[str, str, str], dict] = {}  # (kind, namespace, name) -> object
        self.max_history = history
        #: (resourceVersion, kind, namespace, labels, event line) in resourceVersion order; hist_rvs for bisect
        self.history: list[tuple[int, str, str, dict, bytes]] = []
        self.hist_rvs: list[int] = []
        self.compacted = 0  # watches from a resourceVersion below this get 410 Gone
        self.epoch = 0  # bumped by expire(): open watches end with 410
        self.namespaces = set(namespaces)
        self.queues: dict[str, str] = {"default": "Open"}
        self.forbid: set[tuple[str, str]] = set()
        self.requests: Counter[tuple[str, str]] = Counter()
        self.deletes: list[tuple[str, str | None]] = []  # (job, propagationPolicy)
        self.created: list[dict] = []  # every Job accepted, as submitted
        self.logs: dict[tuple[str, str], str] = {}
        self.listeners: list[Any] = []  # callables(kind, type, obj) for the controller
        self._http: ThreadingHTTPServer | None = None
        self.url = ""

    # -- store ----------------------------------------------------------------------------------------
    def _record(self, kind: str, etype: str, obj: dict) -> None:
        line = json.dumps({"type": etype, "object": obj}).encode() + b"\n"
        meta = obj["metadata"]
        self.history.append((self.rv, kind, meta.get("namespace", ""), dict(meta.get("labels") or {}), line))
        self.hist_rvs.append(self.rv)
        if len(self.history) > self.max_history:  # forget the oldest half: watches from there get 410
            cut = len(self.history) // 2
            self.compacted = self.hist_rvs[cut]
            del self.history[:cut], self.hist_rvs[:cut]
        self.cond.notify_all()
        for fn in self.listeners:
            fn(kind, etype, obj)

    def put(self, kind: str, obj: dict, etype: str = "MODIFIED") -> dict:
        with self.cond:
            self.rv += 1
            meta = obj["metadata"]
            meta["resourceVersion"] = str(self.rv)
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", now_rfc3339())
            self.objects[(kind, meta.get("namespace", ""), meta["name"])] = obj
            self._record(kind, etype, obj)
            return obj

    def get(self, kind: str, ns: str, name: str) -> dict | None:
        with self.cond:
            obj = self.objects.get((kind, ns, name))
            return copy.deepcopy(obj) if obj is not None else None

    def update(self, kind: str, ns: str, name: str, fn: Any) -> dict | None:
        """Apply ``fn(obj)`` to a stored object and record a MODIFIED event (None if it is gone)."""
        with self.cond:
            obj = self.objects.get((kind, ns, name))
            if obj is None:
                return None
            obj = copy.deepcopy(obj)
            fn(obj)
            return self.put(kind, obj)

    def delete(self, kind: str, ns: str, name: str) -> dict | None:
        with self.cond:
            obj = self.objects.pop((kind, ns, name), None)
            if obj is not None:
                self.rv += 1
                obj["metadata"]["resourceVersion"] = str(self.rv)
                self._record(kind, "DELETED", obj)
            return obj

    def items(self, kind: str, ns: str | None = None, selector: str | None = None) -> list[dict]:
        with self.cond:
            return [copy.deepcopy(o) for (k, n, _), o in sorted(self.objects.items())
                    if k == kind and (ns is None or n == ns) and matches(o["metadata"].get("labels") or {}, selector)]

    def expire(self) -> None:
        """End every open watch with 410 Gone and forget the history (clients must list again)."""
        with self.cond:
            self.epoch += 1
            self.compacted = self.rv + 1
            self.history.clear()
            self.hist_rvs.clear()
            self.cond.notify_all()

    # -- HTTP -----------------------------------------------------------------------------------------
    def __enter__(self) -> FakeKube:
        kube = self

        class Handler(_Handler):
            server_kube = kube

        self._http = _Server(("127.0.0.1", 0), Handler)
        self._http.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, name="fake-kube", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._http is not None:
            with self.cond:
                self.epoch += 1
                self.cond.notify_all()
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def kubeconfig(self, path: str, namespace: str = "research", token: str = TOKEN) -> str:
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
               "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
               "users": [{"name": "gflow", "user": {"token": token}}],
               "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gflow", "namespace": namespace}}]}
        with open(path, "w") as f:
            json.dump(doc, f)
        return path

    # -- API operations (called by the handler) -------------------------------------------------------
    def check(self, verb: str, resource: str, ns: str | None, group: str = "") -> None:
        self.requests[(verb, resource)] += 1
        if (verb, resource) in self.forbid:
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            full = f"{resource}.{group}" if group else resource
            raise ApiError(403, "Forbidden", f'{full} is forbidden: User "{USER}" cannot {verb} resource '
                                             f'"{resource}" in API group "{group}"{where}')
        if ns is not None and ns not in self.namespaces:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found')

    def create_job(self, ns: str, body: dict) -> dict:
        name = (body.get("metadata") or {}).get("name") or ""
        if not _SUBDOMAIN.match(name) or len(name) > 253:
            raise ApiError(422, "Invalid", f'Job.batch.volcano.sh "{name}" is invalid: metadata.name: Invalid value: '
                                           f'"{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                                           f"alphanumeric characters, '-' or '.', and must start and end with an "
                                           f"alphanumeric character")
        errors = job_errors(body)
        if errors:
            raise ApiError(422, "Invalid", f'Job.batch.volcano.sh "{name}" is invalid: ' + "; ".join(errors))
        msg = self._admit(body["spec"])
        if msg:
            raise ApiError(400, "BadRequest", f'admission webhook "validatejob.volcano.sh" denied the request: {msg}')
        with self.cond:
            if ("jobs", ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'jobs.batch.volcano.sh "{name}" already exists')
            self.created.append(copy.deepcopy(body))
            obj = copy.deepcopy(body)
            obj["metadata"]["namespace"] = ns
            obj["spec"].setdefault("queue", "default")
            obj["status"] = {"state": {"phase": "Pending", "lastTransitionTime": now_rfc3339()}, "minAvailable":
                             obj["spec"].get("minAvailable", 0)}
            return self.put("jobs", obj, "ADDED")

    def _admit(self, spec: dict) -> str:
        """Volcano's job admission (the checks gflow can trip), with its messages."""
        msg = ""
        total = sum(t.get("replicas", 0) for t in spec.get("tasks") or ())
        if spec.get("minAvailable", 0) > total:
            msg += " job 'minAvailable' should not be greater than total replicas in tasks;"
        names = [t.get("name") for t in spec.get("tasks") or ()]
        if len(set(names)) != len(names):
            msg += " duplicated task name;"
        for t in spec.get("tasks") or ():
            if t.get("minAvailable", 0) > t.get("replicas", 0):
                msg += f" 'minAvailable' is greater than 'replicas' in task: {t.get('name')};"
        for p in spec.get("plugins") or {}:
            if p not in KNOWN_PLUGINS:
                msg += f" unable to find job plugin: {p};"
        queue = spec.get("queue", "default")
        state = self.queues.get(queue)
        if state is None:
            msg += f' unable to find job queue: queues.scheduling.volcano.sh "{queue}" not found;'
        elif state != "Open":
            msg += f" can only submit job to queue with state `Open`, queue `{queue}` status is `{state}`;"
        return msg


class _Handler(BaseHTTPRequestHandler):
    server_kube: FakeKube
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any, ctype: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else (body.encode() if isinstance(body, str) else
                                                     json.dumps(body).encode())
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def _dispatch(self, method: str) -> None:
        kube = self.server_kube
        url = urlparse(self.path)
        q = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if url.path == "/debug/requests":
                return self._send(200, {f"{v} {r}": n for (v, r), n in kube.requests.items()})
            m = _JOBS.match(url.path)
            if m:
                return self._jobs(method, m.group(1), m.group(2), q)
            m = _PODS.match(url.path)
            if m:
                return self._pods(method, m.group(1), m.group(2), bool(m.group(3)), q)
            m = _QUEUE.match(url.path)
            if m and method == "GET":
                kube.check("get", "queues", None, "scheduling.volcano.sh")
                state = kube.queues.get(m.group(1))
                if state is None:
                    raise ApiError(404, "NotFound", f'queues.scheduling.volcano.sh "{m.group(1)}" not found')
                return self._send(200, {"apiVersion": "scheduling.volcano.sh/v1beta1", "kind": "Queue",
                                        "metadata": {"name": m.group(1)}, "status": {"state": state}})
            m = _NS.match(url.path)
            if m and method == "GET":
                kube.check("get", "namespaces", None)
                if m.group(1) not in kube.namespaces:
                    raise ApiError(404, "NotFound", f'namespaces "{m.group(1)}" not found')
                return self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": m.group(1)}})
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        except ApiError as e:
            self._send(e.code, status_body(e.code, e.reason, e.message))

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch("PATCH")

    def _jobs(self, method: str, ns: str, name: str | None, q: dict) -> None:
        kube = self.server_kube
        group = "batch.volcano.sh"
        if name is None and method == "GET":
            kube.check("watch" if q.get("watch") in ("true", "1") else "list", "jobs", ns, group)
            return self._list_or_watch("jobs", ns, q)
        if name is None and method == "POST":
            kube.check("create", "jobs", ns, group)
            return self._send(201, kube.create_job(ns, self._body()))
        if name is None:
            raise ApiError(405, "MethodNotAllowed", "method not allowed")
        verb = {"GET": "get", "DELETE": "delete", "PATCH": "patch"}[method]
        kube.check(verb, "jobs", ns, group)
        if method == "GET":
            obj = kube.get("jobs", ns, name)
        elif method == "DELETE":
            body = self._body()
            kube.deletes.append((name, body.get("propagationPolicy") or q.get("propagationPolicy")))
            obj = kube.delete("jobs", ns, name)
        else:
            patch = self._body()
            obj = kube.update("jobs", ns, name, lambda o: _merge(o, patch))
        if obj is None:
            raise ApiError(404, "NotFound", f'jobs.batch.volcano.sh "{name}" not found')
        self._send(200, obj)

    def _pods(self, method: str, ns: str, name: str | None, log: bool, q: dict) -> None:
        kube = self.server_kube
        if name is None and method == "GET":
            kube.check("watch" if q.get("watch") in ("true", "1") else "list", "pods", ns)
            return self._list_or_watch("pods", ns, q)
        if name is None:
            raise ApiError(405, "MethodNotAllowed", "method not allowed")
        if log:
            kube.check("get", "pods/log", ns)
            if kube.get("pods", ns, name) is None:
                raise ApiError(404, "NotFound", f'pods "{name}" not found')
            return self._send(200, kube.logs.get((ns, name), ""), "text/plain")
        kube.check({"GET": "get", "DELETE": "delete"}.get(method, "patch"), "pods", ns)
        obj = kube.get("pods", ns, name) if method == "GET" else kube.delete("pods", ns, name) \
            if method == "DELETE" else None
        if obj is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found')
        self._send(200, obj)

    def _list_or_watch(self, kind: str, ns: str, q: dict) -> None:
        kube = self.server_kube
        selector = q.get("labelSelector")
        if q.get("watch") not in ("true", "1"):
            items = kube.items(kind, ns, selector)
            start = int(base64.b64decode(q["continue"]).decode()) if q.get("continue") else 0
            limit = int(q.get("limit") or 0) or len(items)
            page, rest = items[start:start + limit], items[start + limit:]
            meta: dict[str, Any] = {"resourceVersion": str(kube.rv)}
            if rest:
                meta["continue"] = base64.b64encode(str(start + limit).encode()).decode()
            return self._send(200, {"kind": "List", "apiVersion": "v1", "metadata": meta, "items": page})
        self._watch(kind, ns, selector, q)

    def _watch(self, kind: str, ns: str, selector: str | None, q: dict) -> None:
        kube = self.server_kube
        deadline = time.monotonic() + float(q.get("timeoutSeconds") or 300)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def chunk(data: bytes) -> None:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()

        def gone(message: str) -> bytes:
            return json.dumps({"type": "ERROR", "object": status_body(410, "Expired", message)}).encode() + b"\n"

        rv_arg = q.get("resourceVersion")
        try:
            with kube.cond:
                epoch = kube.epoch
                if rv_arg in (None, "", "0"):
                    since = kube.rv
                    initial = b"".join(json.dumps({"type": "ADDED", "object": o}).encode() + b"\n"
                                       for o in kube.items(kind, ns, selector))
                else:
                    since, initial = int(rv_arg), b""
                    if since < kube.compacted - 1:
                        initial, since = gone(f"too old resource version: {since} ({kube.rv})"), -1
            if initial:
                chunk(initial)
            while since >= 0:
                out = b""
                with kube.cond:
                    while True:
                        if kube.epoch != epoch:
                            out, since = gone("watch expired"), -1
                            break
                        start = bisect.bisect_right(kube.hist_rvs, since)
                        if start < len(kube.history):
                            out = b"".join(line for _, k, n, labels, line in kube.history[start:]
                                           if k == kind and n == ns and matches(labels, selector))
                            since = kube.hist_rvs[-1]
                            if out:
                                break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        kube.cond.wait(min(left, 1.0))
                if out:
                    chunk(out)
                if time.monotonic() >= deadline:
                    break
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, OSError)):  # a client hanging up is normal
            super().handle_error(request, client_address)


def _merge(obj: dict, patch: dict) -> None:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(obj.get(k), dict):
            _merge(obj[k], v)
        elif v is None:
            obj.pop(k, None)
        else:
            obj[k] = v
