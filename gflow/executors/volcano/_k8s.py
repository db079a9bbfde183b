"""Kubernetes plumbing for gflow's Kubernetes backends, on the official ``kubernetes`` client: cluster access
(kubeconfig, its current context, or in-cluster config), API errors translated into gflow errors at the
boundary (one line naming what was refused and the fix), and a list-then-watch loop over raw objects that
resumes from a fresh list when a watch expires (410 Gone).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gflow.errors import ConfigError, ExecutorError

log = logging.getLogger("gflow.executors.k8s")
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def load_api_client(*, kubeconfig: str | None = None, context: str | None = None,
                    in_cluster: bool | None = None) -> tuple[Any, str | None]:
    """An ``ApiClient`` for the cluster, and the namespace its configuration names (or None).

    ``in_cluster=None`` uses the in-cluster service account when running in a pod with no kubeconfig,
    else ``kubeconfig`` / ``KUBECONFIG`` / ``~/.kube/config`` with ``context`` or its current context.

    Raises:
        ConfigError: no usable configuration, naming where it looked and the fix.
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    namespace: str | None = None
    # read KUBECONFIG now: the client takes its default path from it once, at import
    kubeconfig = kubeconfig or os.environ.get("KUBECONFIG") or None
    has_kubeconfig = bool(kubeconfig or os.environ.get("KUBECONFIG")
                          or os.path.exists(os.path.expanduser("~/.kube/config")))
    use_cluster = in_cluster if in_cluster is not None else (
        "KUBERNETES_SERVICE_HOST" in os.environ and not has_kubeconfig)
    try:
        if use_cluster:
            config.load_incluster_config(client_configuration=cfg)
            if os.path.exists(_SA_NAMESPACE):
                with open(_SA_NAMESPACE) as f:
                    namespace = f.read().strip() or None
        else:
            config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
            try:
                contexts, current = config.list_kube_config_contexts(config_file=kubeconfig)
                ctx = next((c for c in contexts if c["name"] == context), None) if context else current
                namespace = (ctx or {}).get("context", {}).get("namespace")
            except Exception:  # noqa: BLE001 - the namespace is a default only
                namespace = None
    except Exception as e:  # noqa: BLE001 - translated at the boundary
        where = "in-cluster service account" if use_cluster else (
            kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config")
        raise ConfigError(f"no Kubernetes cluster configured ({where}: {e}); set KUBECONFIG or give kubeconfig=/"
                          f"context=, or run the driver in a pod with a service account") from None
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 4, 8)
    return client.ApiClient(cfg), namespace


def _status_of(e: Any) -> tuple[int | None, str, str]:
    """(HTTP status, reason, message) of an ``ApiException`` (its body is a ``Status`` object)."""
    status = getattr(e, "status", None)
    reason, message = str(getattr(e, "reason", "") or ""), ""
    body = getattr(e, "body", None)
    if body:
        try:
            doc = json.loads(body)
            message = str(doc.get("message") or "")
            reason = str(doc.get("reason") or reason)
        except (ValueError, AttributeError):
            message = str(body)[:500]
    return status, reason, message or reason or str(e)


def is_status(e: BaseException, *codes: int) -> bool:
    return getattr(e, "status", None) in codes


def k8s_error(e: BaseException, what: str, *, fix: str = "") -> ExecutorError:
    """``e`` (an ``ApiException`` or a connection error) as one line: ``what`` failed, the API server's
    message, and the fix for the usual causes (RBAC, admission, a missing CRD, an invalid object)."""
    if type(e).__module__.startswith("urllib3") or isinstance(e, OSError):
        return ExecutorError(f"{what}: cannot reach the Kubernetes API server ({type(e).__name__}: {e}); fix: check "
                             f"the kubeconfig's server address and that the cluster is up")
    status, reason, msg = _status_of(e)
    if status == 403:
        hint = ("fix: bind the driver's account to a Role allowing it (docs/volcano.md, 'RBAC'), e.g. "
                "kubectl auth can-i create jobs.batch.volcano.sh -n NAMESPACE")
    elif status == 401:
        hint = "fix: the kubeconfig's credentials were refused; log in to the cluster again"
    elif status == 404 and "could not find the requested resource" in msg:
        hint = "fix: the API is not served here; is Volcano installed (kubectl get crd jobs.batch.volcano.sh)?"
    elif status == 404:
        hint = "fix: check the namespace exists (kubectl get namespace)"
    elif status == 422:
        hint = "fix: the object is invalid as shown; correct the setting it names"
    elif "unable to find job queue" in msg:
        hint = ("fix: create the queue (a scheduling.volcano.sh/v1beta1 Queue) or name an existing one "
                "with ?queue= (kubectl get queues)")
    elif "queue with state `Open`" in msg:
        hint = "fix: open the queue (vcctl queue operate --action open --name QUEUE) or submit to another queue"
    elif "admission webhook" in msg:
        hint = "fix: Volcano's admission refused the Job for the reason shown"
    else:
        hint = ""
    hint = fix or hint
    code = f"HTTP {status} {reason}".strip() if status else type(e).__name__
    return ExecutorError(f"{what}: {code}: {msg}" + (f"; {hint}" if hint else ""))


