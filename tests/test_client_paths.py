"""The client's less travelled paths, in process (no socket): resuming, expired and mismatched deliveries, credits.

Each test here kills mutants of flux_nb/http/client.py that survived the mutation run (bench/MUTATION.md).
"""

from __future__ import annotations

import asyncio
import io
import random
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb.errors import (
    AuthError,
    DeliveryError,
    FluxError,
    FluxTimeout,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
)
from flux_nb.http.client import AsyncFluxClient, RetryPolicy, Task
from flux_nb.http.read_limits import BodyLimits
from flux_nb.protocol import FluxRequest
from flux_nb.server import ServerConfig, create_app

IN_PROCESS = "http://127.0.0.1:8800"
FAST_RETRY = RetryPolicy(attempts=3, rate_limit_attempts=3, base_delay=0.0, max_delay=0.0)
Rewrite = Callable[[httpx.Request, httpx.Response, bytes], Awaitable[httpx.Response | None]]


class Rewriting(httpx.AsyncBaseTransport):
    """The local server in process; ``rewrite`` may replace an answer (None keeps it). Counts requests by kind."""

    def __init__(self, rewrite: Rewrite | None = None, **config: Any) -> None:
        self.inner = httpx.ASGITransport(create_app(ServerConfig(**config)))
        self.rewrite = rewrite
        self.counts: dict[str, int] = {"submit": 0, "poll": 0, "delivery": 0, "credits": 0}

    @staticmethod
    def kind(request: httpx.Request) -> str:
        path = request.url.path
        if request.method == "POST":
            return "submit"
        if path == "/v1/get_result":
            return "poll"
        return "credits" if path == "/v1/credits" else "delivery"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.counts[self.kind(request)] += 1
        response = await self.inner.handle_async_request(request)
        body = await response.aread()
        if self.rewrite is not None:
            replaced = await self.rewrite(request, response, body)
            if replaced is not None:
                return replaced
        return httpx.Response(response.status_code, headers=response.headers, content=body)


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_resume_finishes_a_task_reporting_progress_with_the_task_itself() -> None:
    first = [True]

    async def pending_once(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "poll" and first[0]:
            first[0] = False
            return httpx.Response(200, json={"id": "t", "status": "Pending", "progress": 0.5})
        return None

    transport = Rewriting(pending_once)
    events: list[tuple[Any, str, float | None]] = []
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        submitted = await client.submit(FluxRequest("later", seed=4, width=64, height=64, output_format="png"))
        result = await client.resume(submitted, on_progress=lambda task, status, f: events.append((task, status, f)))
    assert result.task is submitted and (result.width, result.height, result.format) == (64, 64, "png")
    assert result.polls == transport.counts["poll"] >= 2
    assert events[0] == (submitted, "Pending", 0.5) and events[-1] == (submitted, "Downloading", 1.0)
    assert all(task is submitted for task, _, _ in events)


@pytest.mark.parametrize(("fmt", "name"), [("jpeg", "jpeg"), ("png", "png"), ("webp", "webp")])
async def test_the_result_names_its_format_in_lower_case(fmt: str, name: str) -> None:
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting()) as client:
        result = await client.generate(FluxRequest("f", seed=1, width=64, height=64, output_format=fmt))
    assert result.format == name


def expiring(times: int) -> Rewrite:
    """Deliveries answer 410 (an expired URL) ``times`` times, then as the server does."""
    left = [times]

    async def rewrite(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "delivery" and left[0] > 0:
            left[0] -= 1
            return httpx.Response(410, json={"detail": "expired"})
        return None

    return rewrite


async def test_an_expired_delivery_url_is_answered_by_asking_the_task_again_twice_at_most() -> None:
    transport = Rewriting(expiring(2))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        result = await client.generate(FluxRequest("e", seed=2, width=64, height=64))
    assert transport.counts["delivery"] == 3 and result.width == 64
    assert result.polls == transport.counts["poll"]  # the two extra polls are counted
    first_polls = transport.counts["poll"] - 2
    assert first_polls >= 1

    transport = Rewriting(expiring(3))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match="expired") as caught:
            await client.generate(FluxRequest("e", seed=2, width=64, height=64))
    assert caught.value.expired and transport.counts["delivery"] == 3


def swapped(size: tuple[int, int]) -> Rewrite:
    async def rewrite(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "delivery":
            return httpx.Response(200, content=png(size), headers={"content-type": "image/png"})
        return None

    return rewrite


async def test_a_delivery_of_another_size_than_asked_is_refused() -> None:
    transport = Rewriting(swapped((128, 128)))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match="is 128x128 but 64x64 was asked"):
            await client.generate(FluxRequest("s", seed=3, width=64, height=64))


