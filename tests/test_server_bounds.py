"""What one client can make the local server hold: reference-image memory, stalled bodies, task slots.

Everything runs against servers on 127.0.0.1; Ray's replica and the outbound policy are tested at
their decision points (the address a gRPC server is given, the check before any resolution).
"""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb import cli
from flux_nb.server import EmbeddedServer, ServerConfig
from flux_nb.server.engines import RenderJob
from flux_nb.server.engines.preview import PreviewEngine
from flux_nb.server.outbound import OutboundPolicy, OutboundRefused
from tests.test_cli import serving

SAFETY = 30.0  # seconds before a test calls the server broken (never a timing assertion)
SUBMIT = "/v1/flux-2-klein-4b"


def png(size: tuple[int, int]) -> str:
    """A real PNG of ``size``, as base64."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 160)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def black_png(side: int) -> bytes:
    """A real, decodable ``side`` x ``side`` RGB PNG that compresses to almost nothing (built row by row)."""
    squeeze, row = zlib.compressobj(9), b"\0" * (1 + 3 * side)
    data = b"".join(squeeze.compress(row) for _ in range(side)) + squeeze.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def header_only_png(side: int) -> str:
    """A PNG that declares ``side`` x ``side`` and holds no pixels, as base64."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


def wait_ready(http: httpx.Client, url: str, key: str | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + SAFETY
    while time.monotonic() < deadline:
        answer = http.get(url, headers={"x-key": key} if key else {}).json()
        if answer["status"] != "Pending":
            return answer
        time.sleep(0.02)
    raise AssertionError(f"{url} still pending after {SAFETY} s")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=SAFETY) as client:
        yield client


# -- reference images: measured from their headers, decoded off the event loop, within a memory budget --


