"""AsyncFluxClient over real HTTP on 127.0.0.1: the local server, and a scripted one for faults."""

from __future__ import annotations

import asyncio
import http.server
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb.errors import (
    AuthError,
    CreditsError,
    DeliveryError,
    FluxTimeout,
    ModeratedError,
    RateLimitError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)
from flux_nb.http.client import ApiKey, AsyncFluxClient, RetryPolicy, Task
from flux_nb.images import prepare_image
from flux_nb.protocol import FluxRequest
from flux_nb.server import ServerConfig, create_app
from tests.scripted import ScriptedApi, Step, png_bytes

FAST_RETRY = RetryPolicy(attempts=4, rate_limit_attempts=60, base_delay=0.01, max_delay=0.05)


@pytest.fixture
def scripted() -> Iterator[ScriptedApi]:
    api = ScriptedApi().start()
    yield api
    api.stop()


@pytest.fixture
def image_site(tmp_path: Path) -> Iterator[str]:
    """A plain HTTP server on 127.0.0.1 serving reference images from tmp_path."""
    Image.new("RGB", (160, 96), (250, 200, 0)).save(tmp_path / "ref.png")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


# An in-process server behind httpx.ASGITransport: no socket opens, the loopback address is only a name.
IN_PROCESS = "http://127.0.0.1:8800"


def in_process(key: str | None = None, **options: Any) -> AsyncFluxClient:
    """A client talking to a fresh local server app in process (for tests where sockets do not matter)."""
    config = {k: options.pop(k) for k in list(options) if k in ("api_keys", "latency", "max_active_server")}
    if "max_active_server" in config:
        config["max_active"] = config.pop("max_active_server")
    transport = httpx.ASGITransport(create_app(ServerConfig(**config)))
    return AsyncFluxClient(key, IN_PROCESS, transport=transport, **options)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


async def test_text_to_image_in_jpeg_png_and_webp() -> None:
    async with in_process() as client:
        for fmt, pil_name in (("jpeg", "JPEG"), ("png", "PNG"), ("webp", "WEBP")):
            result = await client.generate(
                FluxRequest("a lighthouse", seed=3, width=320, height=192, output_format=fmt)
            )
            image = decode(result.image)
            assert image.format == pil_name
            assert (result.width, result.height) == (320, 192) == image.size
            assert result.task.id and result.task.polling_url.startswith(IN_PROCESS)
            assert result.seed == 3 and result.engine == "preview"
            assert result.task.cost == pytest.approx(1.4)
            assert result.finished_at >= result.ready_at >= result.task.submitted_at


async def test_editing_with_one_and_four_references_of_every_kind(server: Any, tmp_path: Path, image_site: str) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (128, 128), (200, 0, 0)).save(path)
    raw = io.BytesIO()
    Image.new("RGB", (96, 64), (0, 200, 0)).save(raw, "JPEG")
    refs = [
        prepare_image(path),
        prepare_image(raw.getvalue()),
        prepare_image(Image.new("RGBA", (64, 64), (0, 0, 200, 128))),
        prepare_image(f"{image_site}/ref.png"),
    ]
    async with AsyncFluxClient(None, server.url) as client:
        plain = await client.generate(FluxRequest("a bowl", seed=9, width=256, height=256))
        one = await client.generate(FluxRequest("a bowl", seed=9, width=256, height=256, images=(refs[0].value,)))
        four = await client.generate(
            FluxRequest("a bowl", seed=9, width=256, height=256, images=tuple(r.value for r in refs))
        )
    assert refs[3].is_url and refs[3].value.startswith("http://127.0.0.1")
    assert len({plain.image, one.image, four.image}) == 3
    assert four.task.input_mp and four.task.input_mp > 0


async def test_without_a_size_an_edit_takes_the_first_reference_size() -> None:
    ref = prepare_image(Image.new("RGB", (640, 480), "white"))
    async with in_process() as client:
        result = await client.generate(FluxRequest("an edit", seed=1, images=(ref.value,)))
    assert (result.width, result.height) == (640, 480)


async def test_same_request_gives_identical_bytes_and_another_seed_differs() -> None:
    async with in_process() as client:
        a = await client.generate(FluxRequest("a fox", seed=1, width=256, height=256))
        b = await client.generate(FluxRequest("a fox", seed=1, width=256, height=256))
        c = await client.generate(FluxRequest("a fox", seed=2, width=256, height=256))
    assert a.image == b.image
    assert a.image != c.image


