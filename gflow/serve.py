"""``gflow serve FILE.py:TASK``: one task behind an HTTP endpoint, its warm values loaded once.

- ``POST /`` with one call's arguments as a JSON object (as ``task(**body)`` would take them) answers
  ``{"result": VALUE}``; arguments are checked the way ``gflow run`` checks them (bound to the signature,
  validated against the annotations) and a mismatch is ``400 {"error": "... 'PARAM' ..."}`` before the
  task runs; the task raising is ``500 {"error": ...}``.
- A ``batch_size`` task's concurrent requests are grouped: one thread takes a request, waits up to
  ``max_wait_ms`` for more (up to ``max_batch``) with equal common arguments, and calls the vectorized
  function once for them (``Task.invoke_many``: a batch that fails is run again element by element, so
  one bad request fails alone). Other tasks run in the request's own thread.
- ``GET /healthz`` (never needs a token) and ``GET /metrics`` (Prometheus text: requests by status code,
  latency quantiles over the last 10,000 requests, batches and their sizes).
- Bound to 127.0.0.1 unless ``host`` says otherwise. Open without a token, like the GraphQL server's
  reads; with a token (``--token`` or ``GFLOW_SERVE_TOKEN``) every request but ``/healthz`` needs
  ``Authorization: Bearer TOKEN``.

Everything runs in this process: it is one worker, so ``@gflow.warm`` values are loaded once and reused.
Nothing is recorded in a state store (a request is not a run).
"""

from __future__ import annotations

import hmac
import json
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from gflow.errors import ConfigError, GflowError, InvalidArguments

__all__ = ["MAX_BODY", "Metrics", "TaskServer", "serve"]

#: the largest request body read (bytes); more is 413 without reading it
MAX_BODY = 16 * 1024 * 1024
TOKEN_ENV = "GFLOW_SERVE_TOKEN"