def test_references_over_the_pixel_limit_are_refused_from_their_headers(
    server_factory: Callable[..., EmbeddedServer], http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    monkeypatch.setattr("flux_nb.server.reference_inputs.open_image", lambda data, name: decoded.append(name))
    server = server_factory()
    huge = header_only_png(9000)
    body = {"prompt": "x", **{f"input_image{suffix}": huge for suffix in ("", "_2", "_3", "_4")}}
    answer = http.post(f"{server.url}{SUBMIT}", json=body)
    assert answer.status_code == 422
    [detail] = answer.json()["detail"]
    assert detail["loc"] == ["body", "input_image"]
    assert detail["msg"] == (
        "the image is 9000x9000 (77.2 MP), too large: this server takes reference images of at most 4 MP; downscale it"
    )
    assert decoded == [] and server.stats()["submits"] == 0


def test_only_formats_the_api_takes_are_read(server_factory: Callable[..., EmbeddedServer], http: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "ICO")  # ICO's header may name a smaller size than it decodes to
    icon = base64.b64encode(buffer.getvalue()).decode()
    answer = http.post(f"{server_factory().url}{SUBMIT}", json={"prompt": "x", "input_image": icon})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["msg"] == "the data is not a PNG, JPEG or WebP image"


def test_references_are_decoded_off_the_event_loop(
    server_factory: Callable[..., EmbeddedServer], http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flux_nb.server import reference_inputs

    threads: list[str] = []
    decode = reference_inputs.open_image

    def recorded(data: bytes, name: str) -> Image.Image:
        threads.append(threading.current_thread().name)
        return decode(data, name)

    monkeypatch.setattr(reference_inputs, "open_image", recorded)
    server = server_factory()
    answer = http.post(f"{server.url}{SUBMIT}", json={"prompt": "x", "input_image": png((64, 64))})
    assert answer.status_code == 200
    assert len(threads) == 1 and threads[0] != server._thread.name  # the server's event loop runs on that one


class GatedEngine(PreviewEngine):
    """The preview engine, rendering only once ``gate`` is set."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def render(self, job: RenderJob) -> Image.Image:
        assert self.gate.wait(SAFETY)
        return super().render(job)


@pytest.fixture
def gated() -> Iterator[tuple[EmbeddedServer, GatedEngine]]:
    """A server whose tasks render only when the test opens the gate; 3 MB of reference memory."""
    engine = GatedEngine()
    server = EmbeddedServer(ServerConfig(reference_memory=3 * 2**20), engine=engine).start()
    yield server, engine
    engine.gate.set()
    server.stop(wait=False)


def test_reference_memory_is_reserved_before_decoding_and_given_back_after_rendering(
    gated: tuple[EmbeddedServer, GatedEngine], http: httpx.Client
) -> None:
    # A 512x512 reference reserves 512 * 512 * 8 bytes = 2 MB (Pillow's RGB and the image it came from).
    server, engine = gated
    url, reference = f"{server.url}{SUBMIT}", png((512, 512))
    first = http.post(url, json={"prompt": "x", "input_image": reference})
    assert first.status_code == 200 and server.stats()["reference_bytes"] == 2 * 2**20
    busy = http.post(url, json={"prompt": "x", "input_image": reference})
    assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
    assert busy.json()["message"] == "the server holds too many reference images right now; retry shortly"
    never = http.post(url, json={"prompt": "x", "input_image": reference, "input_image_2": reference})
    assert never.status_code == 422
    assert never.json()["detail"][0]["msg"] == (
        "these reference images take 4 MB to decode, over this server's reference memory of 3 MB; send smaller images"
    )
    assert server.stats()["reference_bytes"] == 2 * 2**20  # the refused ones reserved nothing
    engine.gate.set()
    assert wait_ready(http, first.json()["polling_url"])["status"] == "Ready"
    assert server.stats()["reference_bytes"] == 0
    assert server.app.state.table.tasks[first.json()["id"]].job.references == ()  # the decoded images let go
    again = http.post(url, json={"prompt": "x", "input_image": reference})
    assert again.status_code == 200


def test_a_refused_submit_gives_its_reference_memory_back(
    server_factory: Callable[..., EmbeddedServer], http: httpx.Client
) -> None:
    server = server_factory(latency=60.0, max_active=1)  # nothing finishes during the test
    url = f"{server.url}{SUBMIT}"
    assert http.post(url, json={"prompt": "x"}).status_code == 200  # holds the only slot
    assert http.post(url, json={"prompt": "x", "input_image": png((256, 256))}).status_code == 429
    corrupt = base64.b64encode(base64.b64decode(png((256, 256)))[:-40]).decode()
    assert http.post(url, json={"prompt": "x", "input_image": corrupt}).status_code == 422
    assert server.stats()["reference_bytes"] == 0


def rss_peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in kB."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1])


def heavy_submit_figures(side: int = 9000) -> dict[str, float]:
    """Four real ``side`` x ``side`` references (9000: a 1.26 MB body) against ``flux-nb serve``: status, peak RSS
    growth, and the longest answer to /v1/credits while the submit was handled (the event loop's stall)."""
    reference = base64.b64encode(black_png(side)).decode()
    body = {"prompt": "x", **{f"input_image{suffix}": reference for suffix in ("", "_2", "_3", "_4")}}
    pids: list[int] = []
    with serving(env={}, pids=pids) as url, httpx.Client(timeout=SAFETY) as http:
        assert http.get(f"{url}/v1/credits").status_code == 200
        before, gaps, pinged, done = rss_peak_kb(pids[0]), [], threading.Event(), threading.Event()

        def ping() -> None:
            with httpx.Client(timeout=SAFETY) as pinger:
                while not done.is_set():
                    started = time.perf_counter()
                    pinger.get(f"{url}/v1/credits")
                    gaps.append(time.perf_counter() - started)
                    pinged.set()

        pinging = threading.Thread(target=ping)
        pinging.start()
        try:
            assert pinged.wait(SAFETY)
            status = http.post(f"{url}{SUBMIT}", json=body).status_code
        finally:
            done.set()
            pinging.join()
        grown = (rss_peak_kb(pids[0]) - before) / 1024
    return {"status": status, "body_mb": len(str(body)) / 1e6, "peak_rss_growth_mb": grown, "stall_s": max(gaps)}


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads peak memory from /proc")
def test_four_9000_square_references_cost_the_server_no_memory() -> None:
    figures = heavy_submit_figures()
    assert figures["status"] == 422
    assert figures["peak_rss_growth_mb"] < 100, figures  # decoding them took about 1,900 MB


# -- request bodies: one deadline for the whole body ------------------------------------------------------


def stalled_post(port: int) -> socket.socket:
    """A submit whose head arrives and whose body stops after its first byte."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=SAFETY)
    sock.sendall(
        f"POST {SUBMIT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n{".encode()
    )
    return sock


def answer_status(sock: socket.socket, deadline: float) -> int | None:
    """The status of the server's answer on ``sock`` once it closes the connection (None: not by ``deadline``)."""
    received = b""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (TimeoutError, ConnectionResetError):
        return None
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None


def test_stalled_bodies_do_not_hold_connections_past_the_body_timeout() -> None:
    config = ServerConfig(limit_concurrency=50, body_timeout=1.0, header_timeout=600.0)
    with EmbeddedServer(config) as server:
        stalled = [stalled_post(server.port) for _ in range(60)]
        try:
            deadline = time.monotonic() + SAFETY
            statuses = [answer_status(sock, deadline) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        assert set(statuses) <= {408, 503} and statuses.count(408) >= 40, statuses  # the rest: over the limit
        with httpx.Client(timeout=SAFETY) as http:
            assert http.get(f"{server.url}/v1/credits").status_code == 200


def test_the_body_deadline_covers_the_whole_body_not_each_read() -> None:
    with EmbeddedServer(ServerConfig(body_timeout=0.5)) as server:
        sock = stalled_post(server.port)
        with sock:
            for _ in range(30):  # a byte every 0.1 s: no read waits long, the 1000-byte body never ends in time
                try:
                    sock.sendall(b" ")
                except (BrokenPipeError, ConnectionResetError):
                    break  # answered and closed
                time.sleep(0.1)
            assert answer_status(sock, time.monotonic() + SAFETY) == 408


def test_a_body_that_arrives_in_time_is_served(server_factory: Callable[..., EmbeddedServer]) -> None:
    server = server_factory(body_timeout=5.0)
    with httpx.Client(timeout=SAFETY) as http:
        answer = http.post(f"{server.url}{SUBMIT}", json={"prompt": "x", "input_image": png((64, 64))})
    assert answer.status_code == 200


# -- active tasks: 24 per key, and a server-wide cap --------------------------------------------------------


def submit(http: httpx.Client, server: EmbeddedServer, key: str) -> httpx.Response:
    return http.post(f"{server.url}{SUBMIT}", json={"prompt": "x"}, headers={"x-key": key})


def test_the_task_limit_is_per_key(server_factory: Callable[..., EmbeddedServer], http: httpx.Client) -> None:
    server = server_factory(latency=60.0, api_keys=frozenset({"key-a", "key-b"}))
    assert [submit(http, server, "key-a").status_code for _ in range(24)] == [200] * 24
    full = submit(http, server, "key-a")
    assert full.status_code == 429 and full.json()["message"] == "more than 24 active tasks for this key"
    assert submit(http, server, "key-b").status_code == 200


def test_the_server_wide_cap_holds_across_keys(
    server_factory: Callable[..., EmbeddedServer], http: httpx.Client
) -> None:
    server = server_factory(latency=60.0, max_active=3, max_active_per_key=2, api_keys=frozenset({"a", "b", "c"}))
    assert [submit(http, server, "a").status_code for _ in range(3)] == [200, 200, 429]
    assert submit(http, server, "b").status_code == 200
    for key in ("b", "c"):
        refused = submit(http, server, key)
        assert refused.status_code == 429 and refused.json()["message"] == "more than 3 active tasks"


def test_finished_tasks_free_their_keys_slots(http: httpx.Client) -> None:
    engine = GatedEngine()
    config = ServerConfig(max_active_per_key=1, api_keys=frozenset({"a"}))
    with EmbeddedServer(config, engine=engine) as server:
        first = submit(http, server, "a")
        assert submit(http, server, "a").status_code == 429
        engine.gate.set()
        wait_ready(http, f"{server.url}/v1/get_result?id={first.json()['id']}", "a")
        assert server.app.state.table.active_by_owner == {}
        assert submit(http, server, "a").status_code == 200


def test_serve_documents_and_applies_both_limits_with_the_servers_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    parser, _ = cli.build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--max-active MAX_ACTIVE in-flight tasks on the whole server, all keys together, before 429 (default 240)"
        in text
    )
    assert "--max-active-per-key MAX_ACTIVE_PER_KEY in-flight tasks of one key" in text and "(default 24, as" in text
    assert "before 408 (default 60)" in text and "(default 1024 MB)" in text
    names = ("max_active", "max_active_per_key", "body_timeout", "reference_memory")
    config = cli.serve_config(parser.parse_args(["serve"]))
    assert config is not None and [getattr(config, n) for n in names] == [getattr(ServerConfig(), n) for n in names]
    given = ["--max-active", "7", "--max-active-per-key", "3", "--body-timeout", "2.5", "--reference-memory", "5"]
    config = cli.serve_config(parser.parse_args(["serve", *given]))
    assert config is not None and [getattr(config, n) for n in names] == [7, 3, 2.5, 5 * 2**20]


# -- Ray Serve: each replica's gRPC server on loopback ------------------------------------------------------


@pytest.fixture
def grpc_binds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The addresses Ray's replica code asks its gRPC server to listen on (nothing is bound)."""
    replica = pytest.importorskip("ray.serve._private.replica")
    asked: list[str] = []
    monkeypatch.setattr(replica, "add_port_to_grpc_server", lambda server, address: asked.append(address) or 1)
    return asked


def test_a_replicas_grpc_server_listens_on_loopback(grpc_binds: list[str]) -> None:
    from ray.serve._private import replica

    from flux_nb.server.engines.preview import PreviewEngine
    from flux_nb.server.ray_serve import EngineReplica

    EngineReplica(PreviewEngine)
    replica.add_port_to_grpc_server(object(), "[::]:0")  # what Ray calls once the replica is built
    EngineReplica(PreviewEngine, 0.0, "::1")
    replica.add_port_to_grpc_server(object(), "[::]:0")
    assert grpc_binds == ["127.0.0.1:0", "[::1]:0"]


def test_every_interface_only_when_asked(grpc_binds: list[str]) -> None:
    from ray.serve._private import replica

    from flux_nb.server.engines.preview import PreviewEngine
    from flux_nb.server.ray_serve import EngineReplica

    EngineReplica(PreviewEngine, 0.0, None)
    replica.add_port_to_grpc_server(object(), "[::]:0")
    assert grpc_binds == ["[::]:0"]


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_serve_with_ray_builds_replicas_that_listen_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    serve = pytest.importorskip("ray.serve")
    from flux_nb.server import ray_serve

    bound: list[tuple[Any, ...]] = []

    class Deployment:
        def bind(self, *args: Any) -> str:
            bound.append(args)
            return "app"

    monkeypatch.setattr(ray_serve, "connect", lambda *args: (False, False, "a test"))
    monkeypatch.setattr(serve, "start", lambda **options: None)
    monkeypatch.setattr(serve, "deployment", lambda **options: lambda cls: Deployment())
    monkeypatch.setattr(serve, "run", lambda app, **options: object())
    serving = ray_serve.serve_with_ray(ServerConfig(latency=0.25))
    serving.engine.close()
    assert [args[1:] for args in bound] == [(0.25, "127.0.0.1")]


# -- outbound traffic: an empty host list contacts nothing --------------------------------------------------


async def test_an_empty_outbound_host_list_contacts_nothing() -> None:
    asked: list[str] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["93.184.216.34"]

    for policy in (OutboundPolicy(frozenset()), ServerConfig(outbound_hosts=frozenset()).outbound_policy()):
        with pytest.raises(OutboundRefused, match="not in the outbound host list"):
            await policy.check("https://images.example/a.png", resolver)
    assert asked == []  # refused before the name was even resolved
    assert (await OutboundPolicy().check("https://images.example/a.png", resolver)).address == "93.184.216.34"


PUBLIC = "93.184.216.34"  # only ever handed back by fake resolvers, never contacted


def answering(*addresses: str) -> tuple[list[tuple[str, int]], Callable[[str, int], Any]]:
    """A resolver that answers ``addresses`` for any host, and the (host, port) pairs it was asked."""
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        return list(addresses)

    return asked, resolver


async def test_the_outbound_check_resolves_the_urls_own_port_and_says_why_it_refuses() -> None:
    asked, resolver = answering(PUBLIC)
    assert (await OutboundPolicy().check("http://public.example/x", resolver)).port == 80
    assert (await OutboundPolicy().check("https://public.example:8443/x", resolver)).port == 8443
    assert asked == [("public.example", 80), ("public.example", 8443)]

    async def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("no such host")

    refusals = [
        ("ftp://public.example/x", resolver, "not an http(s) URL with a host: 'ftp://public.example/x'"),
        ("http://public.example:99999/x", resolver, "bad port in 'http://public.example:99999/x'"),
        ("http://nowhere.example/x", unresolvable, "'nowhere.example' does not resolve: no such host"),
        ("http://odd.example/x", answering("not-an-ip")[1], "'odd.example' resolved to 'not-an-ip', not an address"),
        ("http://empty.example/x", answering()[1], "'empty.example' resolved to no address"),
        (
            "http://two.example/x",
            answering(PUBLIC, "10.0.0.1", "127.0.0.1")[1],
            "'two.example' resolves to 10.0.0.1, 127.0.0.1, which this server does not contact",
        ),
    ]
    for url, resolve, message in refusals:
        with pytest.raises(OutboundRefused) as refused:
            await OutboundPolicy().check(url, resolve)
        assert str(refused.value) == message


async def test_allowed_networks_take_host_bits_bracketed_addresses_and_wrapped_addresses() -> None:
    policy = OutboundPolicy.of(None, ["10.1.2.3/8", "[fd00::1]"])
    for address in ("10.9.9.9", "fd00::1", "::ffff:10.9.9.9"):  # the last: IPv4-mapped, inside 10.0.0.0/8
        target = await policy.check("http://inside.example/x", answering(address)[1])
        assert ipaddress.ip_address(target.address) == ipaddress.ip_address(address)
    with pytest.raises(OutboundRefused):
        await policy.check("http://inside.example/x", answering("fd00::2")[1])
    # Host names beside a network (a set: in any order) do not hide it.
    names = OutboundPolicy.of(None, [f"host-{i}.example" for i in range(30)] + ["10.0.0.0/8"])
    assert (await names.check("http://inside.example/x", answering("10.1.2.3")[1])).address == "10.1.2.3"


async def test_the_system_resolver_answers_each_address_once() -> None:
    from flux_nb.server.outbound import system_resolver

    assert await system_resolver("127.0.0.1", 80) == ["127.0.0.1"]  # a literal: no query leaves the machine


async def test_a_checked_request_names_the_urls_host_once_and_its_tls_name_only_for_https() -> None:
    from flux_nb.addresses import Target
    from flux_nb.server.outbound import checked_request

    async with httpx.AsyncClient() as client:  # builds requests only: nothing is sent
        secure = Target("https://public.example/a.png", "public.example", 443, PUBLIC)
        request = checked_request(client, "POST", secure, content=b"body", headers={"host": "evil", "x-a": "1"})
        assert str(request.url) == f"https://{PUBLIC}/a.png"
        assert request.headers.get_list("host") == ["public.example"] and request.headers["x-a"] == "1"
        assert request.extensions["sni_hostname"] == "public.example" and request.content == b"body"
        plain = checked_request(client, "GET", Target("http://public.example/a.png", "public.example", 80, PUBLIC))
        assert "sni_hostname" not in plain.extensions and plain.headers.get_list("host") == ["public.example"]


def test_a_local_ray_instance_stays_on_loopback_where_ray_was_imported_before(monkeypatch: pytest.MonkeyPatch) -> None:
    constants = pytest.importorskip("ray._private.ray_constants")
    from flux_nb.server.ray_serve import LOOPBACK_ONLY, keep_local_on_loopback

    monkeypatch.delenv(LOOPBACK_ONLY, raising=False)
    monkeypatch.setattr(constants, "ENABLE_RAY_CLUSTER", True)  # Ray imported before the switch was set
    keep_local_on_loopback()
    assert constants.ENABLE_RAY_CLUSTER is False  # Ray's node address is then 127.0.0.1, never a route's