BAD_REQUESTS = [
    (FluxRequest(""), "prompt is empty"),
    (FluxRequest("x", height=48), "below the minimum"),
    (FluxRequest("x", width=4096, height=2048), "at most"),
    (FluxRequest("x", seed=-1), "seed -1 is out of range"),
    (FluxRequest("x", seed=2**64), "out of range"),
    (FluxRequest("x", safety_tolerance=6), "safety_tolerance 6"),
    (FluxRequest("x", output_format="gif"), "output_format 'gif'"),
    (FluxRequest("x", images=("a",) * 5), "takes at most 4"),
    (FluxRequest("x", model="flux-2-pro", images=("a",) * 9), "takes at most 8"),
    (FluxRequest("x", model="flux-9"), "model 'flux-9'"),
    (FluxRequest("x", webhook_url="ftp://x"), "http(s) URL"),
    (FluxRequest("x", webhook_url="https://h/" + "a" * 2100), "1 to 2083"),
    (FluxRequest("x", webhook_secret="s"), "without a webhook_url"),
    (FluxRequest("x", steps=4), "not a setting of flux-2-klein-4b"),
    (FluxRequest("x", model="flux-2-flex", steps=0), "steps 0 is out of range"),
    (FluxRequest("x", model="flux-2-flex", guidance=11.0), "guidance 11.0 is out of range"),
]


@pytest.mark.parametrize(("request_", "message"), BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
async def test_every_validation_rule_is_enforced_before_any_http_request(request_: FluxRequest, message: str) -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500))
    async with AsyncFluxClient("k", "http://127.0.0.1:9", transport=transport) as client:
        with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
            await client.generate(request_)
    assert sent == []


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, RejectedError),
        (413, ValidationError),
        (422, RejectedError),
        (401, AuthError),
        (403, AuthError),
        (402, CreditsError),
    ],
)
async def test_http_errors_map_to_their_types_without_retrying(scripted: ScriptedApi, status: int, error: type) -> None:
    scripted.submits.append(Step(status, {"detail": [{"loc": ["body", "width"], "msg": "bad width"}]}))
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        with pytest.raises(error) as caught:
            await client.generate(FluxRequest("x", seed=1))
    assert scripted.submit_count == 1
    if status == 422:
        assert "width: bad width" in str(caught.value) and "nothing was charged" in caught.value.one_line()


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        ({"status": "Error", "details": {"error": "GPU fell over"}}, TaskFailedError, "GPU fell over"),
        ({"status": "Request Moderated", "details": {"Moderation Reasons": ["Sexual"]}}, ModeratedError, "request"),
        ({"status": "Content Moderated"}, ModeratedError, "generated image"),
        ({"status": "Task not found"}, TaskNotFoundError, "unknown"),
    ],
)
async def test_final_statuses_map_to_their_types(scripted: ScriptedApi, answer: dict, error: type, text: str) -> None:
    scripted.polls.append(Step(body={"id": "t", "result": None, **answer}))
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        client.not_found_grace = 0.0  # "Task not found" is final once the grace window has passed
        with pytest.raises(error, match=text):
            await client.generate(FluxRequest("x", seed=1))


async def test_unknown_statuses_count_as_still_running(scripted: ScriptedApi) -> None:
    for status in ("Pending", "Reasoning", "Generating"):
        scripted.polls.append(Step(body={"id": "t", "status": status, "progress": 0.5}))
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        client.durations.observe("flux-2-klein-4b@1.0", 0.01)
        result = await client.generate(FluxRequest("x", seed=1))
    assert result.polls == 4 and scripted.poll_count == 4


async def test_429_and_5xx_on_submit_are_retried_honouring_retry_after(scripted: ScriptedApi) -> None:
    scripted.submits.extend([Step(429, {"detail": "busy"}, headers={"Retry-After": "0.2"}), Step(503, {})])
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        started = asyncio.get_running_loop().time()
        await client.generate(FluxRequest("x", seed=1))
        waited = asyncio.get_running_loop().time() - started
    assert scripted.submit_count == 3
    assert waited >= 0.2


async def test_persistent_429_ends_in_rate_limit_error(scripted: ScriptedApi) -> None:
    scripted.submits.extend([Step(429, {"detail": "busy"})] * 5)
    policy = RetryPolicy(attempts=3, rate_limit_attempts=5, base_delay=0.001, max_delay=0.01)
    async with AsyncFluxClient("k", scripted.url, retry=policy) as client:
        with pytest.raises(RateLimitError):
            await client.generate(FluxRequest("x", seed=1))
    assert scripted.submit_count == 5