class Metrics:
    """Request counts by status, latencies of the last ``keep`` requests, batches and their sizes."""

    def __init__(self, keep: int = 10_000):
        self._lock = threading.Lock()
        self.codes: Counter[int] = Counter()
        self.latencies: deque[float] = deque(maxlen=keep)
        self.batches = 0
        self.batched_items = 0

    def request(self, code: int, seconds: float) -> None:
        with self._lock:
            self.codes[code] += 1
            self.latencies.append(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches += 1
            self.batched_items += size

    def quantiles(self, qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[float, float]:
        with self._lock:
            xs = sorted(self.latencies)
        if not xs:
            return {q: 0.0 for q in qs}
        return {q: xs[min(len(xs) - 1, int(q * len(xs)))] for q in qs}

    def text(self, task: str) -> str:
        lines = ["# HELP gflow_serve_requests_total Requests answered, by HTTP status.",
                 "# TYPE gflow_serve_requests_total counter"]
        with self._lock:
            codes, n, total = dict(self.codes), self.batches, self.batched_items
        for code, count in sorted(codes.items()):
            lines.append(f'gflow_serve_requests_total{{task="{task}",code="{code}"}} {count}')
        lines += ["# HELP gflow_serve_request_seconds Request latency (last 10,000 requests).",
                  "# TYPE gflow_serve_request_seconds summary"]
        for q, v in self.quantiles().items():
            lines.append(f'gflow_serve_request_seconds{{task="{task}",quantile="{q}"}} {v:.6f}')
        lines += ["# TYPE gflow_serve_batches_total counter", f'gflow_serve_batches_total{{task="{task}"}} {n}',
                  "# TYPE gflow_serve_batched_calls_total counter",
                  f'gflow_serve_batched_calls_total{{task="{task}"}} {total}']
        return "\n".join(lines) + "\n"


class _HTTPServer(ThreadingHTTPServer):
    request_queue_size = 1024  # the stdlib's 5 resets connections under a burst of concurrent clients
    daemon_threads = True


class _Pending:
    __slots__ = ("arguments", "done", "result")

    def __init__(self, arguments: dict[str, Any]):
        self.arguments = arguments
        self.done = threading.Event()
        self.result: Any = None


class _Batcher:
    """Groups requests of a ``batch_size`` task: up to ``max_batch`` within ``max_wait`` seconds of the first.
    ``clock`` is injectable so the window can be tested without sleeping."""

    def __init__(self, task: Any, max_batch: int, max_wait: float, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic):
        self.task, self.max_batch, self.max_wait, self.metrics, self.clock = task, max_batch, max_wait, metrics, clock
        self.q: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="gflow-serve-batcher")
        self.thread.start()

    def call(self, arguments: dict[str, Any]) -> Any:
        p = _Pending(arguments)
        self.q.put(p)
        p.done.wait()
        return p.result

    def stop(self) -> None:
        self.q.put(None)

    def take(self) -> list[_Pending] | None:
        """The next batch: the first waiting request, and whatever arrives within the window."""
        first = self.q.get()
        if first is None:
            return None
        batch = [first]
        deadline = self.clock() + self.max_wait
        while len(batch) < self.max_batch:
            left = deadline - self.clock()
            try:
                item = self.q.get(timeout=left) if left > 0 else self.q.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.q.put(None)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while (batch := self.take()) is not None:
            self.metrics.batch(len(batch))
            try:
                results = self.task.invoke_many([((), p.arguments) for p in batch])
            except BaseException as e:  # noqa: BLE001 - every waiting request gets the error
                from gflow.tasks import BatchResult

                results = [BatchResult(exc=e) for _ in batch]
            for p, r in zip(batch, results, strict=True):
                p.result = r
                p.done.set()


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise InvalidArguments(f"request body: parameter {k[:80]!r} is given twice")
        out[k] = v
    return out


class TaskServer:
    """A task behind HTTP (see the module docstring). ``start()`` serves in a thread; ``serve_forever()`` here."""

    def __init__(self, task: Any, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int | None = None,
                 max_wait_ms: float = 5.0, token: str | None = None):
        from gflow.tasks import Task

        if not isinstance(task, Task):
            raise ConfigError(f"gflow serve needs a task, got {type(task).__name__}")
        batch = task.options.batch_size
        if max_batch is not None and (type(max_batch) is not int or max_batch < 1):
            raise InvalidArguments(f"gflow serve: --max-batch must be an integer of at least 1, got {max_batch!r}")
        if max_wait_ms < 0:
            raise InvalidArguments(f"gflow serve: --max-wait-ms must be 0 or more, got {max_wait_ms!r}")
        self.task, self.token = task, token or None
        self.metrics = Metrics()
        self.batcher: _Batcher | None = None
        if batch is not None:
            self.batcher = _Batcher(task, max_batch or batch, max_wait_ms / 1000, self.metrics)
        self.httpd = _HTTPServer((host, port), _handler(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{name}:{port}"

    def start(self) -> TaskServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="gflow-serve")
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self.batcher is not None:
            self.batcher.stop()

    def __enter__(self) -> TaskServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- one request --------------------------------------------------------------------------------------
    def authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def arguments(self, body: bytes) -> dict[str, Any]:
        """The call's bound, validated arguments from a request body, or InvalidArguments naming what is wrong."""
        try:
            data = json.loads(body or b"{}", object_pairs_hook=_unique)
        except InvalidArguments:
            raise
        except (ValueError, RecursionError) as e:
            raise InvalidArguments(f"request body is not JSON: {e}") from None
        if type(data) is not dict:
            raise InvalidArguments(f"request body must be a JSON object of the task's parameters, got "
                                   f"{type(data).__name__}")
        v = self.task.validator
        return dict(v.validate(v.bind((), data)))

    def call(self, arguments: dict[str, Any]) -> Any:
        if self.batcher is not None:
            return self.batcher.call(arguments).unwrap()
        args, kwargs = self.task.validator.call_args(arguments)
        return self.task.invoke(args, kwargs)


def _handler(server: TaskServer) -> type[BaseHTTPRequestHandler]:
    from gflow.serialization import to_json_text

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

        def _send(self, code: int, body: str, ctype: str = "application/json", t0: float | None = None) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            if t0 is not None:
                server.metrics.request(code, time.perf_counter() - t0)

        def _error(self, code: int, message: str, t0: float | None) -> None:
            self._send(code, json.dumps({"error": message}), t0=t0)

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                self._send(200, json.dumps({"ok": True, "task": server.task.name}))
            elif not server.authorized(self.headers.get("Authorization")):
                self._error(401, "this server needs a token: send 'Authorization: Bearer TOKEN'", None)
            elif path == "/metrics":
                self._send(200, server.metrics.text(server.task.name), "text/plain; version=0.0.4")
            else:
                self._error(404, f"no such path {path[:100]!r}: POST / with the call's arguments", None)

        def do_POST(self) -> None:
            t0 = time.perf_counter()
            if self.path.split("?")[0] != "/":
                self._error(404, "POST to / with the call's arguments as a JSON object", t0)
                return
            if not server.authorized(self.headers.get("Authorization")):
                self._error(401, "this server needs a token: send 'Authorization: Bearer TOKEN'", t0)
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self.close_connection = True
                self._error(413 if length > MAX_BODY else 400,
                            f"request body must have a Content-Length of at most {MAX_BODY} bytes", t0)
                return
            try:
                arguments = server.arguments(self.rfile.read(length))
            except (InvalidArguments, GflowError) as e:
                self._error(400, str(e), t0)
                return
            try:
                value = server.call(arguments)
            except BaseException as e:  # noqa: BLE001 - the task's error, answered
                self._error(500, f"{type(e).__name__}: {e}", t0)
                return
            try:
                text = to_json_text({"result": value})
            except Exception as e:  # noqa: BLE001 - a result with no JSON form
                self._error(500, f"the result of task '{server.task.name}' has no JSON form: {e}", t0)
                return
            self._send(200, text, t0=t0)

    return Handler


def serve(target: str, *, host: str = "127.0.0.1", port: int = 8000, max_batch: int | None = None,
          max_wait_ms: float = 5.0, token: str | None = None) -> TaskServer:
    """A :class:`TaskServer` for the task ``target`` names (``file.py:TASK`` or ``module:TASK``), not started."""
    from gflow._loader import load_target
    from gflow.tasks import Task

    task = load_target(target, Task)
    return TaskServer(task, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, token=token)


def _command() -> Any:
    import click

    @click.command("serve")
    @click.argument("target")
    @click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
    @click.option("--port", "-p", default=8000, show_default=True, type=int)
    @click.option("--max-batch", default=None, type=int, help="Requests per batch (default: the task's batch_size).")
    @click.option("--max-wait-ms", default=5.0, show_default=True, type=float,
                  help="How long the first request of a batch waits for more.")
    @click.option("--token", default=None, envvar=TOKEN_ENV, help=f"Require this bearer token (or ${TOKEN_ENV}).")
    def cmd(target: str, host: str, port: int, max_batch: int | None, max_wait_ms: float, token: str | None) -> None:
        """Serve a task over HTTP: POST / with one call's arguments as JSON -> {"result": VALUE}."""
        srv = serve(target, host=host, port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, token=token)
        click.echo(f"gflow serve: task '{srv.task.name}' at {srv.url} (POST /, GET /healthz, GET /metrics)"
                   + (" token required" if srv.token else ""), err=True)
        try:
            srv.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            srv.httpd.server_close()

    return cmd


cli_serve = _command()
