"""URL references are measured before pricing: a ranged GET of their first bytes, to addresses the API could fetch.

Every fetch here goes to an image site on 127.0.0.1. Refusals are tested at the decision point, with injected
resolvers and a transport that records requests instead of opening sockets.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import RedirectResponse
from PIL import Image

from flux_nb import Flux
from flux_nb.errors import BudgetError
from flux_nb.http.probe import PROBE_BYTES, ProbePolicy, ProbeRefused, ReferenceSizes, measure
from flux_nb.protocol import REFERENCE_MP_CAP, estimate_cost
from flux_nb.server import EmbeddedServer, ServerConfig

SIZE = (1500, 900)  # 1.287 MP: neither a round figure nor the 4 MP cap


def encoded(fmt: str, size: tuple[int, int] = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 60).convert("RGB").save(buffer, fmt)
    return buffer.getvalue()


@dataclass
class Site:
    server: EmbeddedServer
    ranges: list[str | None] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)

    def url(self, path: str) -> str:
        return f"{self.server.url}{path}"


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    """Images on 127.0.0.1: one honours Range (206), one ignores it (200, the whole file), and a few bad answers."""
    app = FastAPI()
    record = Site(server=None)  # type: ignore[arg-type]
    images = {"png": encoded("PNG"), "jpeg": encoded("JPEG"), "webp": encoded("WEBP")}

    @app.get("/ranged/{name}.{fmt}")
    async def ranged(name: str, fmt: str, request: Request) -> Response:
        record.ranges.append(request.headers.get("range"))
        data = images[fmt]
        if "range" not in request.headers:  # the server fetching the whole reference
            return Response(data, media_type=f"image/{fmt}")
        first, last = request.headers["range"].removeprefix("bytes=").split("-")
        part = data[int(first) : int(last) + 1]
        record.sent.append(len(part))
        headers = {"content-range": f"bytes {first}-{int(first) + len(part) - 1}/{len(data)}"}
        return Response(part, status_code=206, headers=headers, media_type=f"image/{fmt}")

    @app.get("/whole/{name}.{fmt}")
    async def whole(name: str, fmt: str, request: Request) -> Response:
        record.ranges.append(request.headers.get("range"))
        return Response(images[fmt], media_type=f"image/{fmt}")

    @app.get("/missing.png")
    async def missing() -> Response:
        return Response("no", status_code=404)

    @app.get("/text.png")
    async def text() -> Response:
        return Response("<html>not an image</html>" * 100, media_type="image/png")

    @app.get("/hop.png")
    async def hop() -> Response:
        return RedirectResponse("/whole/a.png")

    with EmbeddedServer(app=app) as running:
        record.server = running
        yield record


LOCAL = ProbePolicy(loopback=True)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
@pytest.mark.parametrize("kind", ["ranged", "whole"])
def test_the_size_is_read_from_the_first_bytes(site: Site, fmt: str, kind: str) -> None:
    before = len(site.ranges)
    assert measure(site.url(f"/{kind}/cat.{fmt}"), LOCAL) == SIZE
    assert site.ranges[before:] == [f"bytes=0-{PROBE_BYTES - 1}"]
    if kind == "ranged":
        assert site.sent[-1] <= PROBE_BYTES


@pytest.mark.parametrize("path", ["/missing.png", "/text.png", "/hop.png"])
def test_what_cannot_be_measured_is_none(site: Site, path: str) -> None:
    """A 404, a non-image and a redirect (never followed) give no size: the estimate stays "at most"."""
    assert measure(site.url(path), LOCAL) is None


def test_a_server_that_is_not_there_is_none() -> None:
    with EmbeddedServer(app=FastAPI()) as gone:
        url = f"{gone.url}/x.png"
    assert measure(url, LOCAL, timeout=2) is None


def test_each_url_is_measured_once_per_session(site: Site) -> None:
    sizes = ReferenceSizes(LOCAL)
    before = len(site.ranges)
    assert [sizes(site.url("/whole/once.png")) for _ in range(3)] == [SIZE] * 3
    assert len(site.ranges) == before + 1


class Recorder(httpx.BaseTransport):
    """Answers without a socket and keeps every request (to check where a probe would go)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(206, content=encoded("PNG", (640, 480)))


def resolver_of(table: dict[str, list[str]]) -> object:
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


