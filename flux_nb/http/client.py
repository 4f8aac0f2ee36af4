"""``AsyncFluxClient``: submit -> poll -> download over one ``httpx.AsyncClient``.

The same client talks to the BFL cloud and to flux_nb's local server. It keeps at most
``max_active`` tasks in flight (the API's per-key limit), retries what is safe to retry
(429, 5xx, requests that never reached the server) with backoff and jitter, and never
resends a submit whose outcome is unknown: the API has no idempotency key.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from flux_nb.errors import (
    DeliveryError,
    FluxError,
    FluxTimeout,
    TaskNotFoundError,
    TransportError,
    UnknownOutcomeError,
    ValidationError,
)
from flux_nb.http.answers import error_for_response, error_for_status, retry_after
from flux_nb.http.polling import DurationModel, PollPlan
from flux_nb.images import decode_output
from flux_nb.protocol import (
    BFL_HOSTS,
    KEY_HEADER,
    MAX_ACTIVE_TASKS,
    FluxRequest,
    Status,
    is_bfl_hostname,
    parse_status,
)

# Faults where the request cannot have reached the server: always safe to retry.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)
# Times an expired delivery URL is answered by asking the task for its result again.
DELIVERY_REPOLLS = 2
# Idle connections kept for reuse (measured in bench/throughput.py: 8 beat 56 by about 0.1 s in 2.3 s).
IDLE_CONNECTIONS = 8
# Below uvicorn's 5 s keep-alive, so an idle pooled connection is dropped by us first.
KEEPALIVE_EXPIRY = 4.0


class ApiKey(httpx.Auth):
    """Adds the ``x-key`` header, to the API's own host only; holds the key so that no repr or traceback shows it.

    A polling URL on another host gets the key only when both are BFL hosts (regional polling
    hosts): a server that hands out a foreign polling URL never learns the key.
    """

    def __init__(self, key: str | None, base_url: str = "") -> None:
        self._key = key
        self._host = httpx.URL(base_url).host if base_url else ""

    def sends_to(self, host: str) -> bool:
        """True when a request to ``host`` carries the key."""
        return host == self._host or (is_bfl_hostname(host) and is_bfl_hostname(self._host))

    def __repr__(self) -> str:
        return "ApiKey(***)" if self._key else "ApiKey(None)"

    @property
    def present(self) -> bool:
        return bool(self._key)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._key and self.sends_to(request.url.host):
            request.headers[KEY_HEADER] = self._key
        yield request


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring ``Retry-After``."""

    attempts: int = 6
    rate_limit_attempts: int = 40  # submits only: a poll answered 429 is repeated until the task's deadline
    base_delay: float = 0.25
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        return max(backoff, retry_after) if retry_after is not None else backoff


@dataclass
class Task:
    """A task the API accepted: what is needed to poll it later, even from another process."""

    id: str
    polling_url: str
    model: str
    submitted_at: float
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None


@dataclass
class TaskResult:
    """A finished task with its downloaded image bytes and all its metadata."""

    task: Task
    image: bytes
    width: int
    height: int
    format: str
    seed: int | None
    ready_at: float
    finished_at: float
    polls: int
    engine: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        """Seconds from submit to image in hand."""
        return self.finished_at - self.task.submitted_at


ProgressCallback = Callable[[Task, str, float | None], Awaitable[None] | None]
SubmittedCallback = Callable[[Task], Awaitable[None] | None]
SendingCallback = Callable[[], Awaitable[None] | None]


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if value is not None:
        await value


