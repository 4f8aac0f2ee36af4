"""The client's waiting for a task, on a fake clock, and its settings, in process (nothing sleeps, no socket).

Written against the survivors of ``bench/mutation.py --module client`` (see ``bench/MUTATION.md``): ``wait`` is driven
by a scripted ``poll`` while ``time.monotonic`` and ``asyncio.sleep`` are replaced in the client's module only.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from typing import Any

import httpx
import pytest

from flux_nb.errors import (
    DeliveryError,
    FluxTimeout,
    ModeratedError,
    TaskFailedError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)
from flux_nb.http import client as client_module
from flux_nb.http import slot_holding as holds_module
from flux_nb.http.client import AsyncFluxClient, Task
from flux_nb.http.read_limits import BodyLimits
from flux_nb.http.slot_holding import duration_key
from flux_nb.protocol import FluxRequest
from tests.test_client_paths import FAST_RETRY, Leases, Rewriting, one_request

IN_PROCESS = "http://127.0.0.1:8800"
START = 1000.0


class Clock:
    """``time.monotonic`` and ``asyncio.sleep`` for the client: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = START
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(monotonic=fake.monotonic, time=time.time))
    fake_asyncio = types.SimpleNamespace(sleep=fake.sleep, Semaphore=asyncio.Semaphore, to_thread=asyncio.to_thread)
    monkeypatch.setattr(client_module, "asyncio", fake_asyncio)
    return fake


def a_task() -> Task:
    return Task(id="t-1", polling_url=f"{IN_PROCESS}/v1/get_result?id=t-1", model="flux-2-klein-4b", submitted_at=0)


class Polls:
    """A scripted ``poll``: each step moves the clock (``took`` seconds, or to ``at``) then answers or raises."""

    def __init__(self, clock: Clock, *steps: tuple[float | None, float | None, dict[str, Any] | Exception]) -> None:
        self.clock = clock
        self.steps = list(steps)
        self.calls: list[tuple[float, float | None]] = []

    async def __call__(self, task: Task, *, deadline: float | None = None) -> dict[str, Any]:
        assert task.id == "t-1"
        self.calls.append((self.clock.now, deadline))
        if not self.steps:
            raise AssertionError("polled once more than the script allows")
        took, at, outcome = self.steps.pop(0)
        self.clock.now = at if at is not None else self.clock.now + (took or 0.0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def pending(progress: float | None = None, text: str = "Pending") -> dict[str, Any]:
    answer: dict[str, Any] = {"id": "t-1", "status": text}
    if progress is not None:
        answer["progress"] = progress
    return answer


READY = {"id": "t-1", "status": "Ready", "result": {"sample": f"{IN_PROCESS}/s.png"}}


async def test_wait_polls_on_the_plans_schedule_and_learns_the_tasks_duration(clock: Clock) -> None:
    events: list[tuple[Task, str, float | None]] = []

    async def progress(task: Task, text: str, fraction: float | None) -> None:
        events.append((task, text, fraction))

    task = a_task()
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        client.poll = Polls(clock, (0.0, None, pending(0.5, "Queued")), (0.0, None, READY))  # type: ignore[method-assign]
        answer, polls = await client.wait(task, on_progress=progress)
        assert answer == READY and polls == 2
        # nothing known: the first poll after 0.1 s; half done after 0.1 s, the next aims at 90% of the 0.1 s left
        assert clock.sleeps == pytest.approx([0.1, 0.09])
        assert client.poll.calls == [(START + 0.1, START + 30.0), (pytest.approx(START + 0.19), START + 30.0)]
        assert events == [(task, "Queued", 0.5)]
        # Ready between the polls at 0.1 s and 0.19 s: the duration learned is the middle
        assert client.durations.expected(duration_key(task)) == pytest.approx(0.145)


async def test_wait_starts_from_the_learned_duration_and_a_first_poll_ready_is_an_upper_bound(clock: Clock) -> None:
    task = a_task()
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        client.durations.observe(duration_key(task), 4.0)
        client.poll = Polls(clock, (0.0, None, READY))  # type: ignore[method-assign]
        answer, polls = await client.wait(task)
        assert (answer, polls) == (READY, 1)
        assert clock.sleeps == pytest.approx([3.6])  # aims at 90% of the 4 s expected
        # Ready at the first poll, 3.6 s in: "at most 3.6 s", taken as 1.8, replaces the longer 4 s
        assert client.durations.expected(duration_key(task)) == pytest.approx(1.8)


async def test_a_first_poll_never_waits_past_the_task_timeout(clock: Clock) -> None:
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=0.05) as client:
        client.poll = Polls(clock, (0.0, None, pending()))  # type: ignore[method-assign]
        with pytest.raises(FluxTimeout) as caught:
            await client.wait(a_task())
    assert clock.sleeps == [0.05]
    assert str(caught.value) == "task t-1 was not ready after 0.05 s"