async def test_a_download_without_its_task_checks_only_the_absolute_caps() -> None:
    transport = Rewriting(swapped((96, 80)))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        data, image = await client.download(f"{IN_PROCESS}/anything.png")
    assert image.size == (96, 80) and data == png((96, 80))


async def test_credits_are_read_and_retried_within_their_deadline() -> None:
    failures = [1]

    async def flaky(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "credits" and failures[0]:
            failures[0] -= 1
            return httpx.Response(503, json={"detail": "busy"})
        return None

    transport = Rewriting(flaky)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        assert await client.credits() > 0
    assert transport.counts["credits"] == 2


@pytest.mark.parametrize("answer", [b"not json", b"[1, 2]", b'{"credits": "many"}', b"{}"])
async def test_a_credits_answer_that_is_not_understood_is_a_transport_error(answer: bytes) -> None:
    async def garbled(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return httpx.Response(200, content=answer) if Rewriting.kind(request) == "credits" else None

    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(garbled)) as client:
        with pytest.raises(TransportError) as caught:
            await client.credits()
    assert str(caught.value).startswith("the credits answer was not understood: ")
    assert caught.value.status == 200


async def test_credits_with_a_wrong_key_are_an_auth_error() -> None:
    transport = Rewriting(api_keys=frozenset({"right-key"}))
    async with AsyncFluxClient("wrong-key", IN_PROCESS, transport=transport) as client:
        with pytest.raises(AuthError) as caught:
            await client.credits()
    assert caught.value.status in (401, 403)


async def test_an_oversized_credits_answer_says_what_was_being_done() -> None:
    async def padded(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return (
            httpx.Response(200, json={"credits": 1, "pad": "x" * 4096})
            if Rewriting.kind(request) == "credits"
            else None
        )

    limits = BodyLimits(json_bytes=1024)
    async with AsyncFluxClient(
        None, IN_PROCESS, transport=Rewriting(padded), limits=limits, retry=FAST_RETRY
    ) as client:
        with pytest.raises(FluxError, match=r"^asking for the credits: the answer from 127\.0\.0\.1 is larger than"):
            await client.credits()


@pytest.mark.parametrize("status", [403, 404, 410])
async def test_each_expired_delivery_answer_is_told_apart_from_a_fault(status: int) -> None:
    async def gone(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return httpx.Response(status, text="gone") if Rewriting.kind(request) == "delivery" else None

    transport = Rewriting(gone)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        task = await client.submit(FluxRequest("g", seed=1, width=64, height=64))
        answer, _ = await client.wait(task)
        with pytest.raises(DeliveryError) as caught:
            await client.download(answer["result"]["sample"], task)
    error = caught.value
    assert str(error) == f"the image's delivery URL answered {status}: it has expired or never existed"
    assert (error.expired, error.status, error.answer) == (True, status, "gone")
    assert transport.counts["delivery"] == 1  # an expired URL is not retried


@pytest.mark.parametrize(
    ("status", "message"),
    [(400, "downloading the image failed with HTTP 400"), (500, "HTTP 500 from 127.0.0.1: oops")],
)
async def test_a_failing_delivery_is_retried_then_named(status: int, message: str) -> None:
    """A 5xx keeps its status through the retries; a 4xx other than an expiry is retried as a fault."""

    async def broken(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return httpx.Response(status, text="oops") if Rewriting.kind(request) == "delivery" else None

    transport = Rewriting(broken)
    async with AsyncFluxClient("k", IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError) as caught:
            await client.generate(FluxRequest("b", seed=1, width=64, height=64))
    assert message in str(caught.value) and not caught.value.expired
    assert caught.value.status == (500 if status == 500 else None)
    assert transport.counts["delivery"] == FAST_RETRY.attempts


async def test_a_delivery_past_its_deadline_is_a_timeout_naming_it() -> None:
    async def broken(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return httpx.Response(500, text="oops") if Rewriting.kind(request) == "delivery" else None

    limits = BodyLimits(download_seconds=0.0)
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(broken), limits=limits) as client:
        with pytest.raises(FluxTimeout) as caught:
            await client.generate(FluxRequest("t", seed=1, width=64, height=64))
    assert str(caught.value).startswith("the image did not arrive within 0 s (")


async def test_deliveries_never_carry_the_key_and_oversized_ones_are_delivery_errors() -> None:
    keys: list[str | None] = []

    async def note(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "delivery":
            keys.append(request.headers.get("x-key"))
        return None

    async with AsyncFluxClient("k", IN_PROCESS, transport=Rewriting(note), retry=FAST_RETRY) as client:
        await client.generate(FluxRequest("k", seed=1, width=64, height=64))
    assert keys == [None]
    limits = BodyLimits(image_bytes=100)
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), limits=limits, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match=r"^downloading the image: the answer from 127\.0\.0\.1 is larger than"):
            await client.generate(FluxRequest("o", seed=1, width=64, height=64))


async def test_a_ready_answer_without_a_sample_url_is_a_delivery_error() -> None:
    async def no_sample(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "poll" and b'"Ready"' in body:
            return httpx.Response(200, json={"id": "t", "status": "Ready", "result": {"seed": 1}})
        return None

    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(no_sample), retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError) as caught:
            task = await client.submit(FluxRequest("n", seed=1, width=64, height=64))
            await client.resume(task)
    assert str(caught.value) == f"task {task.id} is Ready but its answer has no usable sample URL"


async def test_a_delivery_host_that_cannot_be_reached_is_a_delivery_error() -> None:
    async def elsewhere(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "poll" and b'"Ready"' in body:
            ready = {"id": "t", "status": "Ready", "result": {"sample": "http://127.0.0.1:9/gone.png"}}
            return httpx.Response(200, json=ready)
        return None

    class Refusing(Rewriting):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.port == 9:
                raise httpx.ConnectError("refused", request=request)
            return await super().handle_async_request(request)

    async with AsyncFluxClient(None, IN_PROCESS, transport=Refusing(elsewhere), retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match=r"could not reach 127\.0\.0\.1"):
            await client.generate(FluxRequest("r", seed=1, width=64, height=64))


def answering(kind: str, make: Callable[[bytes], httpx.Response | None]) -> Rewrite:
    async def rewrite(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return make(body) if Rewriting.kind(request) == kind else None

    return rewrite


async def test_a_submit_answer_becomes_a_task_holding_what_was_asked() -> None:
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting()) as client:
        request = FluxRequest("a", model="flux-2-pro", seed=1, width=128, height=64, output_format="png")
        task = await client.submit(request)
        one_side = await client.submit(FluxRequest("b", seed=1, width=128))
    assert (task.model, task.size, task.output_format) == ("flux-2-pro", (128, 64), "png")
    assert task.output_mp == pytest.approx(128 * 64 / 2**20, abs=1e-4) and task.cost == pytest.approx(3.0)
    assert task.polling_url == f"{IN_PROCESS}/v1/get_result?id={task.id}"
    assert one_side.size is None and one_side.output_format == "jpeg"


async def test_the_answers_polling_url_is_used_and_a_missing_one_falls_back_to_get_result() -> None:
    own = f"{IN_PROCESS}/v1/get_result?id=t-1&cluster=us3"
    transport = Rewriting(answering("submit", lambda body: httpx.Response(200, json={"id": "t-1", "polling_url": own})))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        assert (await client.submit(FluxRequest("a", seed=1))).polling_url == own
    transport = Rewriting(answering("submit", lambda body: httpx.Response(200, json={"id": "t-2"})))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        assert (await client.submit(FluxRequest("a", seed=1))).polling_url == f"{IN_PROCESS}/v1/get_result?id=t-2"


@pytest.mark.parametrize("answer", [b"not json", b"[1, 2]", b'{"status": "Pending"}', b'{"id": ""}'])
async def test_a_submit_answer_without_a_task_id_is_an_unknown_outcome(answer: bytes) -> None:
    transport = Rewriting(answering("submit", lambda body: httpx.Response(200, content=answer)))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        with pytest.raises(UnknownOutcomeError) as caught:
            await client.submit(FluxRequest("a", seed=1))
    error = caught.value
    assert str(error).startswith(f"the submit answer from {IN_PROCESS} has no usable task id: ")
    assert error.status == 200 and error.answer is not None
    assert transport.counts["submit"] == 1  # never sent twice


async def test_a_poll_is_retried_within_the_tasks_own_deadline_by_default() -> None:
    busy = [1]

    def once(body: bytes) -> httpx.Response | None:
        if busy[0]:
            busy[0] -= 1
            return httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "0"})
        return None

    transport = Rewriting(answering("poll", once))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        task = await client.submit(FluxRequest("p", seed=1, width=64, height=64))
        answer = await client.poll(task)
    assert answer["id"] == task.id and transport.counts["poll"] == 2


async def test_an_oversized_poll_answer_names_the_task() -> None:
    padded = answering("poll", lambda body: httpx.Response(200, json={"status": "Pending", "pad": "x" * 4096}))
    limits = BodyLimits(json_bytes=1024)
    async with AsyncFluxClient(
        None, IN_PROCESS, transport=Rewriting(padded), limits=limits, retry=FAST_RETRY
    ) as client:
        task = await client.submit(FluxRequest("p", seed=1, width=64, height=64))
        with pytest.raises(FluxError) as caught:
            await client.poll(task)
    assert str(caught.value).startswith(f"polling task {task.id}: the answer from 127.0.0.1 is larger than")


async def test_a_delivery_far_larger_than_the_size_asked_is_cut_off_before_decoding() -> None:
    noise = Image.frombytes("RGB", (1024, 1024), random.Random(0).randbytes(1024 * 1024 * 3))  # incompressible
    buffer = io.BytesIO()
    noise.save(buffer, "PNG")
    big = buffer.getvalue()
    huge = answering("delivery", lambda body: httpx.Response(200, content=big, headers={"content-type": "image/png"}))
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(huge), retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError, match=r"^downloading the image: the answer from 127\.0\.0\.1 is larger than"):
            await client.generate(FluxRequest("h", seed=1, width=64, height=64))


async def test_polling_an_unknown_task_is_task_not_found_as_bfl_answers_it() -> None:
    task = Task(id="nope", polling_url=f"{IN_PROCESS}/v1/get_result?id=nope", model="flux-2-klein-4b", submitted_at=0)
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting()) as client:
        assert (await client.poll(task))["status"] == "Task not found"  # 200 with the status, as at BFL
        with pytest.raises(TaskNotFoundError) as caught:
            await client.wait(task)  # submitted long ago: past the grace window
    assert str(caught.value) == "task nope is unknown to the API (expired or never created)"
    assert caught.value.status == 200