def parse_time(value: Any) -> float | None:
    """Seconds since the epoch of a Kubernetes RFC 3339 timestamp (``2024-01-02T03:04:05Z``)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class ListWatch:
    """List, then watch, one kind of object as raw dicts; list again when the watch expires (410 Gone) or
    breaks. Each listed or watched object goes to ``on_event(type, obj)`` (a list reports ``"LISTED"`` for
    every object, then ``on_relist(names)`` with the names it saw, so the caller can tell what vanished
    while nobody watched).

    Args:
        list_fn: A ``kubernetes`` client list method with its positional arguments bound (e.g.
            ``partial(core.list_namespaced_pod, "ns")``); it is called with ``label_selector``, paging and
            watch arguments, and ``_preload_content=False`` (raw JSON: no model deserialization).
        timeout_seconds: The server-side length of each watch request (the loop then watches again).
    """

    def __init__(self, list_fn: Callable[..., Any], on_event: Callable[[str, dict], None], *, label_selector: str,
                 on_relist: Callable[[set[str]], None] | None = None, timeout_seconds: int = 60, page: int = 500,
                 name: str = "watch", on_error: Callable[[BaseException], None] | None = None):
        self.list_fn = list_fn
        self.on_event = on_event
        self.on_relist = on_relist
        self.on_error = on_error
        self.selector = label_selector
        self.timeout_seconds = timeout_seconds
        self.page = page
        self.name = name
        self.resource_version: str | None = None
        self.events = 0
        self.lists = 0
        self.expired = 0
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._resp: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=f"gflow-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, wait: float = 5.0) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks a read in progress on the watch thread
            except Exception:  # noqa: BLE001, S110 - closing is best effort
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(wait)

    def relist(self) -> None:
        """Read the full current list (pages of ``page``) and remember its resourceVersion."""
        names: set[str] = set()
        token: str | None = None
        while True:
            kw: dict[str, Any] = {"label_selector": self.selector, "limit": self.page, "_preload_content": False}
            if token:
                kw["_continue"] = token
            resp = self.list_fn(**kw)
            doc = json.loads(resp.data)
            for obj in doc.get("items") or ():
                names.add(obj["metadata"]["name"])
                self.on_event("LISTED", obj)
            meta = doc.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self.resource_version = meta.get("resourceVersion")
                break
        self.lists += 1
        if self.on_relist is not None:
            self.on_relist(names)
        self.synced.set()

    def watch_once(self) -> None:
        """One watch request from ``resource_version`` until the server ends it (or 410 Gone)."""
        resp = self.list_fn(label_selector=self.selector, watch=True, resource_version=self.resource_version,
                            allow_watch_bookmarks=True, timeout_seconds=self.timeout_seconds,
                            _preload_content=False)
        self._resp = resp
        try:
            from kubernetes.watch.watch import iter_resp_lines

            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    return
                if not line:
                    continue
                ev = json.loads(line)
                etype, obj = ev.get("type"), ev.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        self.expired += 1
                        self.resource_version = None  # too old: list again
                        return
                    raise ExecutorError(f"{self.name}: watch error {obj.get('code')}: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.resource_version = rv
                if etype == "BOOKMARK":
                    continue
                self.events += 1
                self.on_event(etype, obj)
        finally:
            self._resp = None
            try:
                resp.release_conn()
            except Exception:  # noqa: BLE001, S110
                pass

    def run(self) -> None:
        backoff = 0.2
        while not self._stop.is_set():
            try:
                if self.resource_version is None:
                    self.relist()
                self.watch_once()
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - the loop survives a broken stream
                if self._stop.is_set():
                    return
                if is_status(e, 410):
                    self.expired += 1
                    self.resource_version = None
                    continue
                log.warning("%s: %s; retrying in %.1fs", self.name, e, backoff)
                if self.on_error is not None:
                    self.on_error(e)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self.resource_version = None  # resume from a fresh list: nothing missed
        return