async def test_the_sleep_before_a_poll_is_cut_to_the_deadline_and_pending_at_the_deadline_times_out(
    clock: Clock,
) -> None:
    calls: list[Any] = []
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=5.0) as client:
        # 1% done 4.6 s in: the plan says sleep 10 s, but 0.4 s are left
        polls = Polls(clock, (4.5, None, pending(0.01)), (None, START + 5.0, pending(0.02)))
        client.poll = polls  # type: ignore[method-assign]
        with pytest.raises(FluxTimeout) as caught:
            await client.wait(a_task(), on_progress=lambda *event: calls.append(event))
    assert clock.sleeps == pytest.approx([0.1, 0.4])
    assert str(caught.value) == "task t-1 was not ready after 5 s"
    assert [fraction for _, _, fraction in calls] == [0.01, 0.02]  # the last answer is reported before the timeout


async def test_polls_that_fail_are_retried_after_a_pause_within_the_deadline(clock: Clock) -> None:
    first, second, last = TransportError("one"), TransportError("two"), TransportError("three")
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        polls = Polls(clock, (0.0, None, first), (None, START + 29.5, second), (None, START + 30.0, last))
        client.poll = polls  # type: ignore[method-assign]
        with pytest.raises(TransportError) as caught:
            await client.wait(a_task())
    assert caught.value is last  # failing at the deadline itself ends the wait with that failure
    assert clock.sleeps == pytest.approx([0.1, 10.0, 0.5])  # a 10 s pause, then only what is left
    assert [deadline for _, deadline in polls.calls] == [START + 30.0] * 3


async def test_a_failed_poll_then_a_ready_one_returns_the_answer(clock: Clock) -> None:
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        client.poll = Polls(clock, (0.0, None, TransportError("once")), (0.0, None, READY))  # type: ignore[method-assign]
        assert await client.wait(a_task()) == (READY, 1)
    assert clock.sleeps == pytest.approx([0.1, 10.0])


@pytest.mark.parametrize(
    ("answer", "error", "message"),
    [
        ({"status": "Error", "details": {"error": "out of memory"}}, TaskFailedError, "task t-1 failed: out of memory"),
        (
            {"status": "Request Moderated", "details": {"Moderation Reasons": ["Violence"]}},
            ModeratedError,
            "the request was moderated: Violence (not charged)",
        ),
    ],
)
async def test_a_final_status_other_than_ready_ends_the_wait_with_its_error(
    clock: Clock, answer: dict[str, Any], error: type[Exception], message: str
) -> None:
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        client.poll = Polls(clock, (0.0, None, pending(0.5)), (0.0, None, answer))  # type: ignore[method-assign]
        with pytest.raises(error) as caught:
            await client.wait(a_task())
    assert type(caught.value) is error and str(caught.value) == message


# -- the client's settings ---------------------------------------------------------------------------