async def test_a_poll_answered_with_no_json_is_retried_then_named() -> None:
    transport = Rewriting(answering("poll", lambda body: httpx.Response(200, content=b"<html>busy</html>")))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        task = await client.submit(FluxRequest("j", seed=1, width=64, height=64))
        with pytest.raises(TransportError) as caught:
            await client.poll(task)
    assert str(caught.value) == f"polling task {task.id} returned no JSON" and caught.value.status == 200
    assert transport.counts["poll"] == FAST_RETRY.attempts


# -- the shared slot a request holds -------------------------------------------------------------------


class Leases:
    """A stand-in for SharedSlots: hands out one lease and keeps how long each was held after its request."""

    def __init__(self) -> None:
        self.released: list[tuple[str, float]] = []

    async def acquire(self) -> str:
        return "lease"

    async def try_acquire(self) -> str:
        return "lease"

    def release_later(self, lease: str, hold: float) -> None:
        self.released.append((lease, hold))

    async def release_pending(self) -> None:
        return None


def one_request() -> FluxRequest:
    return FluxRequest("slot", seed=1, width=64, height=64)


async def test_a_finished_request_gives_its_shared_slot_back_at_once() -> None:
    leases = Leases()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        await client.generate(one_request())
    assert leases.released == [("lease", 0.0)]


