"""The local server over real HTTP: protocol shape, validation, limits, delivery, keys, webhooks."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import time
import zlib
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from PIL import Image

from flux_nb.errors import DeliveryError
from flux_nb.images import decode_output, md5_base64
from flux_nb.protocol import MODELS
from flux_nb.server import EmbeddedServer
from flux_nb.server.fault_injection import FaultPlan
from flux_nb.server.webhooks import SIGNATURE_HEADER, sign_webhook, verify_webhook


def png_b64(size: tuple[int, int] = (64, 64), color: str = "red") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wait_ready(client: httpx.Client, polling_url: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(polling_url).json()
        if answer["status"] != "Pending":
            return answer
        time.sleep(0.02)
    raise AssertionError("task did not finish")


@pytest.fixture
def http() -> httpx.Client:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.mark.parametrize("model", list(MODELS))
def test_every_registered_model_submits_polls_and_delivers(
    server: EmbeddedServer, http: httpx.Client, model: str
) -> None:
    answer = http.post(f"{server.url}/v1/{model}", json={"prompt": "a kettle", "seed": 5, "width": 128, "height": 96})
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) == {"id", "polling_url", "cost", "input_mp", "output_mp"}
    assert body["polling_url"] == f"{server.url}/v1/get_result?id={body['id']}"
    result = wait_ready(http, body["polling_url"])
    assert result["status"] == "Ready" and result["details"]["engine"] == "preview"
    assert result["result"]["seed"] == 5 and result["result"]["prompt"] == "a kettle"
    image = http.get(result["result"]["sample"])
    assert image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).size == (128, 96)


def test_cost_and_megapixels_follow_the_pricing_formula(server: EmbeddedServer, http: httpx.Client) -> None:
    body = {"prompt": "x", "width": 2048, "height": 1024, "input_image": png_b64((1024, 1024))}
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json=body).json()
    assert answer["output_mp"] == pytest.approx(2.0)
    assert answer["input_mp"] == pytest.approx(1.0)
    assert answer["cost"] == pytest.approx(1.4 + 0.1 + 0.1)
    pro = http.post(f"{server.url}/v1/flux-2-pro", json={"prompt": "x", "width": 1024, "height": 1024}).json()
    assert pro["cost"] == pytest.approx(3.0)


def test_unknown_task_is_task_not_found(server: EmbeddedServer, http: httpx.Client) -> None:
    answer = http.get(f"{server.url}/v1/get_result", params={"id": "no-such-task"})
    assert answer.status_code == 200  # BFL's schema: 200 with the status
    assert answer.json() == {
        "id": "no-such-task",
        "status": "Task not found",
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x", "width": 32}, "width"),
        ({"prompt": "x", "width": 3000, "height": 3000}, None),
        ({"prompt": "x", "width": 3008, "height": 3008}, None),
        ({"prompt": "x", "safety_tolerance": 9}, "safety_tolerance"),
        ({"prompt": "x", "output_format": "gif"}, "output_format"),
        ({"prompt": ""}, "prompt"),
        ({"seed": 3}, "prompt"),
        ({"prompt": "x", "webhook_url": "ftp://nowhere"}, "webhook_url"),
        ({"prompt": "x", "input_image": "%%% not base64"}, "input_image"),
        ({"prompt": "x", "input_image": base64.b64encode(b"plain text, no image").decode()}, "input_image"),
    ],
)
def test_invalid_bodies_get_422_in_fastapi_shape(
    server: EmbeddedServer, http: httpx.Client, body: dict, field: str | None
) -> None:
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert isinstance(detail, list) and all({"loc", "msg", "type"} <= set(d) for d in detail)
    if field is not None:
        assert any(field in d["loc"] for d in detail), detail
    else:
        assert "4 MP" in detail[0]["msg"], detail  # the model-level rule: at most 4 megapixels in total
    assert server.stats()["submits"] == 0


def test_flex_takes_steps_and_guidance_in_range(server: EmbeddedServer, http: httpx.Client) -> None:
    ok = http.post(f"{server.url}/v1/flux-2-flex", json={"prompt": "x", "steps": 20, "guidance": 3.5})
    assert ok.status_code == 200
    bad = http.post(f"{server.url}/v1/flux-2-flex", json={"prompt": "x", "steps": 51})
    assert bad.status_code == 422


def test_keys_are_required_when_configured(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(api_keys=frozenset({"k1"}))
    url = f"{server.url}/v1/flux-2-klein-4b"
    text = "Not authenticated - Invalid Authentication"  # BFL's 403 body, with its message beside it
    invalid = {"error": "invalid_api_key", "message": text, "detail": text}
    assert http.post(url, json={"prompt": "x"}).json() == invalid
    wrong = http.post(url, json={"prompt": "x"}, headers={"x-key": "nope"})
    assert (wrong.status_code, wrong.json()) == (403, invalid)
    assert http.post(url, json={"prompt": "x"}, headers={"x-key": "k1"}).status_code == 200
    assert http.get(f"{server.url}/v1/credits").status_code == 403
    poll = f"{server.url}/v1/get_result?id=x"
    assert http.get(poll).status_code == 403
    assert http.get(poll, headers={"x-key": "nope"}).status_code == 403
    refused = http.get(f"{server.url}/v1/credits", headers={"x-key": "not-the-key-123"})
    assert refused.status_code == 403 and "not-the-key-123" not in refused.text
    assert http.get(f"{server.url}/v1/credits", headers={"x-key": "k1"}).json()["credits"] > 0


def test_the_active_limit_answers_429_with_retry_after(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(latency=60.0, max_active=3)  # nothing finishes while the five posts land
    url = f"{server.url}/v1/flux-2-klein-4b"
    codes = [http.post(url, json={"prompt": "x", "width": 64, "height": 64}) for _ in range(5)]
    assert [c.status_code for c in codes] == [200, 200, 200, 429, 429]
    assert codes[3].headers["retry-after"] == "1"
    stats = server.stats()
    assert stats["active"] == 3 and stats["peak_active"] == 3 and stats["rejected"] == 2


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_progress_rises_while_pending(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(latency=3.0)
    body = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64}).json()
    first = http.get(body["polling_url"]).json()
    assert first["status"] == "Pending" and 0 <= first["progress"] < 1
    second = first
    while second["status"] == "Pending" and second["progress"] <= first["progress"]:
        time.sleep(0.05)
        second = http.get(body["polling_url"]).json()
    assert second["status"] == "Pending" and first["progress"] < second["progress"] < 1
    assert wait_ready(http, body["polling_url"])["progress"] == 1.0


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
def test_delivery_urls_expire_and_reject_traversal(server_factory: Any, http: httpx.Client) -> None:
    ttl = 2.0  # the first download, right after Ready, lands well inside it even on a loaded machine
    server = server_factory(delivery_ttl=ttl)
    body = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64}).json()
    sample = wait_ready(http, body["polling_url"])["result"]["sample"]
    assert http.get(sample).status_code == 200
    ready_at = server.stats()["ready_times"][body["id"]]
    while (answer := http.get(sample)).status_code == 200:
        assert time.time() < ready_at + ttl + 10, "the delivery URL never expired"
        time.sleep(0.05)
    assert answer.status_code == 404 and time.time() >= ready_at + ttl - 0.01  # not before the TTL ran out
    for path in (
        "/delivery/..%2F..%2Fetc%2Fpasswd/sample.jpeg",
        "/delivery/short/sample.jpeg",
        "/delivery/%2e%2e%2f%2e%2e%2fhistory.sqlite/sample.jpeg",
    ):
        assert http.get(f"{server.url}{path}").status_code == 404


def test_deliveries_carry_a_content_md5_that_exposes_damage(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(faults=FaultPlan.parse("delivery_corrupt=#2"))
    body = {"prompt": "x", "width": 256, "height": 256, "output_format": "png"}
    sample = wait_ready(http, http.post(f"{server.url}/v1/flux-2-klein-4b", json=body).json()["polling_url"])
    good = http.get(sample["result"]["sample"])
    assert good.headers["content-md5"] == md5_base64(good.content)
    assert base64.b64decode(good.headers["content-md5"]) == hashlib.md5(good.content).digest()
    assert decode_output(good.content, good.headers["content-md5"]).size == (256, 256)
    damaged = http.get(sample["result"]["sample"])  # the same bytes with 64 of them flipped, the header kept
    assert damaged.status_code == 200 and len(damaged.content) == len(good.content) != damaged.content
    with pytest.raises(DeliveryError, match="does not match Content-MD5"):
        decode_output(damaged.content, damaged.headers["content-md5"])


def test_oversized_bodies_are_refused_with_413(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(max_body_bytes=10_000)
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x" * 20_000})
    assert answer.status_code == 413

    def chunks() -> Any:  # no Content-Length: the body is counted as it arrives
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x" * 1000
        yield b'"}'

    url, json_type = f"{server.url}/v1/flux-2-klein-4b", {"content-type": "application/json"}
    chunked = http.post(url, content=chunks(), headers=json_type)
    assert chunked.status_code == 413 and "10000 bytes" in chunked.json()["detail"]
    small = http.post(url, content=iter([b'{"prompt": "ok"}']), headers=json_type)
    assert small.status_code == 200
    assert server.stats()["submits"] == 1


def test_reference_images_by_base64_data_uri_and_url(server: EmbeddedServer, http: httpx.Client) -> None:
    site = FastAPI()

    @site.get("/ref.png")
    async def ref() -> Any:
        from fastapi.responses import Response

        return Response(base64.b64decode(png_b64((200, 100), "blue")), media_type="image/png")

    with EmbeddedServer(app=site) as images:
        body = {
            "prompt": "edit",
            "input_image": png_b64((300, 200), "green"),
            "input_image_2": "data:image/png;base64," + png_b64(),
            "input_image_3": f"{images.url}/ref.png",
            "input_image_4": base64.encodebytes(base64.b64decode(png_b64((90, 90)))).decode(),  # wrapped at 76
        }
        answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json=body)
        assert answer.status_code == 200, answer.text
        result = wait_ready(http, answer.json()["polling_url"])
        missing = http.post(
            f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "input_image": f"{images.url}/none"}
        )
    assert (result["result"]["width"], result["result"]["height"]) == (288, 192)  # the first reference's size
    assert answer.json()["input_mp"] == pytest.approx(round((300 * 200 + 64 * 64 + 200 * 100 + 90 * 90) / 2**20, 4))
    assert missing.status_code == 422 and "could not fetch the image" in missing.text
    assert "404" not in missing.text and "/none" not in missing.text  # nothing about the target is echoed


def test_webhooks_are_signed_and_verifiable(server: EmbeddedServer, http: httpx.Client) -> None:
    received: list[tuple[bytes, str | None]] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> dict[str, bool]:
        received.append((await request.body(), request.headers.get(SIGNATURE_HEADER)))
        return {"ok": True}

    with EmbeddedServer(app=receiver) as hooks:
        body = {"prompt": "x", "width": 64, "height": 64, "webhook_url": f"{hooks.url}/hook", "webhook_secret": "s3"}
        answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json=body).json()
        assert "polling_url" not in answer and answer["webhook_url"] == f"{hooks.url}/hook"
        deadline = time.monotonic() + 10
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    raw, signature = received[0]
    assert json.loads(raw)["status"] == "Ready" and json.loads(raw)["id"] == answer["id"]
    assert verify_webhook(raw, signature, "s3")
    assert not verify_webhook(raw, signature, "wrong-secret")
    assert not verify_webhook(raw.replace(b"Ready", b"Error"), signature, "s3")
    assert not verify_webhook(raw, None, "s3")
    assert signature == sign_webhook(raw, "s3")
    assert verify_webhook(raw, signature.encode(), "s3")
    assert http.get(f"{server.url}/v1/get_result", params={"id": answer["id"]}).json()["status"] == "Ready"


@pytest.mark.parametrize(
    "header",
    ["sha256=é" + "0" * 63, "sha256=\u2603", "\udcff", "sha256=" + "é" * 64, b"sha256=\xff", 12345, "sha256="],
)
def test_malformed_webhook_signatures_are_false_not_errors(header: Any) -> None:
    body = b'{"id": "x", "status": "Ready"}'
    assert verify_webhook(body, header, "s3") is False
    assert verify_webhook(body, sign_webhook(body, "s3"), "\udcff") is False  # an unencodable secret
    assert verify_webhook(body, sign_webhook(body, "sé"), "sé") is True  # a non-ASCII secret is fine


def test_openapi_schema_lists_every_model_route(server: EmbeddedServer, http: httpx.Client) -> None:
    schema = http.get(f"{server.url}/openapi.json").json()
    for spec in MODELS.values():
        assert spec.path in schema["paths"]
    klein = schema["components"]["schemas"]["Flux2Klein4bRequest"]["properties"]
    assert "input_image_4" in klein and "input_image_5" not in klein
    assert klein["width"]["anyOf"][0] == {"type": "integer", "minimum": 64}  # any side from 64, as BFL's


@pytest.mark.slow
def test_cli_serve_binds_loopback_and_serves(tmp_path: Any) -> None:
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-m", "flux_nb", "serve", "--port", "0", "--latency", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "http://127.0.0.1:" in line, line
        url = line.split("http://", 1)[1].split()[0]
        answer = httpx.post(f"http://{url}/v1/flux-2-klein-4b", json={"prompt": "cli", "width": 64, "height": 64})
        assert answer.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_reference_fetches_are_limited(server_factory: Any, http: httpx.Client) -> None:
    import asyncio as _asyncio

    from fastapi.responses import Response as _Response

    site = FastAPI()

    @site.get("/big.png")
    async def big() -> Any:
        return _Response(b"\x89PNG" + b"0" * 50_000, media_type="image/png")

    @site.get("/slow.png")
    async def slow() -> Any:
        await _asyncio.sleep(0.8)  # past fetch_timeout; the image server waits for it when stopping
        return _Response(base64.b64decode(png_b64()), media_type="image/png")

    with EmbeddedServer(app=site) as images:
        server = server_factory(fetch_max_bytes=10_000, fetch_timeout=0.3)
        locked = server_factory(fetch_max_bytes=10_000, fetch_timeout=0.3, outbound_hosts=frozenset({"localhost"}))
        closed = server_factory(fetch_max_bytes=10_000, fetch_timeout=0.3, allow_fetch=frozenset())
        url = "/v1/flux-2-klein-4b"
        answers = [
            http.post(f"{target.url}{url}", json={"prompt": "x", "input_image": reference})
            for target, reference in [
                (server, f"{images.url}/big.png"),  # too big
                (server, f"{images.url}/slow.png"),  # too slow
                (server, f"{images.url}/missing.png"),  # 404
                (locked, f"{images.url}/big.png"),  # not a listed host
                (closed, f"{images.url}/slow.png"),  # loopback, not allowed
            ]
        ]
        plain = http.post(f"{server.url}{url}", json={"prompt": "x", "input_image": "ftp://127.0.0.1/x.png"})
    messages = {answer.json()["detail"][0]["msg"] for answer in answers}
    assert [a.status_code for a in answers] == [422] * 5
    assert len(messages) == 1, messages  # one wording, whatever went wrong: it tells nothing about the target
    assert "could not fetch the image" in messages.pop()
    assert plain.status_code == 422 and "not base64 image data nor an http(s) URL" in plain.text
    assert server.stats()["submits"] == locked.stats()["submits"] == closed.stats()["submits"] == 0


def test_a_trickling_reference_host_cannot_hold_a_submit_past_the_fetch_timeout(
    server_factory: Any, http: httpx.Client
) -> None:
    import asyncio as _asyncio

    from fastapi.responses import StreamingResponse

    noise = Image.frombytes("RGB", (64, 64), bytes(range(256)) * 48)
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    data = buffer.getvalue()
    site = FastAPI()

    served: list[int] = []
    step = len(data) // 60 + 1
    starts = range(0, len(data), step)

    @site.get("/trickle.png")
    async def trickle() -> Any:
        async def pieces() -> Any:  # a valid PNG over about 6 s, each piece well inside the per-read timeout
            for start in starts:
                served.append(start)
                yield data[start : start + step]
                await _asyncio.sleep(0.1)

        return StreamingResponse(pieces(), media_type="image/png")

    with EmbeddedServer(app=site) as images:
        server = server_factory(fetch_timeout=1.0)
        answer = http.post(
            f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "input_image": f"{images.url}/trickle.png"}
        )
    assert answer.status_code == 422 and "could not fetch" in answer.text, answer.text
    assert 0 < len(served) < len(starts)  # it gave up before the whole image had trickled in
    assert server.stats()["submits"] == 0


def test_the_embedded_server_listens_on_loopback_only(server: EmbeddedServer) -> None:
    assert server.host == "127.0.0.1"
    listening = server._server.servers[0].sockets[0].getsockname()[0]  # type: ignore[union-attr]
    assert listening == "127.0.0.1"


def test_a_request_without_seed_gets_a_reported_seed_that_replays(server: EmbeddedServer, http: httpx.Client) -> None:
    url = f"{server.url}/v1/flux-2-klein-4b"
    body = {"prompt": "a quiet harbour", "width": 64, "height": 64, "output_format": "png"}
    first = wait_ready(http, http.post(url, json=body).json()["polling_url"])["result"]
    second = wait_ready(http, http.post(url, json=body).json()["polling_url"])["result"]
    assert first["seed"] != second["seed"]  # random, like BFL (2**32 choices)
    replay = wait_ready(http, http.post(url, json={**body, "seed": first["seed"]}).json()["polling_url"])["result"]
    assert http.get(replay["sample"]).content == http.get(first["sample"]).content


def test_tasks_are_ready_no_earlier_than_the_latency_and_stats_count(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(latency=1.5)  # long enough for all three posts to land while the first is active
    url = f"{server.url}/v1/flux-2-klein-4b"
    ids = [http.post(url, json={"prompt": f"p{i}", "width": 64, "height": 64}).json()["id"] for i in range(3)]
    assert server.stats()["active"] == 3
    results = [wait_ready(http, f"{server.url}/v1/get_result?id={task_id}") for task_id in ids]
    assert all(r["status"] == "Ready" for r in results)
    stats = http.get(f"{server.url}/_flux/stats").json()
    own = server.stats()
    assert "requests_seen" not in stats and any("p0" in seen for seen in own.pop("requests_seen"))  # no prompts
    assert stats == own | {"http_requests": stats["http_requests"]}
    assert (stats["submits"], stats["ready"], stats["active"], stats["peak_active"]) == (3, 3, 0, 3)
    assert stats["polls"] >= 3
    for task_id in ids:
        # Wall-clock stamps around a monotonic sleep, which asyncio may end up to its clock resolution early.
        assert stats["ready_times"][task_id] - stats["submitted_times"][task_id] >= 1.5 - 0.01


def test_public_url_is_the_base_of_polling_and_delivery_urls(server_factory: Any, http: httpx.Client) -> None:
    server = server_factory(public_url="https://flux.example.org/")
    answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64}).json()
    assert answer["polling_url"] == f"https://flux.example.org/v1/get_result?id={answer['id']}"
    result = wait_ready(http, f"{server.url}/v1/get_result?id={answer['id']}")["result"]
    assert result["sample"].startswith("https://flux.example.org/delivery/")
    assert http.get(result["sample"].replace("https://flux.example.org", server.url)).status_code == 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size (no pixel data): enough for Pillow's decompression-bomb check."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_naming_the_field(server: EmbeddedServer, http: httpx.Client) -> None:
    for side in (12_000, 40_000):  # over Pillow's limit (a warning there), and over twice it (an error)
        bomb = base64.b64encode(png_header_only(side, side)).decode()
        answer = http.post(f"{server.url}/v1/flux-2-klein-4b", json={"prompt": "x", "input_image_2": bomb})
        assert answer.status_code == 422
        detail = answer.json()["detail"][0]
        assert detail["loc"] == ["body", "input_image_2"] and "too large" in detail["msg"], detail
    assert server.stats()["submits"] == 0
