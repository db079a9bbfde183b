"""Run the server inside a test: a real uvicorn on a free loopback port, in a thread.

    from gflow.server.testing import serve

    with serve(create_app(store)) as url:
        httpx.post(f"{url}/graphql", json={"query": "{ runs { items { id } } }"})
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def serve(app: Any, host: str = "127.0.0.1", timeout: float = 10.0, port: int = 0,
          http: str = "auto") -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (``http://127.0.0.1:PORT``).

    ``port`` 0 picks a free one; give the port of an earlier ``serve`` to restart a server where its
    clients expect it. ``http``: uvicorn's HTTP protocol (``auto``, ``h11``, ``httptools``)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock.bind((host, port))
            break
        except OSError:  # the previous server on this port is still letting go of it
            if not port or time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.05)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", http=http))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"gflow-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError(f"the test server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
