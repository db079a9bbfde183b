"""What the server checks before a request reaches GraphQL: body size (bytes actually read), the
shape of the JSON body, how deep its variables nest, and the ids that arguments carry.

Every refusal is GraphQL-shaped (``{"errors": [{"message", "extensions": {"code"}}]}``) with a 4xx
status, so a client never has to parse plain text, and bad input is never reported as a store
outage (an over-long id used to reach SQLite's LIKE and come back as STORE_UNAVAILABLE).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from graphql import GraphQLError

BAD_INPUT = "BAD_USER_INPUT"
MAX_ID_LENGTH = 200
MAX_TEXT_LENGTH = 1000
MAX_VARIABLE_DEPTH = 32
#: run ids are ``20261122-161052-3fa9c1``, task-run ids ``<run id>.<n>``; user-chosen ids stay within this set
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+@-]*\Z")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


class BodyTooLarge(Exception):
    """The request body went over the limit while it was being read."""


class BadRequest(Exception):
    """The request is not a GraphQL request this server accepts (the message says why)."""


def gql_error(message: str, code: str, **extra: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, **extra})


def check_id(value: Any, what: str = "id") -> str:
    """An id argument, checked before it reaches the store: at most 200 characters of ``[A-Za-z0-9._:+@-]``."""
    text = str(value)
    if not text:
        raise gql_error(f"{what} is empty", BAD_INPUT)
    if len(text) > MAX_ID_LENGTH:
        raise gql_error(f"{what} is {len(text)} characters long; ids are at most {MAX_ID_LENGTH}", BAD_INPUT)
    if not _ID.match(text):
        raise gql_error(f"{what} {text[:60]!r} has characters ids never have (allowed: letters, digits and ._:+@-)",
                        BAD_INPUT)
    return text


def check_text(value: str | None, what: str, limit: int = MAX_TEXT_LENGTH) -> str | None:
    """A free-text filter argument (flow name, tag, task): at most ``limit`` characters."""
    if value is not None and len(value) > limit:
        raise gql_error(f"{what} is {len(value)} characters long; at most {limit} are accepted", BAD_INPUT)
    return value


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, counting the bytes as they arrive (chunked bodies have no Content-Length
    to trust); raises BodyTooLarge as soon as more than ``limit`` bytes came."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client went away while sending the request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then defers to the real one (for disconnects)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def too_deep(value: Any, limit: int = MAX_VARIABLE_DEPTH) -> bool:
    """Whether lists/objects in ``value`` nest deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children)
    return False


def parse_json(text: str | bytes, what: str) -> Any:
    try:
        return json.loads(text)
    except RecursionError:
        raise BadRequest(f"{what} nests too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadRequest(f"{what} is not valid JSON ({str(e).splitlines()[0][:120]})") from None


def check_request(data: Any) -> None:
    """A GraphQL request object: ``{"query": str, "variables": object|null, "operationName": str|null,
    "extensions": object|null}``. Raises BadRequest naming what is wrong."""
    if not isinstance(data, dict):
        raise BadRequest(f"the request body must be a JSON object with a 'query' (got {type(data).__name__})")
    query = data.get("query")
    if not isinstance(query, str):
        raise BadRequest("the request needs a 'query' string" if query is None else
                         f"'query' must be a string (got {type(query).__name__})")
    for key in ("variables", "extensions"):
        value = data.get(key)
        if value is not None and not isinstance(value, dict):
            raise BadRequest(f"'{key}' must be an object or null (got {type(value).__name__})")
        if value is not None and too_deep(value):
            raise BadRequest(f"'{key}' nest deeper than {MAX_VARIABLE_DEPTH} levels")
    name = data.get("operationName")
    if name is not None and not isinstance(name, str):
        raise BadRequest(f"'operationName' must be a string or null (got {type(name).__name__})")


def check_get(params: MutableMapping[str, str] | Any) -> None:
    """The query parameters of ``GET /graphql?query=...&variables=...``."""
    data: dict[str, Any] = {"query": params.get("query"), "operationName": params.get("operationName")}
    for key in ("variables", "extensions"):
        if params.get(key):
            data[key] = parse_json(params[key], f"'{key}'")
    check_request(data)


def check_body(body: bytes, content_type: str) -> None:
    """A POST body: JSON (the only kind this server accepts), shaped as a GraphQL request."""
    if "application/json" not in content_type.lower():
        raise BadRequest(f"unsupported content type {content_type[:80]!r}; send application/json")
    check_request(parse_json(body, "the request body"))


def ws_message_problem(message: Message) -> str | None:
    """Why a graphql-transport-ws message cannot be handled (not JSON, not an object, nesting too deep),
    or None. strawberry's handler would otherwise fail on it with a traceback instead of a close code."""
    if message.get("type") != "websocket.receive":
        return None
    text = message.get("text")
    if text is None:
        raw = message.get("bytes") or b""
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            return "messages must be UTF-8 JSON"
    try:
        data = parse_json(text, "the message")
    except BadRequest as e:
        return str(e)
    if not isinstance(data, dict):
        return f"messages must be JSON objects (got {type(data).__name__})"
    if too_deep(data, MAX_VARIABLE_DEPTH + 3):
        return f"the message nests deeper than {MAX_VARIABLE_DEPTH} levels"
    return None
