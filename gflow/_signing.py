"""HMAC signing of pickled values, so that only a holder of the signing key can make gflow unpickle.

A pickled value is stored as ``{"__gflow__": "pickle", "blob": "sha256:<hex>", "sig": "hmac-sha256:<hex>"}``:
the signature covers the blob's digest, and the blob is checked against its digest before it is
unpickled, so together they cover the bytes. The key, first found wins:

1. an explicit ``key`` argument;
2. ``GFLOW_SIGNING_KEY`` (text, at least 32 characters);
3. the key set with :func:`configure` (the profile's ``signing_key``, which gflow.toml may hold);
4. ``$GFLOW_HOME/signing.key``: 32 random bytes as hex, created on first use with mode 0600; refused
   when other users can read or write it.

Every process that writes or reads pickles of a run (the driver, ``gflow worker`` in containers,
Dask workers reading stored results) needs the same key: pass it with ``GFLOW_SIGNING_KEY``
(:func:`signing_env`) wherever the per-home file is not shared.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat

from gflow.errors import ConfigError

ENV = "GFLOW_SIGNING_KEY"
PREFIX = "hmac-sha256:"
MIN_KEY_CHARS = 32
_DOMAIN = b"gflow.pickle/v1\0"
_configured: bytes | None = None


def configure(key: str | bytes | None) -> None:
    """Make ``key`` this process's signing key when ``GFLOW_SIGNING_KEY`` is not set (None: back to the
    home's key file). Called with a profile's ``signing_key`` when a run starts.

    Raises:
        ConfigError: the key is shorter than :data:`MIN_KEY_CHARS`.
    """
    global _configured
    if key is None:
        _configured = None
        return
    # a profile's signing_key is GFLOW_SIGNING_KEY when that is set (the environment overrides the profile):
    # name what the user actually set
    env = os.environ.get(ENV)
    from_env = env is not None and env != "" and (env == key or env.encode() == key)
    _configured = _as_bytes(key, ENV if from_env else "profile setting signing_key")


def _as_bytes(key: str | bytes, source: str) -> bytes:
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw.strip()) < MIN_KEY_CHARS:
        raise ConfigError(f"{source}: the signing key must be at least {MIN_KEY_CHARS} characters "
                          f"(e.g. the output of `python -c 'import secrets; print(secrets.token_hex(32))'`)")
    return raw.strip()


def key_path() -> str:
    from gflow.config import gflow_home

    return str(gflow_home() / "signing.key")


def signing_key(key: str | bytes | None = None) -> bytes:
    """The signing key (see the module docstring for where it comes from).

    Raises:
        ConfigError: the key is too short, or the key file is readable or writable by other users.
    """
    if key is not None:
        return _as_bytes(key, "signing_key")
    env = os.environ.get(ENV)
    if env:
        return _as_bytes(env, ENV)
    if _configured is not None:
        return _configured
    return _read_or_create(key_path())  # read each time (signing is rare): a changed mode is noticed


def _read_or_create(path: str) -> bytes:
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    from gflow.config import make_private_dirs

    make_private_dirs(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # atomic and never replaces: concurrent first uses agree on one key
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_key_file(path)


def _read_key_file(path: str) -> bytes:
    st = os.stat(path)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"signing key file {path} is accessible to other users (mode {stat.filemode(st.st_mode)}):"
                          f" anyone who can read it can make gflow unpickle; run `chmod 600 {path}`")
    with open(path, "rb") as f:
        return _as_bytes(f.read(), path)


def sign(digest: str, key: str | bytes | None = None) -> str:
    """The signature of a blob digest: ``hmac-sha256:<hex>``."""
    mac = hmac.new(signing_key(key), _DOMAIN + digest.encode(), hashlib.sha256).hexdigest()
    return PREFIX + mac


def verify(digest: str, signature: object, key: str | bytes | None = None) -> bool:
    """Whether ``signature`` is this key's signature of ``digest`` (constant-time comparison)."""
    if not isinstance(signature, str) or not isinstance(digest, str):
        return False
    return hmac.compare_digest(sign(digest, key).encode(), signature.encode("utf-8", "replace"))


def signing_env(key: str | bytes | None = None) -> dict[str, str]:
    """The environment that gives another process (a container, a batch job) this process's key.

    Raises:
        ConfigError: the key is not text (only text keys travel through the environment).
    """
    raw = signing_key(key)
    try:
        return {ENV: raw.decode()}
    except UnicodeDecodeError:
        raise ConfigError("the signing key is not UTF-8 text, so it cannot be passed in GFLOW_SIGNING_KEY") from None
