"""AWS plumbing shared by the AWS Batch executor and the S3 artifact store: sessions and clients that
honour boto3's standard configuration, call counting, backoff with jitter on throttling, and the
translation of botocore errors into gflow errors at the boundary.

boto3's own configuration is used throughout: ``AWS_PROFILE``, ``AWS_REGION`` / ``AWS_DEFAULT_REGION``,
the credentials chain, ``AWS_ENDPOINT_URL`` and the per-service ``AWS_ENDPOINT_URL_<SERVICE>``
variables (so the same code reaches AWS, moto or LocalStack). Explicit ``region`` / ``profile`` /
``endpoint_url`` arguments win over them.
"""

from __future__ import annotations

import difflib
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gflow.errors import ConfigError, ExecutorError, GflowError

log = logging.getLogger("gflow.aws")

#: error codes AWS uses for "slow down" (Batch answers TooManyRequestsException with HTTP 429)
THROTTLE_CODES = frozenset({
    "TooManyRequestsException", "ThrottlingException", "Throttling", "RequestLimitExceeded", "SlowDown",
    "RequestThrottled", "RequestThrottledException", "ProvisionedThroughputExceededException",
})
#: credentials that are missing, expired or wrong
CREDENTIAL_CODES = frozenset({
    "ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException",
    "InvalidSignatureException", "SignatureDoesNotMatch", "AuthFailure", "RequestExpired", "InvalidAccessKeyId",
    "TokenRefreshRequired",
})
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden"})


class AmbiguousRequest(ExecutorError):
    """A request that changes something (SubmitJob) got no answer: it may or may not have taken effect."""


def require_boto3() -> Any:
    try:
        import boto3
    except ImportError as e:
        raise ConfigError("AWS support needs boto3: pip install 'gflow[aws]'") from e
    return boto3


def session(region: str | None = None, profile: str | None = None) -> Any:
    """A boto3 session (``profile`` / ``region`` override ``AWS_PROFILE`` / ``AWS_REGION``).

    Raises:
        ConfigError: for an unknown profile.
    """
    boto3 = require_boto3()
    import botocore.exceptions

    try:
        return boto3.session.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound as e:
        raise ConfigError(f"AWS profile not found: {e}; list profiles with 'aws configure list-profiles'") from None


def client(sess: Any, service: str, *, endpoint_url: str | None = None, botocore_retries: bool = True,
           pool: int = 32, counter: ApiCounter | None = None) -> Any:
    """A client of ``service``. ``botocore_retries=False`` leaves retrying to :func:`call`."""
    from botocore.config import Config

    retries = {"mode": "standard", "max_attempts": 5} if botocore_retries else {"total_max_attempts": 1}
    cfg = Config(max_pool_connections=pool, retries=retries, connect_timeout=10, read_timeout=60)
    try:
        c = sess.client(service, endpoint_url=endpoint_url, config=cfg)
    except Exception as e:  # noqa: BLE001 - NoRegionError and friends
        raise translate(e, f"creating an AWS {service} client") from None
    if counter is not None:
        counter.attach(c)
    return c


#: the shape of every AWS region name (``us-east-1``, ``us-gov-west-1``, ``cn-north-1``, ``us-isob-east-1``)
REGION_SHAPE = re.compile(r"^[a-z]{2,4}(?:-[a-z]+)+-\d{1,2}$")


def check_region(sess: Any, region: str | None, service: str, endpoint_url: str | None) -> str:
    """The region in use; a typo (``us-east1``) is a ConfigError naming the closest real one.

    A name that is not shaped like an AWS region is refused at once, also with an endpoint (moto, LocalStack):
    otherwise it surfaces only as the endpoint's errors after retries. A well-shaped name that botocore does
    not list is refused only when no endpoint is given (emulators accept any, and AWS opens new regions)."""
    region = region or sess.region_name
    if not region:
        raise ConfigError(f"no AWS region for {service}: add ?region=us-east-1 to the executor URL, set AWS_REGION, "
                          f"or set a region in your AWS profile")
    emulated = endpoint_url is not None or bool(_endpoint_from_env(service))
    if emulated and REGION_SHAPE.match(region):
        return str(region)
    known = set(sess.get_available_regions(service)) | set(sess.get_available_regions(service, "aws-cn")) | \
        set(sess.get_available_regions(service, "aws-us-gov"))
    if region in known or (not known and REGION_SHAPE.match(region)):
        return str(region)
    close = difflib.get_close_matches(region, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else (f"; known regions: {', '.join(sorted(known))}" if known
                                                          else "; AWS regions look like us-east-1")
    raise ConfigError(f"{region!r} is not an AWS region with {service}{hint}")


def _endpoint_from_env(service: str) -> str | None:
    import os

    return os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}") or os.environ.get("AWS_ENDPOINT_URL")


