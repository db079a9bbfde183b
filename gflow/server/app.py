"""The ASGI app: GraphQL at ``/graphql`` (HTTP and graphql-transport-ws), the dashboard at ``/`` (and its
deep links ``/runs/ID``, ``/runs/ID/tasks/ID``), ``/healthz``.

Store calls are blocking (SQLite, pymongo), so resolvers run them on a small pool of store threads
and the event loop stays free for other requests and subscriptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphql import GraphQLError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.graphql import OperationType

try:  # where strawberry's HTTP errors live (moved between versions)
    from cross_web import HTTPException as _HTTPException
except ImportError:  # pragma: no cover
    from strawberry.http.exceptions import HTTPException as _HTTPException  # type: ignore[no-redef,attr-defined]

from gflow.artifacts import ArtifactStore
from gflow.errors import GflowError, InvalidTransition, StoreError
from gflow.server import guard
from gflow.server.auth import AuthConfig, InvalidToken, Role, connection_authorization
from gflow.server.drivers import DriverConfig, Drivers, DriverStartFailed
from gflow.server.events import EventHub, SubscriptionLimit
from gflow.server.headers import SecurityHeaders
from gflow.server.loaders import Loaders
from gflow.server.schema import Limits, build_schema, gql_error
from gflow.server.types import BAD_INPUT, CONFLICT, DRIVER_FAILED, NOT_FOUND
from gflow.store import Store

log = logging.getLogger("gflow.server")
STATIC = Path(__file__).parent / "static"


@dataclass
class ServerState:
    """What every request shares: the store, its threads, the live event hub, auth and limits."""

    store: Store
    auth: AuthConfig
    limits: Limits
    pool: ThreadPoolExecutor
    drivers: Drivers
    artifacts: ArtifactStore | None = None
    hub: EventHub | None = None
    subscriptions: SubscriptionLimit = field(default_factory=lambda: SubscriptionLimit(0))
    #: the profile's price table (gflow.usage.Prices) for cost estimates; None: no estimates
    prices: Any = None

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking store call on a store thread, translating its errors into GraphQL errors."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.pool, functools.partial(fn, *args, **kwargs))
        except GraphQLError:
            raise
        except LookupError as e:  # RunNotFound, unknown task run
            raise gql_error(self._clean(e).strip("'\""), NOT_FOUND) from None
        except InvalidTransition as e:
            raise gql_error(self._clean(e), CONFLICT) from None
        except DriverStartFailed as e:
            raise gql_error(self._clean(e), DRIVER_FAILED) from None
        except StoreError as e:
            raise gql_error(f"state store unavailable: {self._clean(e)}", "STORE_UNAVAILABLE") from None
        except (GflowError, ValueError) as e:
            raise gql_error(self._clean(e), BAD_INPUT) from None
        except Exception:
            log.exception("store call %s failed", getattr(fn, "__name__", fn))
            raise gql_error("internal server error (see the server log)", "INTERNAL") from None

    def _clean(self, e: BaseException) -> str:
        """The error's message without the store's URL (it may carry credentials)."""
        msg = str(e)
        for where in (getattr(self.store, "url", None), getattr(self.store, "path", None)):
            if isinstance(where, str) and where:
                msg = msg.replace(where, f"the {_scheme(self.store)} store")
        return msg


@dataclass
class Context:
    """The GraphQL context: one per HTTP request, one per websocket connection."""

    state: ServerState
    request: Any
    response: Any
    role: Role = Role.ANONYMOUS
    connection_params: dict | None = None
    client_key: str = "anonymous"  # what subscriptions are counted against: the token's digest, or the address
    loaders: Loaders = field(init=False)

    def __post_init__(self) -> None:
        self.loaders = Loaders(self.state.store, self.state.call)

    store = property(lambda self: self.state.store)
    auth = property(lambda self: self.state.auth)
    limits = property(lambda self: self.state.limits)
    call = property(lambda self: self.state.call)

    @property
    def hub(self) -> EventHub:
        if self.state.hub is None:
            self.state.hub = EventHub(self.state.store, self.state.call, poll_interval=self.state.limits.poll_interval)
        return self.state.hub

    def set_status(self, status: int) -> None:
        """Set the HTTP status of the response (no-op over websockets)."""
        if isinstance(self.response, Response):
            self.response.status_code = status


def _guarded_ws(receive: Any, send: Any) -> Any:
    """A websocket ``receive`` that closes the socket (4400, with the reason) on a message the protocol
    handler cannot take, instead of letting it fail with a traceback."""

    async def checked() -> Any:
        message = await receive()
        problem = guard.ws_message_problem(message)
        if problem is None:
            return message
        await send({"type": "websocket.close", "code": 4400, "reason": problem[:120]})
        return {"type": "websocket.disconnect", "code": 4400}

    return checked


#: sent with a 413: the server answers before the body ended, and keeping the connection would mean reading
#: (and dropping) the rest of an unbounded body; both uvicorn protocols close the socket after this response
_CLOSE = {"Connection": "close"}


def _error_response(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"errors": [{"message": message, "extensions": {"code": code}}]}, status_code=status,
                        headers=headers)


class GflowGraphQL(GraphQL[Context, None]):
    """Strawberry's ASGI view plus auth, request checks (size by bytes read, JSON shape, nesting) and a
    request timeout. Every answer, refusals included, is GraphQL-shaped JSON."""

    def __init__(self, state: ServerState):
        # no GraphiQL: it loads its scripts from a CDN, and this server works offline
        super().__init__(build_schema(state.limits), keep_alive=True, keep_alive_interval=15, graphql_ide=None)
        self.state = state

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":
            return await super().__call__(scope, _guarded_ws(receive, send), send)
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        limits = self.state.limits
        try:
            request, response = await asyncio.wait_for(self._checked(scope, receive), limits.request_timeout)
            if response is None:
                response = await asyncio.wait_for(self.run(request), limits.request_timeout)
        except TimeoutError:
            response = _error_response(504, f"request timed out after {limits.request_timeout:g}s", "TIMEOUT")
        except _HTTPException as e:  # bad method, unsupported content type, ...
            response = _error_response(e.status_code, e.reason, BAD_INPUT)
        await response(scope, receive, send)

    async def _checked(self, scope: Any, receive: Any) -> tuple[Request, Response | None]:
        """The request with its body read (at most max_body_bytes, counted as read) and checked, or a refusal."""
        limit = self.state.limits.max_body_bytes
        request = Request(scope, receive)
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > limit:
            return request, _error_response(413, f"request body over {limit} bytes", BAD_INPUT, _CLOSE)
        refused = self._check_auth(request)
        if refused is not None:
            return request, refused
        try:
            if request.method == "POST":
                body = await guard.read_body(receive, limit)
                guard.check_body(body, request.headers.get("content-type", ""))
                request = Request(scope, guard.replay(body, receive))  # request.state lives in the scope: kept
            elif request.method == "GET":
                guard.check_get(request.query_params)
        except guard.BodyTooLarge as e:
            return request, _error_response(413, str(e), BAD_INPUT, _CLOSE)
        except guard.BadRequest as e:
            return request, _error_response(400, str(e), BAD_INPUT)
        return request, None

    async def execute_single(self, request: Any, request_adapter: Any, sub_response: Any, context: Any,
                             root_value: Any, request_data: Any) -> Any:
        """Queries and mutations over plain HTTP (a subscription needs the websocket, or strawberry's
        multipart transport, which does not come here): anything else is a clear 400."""
        allowed = {OperationType.QUERY} if request_adapter.method == "GET" else {OperationType.QUERY,
                                                                                 OperationType.MUTATION}
        try:
            return await self.schema.execute(
                request_data.query, root_value=root_value, variable_values=request_data.variables,
                context_value=context, operation_name=request_data.operation_name, allowed_operation_types=allowed,
                operation_extensions=request_data.extensions)
        except InvalidOperationTypeError as e:
            kind = getattr(e.operation_type, "value", "this operation")
            how = "subscribe over the websocket (graphql-transport-ws) at /graphql" if kind == "subscription" \
                else "send it with POST"
            raise _HTTPException(400, f"a {kind} cannot be sent with {request_adapter.method}: {how}") from None
        except CannotGetOperationTypeError as e:
            raise _HTTPException(400, e.as_http_error_reason()) from None
        except MissingQueryError:
            raise _HTTPException(400, "no GraphQL query found in the request") from None

    def _role(self, request: Request) -> Role:
        return self.state.auth.role_from_header(request.headers.get("authorization"))

    def _check_auth(self, request: Request) -> Response | None:
        auth = self.state.auth
        try:
            role = self._role(request)
        except InvalidToken as e:
            return _error_response(401, str(e), "UNAUTHENTICATED",
                                   {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not auth.can_read(role):
            return _error_response(401, "this server needs a token for reads: send 'Authorization: Bearer <token>'",
                                   "UNAUTHENTICATED", {"WWW-Authenticate": "Bearer"})
        request.state.gflow_role = role
        return None

    async def get_context(self, request: Request | WebSocket, response: Any) -> Context:
        role = getattr(request.state, "gflow_role", Role.ANONYMOUS) if isinstance(request, Request) else Role.ANONYMOUS
        return Context(state=self.state, request=request, response=response, role=role)

    async def on_ws_connect(self, context: Context) -> Any:
        auth = self.state.auth
        header = connection_authorization(context.connection_params) or context.request.headers.get("authorization")
        try:
            role = auth.role_from_header(header)
        except InvalidToken:
            raise ConnectionRejectionError() from None
        if not auth.can_read(role):
            raise ConnectionRejectionError()
        context.role = role
        context.client_key = _client_key(header, context.request)
        return await super().on_ws_connect(context)


def _client_key(header: str | None, request: Any) -> str:
    """A token's digest (never the token), or the client's address for a client without one."""
    token = (header or "").strip().partition(" ")[2].strip()
    if token:
        return "token:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    client = getattr(request, "client", None)
    return "addr:" + (client.host if client else "?")


def create_app(store: Store, *, auth: AuthConfig | None = None, limits: Limits | None = None,
               close_store: bool = False, drivers: DriverConfig | None = None,
               artifacts: ArtifactStore | None = None, prices: Any = None) -> Starlette:
    """The server's ASGI app over an open store.

    Args:
        auth: Tokens (default: none: reads open, mutations refused).
        limits: Page size, query depth/aliases/tokens, request timeout, ...
        close_store: Close the store when the app shuts down.
        drivers: How retryTask / replayRun start their driver processes (default: ``python -m gflow``
            with this store's URL).
        artifacts: The artifact store, to show results that are not stored inline (optional).
        prices: The price table (:class:`gflow.usage.Prices`) cost estimates use (optional).
    """
    limits = limits or Limits()
    state = ServerState(store=store, auth=auth or AuthConfig(), limits=limits,
                        pool=ThreadPoolExecutor(limits.store_threads, thread_name_prefix="gflow-store"),
                        drivers=Drivers(drivers or DriverConfig(), getattr(store, "url", None)), artifacts=artifacts,
                        subscriptions=SubscriptionLimit(limits.max_subscriptions_per_token), prices=prices)
    graphql = GflowGraphQL(state)

    async def index(request: Request) -> Response:
        # the page routes /runs/ID and /runs/ID/tasks/ID itself; an unknown id is its not-found view
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def healthz(request: Request) -> Response:
        try:
            await asyncio.wait_for(state.call(store.list_runs, limit=1), 5.0)
        except (GraphQLError, TimeoutError) as e:
            return JSONResponse({"ok": False, "store": _scheme(store), "error": str(e) or "timeout"}, status_code=503)
        return JSONResponse({"ok": True, "store": _scheme(store), "pid": os.getpid(),
                             "watched_runs": state.hub.watched if state.hub else 0})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        yield
        if state.hub is not None:
            await state.hub.close()
        state.pool.shutdown(wait=False, cancel_futures=True)
        if close_store:
            store.close()

    app = Starlette(routes=[
        Route("/", index),
        Route("/runs", index),
        Route("/runs/{run_id}", index),
        Route("/runs/{run_id}/tasks/{task_run_id}", index),
        Route("/healthz", healthz),
        Route("/graphql", graphql, methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        WebSocketRoute("/graphql", graphql),
    ], lifespan=lifespan, middleware=[Middleware(SecurityHeaders)])
    app.mount("/static", _Static(directory=STATIC), name="static")
    app.state.gflow = state
    return app


class _Static(StaticFiles):
    """The page's files, revalidated on every load (a 304 when unchanged), so an upgraded server never
    mixes new and old modules in one page."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _scheme(store: Store) -> str:
    """The store's kind, without its URL (which may hold credentials)."""
    url = getattr(store, "url", "") or ""
    return url.split(":", 1)[0] if ":" in url else type(store).__name__
