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

_KEYS = ("executor", "store", "artifacts", "events", "image_registry", "signing_key", "base_image")
#: tables a profile may hold: ``executors`` routes tasks to other executors; the others are settings of
#: one executor backend, passed to it as keyword arguments
_TABLES = ("executors", "prices", "local", "dask", "docker", "aws_batch", "volcano", "slurm", "gcp_batch")


def gflow_home() -> Path:
    return Path(os.environ.get("GFLOW_HOME") or Path.home() / ".gflow").expanduser()


def make_private_dirs(path: str | os.PathLike[str]) -> None:
    """Create the folder ``path`` and its missing parents readable by their owner only (0700, whatever the
    umask): run state, parameters and results are research data. Folders that exist are left as they are."""
    p = Path(path).expanduser().absolute()
    missing: list[Path] = []
    while not p.exists() and p.parent != p:
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass


@dataclass
class Profile:
    name: str = "default"
    executor: Any = "local"
    store: Any = None
    artifacts: Any = None
    events: str | None = None
    image_registry: str | None = None
    signing_key: str | None = None
    base_image: str | None = None
    source: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: task name / module:qualname / "@gpu" -> executor URL (the profile's ``executors`` table)
    routes: dict[str, str] = field(default_factory=dict)
    #: executor backend -> its settings (the profile's ``aws_batch``, ``volcano``, ... tables)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the price table (``[profiles.X.prices]``) cost estimates use; None: no estimates (docs/usage.md)
    prices: Any = None

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
            bad = set(table) - set(_KEYS) - set(_TABLES)
            if bad:
                raise ConfigError(f"{path}: profile '{pname}' has unknown keys {sorted(bad)}; known: "
                                  f"{list(_KEYS)} and the tables {list(_TABLES)}")
            for t in set(table) & set(_TABLES):
                if not isinstance(table[t], dict):
                    raise ConfigError(f"{path}: profile '{pname}': '{t}' must be a table ([profiles.{pname}.{t}])")
        _merge(values, profiles.get("default", {}))
    if name != "default":
        if name not in profiles:
            known = ", ".join(sorted({"default", *profiles})) or "default"
            where = str(path) if path else "no gflow.toml found"
            raise ConfigError(f"unknown profile {name!r} ({where}); known profiles: {known}")
        _merge(values, profiles[name])
    for key in _KEYS:
        env = os.environ.get(f"GFLOW_{key.upper()}")
        if env:
            values[key] = env
    for key, v in overrides.items():
        if key not in _KEYS:
            raise ConfigError(f"unknown profile setting {key!r}")
        if v is not None:
            values[key] = v
    routes = values.pop("executors", {})
    price_table = values.pop("prices", None)
    prices = None
    if price_table is not None:
        from gflow.usage import parse_prices

        prices = parse_prices(price_table, f"{path}: profile '{name}': [prices]")
    backends = {t: values.pop(t) for t in _TABLES if t != "executors" and t in values}
    prof = Profile(name=name, source=str(path) if path else None, routes=parse_routes(routes), backends=backends,
                   prices=prices, **values)
    if prof.image_registry:  # the profile's registry is where image backends push, unless their table says
        for table, keys in (("aws_batch", ("image_registry", "registry")), ("volcano", ("registry",)),
                            ("docker", ("registry",))):
            settings = prof.backends.setdefault(table, {})
            if not any(k in settings for k in keys):  # under any name the backend reads it by
                settings[keys[0]] = prof.image_registry
    for f in fields(prof):
        if f.name in ("store", "artifacts") and isinstance(getattr(prof, f.name), str):
            setattr(prof, f.name, os.path.expandvars(getattr(prof, f.name)))
    return prof


def _merge(values: dict[str, Any], table: dict[str, Any]) -> None:
    """Profile values over defaults; tables are merged key by key."""
    for k, v in table.items():
        if isinstance(v, dict) and isinstance(values.get(k), dict):
            values[k] = {**values[k], **v}
        else:
            values[k] = v


def parse_routes(table: Any) -> dict[str, str]:
    """Validate a profile's ``executors`` table: ``{task name | module:qualname | "@gpu": executor URL}``."""
    if not table:
        return {}
    if not isinstance(table, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in table.items()):
        raise ConfigError("profile 'executors' must map task names (or '@gpu') to executor URLs, e.g. "
                          "{ score = \"dask://scheduler:8786\", \"@gpu\" = \"aws-batch://gpu-queue\" }")
    bad = [k for k in table if k.startswith("@") and k != "@gpu"]
    if bad:
        raise ConfigError(f"profile 'executors': unknown resource route {bad[0]!r}; known: '@gpu'")
    return dict(table)