class Capturing(httpx.AsyncBaseTransport):
    """Answers every request with a credits balance and keeps the requests."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json={"credits": 7.5})


async def test_requests_carry_the_key_the_headers_and_the_timeouts_to_the_apis_own_url() -> None:
    transport = Capturing()
    async with AsyncFluxClient("k-1", "http://127.0.0.1:8800/FLUX/", transport=transport) as client:
        assert client.base_url == "http://127.0.0.1:8800/FLUX"
        assert await client.credits() == 7.5
    (request,) = transport.requests
    assert str(request.url) == "http://127.0.0.1:8800/FLUX/v1/credits"
    assert request.headers["x-key"] == "k-1"
    assert (request.headers["accept"], request.headers["user-agent"]) == ("application/json", "flux-nb")
    assert request.extensions["timeout"] == {"connect": 10.0, "read": 60.0, "write": 60.0, "pool": None}


def test_the_defaults_and_the_connection_pool_follow_the_active_task_limit() -> None:
    client = AsyncFluxClient("k", IN_PROCESS, max_active=3)
    pool = client._http._transport._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry) == (14, 8, 4.0)
    assert client.task_timeout == 600.0 and client.max_active == 3
    assert repr(client) == "AsyncFluxClient(base_url='http://127.0.0.1:8800', max_active=3, key=ApiKey(***))"
    assert AsyncFluxClient(None, IN_PROCESS, max_active=1).max_active == 1


def test_no_active_task_at_all_is_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        AsyncFluxClient(None, IN_PROCESS, max_active=0)
    assert str(caught.value) == "max_active must be at least 1, got 0"


def test_a_key_goes_over_plain_http_only_to_this_machine() -> None:
    """Decided when the client is built: nothing is sent to the other machine, no socket is opened."""
    with pytest.raises(ValidationError) as caught:
        AsyncFluxClient("k", "http://192.0.2.7:8800")
    assert str(caught.value) == (
        "base_url 'http://192.0.2.7:8800' is plain http to another machine: the API key is sent only over "
        "https (or to this machine); use an https URL"
    )
    assert AsyncFluxClient("k", "https://192.0.2.7").base_url == "https://192.0.2.7"
    assert AsyncFluxClient(None, "https://192.0.2.7").base_url == "https://192.0.2.7"
    assert AsyncFluxClient(None, "http://192.0.2.7").base_url == "http://192.0.2.7"
    assert AsyncFluxClient("k", "http://[::1]:8800").base_url == "http://[::1]:8800"


# -- polling once ------------------------------------------------------------------------------------


def answering_polls(*answers: httpx.Response) -> Rewriting:
    """The local server in process; its first polls are answered with ``answers``, the rest as it answers them."""
    left = list(answers)

    async def rewrite(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return left.pop(0) if Rewriting.kind(request) == "poll" and left else None

    return Rewriting(rewrite)


async def test_a_poll_keeps_the_callers_deadline_and_a_429_past_it_is_a_timeout() -> None:
    busy = httpx.Response(429, json={"detail": "slow down"}, headers={"Retry-After": "0"})
    transport = answering_polls(busy, busy)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        task = await client.submit(FluxRequest("p", seed=1, width=64, height=64))
        with pytest.raises(FluxTimeout) as caught:
            await client.poll(task, deadline=time.monotonic() - 1.0)
    assert type(caught.value) is FluxTimeout and caught.value.status == 429
    assert str(caught.value) == f"task {task.id} could not be polled before its deadline: the API kept answering 429"
    assert transport.counts["poll"] == 1


async def test_a_failing_poll_past_its_deadline_is_a_timeout_naming_the_failure() -> None:
    transport = answering_polls(httpx.Response(503, text="down for a while"))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        task = await client.submit(FluxRequest("p", seed=1, width=64, height=64))
        with pytest.raises(FluxTimeout) as caught:
            await client.poll(task, deadline=time.monotonic() - 1.0)
    assert caught.value.status == 503 and transport.counts["poll"] == 1
    assert str(caught.value) == (
        f"task {task.id} could not be polled before its deadline: HTTP 503 from 127.0.0.1: down for a while"
    )


async def test_a_poll_answer_that_is_not_an_object_reads_as_still_pending() -> None:
    transport = answering_polls(httpx.Response(200, json=["Ready"]))
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport) as client:
        task = await client.submit(FluxRequest("p", seed=1, width=64, height=64))
        assert await client.poll(task) == {}


# -- the submit ------------------------------------------------------------------------------------


async def test_an_oversized_submit_answer_is_an_unknown_outcome_never_resent() -> None:
    async def padded(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "submit":
            return httpx.Response(200, json={"id": "t-9", "pad": "x" * 4096})
        return None

    transport = Rewriting(padded)
    limits = BodyLimits(json_bytes=1024)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, limits=limits, retry=FAST_RETRY) as client:
        with pytest.raises(UnknownOutcomeError) as caught:
            await client.submit(FluxRequest("o", seed=1, width=64, height=64))
    assert type(caught.value) is UnknownOutcomeError
    assert str(caught.value).startswith(f"the submit to {IN_PROCESS}: the answer from 127.0.0.1 is larger than")
    assert transport.counts["submit"] == 1


# -- the shared slot after a failure -----------------------------------------------------------------


@pytest.fixture
def wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tasks are submitted at 5000 s; the hold is reckoned at 5004 s (the monotonic clock stays real)."""
    monkeypatch.setattr(client_module, "time", types.SimpleNamespace(time=lambda: 5000.0, monotonic=time.monotonic))
    monkeypatch.setattr(holds_module, "time", types.SimpleNamespace(time=lambda: 5004.0))


