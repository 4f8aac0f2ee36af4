"""Connection limits for uvicorn: a header read timeout, a head size limit, and eviction of idle sockets.

uvicorn has no header read timeout: a socket that connects and never sends a full request head is
held for ever, and with ``limit_concurrency`` such sockets count until real requests get 503. The
guard, a subclass of uvicorn's HTTP protocol, closes a connection whose head is not complete within
``header_timeout`` (from the connection, or from the end of its previous answer) or grows past
``max_header_bytes``; and when the server is full, a new connection first evicts the oldest one
still waiting for its head.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from flux_nb.server.config import ServerConfig


def base_protocol(name: str = "auto") -> type:
    """uvicorn's HTTP protocol class: httptools when installed (``auto``), else h11."""
    if name in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            return HttpToolsProtocol
        except ImportError:
            if name == "httptools":
                raise
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol


def guarded_protocol(config: ServerConfig, base: type | None = None) -> type:
    """A uvicorn HTTP protocol class that enforces ``config``'s header timeout, head size and eviction."""
    parent: Any = base or base_protocol()
    header_timeout, max_header_bytes, limit = config.header_timeout, config.max_header_bytes, config.limit_concurrency

    class GuardedProtocol(parent):
        """uvicorn's protocol, plus the guard's timer and counters."""

        def connection_made(self, transport: asyncio.Transport) -> None:
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = 0
            self._awaiting_since: float | None = None
            self._guarded_cycle: object = None
            super().connection_made(transport)
            self._await_head()
            if limit is not None:
                evict_idle(self.connections, keep=self, limit=limit)

        def _await_head(self) -> None:
            """Start waiting for the next request's head."""
            self._head_bytes, self._awaiting_since = 0, time.monotonic()
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._close_idle)

        def _head_arrived(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            self._awaiting_since = None

        def waiting_for_head(self) -> bool:
            """True while no request is being served and the next head is not complete (a pipelined one counts)."""
            serving = self.cycle is not None and not self.cycle.response_complete
            return self._awaiting_since is not None and not serving

        def _close_idle(self) -> None:
            self._head_timer = None
            if self.waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._awaiting_since is not None:
                self._head_bytes += len(data)
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._guarded_cycle:
                self._guarded_cycle = self.cycle
                self._head_arrived()
            elif self._awaiting_since is not None and self._head_bytes > max_header_bytes:
                self.transport.close()

        def on_response_complete(self) -> None:
            self._await_head()
            super().on_response_complete()
            if self.cycle is not None and self.cycle is not self._guarded_cycle:  # a pipelined request
                self._guarded_cycle = self.cycle
                self._head_arrived()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return GuardedProtocol


def evict_idle(connections: set[Any], keep: Any, limit: int) -> int:
    """Close the connections that have waited longest for a request head (never ``keep``) until fewer than
    ``limit`` remain, so that the newest one is served; returns how many were closed."""
    if len(connections) < limit:
        return 0
    live = [c for c in connections if not getattr(c, "_evicted", False)]
    waiting = [c for c in live if c is not keep and c.waiting_for_head()]
    waiting.sort(key=lambda c: c._awaiting_since)
    doomed = waiting[: max(0, len(live) - limit + 1)]
    for connection in doomed:
        # Out of the count at once: the event loop may read the newest request before the closed
        # connection's connection_lost runs (uvloop does), and uvicorn counts ``connections`` there.
        connection._evicted = True
        connections.discard(connection)
        connection.transport.close()
    return len(doomed)


def uvicorn_options(config: ServerConfig) -> dict[str, Any]:
    """The ``uvicorn.Config`` settings that bound what a client can hold: the guarded protocol and limits."""
    return {
        "http": guarded_protocol(config),
        "timeout_keep_alive": config.keep_alive_timeout,
        "limit_concurrency": config.limit_concurrency,
        "h11_max_incomplete_event_size": config.max_header_bytes,
    }
