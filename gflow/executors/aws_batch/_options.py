"""Options of the AWS Batch executor: from an ``aws-batch://QUEUE?...`` URL and from a profile's
``[profiles.NAME.aws_batch]`` table (keyword arguments of the constructor), in one place."""

from __future__ import annotations

import urllib.parse
from typing import Any

from gflow.errors import ConfigError
from gflow.executors._options import OptionTable, merge_settings, parse_query
from gflow.executors._options import check_keywords as _check_keywords

#: URL query name -> constructor keyword (the keywords themselves are accepted as well)
ALIASES = {
    "endpoint": "endpoint_url", "job_role": "job_role_arn", "execution_role": "execution_role_arn",
    "registry": "image_registry", "prefix": "job_name_prefix", "public_ip": "assign_public_ip",
}
BOOLS = {"build", "array", "assign_public_ip", "check"}
INTS = {"chunk", "max_array_size", "infra_retries", "max_in_flight", "max_poll_errors"}
FLOATS = {"poll_min", "poll_max", "sweep", "list_gap"}
STRINGS = {"region", "profile", "endpoint_url", "job_role_arn", "execution_role_arn", "platform", "image",
           "image_registry", "docker_host", "log_group", "job_name_prefix", "artifacts_endpoint", "describe",
           "spot_queue", "on_demand_queue"}
#: dict-valued options, written ``tag.KEY=V``, ``env.KEY=V``, ``secret.KEY=ARN`` in a URL
DICTS = {"tag": "tags", "env": "environment", "secret": "secrets"}
KEYWORDS = BOOLS | INTS | FLOATS | STRINGS | set(DICTS.values()) | {"queue"}
TABLE = OptionTable(label="aws-batch executor", section="aws_batch settings", dict_hint="tag.KEY, env.KEY, secret.KEY",
                    aliases=ALIASES, bools=BOOLS, ints=INTS, floats=FLOATS, strings=STRINGS, dicts=DICTS,
                    keywords=KEYWORDS)


def parse_url(spec: str, *, require_queue: bool = True) -> dict[str, Any]:
    """Keyword arguments of the executor from ``aws-batch://QUEUE?key=value&...`` (or ``aws_batch://``;
    a bare ``aws-batch`` when the queue comes from a profile's settings).

    The queue is everything between ``://`` and ``?`` (a name or a job queue ARN).

    Raises:
        ConfigError: no queue, an unknown option (listing the known ones), or a malformed value.
    """
    scheme, sep, rest = spec.partition("://")
    if scheme not in ("aws-batch", "aws_batch") or (not sep and rest):
        raise ConfigError(f"{spec!r} is not an AWS Batch executor URL (aws-batch://JOB_QUEUE?region=R)")
    queue, _, query = rest.partition("?")
    queue = urllib.parse.unquote(queue).strip("/")
    if not queue and require_queue:
        raise ConfigError(f"aws-batch executor {spec!r} names no job queue: use aws-batch://JOB_QUEUE?region=R")
    kw: dict[str, Any] = {"queue": queue} if queue else {}
    return parse_query(TABLE, spec, query, kw)


def merge(spec: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from a profile's settings (``[profiles.X.aws_batch]``) and the URL: the URL's
    own values win; its ``tag.``/``env.``/``secret.`` entries are added to the settings' tables.

    Raises:
        ConfigError: unknown settings or URL options, or no queue in either.
    """
    check_keywords(settings)
    out = merge_settings(TABLE, settings, parse_url(spec, require_queue=False))
    if not out.get("queue"):
        raise ConfigError(f"aws-batch executor {spec!r} names no job queue: use aws-batch://JOB_QUEUE?region=R or "
                          f"queue = \"...\" in the profile's [aws_batch] table")
    return out


def check_keywords(kw: dict[str, Any]) -> None:
    """Refuse unknown profile keys (``[profiles.X.aws_batch]``) with the known ones listed."""
    _check_keywords(TABLE, kw)


def render_url(ex: Any) -> str:
    """An executor's settings as an ``aws-batch://`` URL (environment values are left out)."""
    q: dict[str, Any] = {"region": ex.region, "profile": ex.profile, "endpoint": ex.endpoint_url,
                         "job_role": ex.job_role_arn, "execution_role": ex.execution_role_arn,
                         "platform": ex.platform if ex.platform != "EC2" else None, "image": ex.image,
                         "registry": ex.images.registry, "log_group": ex.log_group,
                         "chunk": ex.chunk if ex.chunk != 1 else None}
    q.update({f"tag.{k}": v for k, v in ex.tags.items()})
    q.update({f"secret.{k}": v for k, v in ex.secrets.items()})
    query = urllib.parse.urlencode({k: v for k, v in q.items() if v is not None})
    return f"aws-batch://{urllib.parse.quote(ex.queue, safe=':/')}" + (f"?{query}" if query else "")
