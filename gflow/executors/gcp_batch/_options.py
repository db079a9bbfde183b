"""Options of the Google Cloud Batch executor: from a ``gcp-batch://PROJECT/REGION?...`` URL and from a
profile's ``[profiles.NAME.gcp_batch]`` table (keyword arguments of the constructor), in one place."""

from __future__ import annotations

import urllib.parse
from typing import Any

from gflow.errors import ConfigError
from gflow.executors._options import OptionTable, merge_settings, parse_query
from gflow.executors._options import check_keywords as _check_keywords

#: URL query name -> constructor keyword (the keywords themselves are accepted as well)
ALIASES = {"registry": "image_registry", "max_concurrency": "parallelism", "prefix": "job_prefix",
           "machine": "machine_type", "gpu": "gpu_type", "sa": "service_account"}
BOOLS = {"build", "spot", "dev", "check", "install_gpu_drivers", "no_external_ip"}
INTS = {"chunk", "parallelism", "max_tasks", "infra_retries", "boot_disk_gb", "max_poll_errors", "max_in_flight"}
FLOATS = {"poll_min", "poll_max"}
STRINGS = {"project", "region", "machine_type", "gpu_type", "image", "image_registry", "docker_host", "bundle",
           "service_account", "network", "subnetwork", "endpoint", "job_prefix", "artifacts_host"}
#: dict-valued options, written ``label.KEY=V`` and ``env.KEY=V`` in a URL
DICTS = {"label": "labels", "env": "environment"}
KEYWORDS = BOOLS | INTS | FLOATS | STRINGS | set(DICTS.values())
TABLE = OptionTable(label="gcp-batch executor", section="gcp_batch settings", dict_hint="label.KEY, env.KEY",
                    aliases=ALIASES, bools=BOOLS, ints=INTS, floats=FLOATS, strings=STRINGS, dicts=DICTS,
                    keywords=KEYWORDS)
EXAMPLE = "gcp-batch://PROJECT/REGION (e.g. gcp-batch://my-project/us-central1)"


def parse_url(spec: str) -> dict[str, Any]:
    """Keyword arguments of the executor from ``gcp-batch://PROJECT/REGION?key=value&...`` (or
    ``gcp_batch://``; a bare ``gcp-batch`` when project and region come from a profile's settings).

    Raises:
        ConfigError: an unknown option (listing the known ones), a malformed value, or a path with more parts.
    """
    scheme, sep, rest = spec.partition("://")
    if scheme not in ("gcp-batch", "gcp_batch") or (not sep and rest):
        raise ConfigError(f"{spec!r} is not a Google Cloud Batch executor URL: use {EXAMPLE}")
    where, _, query = rest.partition("?")
    parts = [urllib.parse.unquote(p) for p in where.rstrip("/").split("/")] if where.rstrip("/") else []
    if len(parts) > 2:
        raise ConfigError(f"gcp-batch executor {spec!r}: expected {EXAMPLE}, got {len(parts)} path parts")
    kw: dict[str, Any] = {k: v for k, v in zip(("project", "region"), parts) if v}
    return parse_query(TABLE, spec, query, kw)


def merge(spec: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from a profile's settings (``[profiles.X.gcp_batch]``) and the URL: the URL's
    own values win; its ``label.``/``env.`` entries are added to the settings' tables.

    Raises:
        ConfigError: unknown settings or URL options.
    """
    check_keywords(settings)
    out = merge_settings(TABLE, settings, parse_url(spec))
    return out


def check_keywords(kw: dict[str, Any]) -> None:
    """Refuse unknown profile keys (``[profiles.X.gcp_batch]``) with the known ones listed."""
    _check_keywords(TABLE, kw)


def render_url(ex: Any) -> str:
    """An executor's settings as a ``gcp-batch://`` URL (environment values are left out)."""
    q: dict[str, Any] = {"machine": ex.machine_type, "spot": "1" if ex.spot else None, "image": ex.image,
                         "registry": ex.images.registry, "dev": "1" if ex.dev else None, "endpoint": ex.endpoint,
                         "chunk": ex.chunk if ex.chunk != 1 else None, "max_concurrency": ex.parallelism}
    q.update({f"label.{k}": v for k, v in ex.labels.items()})
    query = urllib.parse.urlencode({k: v for k, v in q.items() if v is not None})
    return f"gcp-batch://{ex.project}/{ex.region}" + (f"?{query}" if query else "")
