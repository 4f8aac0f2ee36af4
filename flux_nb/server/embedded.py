"""Run the local server (or any ASGI app) in a background thread on a free loopback port."""

from __future__ import annotations

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

    def __init__(
        self, config: ServerConfig | None = None, *, app: Any = None, engine: Any = None, host: str = "127.0.0.1"
    ) -> None:
        from flux_nb.server.app import create_app

        self.config = config or ServerConfig()
        self.app = app if app is not None else create_app(self.config, engine)
        self.host = host
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start serving; returns once the port accepts connections."""
        # uvicorn binds port 0 itself: sockets handed to it come without TCP_NODELAY, which
        # costs every request a 40 ms delayed-ACK stall on loopback.
        config = uvicorn.Config(self.app, host=self.host, port=0, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="flux-nb-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not (self._server.started and self._server.servers):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the local server did not start")
            time.sleep(0.005)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self, wait: bool = True) -> None:
        """Stop serving; with ``wait=False``, return at once while uvicorn shuts down (about 0.2 s)."""
        if self._server is not None:
            self._server.should_exit = True
        if wait and self._thread is not None:
            self._thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        """The server's counters (submits, polls, peak_active, ...)."""
        return self.app.state.table.snapshot()

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
