"""The client against every mode of the hostile server: bounded memory and time, typed errors, no key leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flux_nb.core.outcomes import is_final
from flux_nb.errors import DeliveryError, FluxError, FluxTimeout, TransportError, UnknownOutcomeError, ValidationError
from flux_nb.http.auth import ApiKey
from flux_nb.http.client import AsyncFluxClient, RetryPolicy, Task
from flux_nb.http.read_limits import MIB, BodyLimits
from flux_nb.protocol import FluxRequest
from tests.hostile import HostileServer

FAST = RetryPolicy(attempts=3, rate_limit_attempts=5, base_delay=0.01, max_delay=0.05, max_retry_after=0.2)
TIGHT = BodyLimits(json_bytes=MIB, answer_seconds=1.0, download_seconds=1.0)
ASKED = FluxRequest("hostile", seed=1, width=256, height=256, output_format="png")
# Far beyond any cap: a test failing here would otherwise read until memory runs out.
GUARD_SECONDS = 30.0


@pytest.fixture
def hostile() -> Iterator[Any]:
    """Start a hostile server in a mode (``hostile("endless_image")``); all are stopped after the test."""
    started: list[HostileServer] = []

    def start(mode: str, **options: Any) -> HostileServer:
        server = HostileServer(mode, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def run(
    server: HostileServer, request: FluxRequest = ASKED, key: str | None = "k", **options: Any
) -> tuple[list[Task], Any]:
    """Generate once against ``server``; returns the tasks handed to on_submitted and the result (or error)."""
    submitted: list[Task] = []
    options = {"retry": FAST, "limits": TIGHT, "task_timeout": 3.0, **options}
    async with AsyncFluxClient(key, server.url, **options) as client:
        try:
            outcome = await asyncio.wait_for(client.generate(request, on_submitted=submitted.append), GUARD_SECONDS)
        except FluxError as exc:
            outcome = exc
    return submitted, outcome


async def test_an_endless_image_is_cut_at_its_cap_and_the_task_stays_resumable(hostile: Any) -> None:
    server = hostile("endless_image")
    submitted, error = await run(server)
    assert isinstance(error, DeliveryError) and "larger than" in str(error)
    assert [t.id for t in submitted] == ["t1"] and not is_final(error)
    assert server.streamed < 16 * MIB  # the cap for a 256x256 PNG is about 1.3 MB


async def test_a_huge_submit_answer_is_an_unknown_outcome_never_resent(hostile: Any) -> None:
    server = hostile("huge_json_submit")
    submitted, error = await run(server)
    assert isinstance(error, UnknownOutcomeError) and "larger than 1,048,576 bytes" in str(error)
    assert submitted == [] and [s.method for s in server.seen] == ["POST"]
    assert server.streamed < 16 * MIB


async def test_a_huge_poll_answer_ends_in_a_transport_error_not_in_memory(hostile: Any) -> None:
    server = hostile("huge_json_poll")
    submitted, error = await run(server, task_timeout=1.0)
    assert isinstance(error, TransportError) and "larger than" in str(error) and not is_final(error)
    assert [t.id for t in submitted] == ["t1"]
    polls = sum(s.path.startswith("/v1/get_result") for s in server.seen)
    assert server.streamed < (polls + 1) * 16 * MIB


async def test_an_image_trickling_a_byte_a_second_meets_one_overall_deadline(hostile: Any) -> None:
    server = hostile("trickle_image")
    submitted, error = await run(server)
    assert isinstance(error, FluxTimeout) and "did not arrive within 1 s" in str(error)
    assert [t.id for t in submitted] == ["t1"] and not is_final(error)
    assert server.streamed <= 3  # a per-read timeout alone would have waited for every byte


@pytest.mark.slow  # seconds of real waiting; the full suite runs it
async def test_a_poll_answer_trickling_ends_in_a_timeout(hostile: Any) -> None:
    server = hostile("trickle_json")
    submitted, error = await run(server, task_timeout=1.5)
    assert isinstance(error, FluxTimeout) and not is_final(error)
    assert [t.id for t in submitted] == ["t1"]


@pytest.mark.parametrize("mode", ["retry_after_day", "retry_after_inf"])
async def test_an_absurd_retry_after_on_a_submit_is_capped(hostile: Any, mode: str) -> None:
    server = hostile(mode)
    _, result = await run(server)
    assert not isinstance(result, FluxError), result
    assert result.width == 256 and [s.method for s in server.seen].count("POST") == 2


async def test_a_long_retry_after_on_a_submit_ends_at_the_task_timeout(hostile: Any) -> None:
    server = hostile("retry_after_day")
    patient = RetryPolicy(attempts=3, rate_limit_attempts=5, base_delay=0.01, max_delay=0.05)  # caps at 60 s
    _, error = await run(server, retry=patient, task_timeout=0.3)
    assert not isinstance(error, FluxError), error  # waited only until the deadline, then the second try went in
    assert [s.method for s in server.seen].count("POST") == 2


OPTIONAL_FIELDS = [
    ("cost", "abc"),
    ("cost", {}),
    ("cost", float("nan")),
    ("input_mp", []),
    ("output_mp", "1.0"),
    ("output_mp", True),
    ("polling_url", {}),
    ("polling_url", "javascript:alert(1)"),
    ("progress", "abc"),
    ("details", "abc"),
    ("seed", "abc"),
    ("seed", {}),
]


@pytest.mark.parametrize(("name", "value"), OPTIONAL_FIELDS, ids=[f"{n}={v!r}" for n, v in OPTIONAL_FIELDS])
async def test_garbage_in_optional_answer_fields_becomes_none(hostile: Any, name: str, value: Any) -> None:
    server = hostile("bad_fields", bad_field=name, bad_value=value)
    submitted, result = await run(server)
    assert not isinstance(result, FluxError), result
    assert [t.id for t in submitted] == ["t1"] and result.width == 256
    task = submitted[0]
    for field in ("cost", "input_mp", "output_mp"):
        assert getattr(task, field) is None if field == name else getattr(task, field) in (None, 1.4)
    assert result.seed in (1, None) and result.engine in ("hostile", None)
    assert task.polling_url.startswith(server.url)


@pytest.mark.parametrize(("name", "value"), [("sample", {}), ("sample", 5), ("sample", "ftp://x/y"), ("result", "x")])
async def test_a_garbage_sample_url_is_a_clear_delivery_error_keeping_the_task(
    hostile: Any, name: str, value: Any
) -> None:
    submitted, error = await run(hostile("bad_fields", bad_field=name, bad_value=value))
    assert isinstance(error, DeliveryError) and "no usable sample URL" in str(error) and not is_final(error)
    assert [t.id for t in submitted] == ["t1"]


@pytest.mark.parametrize("value", [{}, [], "", None, "x" * 1000, "a\nb", True])
async def test_a_garbage_task_id_is_a_clear_error(hostile: Any, value: Any) -> None:
    submitted, error = await run(hostile("bad_id", bad_value=value))
    assert isinstance(error, UnknownOutcomeError) and "no usable task id" in str(error)
    assert submitted == []


async def test_a_garbage_status_counts_as_pending_until_the_deadline(hostile: Any) -> None:
    submitted, error = await run(hostile("bad_fields", bad_field="status", bad_value={}), task_timeout=0.5)
    assert isinstance(error, FluxTimeout) and [t.id for t in submitted] == ["t1"]


async def test_an_absurdly_large_image_is_refused_from_its_header(hostile: Any) -> None:
    _, error = await run(hostile("giant_image"))
    assert isinstance(error, DeliveryError) and "12000x12000" in str(error) and "before decoding" in str(error)
    assert not is_final(error)


async def test_an_image_of_another_size_than_asked_is_refused(hostile: Any) -> None:
    _, error = await run(hostile("wrong_size_image"))
    assert isinstance(error, DeliveryError) and "512x512 but 256x256 was asked" in str(error)


async def test_without_an_asked_size_only_the_absolute_cap_applies(hostile: Any) -> None:
    unset = FluxRequest("hostile", seed=1, output_format="png")
    _, result = await run(hostile("wrong_size_image"), request=unset)
    assert not isinstance(result, FluxError), result
    assert (result.width, result.height) == (512, 512)


async def test_a_polling_url_on_another_port_of_the_same_host_gets_no_key(hostile: Any) -> None:
    server = hostile("other_port_polling")
    _, result = await run(server, key="port-key")
    assert not isinstance(result, FluxError), result
    keys = {(s.method, s.port): s.key for s in server.seen}
    assert keys[("POST", server.port)] == "port-key"
    assert keys[("GET", server.other_port)] is None  # the poll went to the other port, without the key
    assert all(s.key is None for s in server.seen if s.path == "/sample.png")


def test_the_key_goes_only_to_the_apis_own_origin_and_never_over_plain_http_beyond_loopback() -> None:
    bfl = ApiKey("k", "https://api.bfl.ai")
    assert bfl.sends_to("https://api.bfl.ai/v1/x") and bfl.sends_to("https://api.bfl.ai:443/v1/x")
    assert bfl.sends_to("https://api.us1.bfl.ai/v1/get_result")
    assert not bfl.sends_to("https://api.bfl.ai:8443/v1/x") and not bfl.sends_to("http://api.bfl.ai/v1/x")
    assert not bfl.sends_to("https://bfl.ai.evil.example/") and not bfl.sends_to("https://evilbfl.ai/")
    local = ApiKey("k", "http://127.0.0.1:8800")
    assert local.sends_to("http://127.0.0.1:8800/v1/get_result")
    assert not local.sends_to("http://127.0.0.1:8801/v1/get_result")  # same host, another port
    assert not local.sends_to("https://127.0.0.1:8800/") and not local.sends_to("https://api.bfl.ai/")
    lan = ApiKey("k", "http://10.0.0.5:8800")  # decided here, before any socket opens
    assert not lan.sends_to("http://10.0.0.5:8800/v1/flux-2-klein-4b")


async def test_a_key_with_a_plain_http_api_beyond_loopback_is_refused_before_sending() -> None:
    sent: list[httpx.Request] = []
    transport = httpx.MockTransport(lambda r: sent.append(r) or httpx.Response(500))
    with pytest.raises(ValidationError, match="plain http"):
        AsyncFluxClient("k", "http://10.0.0.5:8800", transport=transport)
    async with AsyncFluxClient(None, "http://10.0.0.5:8800", transport=transport) as client:  # no key: allowed
        assert client.base_url == "http://10.0.0.5:8800"
    assert sent == []


@pytest.mark.parametrize("mode", ["endless_image", "giant_image", "trickle_image"])
def test_a_hostile_delivery_leaves_the_record_submitted_and_resume_finishes_it(
    hostile: Any, history_dir: Any, mode: str
) -> None:
    from flux_nb import Flux

    server = hostile(mode)
    flux = Flux(endpoint=server.url, history_dir=history_dir, cache=False)
    flux._ready_executor().client.retry = FAST
    flux._ready_executor().client.limits = TIGHT
    try:
        first = flux.run([flux.prepare("hostile", seed=1, width=256, height=256, output_format="png")])[0]
        assert first.status == "submitted" and first.path is None, first
        server.mode = "healthy"
        resumed = flux.resume()
    finally:
        flux.close()
    assert [r.status for r in resumed] == ["ready"]
    assert [s.method for s in server.seen].count("POST") == 1  # finished without paying twice
