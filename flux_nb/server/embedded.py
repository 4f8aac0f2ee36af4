"""Run the local server (or any ASGI app) in a background thread on a free loopback port."""

from __future__ import annotations

import threading
import time
from typing import Any

import uvicorn

from flux_nb.server.config import ServerConfig


def serve_in_thread(
    app: Any, host: str, port: int = 0, *, timeout: float = 15.0, name: str = "flux-nb-server", **options: Any
) -> tuple[uvicorn.Server, threading.Thread, int]:
    """Start uvicorn on ``host:port`` (0: a free port) in a daemon thread; returns once it accepts connections.

    ``options`` go to ``uvicorn.Config`` (default: warnings only, no access log, no lifespan).
    """
    # uvicorn binds the port itself: sockets handed to it come without TCP_NODELAY, which
    # costs every request a 40 ms delayed-ACK stall on loopback.
    settings: dict[str, Any] = {"log_level": "warning", "access_log": False, "lifespan": "off", **options}
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, **settings))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not (server.started and server.servers):
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the local server did not start on {host}:{port}")
        time.sleep(0.005)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


def polling_address(host: str, port: int) -> str:
    """The base URL of a polling listener on ``host:port``; 127.0.0.1 is named localhost, so the host differs too."""
    name = "localhost" if host == "127.0.0.1" else host
    return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"


def start_poll_listener(
    app: Any, host: str, port: int, *, timeout: float = 15.0, **options: Any
) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Serve ``app`` again on ``host:port`` (0: a free port) and point its polling URLs there.

    Returns the listener's server, thread and base URL; ``options`` go to ``serve_in_thread``.
    """
    from flux_nb.server.app import PollListener

    listener = PollListener(app)
    server, thread, bound = serve_in_thread(listener, host, port, timeout=timeout, name="flux-nb-polls", **options)
    url = polling_address(host, bound)
    listener.bind(url)
    return server, thread, url


class EmbeddedServer:
    """A uvicorn server on 127.0.0.1 in a daemon thread (and a polling listener with ``config.poll_port``).

    >>> with EmbeddedServer(ServerConfig(latency=0.5)) as server:  # doctest: +SKIP
    ...     print(server.url)
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        app: Any = None,
        engine: Any = None,
        host: str = "127.0.0.1",
        insecure_open: bool = False,
    ) -> None:
        from flux_nb.server.app import create_app
        from flux_nb.server.exposure import exposure_refusal

        self.config = config or ServerConfig()
        # Only the server's own app is judged: a plain ``app`` (a test's image site) has no keys to require.
        if app is None and (refusal := exposure_refusal(host, self.config.keys_required, insecure_open)):
            raise ValueError(refusal)
        self.app = app if app is not None else create_app(self.config, engine)
        self.host = host
        self.port = 0
        self.poll_url: str | None = None  # base URL of the polling listener, when config.poll_port is set
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._polls: tuple[uvicorn.Server, threading.Thread] | None = None  # the polling listener

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> EmbeddedServer:
        """Start serving (both listeners with ``poll_port``); returns once they accept connections."""
        from flux_nb.server.connection_limits import uvicorn_options

        limits = uvicorn_options(self.config)
        self._server, self._thread, self.port = serve_in_thread(self.app, self.host, timeout=timeout, **limits)
        if self.config.poll_port is not None:
            try:
                server, thread, self.poll_url = start_poll_listener(
                    self.app, self.host, self.config.poll_port, timeout=timeout, **limits
                )
            except RuntimeError:
                self.stop()
                raise
            self._polls = (server, thread)
        return self

    def stop(self, wait: bool = True) -> None:
        """Stop serving; with ``wait=False``, return at once while uvicorn shuts down (about 0.2 s)."""
        listeners = [(self._server, self._thread), *([self._polls] if self._polls else [])]
        for server, _ in listeners:
            if server is not None:
                server.should_exit = True
        for _, thread in listeners:
            if wait and thread is not None:
                thread.join(timeout=5)

    def stats(self) -> dict[str, Any]:
        """The server's counters (submits, polls, peak_active, poll_listener_requests, ...)."""
        from flux_nb.server.routes.meta import server_stats

        return server_stats(self.app)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
