"""The local server as an attack surface: SSRF through reference URLs and webhooks, tenants, exposure.

Refusals of non-loopback targets are tested at the decision point (the outbound check, with a fake
or numeric-only resolver), and no socket is opened; traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from PIL import Image

from flux_nb import cli
from flux_nb.server import EmbeddedServer, ServerConfig, create_app
from flux_nb.server.exposure import exposure_refusal, is_loopback_host
from flux_nb.server.outbound import OutboundPolicy, OutboundRefused

PUBLIC = "93.184.216.34"  # a public address: only ever handed back by a fake resolver, never contacted


def png_bytes(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "purple").save(buffer, "PNG")
    return buffer.getvalue()


async def numeric_only(host: str, port: int) -> list[str]:
    """The system's parsing of numeric hosts (2130706433, 0x7f000001, ...) without any DNS query."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    return [str(info[4][0]) for info in infos]


NAMES = {
    "localhost": ["127.0.0.1", "::1"],
    "metadata.internal": ["169.254.169.254"],
    "intranet.example": ["10.1.2.3"],
    "split.example": [PUBLIC, "127.0.0.1"],  # one good answer does not excuse a bad one
    "public.example": [PUBLIC],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host in NAMES:
        return NAMES[host]
    try:
        return await numeric_only(host, port)
    except socket.gaierror:
        raise OSError(f"no such host {host}") from None


@pytest.fixture
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """Every attempt to connect a socket, recorded and stopped."""
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise AssertionError(f"a connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield attempts


REFUSED = [
    "http://127.0.0.1/x.png",
    "http://127.0.0.2:8080/x.png",
    "http://localhost:8800/v1/credits",
    "http://[::1]/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://2130706433/x.png",
    "http://0x7f000001/x.png",
    "http://017700000001/x.png",
    "http://127.1/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.internal/computeMetadata/v1/",
    "http://[fe80::1]/x.png",
    "http://10.0.0.1/x.png",
    "http://172.16.5.4/x.png",
    "http://192.168.1.1/x.png",
    "http://intranet.example/x.png",
    "http://100.64.0.1/x.png",  # shared (carrier-grade NAT)
    "http://224.0.0.1/x.png",  # multicast
    "http://[ff02::1]/x.png",
    "http://240.0.0.1/x.png",  # reserved
    "http://0.0.0.0/x.png",
    "http://[::]/x.png",
    "http://[64:ff9b::7f00:1]/x.png",  # NAT64 of 127.0.0.1
    "http://[2002:7f00:1::]/x.png",  # 6to4 of 127.0.0.1
    "http://split.example/x.png",
    "http://no-such-host.example/x.png",
    "ftp://public.example/x.png",
    "file:///etc/passwd",
]


@pytest.mark.parametrize("url", REFUSED)
async def test_non_public_targets_are_refused_after_resolution(url: str, no_connections: list[Any]) -> None:
    with pytest.raises(OutboundRefused):
        await OutboundPolicy().check(url, fake_resolver)
    assert no_connections == []


async def test_a_public_target_is_connected_at_the_checked_address(no_connections: list[Any]) -> None:
    target = await OutboundPolicy().check("https://public.example/a/b.png?x=1", fake_resolver)
    assert (target.address, target.port) == (PUBLIC, 443)
    assert target.connect_url == f"https://{PUBLIC}:443/a/b.png?x=1"
    assert target.host_header == "public.example"
    assert no_connections == []


async def test_allow_fetch_opens_named_hosts_addresses_and_networks(no_connections: list[Any]) -> None:
    policy = OutboundPolicy.of(None, ["127.0.0.1", "10.0.0.0/8", "metadata.internal"])
    assert (await policy.check("http://127.0.0.1:9/x", fake_resolver)).address == "127.0.0.1"
    assert (await policy.check("http://intranet.example/x", fake_resolver)).address == "10.1.2.3"
    assert (await policy.check("http://metadata.internal/x", fake_resolver)).address == "169.254.169.254"
    for still_refused in ("http://127.0.0.2/x", "http://192.168.1.1/x", "http://localhost/x"):
        with pytest.raises(OutboundRefused):
            await policy.check(still_refused, fake_resolver)
    listed = OutboundPolicy.of(["public.example"], [])
    with pytest.raises(OutboundRefused):
        await listed.check(f"http://{PUBLIC}/x", fake_resolver)
    assert no_connections == []


@pytest.fixture
def image_site() -> Iterator[tuple[EmbeddedServer, list[str]]]:
    """An image site on 127.0.0.1 that records the Host header of each request it gets."""
    seen: list[str] = []
    site = FastAPI()

    @site.get("/ref.png")
    async def ref(request: Request) -> Response:
        seen.append(request.headers["host"])
        return Response(png_bytes(), media_type="image/png")

    @site.get("/hop")
    async def hop(request: Request) -> Response:
        seen.append(request.headers["host"])
        return RedirectResponse("/ref.png")

    with EmbeddedServer(app=site) as running:
        yield running, seen


def test_the_server_does_not_fetch_loopback_references_by_default(
    image_site: tuple[EmbeddedServer, list[str]],
) -> None:
    site, seen = image_site
    with EmbeddedServer(ServerConfig()) as server:
        for host in ("127.0.0.1", "localhost", "[::ffff:127.0.0.1]", "2130706433"):
            url = f"http://{host}:{site.port}/ref.png"
            answer = httpx.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "input_image": url})
            assert answer.status_code == 422 and "could not fetch the image" in answer.text, answer.text
            assert str(site.port) not in answer.text
        assert server.stats()["submits"] == 0
    assert seen == []


