"""``gflow server``: the GraphQL API and the dashboard over a state store.

Kept light to import (the ``gflow`` CLI imports it for every command); strawberry and uvicorn are
imported when the command runs.
"""

from __future__ import annotations

from typing import Any

import click

from gflow.errors import GflowError
from gflow.server.auth import READ_ENV, REQUIRE_READ_ENV, WRITE_ENV


@click.command("server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8585, show_default=True, type=click.IntRange(0, 65535), help="Port.")
@click.option("--store", default=None, help="State store URL (default: the profile's).")
@click.option("--events", default=None, help="Redis URL of the live-events layer (redis://...).")
@click.option("--profile", default=None, help="Profile from gflow.toml.")
@click.option("--token-write", "write_tokens", multiple=True, metavar="TOKEN",
              help=f"A token allowed to mutate (and read). Repeatable. Prefer ${WRITE_ENV} (comma-separated): "
                   "arguments are visible to other users of the host.")
@click.option("--token-read", "read_tokens", multiple=True, metavar="TOKEN",
              help=f"A token allowed to read. Repeatable; or ${READ_ENV}.")
@click.option("--require-read-token/--open-reads", default=None,
              help=f"Whether queries need a read (or write) token; default: open reads (or ${REQUIRE_READ_ENV}=1).")
@click.option("--max-page-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--request-timeout", default=10.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds one HTTP request may take.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Server processes behind the one port (SO_REUSEPORT); any of them serves any query or "
                   "subscription. Needs a store other processes can open (a SQLite file, MongoDB).")
@click.option("--max-subscriptions-per-token", default=200, show_default=True, type=click.IntRange(0),
              help="Live subscriptions one token (or anonymous address) may hold, per server process (0: no limit).")
def server(host: str, port: int, store: str | None, events: str | None, profile: str | None,
           write_tokens: tuple[str, ...], read_tokens: tuple[str, ...], require_read_token: bool | None,
           max_page_size: int, request_timeout: float, log_level: str, workers: int,
           max_subscriptions_per_token: int) -> None:
    """Serve the GraphQL API (/graphql) and the dashboard (/) over the state store."""
    try:
        import uvicorn

        from gflow.server.app import create_app  # noqa: F401 - fail here, not in a worker, without the extra
    except ImportError as e:
        raise click.ClickException(f"'gflow server' needs the server extra: pip install 'gflow[server]' ({e})") \
            from None
    from gflow.config import load_profile
    from gflow.server.auth import AuthConfig

    auth = AuthConfig.from_options(write_tokens, read_tokens, require_read_token)
    prof = load_profile(profile, store=store, events=events)
    store_url = prof.store if isinstance(prof.store, str) else None
    if workers > 1 and (store_url is None or store_url.startswith("mongomock:") or ":memory:" in store_url):
        raise click.UsageError(f"--workers {workers} needs a store every worker process can open (a sqlite:/// file "
                               "or mongodb://); this one lives inside one process")
    opts = {"store": store_url, "events": prof.events, "profile": profile, "write_tokens": list(auth.write_tokens),
            "read_tokens": list(auth.read_tokens), "require_read_token": auth.require_read_token,
            "max_page_size": max_page_size, "request_timeout": request_timeout,
            "max_subscriptions_per_token": max_subscriptions_per_token}
    if workers == 1:
        app, kind = _app(opts, store=None if store_url else prof.store)
    else:
        _check_store(opts)
        kind = store_url.split(":", 1)[0] if store_url else "?"
    reads = "need a token" if auth.require_read_token else "open"
    writes = f"{len(auth.write_tokens)} write token(s)" if auth.write_tokens else "disabled (no --token-write)"
    procs = f"; {workers} worker processes" if workers > 1 else ""
    click.echo(f"gflow server on http://{host}:{port}  (store: {kind}{' + RedisLayer' if prof.events else ''}"
               f"; reads {reads}; mutations {writes}{procs})", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not auth.require_read_token:
        click.echo(f"warning: listening on {host} with open reads; anyone who can reach it can read run state "
                   "(use --require-read-token)", err=True)
    if workers == 1:
        uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
        return
    from gflow.server.workers import serve_workers

    try:
        serve_workers(opts, host=host, port=port, workers=workers, log_level=log_level)
    except GflowError as e:
        raise click.ClickException(str(e)) from None


def _check_store(opts: dict[str, Any]) -> None:
    """Open and close the store once in the parent, so a bad URL is one line before any worker starts."""
    from gflow.store import open_store

    try:
        open_store(opts["store"], events=opts["events"]).close()
    except GflowError as e:
        raise click.ClickException(str(e)) from None


def _app(opts: dict[str, Any], store: Any = None) -> tuple[Any, str]:
    """The ASGI app for these options (the store opened here unless given), and the store's kind."""
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.server.app import create_app
    from gflow.server.auth import AuthConfig
    from gflow.server.drivers import DriverConfig
    from gflow.server.schema import Limits
    from gflow.store import open_store

    auth = AuthConfig(write_tokens=tuple(opts["write_tokens"]), read_tokens=tuple(opts["read_tokens"]),
                      require_read_token=opts["require_read_token"])
    prof = load_profile(opts["profile"], store=opts["store"], events=opts["events"])
    st = open_store(store if store is not None else prof.store, events=prof.events)
    # drivers started for retryTask / replayRun record into the same store, through the same Redis layer
    drivers = DriverConfig(store=opts["store"], events=prof.events, profile=opts["profile"])
    try:
        arts = open_artifacts(prof.artifacts)  # to show results that are not stored inline
    except GflowError as e:
        click.echo(f"warning: results not stored inline will not be shown: {e}", err=True)
        arts = None
    limits = Limits(max_page_size=opts["max_page_size"], request_timeout=opts["request_timeout"],
                    max_subscriptions_per_token=opts["max_subscriptions_per_token"])
    app = create_app(st, auth=auth, limits=limits, close_store=True, drivers=drivers, artifacts=arts,
                     prices=prof.prices)
    kind = st.url.split(":", 1)[0] if ":" in getattr(st, "url", "") else type(st).__name__
    return app, kind
