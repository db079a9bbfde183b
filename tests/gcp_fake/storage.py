"""``gcp-storage-emulator`` on a free 127.0.0.1 port, and an HTTP proxy in front of it (or of any local
server) that counts requests and answers some with injected Google-style errors.

The emulator ignores preconditions (``ifGenerationMatch``) and IAM; the proxy stands in for both where a
test needs them (a 412 for a blob that exists, a 403 for a bucket the credentials may not use).
"""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Emulator:
    """gcp-storage-emulator, in memory, in this process (its own server thread), with ``buckets``."""

    def __init__(self, buckets: tuple[str, ...] = ("gflow-test",)):
        from gcp_storage_emulator.server import create_server

        self.port = free_port()
        self.server = create_server("127.0.0.1", self.port, in_memory=True)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.port}"
        for b in buckets:
            self.create_bucket(b)

    def create_bucket(self, name: str) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        conn.request("POST", "/storage/v1/b?project=test", json.dumps({"name": name}),
                     {"Content-Type": "application/json"})
        conn.getresponse().read()
        conn.close()

    def reset(self, buckets: tuple[str, ...] = ("gflow-test",)) -> None:
        self.server.wipe()
        for b in buckets:
            self.create_bucket(b)

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Fault:
    """Answer requests matching ``op`` (see :meth:`Proxy.op_of`) with ``status`` (``times`` of them; None: all)."""

    op: str
    status: int
    message: str = "injected"
    reason: str = ""
    times: int | None = None


@dataclass
class Proxy:
    """Counting, fault-injecting HTTP proxy to ``upstream``. ``log`` keeps (method, path, query) of each request."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    log: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @staticmethod
    def op_of(method: str, path: str, query: dict[str, str]) -> str:
        """``GET object``, ``POST upload:resumable``, ``PUT upload:resumable``, ``GET testIamPermissions``, ..."""
        if path.startswith("/upload/"):
            kind = f"upload:{query.get('uploadType', '?')}"
        elif path.endswith("/iam/testPermissions"):
            kind = "testIamPermissions"
        elif "/o/" in path:
            kind = "media" if query.get("alt") == "media" else "object"
        elif path.startswith("/download/"):
            kind = "media"
        else:
            kind = "other"
        return f"{method} {kind}"

    def __post_init__(self) -> None:
        proxy = self
        host, port = self.upstream.split("//")[1].split(":")

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path, _, qs = self.path.partition("?")
                query = {k: v[-1] for k, v in urllib.parse.parse_qs(qs).items()}
                op = proxy.op_of(self.command, path, query)
                fault = proxy.hit(op, path, query)
                if fault is not None:
                    err = {"error": {"code": fault.status, "message": fault.message,
                                     "errors": [{"reason": fault.reason or "injected", "message": fault.message}]}}
                    data = json.dumps(err).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                conn.request(self.command, self.path, body, dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        v = v.replace(proxy.upstream, proxy.url)  # resumable upload locations
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hit(self, op: str, path: str, query: dict[str, str]) -> Fault | None:
        with self.lock:
            self.counts[op] += 1
            self.log.append((op, path, query))
            for f in self.faults:
                if f.op == op and (f.times is None or f.times > 0):
                    if f.times is not None:
                        f.times -= 1
                    return f
        return None

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