async def test_a_submit_whose_answer_is_lost_is_never_resent(scripted: ScriptedApi) -> None:
    scripted.submits.append(Step(delay=2.0))
    timeout = httpx.Timeout(connect=2.0, read=0.3, write=2.0, pool=2.0)
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY, timeout=timeout) as client:
        with pytest.raises(UnknownOutcomeError, match="may have created a task"):
            await client.generate(FluxRequest("x", seed=1))
    await asyncio.sleep(2.0)
    assert scripted.submit_count == 1


async def test_a_refused_connection_is_retried_then_reported() -> None:
    async with AsyncFluxClient("k", "http://127.0.0.1:9", retry=FAST_RETRY) as client:
        with pytest.raises(TransportError, match="could not reach"):
            await client.generate(FluxRequest("x", seed=1))


async def test_polls_survive_transient_5xx(scripted: ScriptedApi) -> None:
    scripted.polls.extend([Step(500, {}), Step(502, {})])
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        result = await client.generate(FluxRequest("x", seed=1))
    assert decode(result.image).size == (64, 48)
    assert scripted.poll_count == 3


async def test_polls_answered_429_keep_polling_honouring_retry_after(scripted: ScriptedApi) -> None:
    # More 429s than FAST_RETRY.attempts: a poll is a GET, it is waited out, never given up on.
    scripted.polls.extend([Step(429, {"detail": "slow down"}, headers={"Retry-After": "0.1"})] * 6)
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        started = asyncio.get_running_loop().time()
        result = await client.generate(FluxRequest("x", seed=1))
        waited = asyncio.get_running_loop().time() - started
    assert decode(result.image).size == (64, 48)
    assert scripted.submit_count == 1 and scripted.poll_count == 7
    assert waited >= 0.6


async def test_a_poll_429_storm_past_the_task_deadline_is_a_timeout(scripted: ScriptedApi) -> None:
    scripted.polls.extend([Step(429, {"detail": "slow down"}, headers={"Retry-After": "0.05"})] * 200)
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY, task_timeout=0.5) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(FluxTimeout, match="kept answering 429"):
            await client.generate(FluxRequest("x", seed=1))
        waited = asyncio.get_running_loop().time() - started
    assert waited >= 0.5  # never given up before the task's own deadline
    assert scripted.submit_count == 1 and scripted.poll_count > FAST_RETRY.attempts


async def test_a_413_is_a_validation_error_with_a_downscaling_hint(server_factory: Any) -> None:
    server = server_factory(max_body_bytes=4096)
    noise = Image.effect_noise((256, 256), 64).convert("RGB")
    reference = prepare_image(noise)
    async with AsyncFluxClient(None, server.url, retry=FAST_RETRY) as client:
        with pytest.raises(ValidationError, match="HTTP 413") as caught:
            await client.generate(FluxRequest("an edit", seed=1, images=(reference.value,)))
    assert "downscale the reference images" in caught.value.one_line()
    assert server.stats()["http_requests"]["POST v1"] == 1  # never retried


async def test_a_submit_answer_without_polling_url_falls_back_to_get_result(scripted: ScriptedApi) -> None:
    hook = "https://hooks.example/flux"
    scripted.submits.append(Step(body={"id": "wh-1", "status": "Pending", "webhook_url": hook, "cost": 1.4}))
    async with AsyncFluxClient("k", scripted.url + "/", retry=FAST_RETRY) as client:
        result = await client.generate(FluxRequest("x", seed=1, webhook_url=hook))
    assert result.task.polling_url == f"{scripted.url}/v1/get_result?id=wh-1"
    assert result.task.cost == pytest.approx(1.4)
    assert scripted.poll_ids == ["wh-1"] and decode(result.image).size == (64, 48)


async def test_a_download_failing_after_ready_ends_in_delivery_error(scripted: ScriptedApi) -> None:
    scripted.downloads.extend([Step(503)] * 10)
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match="HTTP 503"):
            await client.generate(FluxRequest("x", seed=1))
    assert scripted.submit_count == 1 and scripted.download_count == FAST_RETRY.attempts