async def test_a_task_left_running_holds_its_slot_for_its_own_expected_time_left(wall_clock: None) -> None:
    def stop(task: Task) -> None:
        raise RuntimeError("the caller stopped following it")

    leases = Leases()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        # a 64x64 task learns under "model@0.0"; "model@1.0" (what is known without a task) stays unknown
        client.durations.observe("flux-2-klein-4b@0.0", 30.0)
        with pytest.raises(RuntimeError):
            await client.generate(one_request(), on_submitted=stop)
    assert leases.released == [("lease", 26.0)]  # 30 s expected, 4 s since the submit


async def test_a_lost_submit_answer_holds_the_slot_for_the_models_expected_time(wall_clock: None) -> None:
    async def lose_the_answer(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "submit":
            raise httpx.ReadError("the connection dropped", request=request)
        return None

    leases = Leases()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(lose_the_answer), shared_slots=leases) as client:  # type: ignore[arg-type]
        client.durations.observe("flux-2-klein-4b@1.0", 12.0)
        with pytest.raises(UnknownOutcomeError):
            await client.generate(one_request())
    assert leases.released == [("lease", 12.0)]  # no task to date it: the model's whole expected time


async def test_a_resumed_task_that_found_no_free_shared_slot_gives_nothing_back() -> None:
    class NoneFree(Leases):
        async def try_acquire(self) -> None:  # type: ignore[override]
            return None

    leases = NoneFree()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        task = await client.submit(one_request())
        result = await client.resume(task)
    assert result.task is task and leases.released == []


def polls_answered(answer: dict[str, Any]) -> Rewriting:
    async def rewrite(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        return httpx.Response(200, json=answer) if Rewriting.kind(request) == "poll" else None

    return Rewriting(rewrite)


async def test_a_resumed_task_gives_its_shared_slot_back_at_once_when_it_ends(wall_clock: None) -> None:
    leases = Leases()
    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(), shared_slots=leases) as client:  # type: ignore[arg-type]
        task = await client.submit(one_request())
        await client.resume(task)
    assert leases.released == [("lease", 0.0)]

    leases = Leases()
    failed = polls_answered({"status": "Error", "details": {"error": "out of memory"}})
    async with AsyncFluxClient(None, IN_PROCESS, transport=failed, shared_slots=leases) as client:  # type: ignore[arg-type]
        task = await client.submit(one_request())
        with pytest.raises(TaskFailedError):
            await client.resume(task)
    assert leases.released == [("lease", 0.0)]  # a failed task no longer runs at the API


