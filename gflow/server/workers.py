"""``gflow server --workers N``: N server processes behind one port.

Each worker binds its own listening socket to the same address with ``SO_REUSEPORT``, so the kernel
spreads new connections over the workers by a hash of their addresses (a shared socket, as with
uvicorn's own ``--workers``, lets the busiest-awake process take most connections). Any worker serves
any query, mutation or subscription: they share nothing but the store, and live events come from the
store's durable event log (woken by the Redis layer's pub/sub when there is one), so a subscriber on
one worker sees what was written through another, in ``seq`` order.

The supervisor (this module, in the ``gflow server`` process) starts the workers, restarts one that
dies (at most ``max_restarts`` times in a row within a minute) and stops them all on SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import socket
import time
from typing import Any

from gflow.errors import GflowError

log = logging.getLogger("gflow.server.workers")

def reuseport_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT (not listening)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise GflowError("--workers N needs SO_REUSEPORT (Linux, BSD, macOS); this platform has none: use --workers 1")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise GflowError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def _worker_main(opts: dict[str, Any], host: str, port: int, log_level: str, index: int) -> None:
    """One worker process: its own socket on the shared port, its own app, store connections and event tails."""
    import uvicorn

    from gflow.server.cli import _app

    sock = reuseport_socket(host, port)
    sock.listen(2048)
    app, _ = _app(opts)
    config = uvicorn.Config(app, log_level=log_level, lifespan="on")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])


def serve_workers(opts: dict[str, Any], *, host: str, port: int, workers: int, log_level: str,
                  max_restarts: int = 5, announce: Any = None) -> None:
    """Run ``workers`` server processes on ``host:port`` until SIGINT/SIGTERM.

    Args:
        opts: The server's options (as ``gflow.server.cli`` builds them), passed to every worker.
        announce: Called with the port once it is known (port 0 picks a free one).
    """
    # held (bound, not listening) for the supervisor's lifetime: it fixes the port when 0 was asked, and no
    # other user can take the port between worker restarts
    holder = reuseport_socket(host, port)
    port = holder.getsockname()[1]
    if announce is not None:
        announce(port)
    ctx = mp.get_context("spawn")  # opts (tokens included) reach each worker over its spawn pipe, not argv or env
    procs: list[Any] = [None] * workers
    stopping = False
    restarts: list[float] = []

    def start(i: int) -> None:
        p = ctx.Process(target=_worker_main, args=(opts, host, port, log_level, i), name=f"gflow-server-{i}",
                        daemon=False)
        p.start()
        procs[i] = p

    def stop(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i in range(workers):
            start(i)
        while not stopping:
            time.sleep(0.2)
            for i, p in enumerate(procs):
                if p.is_alive() or stopping:
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > max_restarts:
                    log.error("server worker %d exited (code %s); %d restarts within a minute: stopping", i,
                              p.exitcode, max_restarts)
                    stopping = True
                    break
                log.warning("server worker %d exited (code %s); restarting it", i, p.exitcode)
                start(i)
    finally:
        for p in procs:
            if p is not None and p.is_alive():
                p.terminate()  # uvicorn shuts down gracefully on SIGTERM
        deadline = time.monotonic() + 10
        for p in procs:
            if p is not None:
                p.join(max(0.1, deadline - time.monotonic()))
                if p.is_alive():
                    p.kill()
                    p.join(1)
        holder.close()
        for s, h in old.items():
            signal.signal(s, h)
