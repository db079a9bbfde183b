"""Bearer-token auth for the GraphQL server.

Two kinds of token, both configured on the server (flags or ``GFLOW_SERVER_WRITE_TOKENS`` /
``GFLOW_SERVER_READ_TOKENS``, comma-separated):

- a **write** token may do everything (mutations and reads);
- a **read** token may query and subscribe.

Mutations always need a write token. Reads are open unless ``require_read_token`` is set, in which
case they need a read or a write token.

HTTP semantics (RFC 6750):

- a malformed ``Authorization`` header or an unknown token: **401** ``invalid_token``, whatever the
  operation (a client that sends a wrong token should learn so at once, not be served as anonymous);
- no token where one is required (reads under ``require_read_token``, or any mutation): **401**;
- a valid read token used for a mutation: **403** ``insufficient_scope``.

401/403 on ``/graphql`` carry a GraphQL-shaped body ``{"errors": [{"message", "extensions": {"code"}}]}``.
Over websockets (graphql-transport-ws), the token goes in the ``connection_init`` payload
(``{"Authorization": "Bearer T"}``) or the upgrade request's ``Authorization`` header; an invalid
or missing-but-required token closes the socket with 4403, and a mutation sent without write rights
gets a GraphQL error with code ``UNAUTHENTICATED`` or ``FORBIDDEN``.

Tokens are compared with :func:`hmac.compare_digest` against every configured token, and never
appear in logs, reprs or error messages.
"""

from __future__ import annotations

import enum
import hmac
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gflow.errors import ConfigError

WRITE_ENV = "GFLOW_SERVER_WRITE_TOKENS"
READ_ENV = "GFLOW_SERVER_READ_TOKENS"
REQUIRE_READ_ENV = "GFLOW_SERVER_REQUIRE_READ_TOKEN"


class Role(enum.IntEnum):
    """What a request may do; a higher role includes the lower ones."""

    ANONYMOUS = 0
    READ = 1
    WRITE = 2


class InvalidToken(Exception):
    """The request carried a token (or an Authorization header) that is not accepted."""


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


@dataclass(frozen=True)
class AuthConfig:
    """The server's tokens. Its repr never shows them."""

    write_tokens: tuple[str, ...] = field(default=(), repr=False)
    read_tokens: tuple[str, ...] = field(default=(), repr=False)
    require_read_token: bool = False

    def __post_init__(self) -> None:
        for t in (*self.write_tokens, *self.read_tokens):
            if len(t) < 8 or any(c.isspace() for c in t):
                raise ConfigError("server tokens must be at least 8 characters long, without whitespace")
        if self.require_read_token and not (self.read_tokens or self.write_tokens):
            raise ConfigError("require_read_token is set but no read or write tokens are configured")

    @classmethod
    def from_options(cls, write: Iterable[str] = (), read: Iterable[str] = (), require_read_token: bool | None = None,
                     environ: Mapping[str, str] | None = None) -> AuthConfig:
        """Tokens from options plus the ``GFLOW_SERVER_*_TOKENS`` environment variables."""
        env = os.environ if environ is None else environ
        writes = tuple(dict.fromkeys([*(t for w in write for t in _split(w)), *_split(env.get(WRITE_ENV))]))
        reads = tuple(dict.fromkeys([*(t for r in read for t in _split(r)), *_split(env.get(READ_ENV))]))
        if require_read_token is None:
            require_read_token = env.get(REQUIRE_READ_ENV, "").lower() in ("1", "true", "yes")
        return cls(write_tokens=writes, read_tokens=reads, require_read_token=require_read_token)

    def __repr__(self) -> str:
        return (f"AuthConfig(write_tokens=<{len(self.write_tokens)}>, read_tokens=<{len(self.read_tokens)}>, "
                f"require_read_token={self.require_read_token})")

    def role_of(self, token: str | None) -> Role:
        """The role a token grants; ``None`` is anonymous. Raises InvalidToken for an unknown token."""
        if token is None:
            return Role.ANONYMOUS
        given = token.encode()
        # check every token, so the time taken does not tell which one (or which kind) came close
        is_write = False
        is_read = False
        for t in self.write_tokens:
            is_write |= hmac.compare_digest(given, t.encode())
        for t in self.read_tokens:
            is_read |= hmac.compare_digest(given, t.encode())
        if is_write:
            return Role.WRITE
        if is_read:
            return Role.READ
        raise InvalidToken("invalid bearer token")

    def role_from_header(self, authorization: str | None) -> Role:
        """The role of an ``Authorization: Bearer T`` header value (None or empty: anonymous)."""
        if authorization is None or not authorization.strip():
            return Role.ANONYMOUS
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("malformed Authorization header; expected 'Bearer <token>'")
        return self.role_of(token.strip())

    def can_read(self, role: Role) -> bool:
        return role >= Role.READ or not self.require_read_token


def connection_authorization(params: Mapping[str, object] | None) -> str | None:
    """The Authorization value a websocket client put in its ``connection_init`` payload, if any."""
    if not params:
        return None
    for key in ("Authorization", "authorization"):
        v = params.get(key)
        if isinstance(v, str):
            return v
    headers = params.get("headers")
    if isinstance(headers, Mapping):
        return connection_authorization(headers)
    token = params.get("token")
    return f"Bearer {token}" if isinstance(token, str) and token else None
