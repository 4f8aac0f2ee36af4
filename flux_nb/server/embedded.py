"""Run the local server (or any ASGI app) in a background thread on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

from flux_nb.server.config import ServerConfig


class EmbeddedServer:
    """A uvicorn server on 127.0.0.1 in a daemon thread.

    >>> with EmbeddedServer(ServerConfig(latency=0.5)) as server:  # doctest: +SKIP
    ...     print(server.url)
    """

    def __init__(self, config: ServerConfig | None = None, *, app: Any = None, host: str = "127.0.0.1") -> None:
        from flux_nb.server.app import create_app

        self.config = config or ServerConfig()
        self.app = app if app is not None else create_app(self.config)
        self.host = host
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start serving; returns once the port accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"flux-nb-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the local server did not start on {self.url}")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        """The server's counters (submits, polls, peak_active, ...)."""
        return self.app.state.table.snapshot()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
