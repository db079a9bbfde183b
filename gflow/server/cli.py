"""``gflow server``: the GraphQL API and the dashboard over a state store.

Kept light to import (the ``gflow`` CLI imports it for every command); strawberry and uvicorn are
imported when the command runs.
"""

from __future__ import annotations

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
def server(host: str, port: int, store: str | None, events: str | None, profile: str | None,
           write_tokens: tuple[str, ...], read_tokens: tuple[str, ...], require_read_token: bool | None,
           max_page_size: int, request_timeout: float, log_level: str) -> None:
    """Serve the GraphQL API (/graphql) and the dashboard (/) over the state store."""
    try:
        import uvicorn

        from gflow.server.app import create_app
        from gflow.server.schema import Limits
    except ImportError as e:
        raise click.ClickException(f"'gflow server' needs the server extra: pip install 'gflow[server]' ({e})") \
            from None
    from gflow.artifacts import open_artifacts
    from gflow.config import load_profile
    from gflow.server.auth import AuthConfig
    from gflow.server.drivers import DriverConfig
    from gflow.store import open_store

    auth = AuthConfig.from_options(write_tokens, read_tokens, require_read_token)
    prof = load_profile(profile, store=store, events=events)
    st = open_store(prof.store, events=prof.events)
    # drivers started for retryTask / replayRun record into the same store, through the same Redis layer
    drivers = DriverConfig(store=prof.store if isinstance(prof.store, str) else None, events=prof.events,
                           profile=profile)
    try:
        arts = open_artifacts(prof.artifacts)  # to show results that are not stored inline
    except GflowError as e:
        click.echo(f"warning: results not stored inline will not be shown: {e}", err=True)
        arts = None
    app = create_app(st, auth=auth, limits=Limits(max_page_size=max_page_size, request_timeout=request_timeout),
                     close_store=True, drivers=drivers, artifacts=arts)
    reads = "need a token" if auth.require_read_token else "open"
    writes = f"{len(auth.write_tokens)} write token(s)" if auth.write_tokens else "disabled (no --token-write)"
    kind = st.url.split(":", 1)[0] if ":" in getattr(st, "url", "") else type(st).__name__
    click.echo(f"gflow server on http://{host}:{port}  (store: {kind}{' + ' + type(st).__name__ if prof.events else ''}"
               f"; reads {reads}; mutations {writes})", err=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not auth.require_read_token:
        click.echo(f"warning: listening on {host} with open reads; anyone who can reach it can read run state "
                   "(use --require-read-token)", err=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, lifespan="on")
