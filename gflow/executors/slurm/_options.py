"""Options of the Slurm executor, from a ``slurm://PARTITION?...`` URL and a profile's ``[slurm]`` table
(keyword arguments of :class:`~gflow.executors.slurm.SlurmExecutor`), in one place."""

from __future__ import annotations

import urllib.parse
from typing import Any

from gflow.errors import ConfigError
from gflow.executors._options import OptionTable, merge_settings, parse_query
from gflow.executors._options import check_keywords as _check_keywords

#: URL query name -> constructor keyword (the keywords themselves are accepted as well)
ALIASES = {"logs": "log_dir", "gpus": "gpu_option", "registry": "image_registry"}
BOOLS = {"check", "array"}
INTS = {"throttle", "chunk", "max_array_size", "max_in_flight", "gang_nodes", "max_poll_errors"}
FLOATS = {"poll_min", "poll_max", "time_margin"}
STRINGS = {"account", "qos", "container", "apptainer", "image", "log_dir", "python", "gpu_option", "job_name_prefix",
           "sbatch_args", "artifacts", "reservation", "constraint"}
#: dict-valued options, written ``env.KEY=V`` in a URL
DICTS = {"env": "environment"}
KEYWORDS = BOOLS | INTS | FLOATS | STRINGS | set(DICTS.values()) | {"partition"}
TABLE = OptionTable(label="slurm executor", section="slurm settings", dict_hint="env.KEY",
                    aliases=ALIASES, bools=BOOLS, ints=INTS, floats=FLOATS, strings=STRINGS, dicts=DICTS,
                    keywords=KEYWORDS)


def parse_url(spec: str, *, require_partition: bool = True) -> dict[str, Any]:
    """Keyword arguments of the executor from ``slurm://PARTITION?account=A&qos=Q&throttle=K`` (a bare
    ``slurm`` or ``slurm://`` when the partition comes from the profile's ``[slurm]`` table).

    Raises:
        ConfigError: not a slurm URL, no partition, an unknown option (listing the known ones), a bad value.
    """
    scheme, sep, rest = spec.partition("://")
    if scheme != "slurm" or (not sep and rest):
        raise ConfigError(f"{spec!r} is not a Slurm executor URL (slurm://PARTITION?account=A&qos=Q&throttle=K)")
    partition, _, query = rest.partition("?")
    partition = urllib.parse.unquote(partition).strip("/")
    if not partition and require_partition:
        raise ConfigError(f"slurm executor {spec!r} names no partition: use slurm://PARTITION")
    kw: dict[str, Any] = {"partition": partition} if partition else {}
    return parse_query(TABLE, spec, query, kw)


def check_keywords(kw: dict[str, Any]) -> None:
    """Refuse unknown keys of a profile's ``[slurm]`` table, listing the known ones."""
    _check_keywords(TABLE, kw)


def merge(spec: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Constructor keywords from a profile's ``[slurm]`` table and the URL (the URL's own values win).

    Raises:
        ConfigError: unknown settings or URL options, or no partition in either.
    """
    check_keywords(settings)
    out = merge_settings(TABLE, settings, parse_url(spec, require_partition=False))
    if not out.get("partition"):
        raise ConfigError(f"slurm executor {spec!r} names no partition: use slurm://PARTITION or partition = \"...\" "
                          f"in the profile's [slurm] table")
    return out


def render_url(ex: Any) -> str:
    """An executor's settings as a ``slurm://`` URL (what a run records; environment values are left out)."""
    q = {"account": ex.account, "qos": ex.qos, "throttle": ex.throttle, "container": ex.container,
         "image": ex.image, "logs": ex.log_dir, "chunk": ex.chunk if ex.chunk != 1 else None}
    query = urllib.parse.urlencode({k: v for k, v in q.items() if v is not None})
    return f"slurm://{urllib.parse.quote(ex.partition, safe='')}" + (f"?{query}" if query else "")