def test_redirects_are_not_followed(image_site: tuple[EmbeddedServer, list[str]]) -> None:
    site, seen = image_site
    with EmbeddedServer(ServerConfig(allow_fetch=frozenset({"127.0.0.1"}))) as server:
        answer = httpx.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "input_image": f"{site.url}/hop"})
    assert answer.status_code == 422 and "could not fetch the image" in answer.text
    assert seen == [f"127.0.0.1:{site.port}"]  # the first hop only


async def test_the_fetch_connects_to_the_address_that_was_checked(
    image_site: tuple[EmbeddedServer, list[str]],
) -> None:
    site, seen = image_site

    async def resolver(host: str, port: int) -> list[str]:  # an allowed name; the system would not know it
        return ["127.0.0.1"] if host == "images.flux-nb.test" else []

    app = create_app(ServerConfig(allow_fetch=frozenset({"images.flux-nb.test"})), resolver=resolver)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://local") as http:
        url = f"http://images.flux-nb.test:{site.port}/ref.png"
        answer = await http.post("/v1/flux-2-klein-4b", json={"prompt": "x", "input_image": url})
    assert answer.status_code == 200, answer.text
    assert seen == [f"images.flux-nb.test:{site.port}"]  # the URL's host name, at the checked address


def test_webhooks_to_internal_addresses_are_not_sent() -> None:
    received: list[bytes] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        received.append(await request.body())
        return {"ok": True}

    with EmbeddedServer(app=receiver) as hooks, EmbeddedServer(ServerConfig()) as server:
        body = {"prompt": "x", "width": 64, "height": 64, "webhook_url": f"{hooks.url}/hook"}
        task_id = httpx.post(f"{server.url}/v1/flux-2-klein-4b", json=body).json()["id"]
        deadline = time.monotonic() + 10
        while server.stats()["webhooks_refused"] == 0:
            assert time.monotonic() < deadline, server.stats()
            time.sleep(0.02)
        assert httpx.get(f"{server.url}/v1/get_result", params={"id": task_id}).json()["status"] == "Ready"
    assert received == [] and server.stats()["webhooks_sent"] == 0


@pytest.fixture
def tenants() -> Iterator[httpx.AsyncClient]:
    config = ServerConfig(api_keys=frozenset({"key-alice-1", "key-bob-22"}), admin_keys=frozenset({"key-admin-3"}))
    yield httpx.AsyncClient(transport=httpx.ASGITransport(create_app(config)), base_url="http://local")


async def ready(http: httpx.AsyncClient, task_id: str, key: str) -> dict[str, Any]:
    for _ in range(1000):
        answer = (await http.get("/v1/get_result", params={"id": task_id}, headers={"x-key": key})).json()
        if answer["status"] != "Pending":
            return answer
        await asyncio.sleep(0.01)
    raise AssertionError("never finished")


