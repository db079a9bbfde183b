"""URL query and profile-settings handling shared by the batch executors (``aws-batch://``,
``gcp-batch://``, ``slurm://``): each backend describes its options in an :class:`OptionTable` and keeps
its own URL grammar (what comes before ``?``) and its own error wording."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from gflow.errors import ConfigError


@dataclass(frozen=True)
class OptionTable:
    """One backend's options: ``label`` names it in URL errors (``"slurm executor"``), ``section`` in
    settings errors (``"slurm settings"``), ``dict_hint`` lists the dict-valued forms (``"env.KEY"``)."""

    label: str
    section: str
    aliases: dict[str, str]
    bools: set[str]
    ints: set[str]
    floats: set[str]
    strings: set[str]
    dicts: dict[str, str]
    keywords: set[str]
    dict_hint: str


def parse_bool(v: str, key: str, spec: str, label: str) -> bool:
    low = v.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{label} {spec!r}: {key}={v!r} is not a boolean (1/0, true/false)")


def parse_query(table: OptionTable, spec: str, query: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Add the options of a URL's query string to ``kw`` (typed, aliases resolved) and return it.

    Raises:
        ConfigError: an unknown option (listing the known ones) or a malformed value.
    """
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        head, dot, sub = key.partition(".")
        if dot and head in table.dicts:
            kw.setdefault(table.dicts[head], {})[sub] = value
            continue
        name = table.aliases.get(key, key)
        if name in table.bools:
            kw[name] = parse_bool(value, key, spec, table.label)
        elif name in table.ints or name in table.floats:
            try:
                kw[name] = int(value) if name in table.ints else float(value)
            except ValueError:
                raise ConfigError(f"{table.label} {spec!r}: {key}={value!r} is not a number") from None
        elif name in table.strings:
            kw[name] = value
        else:
            known = sorted({*table.aliases, *table.bools, *table.ints, *table.floats, *table.strings}
                           - set(table.aliases.values()))
            raise ConfigError(f"{table.label} {spec!r}: unknown option {key!r}; known: {', '.join(known)}, "
                              f"{table.dict_hint}")
    return kw


def check_keywords(table: OptionTable, kw: dict[str, Any]) -> None:
    """Refuse unknown keys of a profile's settings table, listing the known ones."""
    bad = set(kw) - table.keywords - set(table.aliases)
    if bad:
        raise ConfigError(f"{table.section}: unknown keys {sorted(bad)}; known: {', '.join(sorted(table.keywords))}")


def merge_settings(table: OptionTable, settings: dict[str, Any], url: dict[str, Any]) -> dict[str, Any]:
    """A profile's settings (checked, aliases resolved) overlaid by a parsed URL: the URL's own values win;
    its dict-valued entries are added to the settings' tables. The caller checks the settings first
    (:func:`check_keywords`), before parsing the URL, so that a bad setting is the error reported."""
    settings = {table.aliases.get(k, k): v for k, v in settings.items()}
    out = {**settings, **url}
    for name in table.dicts.values():
        if name in settings and name in url:
            out[name] = {**settings[name], **url[name]}
    return out
