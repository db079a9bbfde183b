"""Profiles: which executor, store and artifact store a run uses.

Precedence, highest first: explicit arguments (``flow.run(executor=...)``, CLI flags), ``GFLOW_*``
environment variables, the selected profile of ``gflow.toml`` (``--profile`` / ``GFLOW_PROFILE``),
its ``[profiles.default]`` table, built-in defaults (local threads, SQLite and a local folder
under ``GFLOW_HOME``, default ``~/.gflow``).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gflow.errors import ConfigError

_KEYS = ("executor", "store", "artifacts", "events", "image_registry")


def gflow_home() -> Path:
    return Path(os.environ.get("GFLOW_HOME") or Path.home() / ".gflow").expanduser()


@dataclass
class Profile:
    name: str = "default"
    executor: Any = "local"
    store: Any = None
    artifacts: Any = None
    events: str | None = None
    image_registry: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        home = gflow_home()
        if self.store is None:
            self.store = f"sqlite:///{home / 'gflow.db'}"
        if self.artifacts is None:
            self.artifacts = str(home / "artifacts")


def find_config(start: Path | None = None) -> Path | None:
    env = os.environ.get("GFLOW_CONFIG")
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise ConfigError(f"GFLOW_CONFIG points to {p}, which does not exist")
        return p
    d = (start or Path.cwd()).resolve()
    for candidate in (d, *d.parents):
        p = candidate / "gflow.toml"
        if p.is_file():
            return p
    return None


def load_profile(name: str | None = None, **overrides: Any) -> Profile:
    """The effective profile; ``overrides`` with value None are ignored."""
    name = name or os.environ.get("GFLOW_PROFILE") or "default"
    values: dict[str, Any] = {}
    path = find_config()
    profiles: dict[str, Any] = {}
    if path is not None:
        try:
            profiles = tomllib.loads(path.read_text()).get("profiles", {})
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: invalid TOML: {e}") from None
        for pname, table in profiles.items():
            bad = set(table) - set(_KEYS)
            if bad:
                raise ConfigError(f"{path}: profile '{pname}' has unknown keys {sorted(bad)}; known: {list(_KEYS)}")
        values.update(profiles.get("default", {}))
    if name != "default":
        if name not in profiles:
            known = ", ".join(sorted({"default", *profiles})) or "default"
            where = str(path) if path else "no gflow.toml found"
            raise ConfigError(f"unknown profile {name!r} ({where}); known profiles: {known}")
        values.update(profiles[name])
    for key in _KEYS:
        env = os.environ.get(f"GFLOW_{key.upper()}")
        if env:
            values[key] = env
    for key, v in overrides.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown profile setting {key!r}")
        if v is not None:
            values[key] = v
    prof = Profile(name=name, source=str(path) if path else None, **values)
    for f in fields(prof):
        if f.name in ("store", "artifacts") and isinstance(getattr(prof, f.name), str):
            setattr(prof, f.name, os.path.expandvars(getattr(prof, f.name)))
    return prof
