"""Google Cloud helpers shared by the Batch executor (``executors.gcp_batch``) and the ``gs://`` artifact store
(``artifacts.gcs``): credentials, endpoints, backoff on throttling, request counting, and one table from Google
API errors to gflow errors.

Nothing here imports a Google library at module level: the ``gcp`` extra costs nothing until used.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gflow.errors import ConfigError, ExecutorError, GflowError

#: where the storage client talks to an emulator (google-cloud-storage reads it too)
STORAGE_EMULATOR = "STORAGE_EMULATOR_HOST"


@dataclass
class Backoff:
    """Exponential backoff with full jitter: try ``n`` waits ``random() * min(cap, base * 2**n)``.
    ``sleep`` and ``rand`` are injectable (fake clocks in tests)."""

    base: float = 0.5
    cap: float = 32.0
    tries: int = 8
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def delay(self, n: int) -> float:
        return self.rand() * min(self.cap, self.base * (2 ** n))


class ApiCounter:
    """Requests made, by operation (thread-safe): what the benchmarks and the limit tests read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, op: str, n: int = 1) -> None:
        with self._lock:
            self._counts[op] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


def credentials(endpoint: str | None) -> Any:
    """Anonymous credentials for a local endpoint (the fake Batch server, the storage emulator); otherwise
    None, so the client library finds Application Default Credentials itself."""
    if endpoint and endpoint.startswith(("http://127.0.0.1", "http://localhost", "http://[::1]")):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    return None


def status_of(e: BaseException) -> tuple[int, str, str]:
    """``(http status, reason, message)`` of a google-api-core error (``(0, "", str(e))`` otherwise)."""
    code = getattr(e, "code", None)
    status = int(code) if isinstance(code, int) else int(getattr(code, "value", 0) or 0) if code else 0
    if hasattr(e, "grpc_status_code") and status < 100:
        status = {4: 504, 5: 404, 7: 403, 8: 429, 14: 503, 16: 401}.get(status, status)
    reason = str(getattr(e, "reason", "") or "")
    return status, reason, str(getattr(e, "message", "") or e)


def throttled(e: BaseException) -> bool:
    status, reason, _ = status_of(e)
    return status == 429 or reason in ("RATE_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED")


def transient(e: BaseException) -> bool:
    """A server error or a dropped connection: safe to try again for idempotent requests."""
    import requests

    status, _, _ = status_of(e)
    return status in (500, 502, 503, 504) or isinstance(e, requests.ConnectionError | requests.Timeout)


def api_disabled(e: BaseException) -> bool:
    status, reason, message = status_of(e)
    return status == 403 and (reason in ("SERVICE_DISABLED", "accessNotConfigured")
                              or "has not been used in project" in message or "is disabled" in message)


def translate(e: BaseException, what: str, *, project: str | None = None,
              error: type[GflowError] = ExecutorError) -> GflowError:
    """One gflow error for a Google API error: credentials and disabled APIs are :class:`ConfigError`
    (they need a fix, not a retry); the rest is ``error`` naming ``what`` failed."""
    from google.auth import exceptions as gauth

    if isinstance(e, gauth.DefaultCredentialsError | gauth.RefreshError):
        return ConfigError(f"{what}: no usable Google credentials ({str(e).splitlines()[0][:200]}); run "
                           f"'gcloud auth application-default login' or set GOOGLE_APPLICATION_CREDENTIALS")
    status, reason, message = status_of(e)
    first = message.splitlines()[0][:300] if message else type(e).__name__
    if status == 401:
        return ConfigError(f"{what}: Google rejected the credentials ({first}); refresh them with "
                           f"'gcloud auth application-default login'")
    if api_disabled(e):
        api = "batch.googleapis.com" if "batch" in message.lower() else "the API named in the message"
        return ConfigError(f"{what}: the API is not enabled in project {project or '?'}; enable it with "
                           f"'gcloud services enable {api} --project {project or 'PROJECT'}' ({first})")
    if status == 429:
        return error(f"{what}: Google kept throttling the requests (429 after the retries): {first}")
    return error(f"{what}: {type(e).__name__} ({status or 'no status'}{', ' + reason if reason else ''}): {first}")


def call(fn: Callable[..., Any], backoff: Backoff, *, what: str, op: str, counter: ApiCounter | None = None,
         idempotent: bool = True, project: str | None = None, passthrough: tuple[int, ...] = (), **kw: Any) -> Any:
    """``fn(**kw)``, retried with ``backoff`` on 429 (and, when ``idempotent``, on server errors and
    dropped connections); other errors translated by :func:`translate`. Each try is counted under ``op``.
    Errors with an HTTP status in ``passthrough`` are raised as they are (the caller handles them)."""
    n = 0
    while True:
        if counter is not None:
            counter.add(op)
        try:
            return fn(**kw)
        except GflowError:
            raise
        except Exception as e:  # noqa: BLE001 - every Google error is translated here, at the boundary
            if passthrough and status_of(e)[0] in passthrough:
                raise
            again = throttled(e) or (idempotent and transient(e))
            if not again or n + 1 >= backoff.tries:
                raise translate(e, what, project=project) from None
            if counter is not None and throttled(e):
                counter.add("throttled")
            backoff.sleep(backoff.delay(n))
            n += 1


def emulator_host() -> str | None:
    v = os.environ.get(STORAGE_EMULATOR)
    if not v:
        return None
    return v if "://" in v else f"http://{v}"