async def test_a_resumed_task_left_running_holds_its_slot_for_its_expected_time_left(wall_clock: None) -> None:
    leases = Leases()
    pending_forever = polls_answered({"status": "Pending", "progress": 0.5})
    async with AsyncFluxClient(None, IN_PROCESS, transport=pending_forever, shared_slots=leases) as client:  # type: ignore[arg-type]

        def stop(task: Task, text: str, fraction: float | None) -> None:
            client.durations.observe("flux-2-klein-4b@0.0", 30.0)  # learned from another task meanwhile
            raise RuntimeError("the caller stopped following it")

        task = await client.submit(one_request())
        with pytest.raises(RuntimeError):
            await client.resume(task, on_progress=stop)
    assert leases.released == [("lease", 26.0)]


# -- the delivery ------------------------------------------------------------------------------------


async def test_a_delivery_is_capped_by_the_format_asked_for() -> None:
    """A 1000x1000 JPEG may take 4 bytes a pixel plus 1 MiB; a body past that is refused before it is read."""
    served: list[str] = []

    def deliver(request: httpx.Request) -> httpx.Response:
        served.append(str(request.url))
        return httpx.Response(200, content=b"\xff" * 5_100_000, headers={"content-type": "image/jpeg"})

    task = Task(id="t-1", polling_url=f"{IN_PROCESS}/p", model="m", submitted_at=0, size=(1000, 1000))
    jpeg = Task(**{**task.__dict__, "output_format": "jpeg"})
    transport = httpx.MockTransport(deliver)
    async with AsyncFluxClient(None, IN_PROCESS, transport=transport, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError) as caught:
            await client.download(f"{IN_PROCESS}/s.jpg", jpeg)
    assert str(caught.value) == "downloading the image: the answer from 127.0.0.1 is larger than 5,048,576 bytes"
    assert len(served) == 1


async def test_a_delivery_url_that_cannot_be_used_is_a_delivery_error_naming_it() -> None:
    """httpx's own transport refuses the scheme before any socket opens (and the host is this machine anyway)."""
    async with AsyncFluxClient(None, IN_PROCESS, retry=FAST_RETRY) as client:
        with pytest.raises(DeliveryError) as caught:
            await client.download("ftp://127.0.0.1/s.png")
    assert str(caught.value).startswith("downloading the image: 'ftp://127.0.0.1/s.png' is not a usable URL (")


async def test_a_result_carries_the_details_of_its_ready_answer() -> None:
    async def detailed(request: httpx.Request, response: httpx.Response, body: bytes) -> httpx.Response | None:
        if Rewriting.kind(request) == "poll" and b'"Ready"' in body:
            return httpx.Response(200, json={**json.loads(body), "details": {"replica": "r-2", "warm": True}})
        return None

    async with AsyncFluxClient(None, IN_PROCESS, transport=Rewriting(detailed)) as client:
        result = await client.generate(one_request())
    assert result.details == {"replica": "r-2", "warm": True}


async def test_the_schedule_counts_from_the_submits_answer_not_from_when_the_wait_began(clock: Clock) -> None:
    task = a_task()
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        client.durations.observe(duration_key(task), 4.0)
        client.poll = Polls(clock, (0.0, None, pending()), (0.0, None, READY))  # type: ignore[method-assign]
        answered = clock.now
        clock.now += 0.5  # recording the task took half a second
        answer, polls = await client.wait(task, since=answered)
        assert (answer, polls) == (READY, 2)
        assert clock.sleeps[0] == pytest.approx(3.1)  # 3.6 s after the answer, of which 0.5 s had passed
        assert client.poll.calls[0][1] == answered + 30.0  # and the deadline counts from the answer too


async def test_tight_durations_put_the_first_poll_just_before_the_earliest_of_them(clock: Clock) -> None:
    task = a_task()
    async with AsyncFluxClient(None, IN_PROCESS, task_timeout=30.0) as client:
        for seconds in (0.98, 1.0, 1.01, 1.02):
            client.durations.observe(duration_key(task), seconds)
        client.poll = Polls(clock, (0.0, None, READY))  # type: ignore[method-assign]
        await client.wait(task)
        # median 1.005, dense step 3% of it: half a step before the earliest (0.98), not at 90% of the median
        assert clock.sleeps == pytest.approx([0.98 - 0.015075])