async def test_a_request_stopped_before_its_submit_went_out_gives_the_slot_back_at_once() -> None:
    leases = Leases()

    def stop() -> None:
        raise asyncio.CancelledError

    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        with pytest.raises(asyncio.CancelledError):
            await client.generate(one_request(), on_sending=stop)
    assert leases.released == [("lease", 0.0)]


async def test_a_submit_whose_answer_was_lost_keeps_the_slot_held() -> None:
    async def lose_the_answer(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "submit":
            raise httpx.ReadError("the connection dropped", request=request)
        return None

    leases = Leases()
    transport = Rewriting(lose_the_answer)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, shared_slots=leases) as client:  # type: ignore[arg-type]
        with pytest.raises(UnknownOutcomeError):
            await client.generate(one_request())
    assert transport.counts["submit"] == 1 and [lease for lease, _ in leases.released] == ["lease"]
    assert leases.released[0][1] > 0.0


async def test_a_task_left_running_keeps_the_slot_held() -> None:
    def fail(task: Task) -> None:
        raise RuntimeError("the caller stopped following it")

    leases = Leases()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        with pytest.raises(RuntimeError):
            await client.generate(one_request(), on_submitted=fail)
    assert [lease for lease, _ in leases.released] == ["lease"] and leases.released[0][1] > 0.0