class AsyncFluxClient:
    """An async FLUX.2 client for the BFL cloud or any server speaking its protocol.

    >>> async with AsyncFluxClient(api_key, "http://127.0.0.1:8800") as client:  # doctest: +SKIP
    ...     result = await client.generate(FluxRequest("a red fox", seed=1))
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str = BFL_HOSTS["global"],
        *,
        max_active: int = MAX_ACTIVE_TASKS,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        task_timeout: float = 600.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_active < 1:
            raise ValidationError(f"max_active must be at least 1, got {max_active}")
        self.base_url = base_url.rstrip("/")
        self.max_active = max_active
        self.task_timeout = task_timeout
        self.retry = retry or RetryPolicy()
        self.durations = DurationModel()
        self._auth = ApiKey(api_key, self.base_url)
        self._slots = asyncio.Semaphore(max_active)
        self._http = httpx.AsyncClient(
            auth=self._auth,
            timeout=timeout,
            transport=transport,
            # A poll and a download per active task can be in flight at once, but only a few idle
            # connections are kept: httpcore walks every pooled connection (a syscall for each idle
            # one) on every request, which costs more than opening a loopback or keep-alive connection.
            limits=httpx.Limits(
                max_connections=2 * max_active + 8,
                max_keepalive_connections=IDLE_CONNECTIONS,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            headers={"accept": "application/json", "user-agent": "flux-nb"},
        )

    def __repr__(self) -> str:
        return f"AsyncFluxClient(base_url={self.base_url!r}, max_active={self.max_active}, key={self._auth!r})"

    async def __aenter__(self) -> AsyncFluxClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one request -------------------------------------------------------------------------

    async def generate(
        self,
        request: FluxRequest,
        *,
        on_sending: SendingCallback | None = None,
        on_submitted: SubmittedCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> TaskResult:
        """Submit, wait for Ready and download the image, holding one active slot meanwhile.

        ``on_sending`` runs once a slot is free, just before the submit goes out (to record that
        from now on the request may reach the API); ``on_submitted`` once the API gave a task.
        """
        request.validate()
        async with self.active_slot():
            await _maybe_await(on_sending() if on_sending else None)
            task = await self.submit(request)
            await _maybe_await(on_submitted(task) if on_submitted else None)
            answer, polls = await self.wait(task, on_progress=on_progress)
        return await self._finish(task, answer, polls, on_progress)

    async def resume(self, task: Task, *, on_progress: ProgressCallback | None = None) -> TaskResult:
        """Finish a task submitted earlier (maybe by another process) from its polling URL."""
        answer, polls = await self.wait(task, on_progress=on_progress)
        return await self._finish(task, answer, polls, on_progress)

    async def _finish(
        self, task: Task, answer: dict[str, Any], polls: int, on_progress: ProgressCallback | None
    ) -> TaskResult:
        ready_at = time.time()
        if on_progress:
            await _maybe_await(on_progress(task, "Downloading", 1.0))
        for attempt in range(DELIVERY_REPOLLS + 1):
            try:
                data, image = await self.download(_sample_url(task, answer))
                break
            except DeliveryError as exc:
                # An expired sample URL is not the end of a paid image: ask the task again for one.
                if not exc.expired or attempt == DELIVERY_REPOLLS:
                    raise
                answer = await self.poll(task)
                polls += 1
        details = answer.get("details") or {}
        result = answer.get("result") or {}
        return TaskResult(
            task=task,
            image=data,
            width=image.width,
            height=image.height,
            format=(image.format or "").lower(),
            seed=result.get("seed") if isinstance(result, dict) else None,
            ready_at=ready_at,
            finished_at=time.time(),
            polls=polls,
            engine=details.get("engine") if isinstance(details, dict) else None,
            details=details if isinstance(details, dict) else {},
        )

    @asynccontextmanager
    async def active_slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_active`` in-flight slots."""
        async with self._slots:
            yield

    # -- protocol steps ----------------------------------------------------------------------

    async def submit(self, request: FluxRequest) -> Task:
        """POST the request; retried only where the API cannot have created a task."""
        request.validate()
        url = f"{self.base_url}/v1/{request.model}"
        payload = request.to_payload()
        failures = rate_limited = 0
        while True:
            try:
                response = await self._http.post(url, json=payload)
            except NOT_SENT as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(f"could not reach {self.base_url}: {_describe(exc)}") from None
                await asyncio.sleep(self.retry.delay(failures))
                continue
            except httpx.TransportError as exc:
                raise UnknownOutcomeError(
                    f"the submit to {self.base_url} was sent but its answer was lost ({_describe(exc)}); "
                    "it may have created a task"
                ) from None
            if response.status_code == 429:
                rate_limited += 1
                if rate_limited >= self.retry.rate_limit_attempts:
                    raise error_for_response(response)
                await asyncio.sleep(self.retry.delay(min(rate_limited, 5), retry_after(response)))
                continue
            if response.status_code >= 500:
                failures += 1
                await self._retry_or_raise(failures, response)
                continue
            if response.is_error:
                raise error_for_response(response)
            return self._task_from_answer(response, request)

    async def _retry_or_raise(self, failures: int, response: httpx.Response) -> None:
        """Wait before trying a transient (429/5xx) answer again, or raise its error when out of tries."""
        if failures >= self.retry.attempts:
            raise error_for_response(response)
        await asyncio.sleep(self.retry.delay(failures, retry_after(response)))

    def _task_from_answer(self, response: httpx.Response, request: FluxRequest) -> Task:
        try:
            body = response.json()
            task_id = str(body["id"])
        except (ValueError, KeyError, TypeError):
            raise UnknownOutcomeError(
                f"the submit answer from {self.base_url} was not understood: {response.text[:200]!r}"
            ) from None
        polling_url = body.get("polling_url") or f"{self.base_url}/v1/get_result?id={task_id}"
        return Task(
            id=task_id,
            polling_url=str(polling_url),
            model=request.model,
            submitted_at=time.time(),
            cost=body.get("cost"),
            input_mp=body.get("input_mp"),
            output_mp=body.get("output_mp"),
        )

    async def poll(self, task: Task, *, deadline: float | None = None) -> dict[str, Any]:
        """GET the task's status once (retrying transient faults: a poll is always safe).

        A 429 is retried (honouring ``Retry-After``) until ``deadline`` (``time.monotonic()``;
        default: ``task_timeout`` from now), then ends in FluxTimeout: the task itself is not lost.
        """
        deadline = time.monotonic() + self.task_timeout if deadline is None else deadline
        failures = rate_limited = 0
        while True:
            try:
                response = await self._http.get(task.polling_url)
            except httpx.TransportError as exc:
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(f"polling task {task.id} failed: {_describe(exc)}") from None
                await asyncio.sleep(self.retry.delay(failures))
                continue
            if response.status_code == 404:
                raise TaskNotFoundError(f"task {task.id} is unknown to the API (expired or never created)")
            if response.status_code == 429:
                rate_limited += 1
                await self._wait_out_poll_429(task, response, rate_limited, deadline)
                continue
            if response.status_code >= 500:
                failures += 1
                await self._retry_or_raise(failures, response)
                continue
            if response.is_error:
                raise error_for_response(response)
            try:
                answer = response.json()
            except ValueError:
                failures += 1
                if failures >= self.retry.attempts:
                    raise TransportError(f"polling task {task.id} returned no JSON") from None
                await asyncio.sleep(self.retry.delay(failures))
                continue
            return answer if isinstance(answer, dict) else {}

    async def _wait_out_poll_429(self, task: Task, response: httpx.Response, times: int, deadline: float) -> None:
        """Sleep before polling again after a 429 (backoff, at least ``Retry-After``), or time out at the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise FluxTimeout(f"task {task.id} could not be polled before its deadline: the API kept answering 429")
        await asyncio.sleep(min(self.retry.delay(min(times, 5), retry_after(response)), left))

    async def wait(self, task: Task, *, on_progress: ProgressCallback | None = None) -> tuple[dict[str, Any], int]:
        """Poll until the task is Ready (returns the answer and the poll count) or raise why not."""
        key = _duration_key(task)
        plan = PollPlan(expected=self.durations.expected(key))
        start = time.monotonic()
        deadline = start + self.task_timeout
        await asyncio.sleep(min(plan.first_delay(), self.task_timeout))
        while True:
            try:
                answer = await self.poll(task, deadline=deadline)
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
                continue
            elapsed = time.monotonic() - start
            raw_status = answer.get("status")
            status = parse_status(raw_status)
            if status is Status.READY:
                self.durations.observe(key, plan.finished_estimate(elapsed), upper_bound=plan.bound_only)
                return answer, plan.polls + 1
            if status is not Status.PENDING:
                raise error_for_status(task.id, status, answer)
            progress = answer.get("progress")
            progress = float(progress) if isinstance(progress, (int, float)) else None
            if on_progress:
                await _maybe_await(on_progress(task, str(raw_status or "Pending"), progress))
            if time.monotonic() >= deadline:
                raise FluxTimeout(f"task {task.id} was not ready after {self.task_timeout:g} s")
            delay = plan.next_delay(elapsed, progress)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    async def download(self, url: str, *, attempts: int = 3) -> tuple[bytes, Any]:
        """Fetch a sample at once (delivery URLs expire) and check it decodes fully."""
        last: FluxError | None = None
        for attempt in range(max(attempts, self.retry.attempts)):
            try:
                response = await self._http.get(url, auth=None)
            except httpx.TransportError as exc:
                last = DeliveryError(f"downloading the image failed: {_describe(exc)}")
                await asyncio.sleep(self.retry.delay(attempt))
                continue
            if response.status_code in (403, 404, 410):
                raise DeliveryError(
                    f"the image's delivery URL answered {response.status_code}: it has expired or never existed",
                    hint="delivery URLs live 10 minutes; generate again (with the same seed)",
                    expired=True,
                )
            if response.is_error:
                last = DeliveryError(f"downloading the image failed with HTTP {response.status_code}")
                await asyncio.sleep(self.retry.delay(attempt, retry_after(response)))
                continue
            try:
                # Decoding releases the GIL: off the loop, it does not hold up other tasks' polls.
                # Storage that sends Content-MD5 (as Azure Blob does) lets damage that still decodes be caught too.
                checksum = response.headers.get("content-md5")
                return response.content, await asyncio.to_thread(decode_output, response.content, checksum)
            except DeliveryError as exc:
                last = exc
                if attempt + 1 >= attempts:
                    break
        raise last or DeliveryError("downloading the image failed")

    async def credits(self) -> float:
        """The account's credit balance (also a cheap check that the key works)."""
        response = await self._http.get(f"{self.base_url}/v1/credits")
        if response.is_error:
            raise error_for_response(response)
        return float(response.json().get("credits", 0.0))


def _sample_url(task: Task, answer: dict[str, Any]) -> str:
    result = answer.get("result") or {}
    sample = result.get("sample") if isinstance(result, dict) else None
    if not sample or parse_status(answer.get("status")) is not Status.READY:
        raise DeliveryError(f"task {task.id} is Ready but its answer has no sample URL")
    return str(sample)


def _duration_key(task: Task) -> str:
    size = f"{round(task.output_mp or 1.0, 1)}"
    return f"{task.model}@{size}"


def _describe(exc: Exception) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["AsyncFluxClient", "RetryPolicy", "Task", "TaskResult"]