async def test_a_task_belongs_to_the_key_that_made_it(tenants: httpx.AsyncClient) -> None:
    alice, bob = {"x-key": "key-alice-1"}, {"x-key": "key-bob-22"}
    body = {"prompt": "alice's secret garden", "width": 64, "height": 64}
    async with tenants as http:
        task_id = (await http.post("/v1/flux-2-klein-4b", json=body, headers=alice)).json()["id"]
        own = await ready(http, task_id, "key-alice-1")
        other = await http.get("/v1/get_result", params={"id": task_id}, headers=bob)
        unknown = await http.get("/v1/get_result", params={"id": "no-such-task"}, headers=bob)
        admin = await http.get("/v1/get_result", params={"id": task_id}, headers={"x-key": "key-admin-3"})
        image = await http.get(own["result"]["sample"].replace("http://local", ""))
    assert own["status"] == "Ready" and image.status_code == 200
    assert other.status_code == unknown.status_code == admin.status_code == 200  # "Task not found", as at BFL
    assert other.json()["status"] == "Task not found"
    assert other.json() == unknown.json() | {"id": task_id}  # another key's task looks exactly like none
    assert "secret garden" not in other.text and "delivery" not in other.text


async def test_stats_need_a_key_and_show_counts_not_prompts(tenants: httpx.AsyncClient) -> None:
    async with tenants as http:
        task_id = (
            await http.post(
                "/v1/flux-2-klein-4b", json={"prompt": "a private prompt", "seed": 3}, headers={"x-key": "key-bob-22"}
            )
        ).json()["id"]
        await ready(http, task_id, "key-bob-22")
        anonymous = await http.get("/_flux/stats")
        tenant = await http.get("/_flux/stats", headers={"x-key": "key-alice-1"})
        admin = await http.get("/_flux/stats", headers={"x-key": "key-admin-3"})
    assert anonymous.status_code == 403 and anonymous.json()["error"] == "invalid_api_key"
    assert tenant.json()["submits"] == admin.json()["submits"] == 1
    for answer in (tenant, admin):
        assert "a private prompt" not in answer.text and "requests_seen" not in answer.json()
    assert task_id not in tenant.text and task_id in admin.json()["ready_times"]


async def test_docs_are_off_when_keys_are_required(tenants: httpx.AsyncClient) -> None:
    async with (
        tenants as keyed,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(create_app(ServerConfig())), base_url="http://local"
        ) as open_server,
    ):
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert (await keyed.get(path, headers={"x-key": "key-alice-1"})).status_code == 404
            assert (await open_server.get(path)).status_code == 200


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_start_without_keys(host: str) -> None:
    assert is_loopback_host(host) and exposure_refusal(host, keys_required=False, insecure_open=False) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "flux.example.org"])
def test_other_hosts_need_keys_or_insecure_open(host: str) -> None:
    refusal = exposure_refusal(host, keys_required=False, insecure_open=False)
    assert refusal is not None and f"listen on {host} without keys" in refusal
    assert exposure_refusal(host, keys_required=True, insecure_open=False) is None
    assert exposure_refusal(host, keys_required=False, insecure_open=True) is None


def test_serve_refuses_a_public_host_without_keys_before_binding(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import uvicorn

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the server was started")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    monkeypatch.delenv(cli.SERVER_KEYS_ENV, raising=False)
    monkeypatch.delenv(cli.ADMIN_KEYS_ENV, raising=False)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without keys" in err and "--insecure-open" in err


def test_the_embedded_server_refuses_a_public_host_without_keys() -> None:
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0 without keys"):
        EmbeddedServer(ServerConfig(), host="0.0.0.0")  # refused when made, before anything binds


@pytest.mark.slow
@pytest.mark.parametrize(("flags", "status"), [([], 422), (["--allow-fetch", "127.0.0.1"], 200)])
def test_serve_fetches_from_loopback_only_when_allowed(
    image_site: tuple[EmbeddedServer, list[str]], flags: list[str], status: int
) -> None:
    from tests.test_cli import serving

    site, seen = image_site
    with serving(*flags, env={}) as url:
        body = {"prompt": "x", "input_image": f"{site.url}/ref.png"}
        assert httpx.post(f"{url}/v1/flux-2-klein-4b", json=body, timeout=30).status_code == status
    assert len(seen) == (1 if status == 200 else 0)
