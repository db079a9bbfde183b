"""Security headers on every HTTP answer of the server (the dashboard, its files, GraphQL, /healthz).

The dashboard loads nothing from elsewhere (no CDN, no inline script or ``<style>``; the styles its script
sets go through the CSSOM, which a policy does not govern), so the Content-Security-Policy is strict: its
own scripts, styles and GraphQL endpoint (``connect-src 'self'`` covers the same-origin websocket in
browsers that implement CSP level 3), ``data:`` only for the blank favicon. No page may frame it
(``frame-ancestors 'none'`` and, for older browsers, ``X-Frame-Options: DENY``): a framed dashboard
holding a write token could be clicked into cancelling or retrying runs.
"""

from __future__ import annotations

from typing import Any

CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
HEADERS: dict[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in HEADERS.items()]
_NAMES = {k for k, _ in _RAW}


class SecurityHeaders:
    """ASGI middleware: sets :data:`HEADERS` on every HTTP response (replacing any the app set itself)."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if bytes(k).lower() not in _NAMES]
                message = {**message, "headers": kept + _RAW}
            await send(message)

        await self.app(scope, receive, send_with_headers)