PUBLIC = "93.184.215.14"
NAMES = {
    "images.example": [PUBLIC],
    "intranet.example": ["10.1.2.3"],
    "metadata.example": ["169.254.169.254"],
    "mixed.example": [PUBLIC, "192.168.1.9"],
    "mapped.example": ["::ffff:127.0.0.1"],
    "home.example": ["127.0.0.1"],
}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("intranet.example", False),
        ("intranet.example", True),
        ("metadata.example", True),
        ("mixed.example", True),
        ("home.example", False),
        ("mapped.example", False),
    ],
)
def test_addresses_the_api_cannot_fetch_are_never_contacted(host: str, loopback: bool) -> None:
    transport = Recorder()
    policy = ProbePolicy(loopback=loopback)
    with pytest.raises(ProbeRefused, match="which the API cannot fetch"):
        policy.target(f"https://{host}/ref.png", resolver_of(NAMES))  # type: ignore[arg-type]
    assert measure(f"https://{host}/ref.png", policy, resolver=resolver_of(NAMES), transport=transport) is None  # type: ignore[arg-type]
    assert transport.requests == []


def test_a_public_address_is_contacted_at_the_address_that_was_checked() -> None:
    transport = Recorder()
    size = measure(
        "https://images.example/a/ref.png?v=2",
        ProbePolicy(),
        resolver=resolver_of(NAMES),  # type: ignore[arg-type]
        transport=transport,
    )
    assert size == (640, 480)
    (request,) = transport.requests
    assert str(request.url) == f"https://{PUBLIC}/a/ref.png?v=2"  # httpx drops the default port
    assert request.headers["host"] == "images.example"
    assert request.extensions["sni_hostname"] == "images.example"
    assert request.headers["range"] == f"bytes=0-{PROBE_BYTES - 1}"


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("https://api.bfl.ai", False),
        ("http://127.0.0.1:8800", True),
        ("http://localhost:8800", True),
        ("http://[::1]:8800", True),
        ("http://10.0.0.2:8800", False),
        ("http://gpu-box.lab:8800", False),
    ],
)
def test_only_a_server_on_this_machine_can_fetch_loopback_urls(endpoint: str, loopback: bool) -> None:
    assert ProbePolicy.for_endpoint(endpoint).loopback is loopback


def test_the_bfl_cloud_never_gets_a_loopback_url_measured(site: Site, tmp_path: Path) -> None:
    flux = Flux(api_key="sk-test-not-used", history_dir=tmp_path)
    try:
        before = len(site.ranges)
        prepared = flux.prepare("an edit", images=[site.url("/whole/bfl.png")], model="flux-2-pro", seed=1)
        assert prepared.estimate_is_bound and len(site.ranges) == before
    finally:
        flux.close()


@pytest.fixture
def fetching_server() -> Iterator[EmbeddedServer]:
    """A local server that may fetch references from 127.0.0.1 (where the image site is)."""
    with EmbeddedServer(ServerConfig(allow_fetch=frozenset({"127.0.0.1"}))) as server:
        yield server


def test_a_measured_url_reference_is_priced_as_the_server_bills_it(
    site: Site, fetching_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The estimate uses the measured size (not the largest the API takes), and equals the cost the server records."""
    flux = Flux(endpoint=fetching_server.url, history_dir=tmp_path)
    try:
        url = site.url("/ranged/edit.jpeg")
        prepared = flux.prepare("an edit", images=[url], model="flux-2-pro", seed=3, width=512, height=512)
        expected = estimate_cost("flux-2-pro", 512, 512, [SIZE[0] * SIZE[1] / 2**20])
        assert expected < estimate_cost("flux-2-pro", 512, 512, [REFERENCE_MP_CAP])
        assert prepared.estimated_cost == pytest.approx(expected)
        result = flux.generate("an edit", images=[url], model="flux-2-pro", seed=3, width=512, height=512)
        assert result.ok, result.error
        row = flux.history().iloc[-1]
        assert row["cost"] == pytest.approx(expected, abs=0.01)
        assert row["estimated_cost"] == pytest.approx(expected)
    finally:
        flux.close()


def test_a_budget_message_uses_the_measured_url(site: Site, tmp_path: Path) -> None:
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=tmp_path, budget=3.5)
    try:
        prepared = flux.prepare(
            "an edit", images=[site.url("/whole/b.png")], model="flux-2-pro", seed=1, size="1024x1024"
        )
        cost = estimate_cost("flux-2-pro", 1024, 1024, [SIZE[0] * SIZE[1] / 2**20])
        assert prepared.estimated_cost == pytest.approx(cost) == 6.0  # a 1.29 MP reference counts 2 MP
        with pytest.raises(BudgetError, match=rf"estimated cost at most {cost:.2f} credits"):
            flux.check_budget([prepared])
        flux.measure_references = False
        unmeasured = flux.prepare("an edit", images=[site.url("/whole/b.png")], model="flux-2-pro", seed=1)
        assert unmeasured.estimate_is_bound
    finally:
        flux.close()