async def test_a_corrupt_download_is_retried_and_never_returned(scripted: ScriptedApi) -> None:
    good = png_bytes()
    scripted.downloads.extend([Step(body=good[: len(good) // 2]), Step(body=b"not an image")])
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        result = await client.generate(FluxRequest("x", seed=1))
    assert result.image == good
    assert scripted.download_count == 3


async def test_always_corrupt_downloads_end_in_delivery_error(scripted: ScriptedApi) -> None:
    scripted.downloads.extend([Step(body=b"garbage")] * 10)
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match="corrupt"):
            await client.generate(FluxRequest("x", seed=1))


async def test_the_key_goes_to_the_api_but_never_to_delivery_urls(scripted: ScriptedApi) -> None:
    async with AsyncFluxClient("secret-key-123", scripted.url, retry=FAST_RETRY) as client:
        await client.generate(FluxRequest("x", seed=1))
        assert "secret-key-123" not in repr(client)
    assert scripted.seen_keys[:2] == ["secret-key-123", "secret-key-123"]
    assert scripted.seen_keys[-1] is None


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
async def test_sixty_tasks_against_a_24_task_limit_all_finish(server_factory: Any) -> None:
    server = server_factory(latency=0.3, max_active=24)
    async with AsyncFluxClient(None, server.url, max_active=60, retry=FAST_RETRY) as client:
        results = await asyncio.gather(
            *(client.generate(FluxRequest("a sweep", seed=i, width=128, height=128)) for i in range(60))
        )
    stats = server.stats()
    assert len({r.task.id for r in results}) == 60
    assert stats["peak_active"] <= 24
    assert stats["rejected"] > 0  # the server did answer 429 and the client kept going


class Gate(httpx.AsyncBaseTransport):
    """An in-process server that holds the first ``hold`` submits until all of them have arrived.

    It counts tasks in flight as the client sees them (from the submit to the poll answering Ready), so
    the client's limit is checked by counting, whatever the machine's speed.
    """

    def __init__(self, hold: int) -> None:
        self.inner = httpx.ASGITransport(create_app(ServerConfig(max_active=hold)))
        self.hold = hold
        self.arrived = 0
        self.active = 0
        self.peak = 0
        self.refused = 0
        self.all_arrived = asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.arrived += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
            if self.arrived == self.hold:
                self.all_arrived.set()
            await asyncio.wait_for(self.all_arrived.wait(), 60)  # a client that sends fewer at once never gets here
        response = await self.inner.handle_async_request(request)
        self.refused += response.status_code == 429
        if request.method == "GET" and request.url.path == "/v1/get_result":
            body = await response.aread()
            if b'"Ready"' in body:
                self.active -= 1
            return httpx.Response(response.status_code, headers=response.headers, content=body)
        return response


async def test_the_client_fills_its_24_slots_and_never_sends_a_25th() -> None:
    gate = Gate(hold=24)
    async with AsyncFluxClient(None, IN_PROCESS, max_active=24, transport=gate) as client:
        results = await asyncio.gather(
            *(client.generate(FluxRequest("a", seed=i, width=64, height=64)) for i in range(48))
        )
    assert len({r.task.id for r in results}) == 48
    assert (gate.arrived, gate.peak, gate.refused, gate.active) == (48, 24, 0, 0)


async def test_an_expired_delivery_url_is_a_clear_delivery_error(server_factory: Any) -> None:
    server = server_factory(delivery_ttl=0.2)
    async with AsyncFluxClient(None, server.url) as client:
        task = await client.submit(FluxRequest("late", seed=1, width=64, height=64))
        answer, _ = await client.wait(task)
        await asyncio.sleep(0.4)
        with pytest.raises(DeliveryError, match="expired"):
            await client.download(answer["result"]["sample"])


async def test_an_unknown_task_id_is_task_not_found() -> None:
    task = Task(id="nope", polling_url=f"{IN_PROCESS}/v1/get_result?id=nope", model="flux-2-klein-4b", submitted_at=0)
    async with in_process() as client:
        with pytest.raises(TaskNotFoundError):
            await client.resume(task)


async def test_a_task_slower_than_the_task_timeout_times_out(server_factory: Any) -> None:
    server = server_factory(latency=3.0)
    async with AsyncFluxClient(None, server.url, task_timeout=0.3) as client:
        with pytest.raises(FluxTimeout, match=r"not ready after 0\.3 s"):
            await client.generate(FluxRequest("slow", seed=1, width=64, height=64))


async def test_polling_learns_durations_from_each_finished_task(server_factory: Any) -> None:
    """What is learned, not how fast: the planning itself is tested with a fake clock in test_polling.py."""
    server = server_factory(latency=0.3)
    key = "flux-2-klein-4b@0.0"
    async with AsyncFluxClient(None, server.url) as client:
        assert client.durations.expected(key) is None
        walls = []
        for i in range(3):
            started = time.monotonic()
            result = await client.generate(FluxRequest("p", seed=i, width=64, height=64))
            walls.append(time.monotonic() - started)
            assert result.polls >= 1
        learned = client.durations.expected(key)
    assert learned is not None and 0 < learned <= max(walls)  # never longer than a task took end to end


async def test_polling_reports_the_servers_progress_in_order(scripted: ScriptedApi) -> None:
    for fraction in (0.25, 0.5, 0.75):
        scripted.polls.append(Step(body={"id": "t", "status": "Pending", "progress": fraction}))
    seen: list[tuple[str, float | None]] = []
    async with AsyncFluxClient("k", scripted.url, retry=FAST_RETRY) as client:
        client.durations.observe("flux-2-klein-4b@1.0", 0.01)
        result = await client.generate(
            FluxRequest("x", seed=1), on_progress=lambda task, status, fraction: seen.append((status, fraction))
        )
    assert seen == [("Pending", 0.25), ("Pending", 0.5), ("Pending", 0.75), ("Downloading", 1.0)]
    assert result.polls == 4 == scripted.poll_count


async def test_keys_are_checked_when_the_server_requires_them() -> None:
    keys = frozenset({"good-key"})
    async with in_process(None, api_keys=keys) as client:
        with pytest.raises(AuthError) as missing:
            await client.generate(FluxRequest("x", seed=1, width=64, height=64))
    text = "Not authenticated - Invalid Authentication"  # BFL's 403
    assert missing.value.status == 403 and missing.value.answer["detail"] == text
    assert missing.value.answer["error"] == "invalid_api_key"  # BFL's documented shape
    async with in_process("wrong", api_keys=keys) as client:
        with pytest.raises(AuthError) as wrong:
            await client.generate(FluxRequest("x", seed=1, width=64, height=64))
    assert wrong.value.status == 403
    async with in_process("good-key", api_keys=keys) as client:
        assert (await client.generate(FluxRequest("x", seed=1, width=64, height=64))).width == 64
        assert await client.credits() > 0


async def test_the_key_never_follows_a_polling_url_to_a_foreign_host(server_factory: Any) -> None:
    server = server_factory(api_keys=frozenset({"good-key"}))
    async with AsyncFluxClient("good-key", server.url, task_timeout=5) as client:
        task = await client.submit(FluxRequest("x", seed=1, width=64, height=64))
        assert (await client.resume(task)).width == 64  # the API's own host gets the key
        foreign = Task(task.id, task.polling_url.replace("127.0.0.1", "localhost"), task.model, task.submitted_at)
        with pytest.raises(AuthError):  # the same server under another name: the key is withheld
            await client.poll(foreign)


def test_regional_bfl_polling_hosts_get_the_key_and_others_do_not() -> None:
    auth = ApiKey("k", "https://api.bfl.ai")
    assert auth.sends_to("https://api.bfl.ai/v1/get_result") and auth.sends_to("https://api.eu2.bfl.ai/v1/x")
    assert not auth.sends_to("https://bfl.ai.example.com/") and not auth.sends_to("https://evil.example/")
    assert not auth.sends_to("http://api.eu2.bfl.ai/v1/x")  # plain http: never, not even to a BFL host
    local = ApiKey("k", "http://127.0.0.1:8800")
    assert local.sends_to("http://127.0.0.1:8800/v1/x")
    assert not local.sends_to("http://localhost:8800/") and not local.sends_to("https://api.bfl.ai/")


def test_errors_and_client_messages_speak_no_front_end() -> None:
    root = Path(__file__).resolve().parent.parent / "flux_nb"
    sources = [root / "errors.py", *sorted((root / "http").glob("*.py"))]
    for path in sources:
        text = path.read_text()
        for words in ("%flux", "Flux.", "run the cell", "flux.resume"):
            assert words not in text, f"{path.name} speaks of {words!r}"


def test_an_http_error_carries_its_status_and_a_short_answer() -> None:
    from flux_nb.http.responses import Answer, error_for_answer

    long = {"detail": "x" * 5000, "echo": "key-123"}
    error = error_for_answer(
        Answer(
            429,
            __import__("json").dumps(long).encode(),
            httpx.URL("http://h/v1/x"),
            scrub=lambda t: t.replace("key-123", "***"),
        )
    )
    assert isinstance(error, RateLimitError) and error.status == 429
    assert isinstance(error.answer, str) and len(error.answer) <= 300 and "key-123" not in str(error.answer)
    assert FluxTimeout("late").status is None and FluxTimeout("late").answer is None
