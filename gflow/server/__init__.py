"""The GraphQL server and dashboard (extra ``gflow[server]``).

``gflow server`` runs it; :func:`gflow.server.app.create_app` builds the ASGI app over an open store.
Importing this package imports nothing heavy (the CLI imports ``gflow.server.cli`` on every command).
"""

from __future__ import annotations

from typing import Any


def create_app(*args: Any, **kwargs: Any) -> Any:
    """See :func:`gflow.server.app.create_app`."""
    from gflow.server.app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