class ApiCounter:
    """Counts API requests by operation name (through botocore's ``before-call`` event). gflow's own
    retries (:func:`call`) count, each being a request; the Batch client has botocore's retries off, so
    for Batch this is what reaches the wire."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def attach(self, c: Any) -> None:
        c.meta.events.register("before-call.*.*", self._count)

    def _count(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            with self._lock:
                self.calls[model.name] += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.calls)


@dataclass
class Backoff:
    """Exponential backoff with full jitter (AWS's recommended scheme): try ``n`` waits
    ``random() * min(cap, base * 2**n)``. ``sleep`` and ``rand`` are injectable (fake clocks in tests)."""

    base: float = 0.25
    cap: float = 20.0
    tries: int = 10
    sleep: Callable[[float], None] = time.sleep
    rand: Callable[[], float] = random.random

    def delay(self, n: int) -> float:
        return self.rand() * min(self.cap, self.base * (2 ** n))

    def wait(self, n: int) -> None:
        self.sleep(self.delay(n))


def error_code(e: BaseException) -> tuple[str, int]:
    """``(code, http status)`` of a botocore ClientError (``("", 0)`` for other errors)."""
    resp = getattr(e, "response", None)
    if not isinstance(resp, dict):
        return "", 0
    code = str(resp.get("Error", {}).get("Code") or "")
    status = int(resp.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def throttled(code: str, status: int) -> bool:
    """Whether an AWS answer with this error code and HTTP status means "slow down"."""
    return code in THROTTLE_CODES or status == 429


def is_throttle(e: BaseException) -> bool:
    return throttled(*error_code(e))


def call(c: Any, op: str, backoff: Backoff, *, what: str, idempotent: bool = True, **kwargs: Any) -> Any:
    """``c.<op>(**kwargs)``, retried with ``backoff`` on throttling (and, when ``idempotent``, on server
    errors and dropped connections); other errors are translated into gflow errors.

    Raises:
        ExecutorError: still throttled after ``backoff.tries`` tries (names the operation and the fix).
        ConfigError: credentials, permissions, missing resources.
    """
    import botocore.exceptions as bx

    fn = getattr(c, op)
    t0 = time.monotonic()
    last: BaseException | None = None
    for n in range(backoff.tries):
        try:
            return fn(**kwargs)
        except bx.ClientError as e:
            code, status = error_code(e)
            if throttled(code, status) or (idempotent and status >= 500):
                last = e
                log.debug("%s: %s (HTTP %s), retry %d", op, code, status, n + 1)
                if n + 1 < backoff.tries:
                    backoff.wait(n)
                continue
            raise translate(e, what) from None
        except (bx.EndpointConnectionError, bx.ConnectionClosedError, bx.ReadTimeoutError,
                bx.ConnectTimeoutError) as e:
            if not idempotent:
                raise AmbiguousRequest(f"{what}: {op} got no answer ({e}); it may have taken effect") from None
            last = e
            if n + 1 < backoff.tries:
                backoff.wait(n)
        except bx.BotoCoreError as e:
            raise translate(e, what) from None
    waited = time.monotonic() - t0
    if last is not None and is_throttle(last):
        code, _ = error_code(last)
        raise ExecutorError(
            f"{what}: AWS kept answering {code or 'HTTP 429'} to {op} after {backoff.tries} tries over {waited:.0f}s "
            f"(a throttling storm); slow down (a larger chunk per child, a longer poll interval) or ask AWS for a "
            f"higher API rate quota") from None
    raise ExecutorError(f"{what}: {op} failed after {backoff.tries} tries over {waited:.0f}s: {last}") from None


def translate(e: BaseException, what: str) -> GflowError:
    """A botocore/boto3 error as a gflow error with one clear line: what failed, why, the fix."""
    import botocore.exceptions as bx

    if isinstance(e, GflowError):
        return e
    if isinstance(e, bx.NoCredentialsError | bx.PartialCredentialsError):
        return ConfigError(f"{what}: no AWS credentials found; configure them (aws configure, AWS_PROFILE, "
                           f"aws sso login, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)")
    if isinstance(e, bx.NoRegionError):
        return ConfigError(f"{what}: no AWS region; set AWS_REGION or add ?region=... to the URL")
    if isinstance(e, bx.TokenRetrievalError | bx.SSOTokenLoadError | bx.UnauthorizedSSOTokenError):
        return ConfigError(f"{what}: AWS SSO credentials expired ({e}); run 'aws sso login'")
    if isinstance(e, bx.EndpointConnectionError | bx.ConnectTimeoutError):
        return ExecutorError(f"{what}: cannot reach {getattr(e, 'kwargs', {}).get('endpoint_url', 'the AWS endpoint')} "
                             f"({e}); check the network, the region and AWS_ENDPOINT_URL")
    if isinstance(e, bx.ClientError):
        code, status = error_code(e)
        msg = e.response.get("Error", {}).get("Message", "") if hasattr(e, "response") else str(e)
        if code in CREDENTIAL_CODES:
            return ConfigError(f"{what}: AWS rejected the credentials ({code}: {msg}); they are expired or wrong: "
                               f"refresh them (aws sso login, a new session token) and run again")
        if code in DENIED_CODES or status == 403:
            return ConfigError(f"{what}: access denied ({code}: {msg}); grant the permissions listed in "
                               f"docs/aws-batch.md (IAM policy)")
        if throttled(code, status):
            return ExecutorError(f"{what}: throttled by AWS ({code}: {msg})")
        return ExecutorError(f"{what}: {code or 'HTTP ' + str(status)}: {msg}")
    return ExecutorError(f"{what}: {type(e).__name__}: {e}")
