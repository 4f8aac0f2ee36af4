"""Connection limits: idle and half-open sockets on 127.0.0.1 cannot starve real requests.

The assertions are about outcomes (a real request completes, idle sockets are closed by the server),
never about wall time; socket timeouts below are only safety bounds for a broken server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from flux_nb.server import EmbeddedServer, ServerConfig
from flux_nb.server.connection_limits import evict_idle, uvicorn_options

SAFETY = 30.0  # seconds a socket waits before the test calls the server broken


@contextmanager
def idle_sockets(port: int, count: int, first_bytes: bytes = b"") -> Iterator[list[socket.socket]]:
    """``count`` connections to 127.0.0.1:port that send ``first_bytes`` (maybe nothing) and then wait."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=SAFETY)
            if first_bytes:
                sock.sendall(first_bytes)
            sockets.append(sock)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server ended the connection (EOF or reset, after what it still sent) rather than let it wait."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


def one_response(sock: socket.socket) -> bytes:
    """Read one whole HTTP/1.1 response (head and its Content-Length body), however the bytes arrive."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the connection ended inside a response head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    fields = dict(line.lower().split(b":", 1) for line in head.split(b"\r\n")[1:])
    while len(body) < int(fields[b"content-length"]):
        chunk = sock.recv(65536)
        assert chunk, "the connection ended inside a response body"
        body += chunk
    return head


def credits(server: EmbeddedServer) -> int:
    with httpx.Client(timeout=SAFETY) as http:
        return http.get(f"{server.url}/v1/credits").status_code


def test_a_flood_of_idle_sockets_does_not_starve_real_requests() -> None:
    # The idle sockets outnumber the concurrency limit; each new connection evicts the longest-idle one.
    config = ServerConfig(limit_concurrency=64, header_timeout=600.0)
    with EmbeddedServer(config) as server, idle_sockets(server.port, 300) as idle:
        assert [credits(server) for _ in range(5)] == [200] * 5
        assert sum(closed_by_server(sock) for sock in idle[:100]) == 100  # the oldest were evicted


def test_sockets_that_never_finish_their_headers_are_closed() -> None:
    config = ServerConfig(header_timeout=0.5)
    partial = b"GET /v1/credits HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "  # the head never ends
    with EmbeddedServer(config) as server:
        with idle_sockets(server.port, 100) as silent, idle_sockets(server.port, 100, partial) as slow:
            assert credits(server) == 200
            assert all(closed_by_server(sock) for sock in silent + slow)
        assert credits(server) == 200


def test_a_keep_alive_connection_must_send_its_next_head_in_time() -> None:
    with EmbeddedServer(ServerConfig(header_timeout=0.5, keep_alive_timeout=600)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=SAFETY)
        with sock:
            sock.sendall(b"GET /v1/credits HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert b" 200 " in one_response(sock).split(b"\r\n", 1)[0]  # all of it: its body may come apart
            sock.sendall(b"GET /v1/credits HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a second head, never finished
            assert closed_by_server(sock)


def test_an_oversized_head_closes_the_connection() -> None:
    with EmbeddedServer(ServerConfig(max_header_bytes=8 * 1024, header_timeout=600.0)) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=SAFETY)
        with sock:
            sock.sendall(b"GET /v1/credits HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            try:
                for _ in range(8):
                    sock.sendall(b"X-Filler: " + b"a" * 2000 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while sending: the outcome this test wants
            assert closed_by_server(sock)
        assert credits(server) == 200


class Waiting:
    """A stand-in connection for the eviction rule."""

    def __init__(self, since: float | None) -> None:
        self._awaiting_since, self.closed = since, False
        self.transport = self

    def waiting_for_head(self) -> bool:
        return self._awaiting_since is not None

    def close(self) -> None:
        self.closed = True


def test_eviction_closes_the_longest_waiting_until_the_newest_fits() -> None:
    busy = [Waiting(None) for _ in range(3)]  # serving a request: never evicted
    waiting = [Waiting(float(i)) for i in range(5)]
    newest = Waiting(10.0)
    connections = {*busy, *waiting, newest}
    assert evict_idle(connections, keep=newest, limit=20) == 0
    assert evict_idle(connections, keep=newest, limit=7) == 3
    assert [c.closed for c in waiting] == [True, True, True, False, False]
    assert not newest.closed and not any(c.closed for c in busy)
    assert len(connections) == 6 and not any(c in connections for c in waiting[:3])  # out of the count at once
    assert evict_idle(connections, keep=newest, limit=7) == 0


def test_the_limits_reach_uvicorn() -> None:
    options = uvicorn_options(ServerConfig(keep_alive_timeout=3, limit_concurrency=77, max_header_bytes=9000))
    assert options["timeout_keep_alive"] == 3 and options["limit_concurrency"] == 77
    assert options["h11_max_incomplete_event_size"] == 9000
    assert options["http"].__name__ == "GuardedProtocol"


@pytest.mark.slow
def test_flux_nb_serve_closes_silent_sockets() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_nb", "serve", "--port", "0", "--header-timeout", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        port = int(line.split("http://127.0.0.1:", 1)[1].split()[0])
        with idle_sockets(port, 20) as silent:
            assert httpx.get(f"http://127.0.0.1:{port}/v1/credits", timeout=SAFETY).status_code == 200
            assert all(closed_by_server(sock) for sock in silent)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
