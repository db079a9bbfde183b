"""Options of the Google Cloud Batch executor: from a ``gcp-batch://PROJECT/REGION?...`` URL and from a
profile's ``[profiles.NAME.gcp_batch]`` table (keyword arguments of the constructor), in one place."""

from __future__ import annotations

import urllib.parse
from typing import Any

from gflow.errors import ConfigError

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
EXAMPLE = "gcp-batch://PROJECT/REGION (e.g. gcp-batch://my-project/us-central1)"


def _bool(v: str, key: str, spec: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"gcp-batch executor {spec!r}: {key}={v!r} is not a boolean (1/0, true/false)")


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
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        head, dot, sub = key.partition(".")
        if dot and head in DICTS:
            kw.setdefault(DICTS[head], {})[sub] = value
            continue
        name = ALIASES.get(key, key)
        if name in BOOLS:
            kw[name] = _bool(value, key, spec)
        elif name in INTS or name in FLOATS:
            try:
                kw[name] = int(value) if name in INTS else float(value)
            except ValueError:
                raise ConfigError(f"gcp-batch executor {spec!r}: {key}={value!r} is not a number") from None
        elif name in STRINGS:
            kw[name] = value
        else:
            known = sorted({*ALIASES, *BOOLS, *INTS, *FLOATS, *STRINGS} - set(ALIASES.values()))
            raise ConfigError(f"gcp-batch executor {spec!r}: unknown option {key!r}; known: {', '.join(known)}, "
                              f"label.KEY, env.KEY")
    return kw


def merge(spec: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from a profile's settings (``[profiles.X.gcp_batch]``) and the URL: the URL's
    own values win; its ``label.``/``env.`` entries are added to the settings' tables.

    Raises:
        ConfigError: unknown settings or URL options.
    """
    check_keywords(settings)
    settings = {ALIASES.get(k, k): v for k, v in settings.items()}
    url = parse_url(spec)
    out = {**settings, **url}
    for name in DICTS.values():
        if name in settings and name in url:
            out[name] = {**settings[name], **url[name]}
    return out


def check_keywords(kw: dict[str, Any]) -> None:
    """Refuse unknown profile keys (``[profiles.X.gcp_batch]``) with the known ones listed."""
    bad = set(kw) - KEYWORDS - set(ALIASES)
    if bad:
        raise ConfigError(f"gcp_batch settings: unknown keys {sorted(bad)}; known: {', '.join(sorted(KEYWORDS))}")


def render_url(ex: Any) -> str:
    """An executor's settings as a ``gcp-batch://`` URL (environment values are left out)."""
    q: dict[str, Any] = {"machine": ex.machine_type, "spot": "1" if ex.spot else None, "image": ex.image,
                         "registry": ex.images.registry, "dev": "1" if ex.dev else None, "endpoint": ex.endpoint,
                         "chunk": ex.chunk if ex.chunk != 1 else None, "max_concurrency": ex.parallelism}
    q.update({f"label.{k}": v for k, v in ex.labels.items()})
    query = urllib.parse.urlencode({k: v for k, v in q.items() if v is not None})
    return f"gcp-batch://{ex.project}/{ex.region}" + (f"?{query}" if query else "")
