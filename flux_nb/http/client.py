"""``AsyncFluxClient``: submit -> poll -> download over one ``httpx.AsyncClient``.

The same client talks to the BFL cloud and to flux_nb's local server. It keeps at most
``max_active`` tasks in flight (the API's per-key limit), retries what is safe to retry
under one policy (``http/retry.py``, decided per exchange in ``http/exchange.py``), reads
every answer within a byte cap and a deadline (``http/bodies.py``), and never resends a
submit whose outcome is unknown: the API has no idempotency key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from flux_nb.http.auth import ApiKey, Secret, is_loopback
from flux_nb.http.exchange import Call, exchange
from flux_nb.http.polling import DurationModel, PollPlan
from flux_nb.http.read_limits import BodyLimits
from flux_nb.http.responses import (
    Answer,
    details_of,
    engine_of,
    error_for_answer,
    error_for_status,
    number_or_none,
    progress_of,
    rate_limit_wait,
    result_field,
    seed_of,
    status_of,
    task_id_of,
    url_or_none,
)
from flux_nb.http.retry import RetryPolicy, Transient
from flux_nb.http.slot_holding import duration_key, hold_seconds, may_run
from flux_nb.http.slots import Lease, SharedSlots
from flux_nb.http.task_types import (
    ProgressCallback,
    SendingCallback,
    SubmittedCallback,
    Task,
    TaskResult,
    maybe_await,
)
from flux_nb.protocol import BFL_HOSTS, MAX_ACTIVE_TASKS, FluxRequest, Status

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=None)
# Times an expired delivery URL is answered by asking the task for its result again.
DELIVERY_REPOLLS = 2
# Idle connections kept for reuse (measured in bench/throughput.py: 8 beat 56 by about 0.1 s in 2.3 s).
IDLE_CONNECTIONS = 8
# Below uvicorn's 5 s keep-alive, so an idle pooled connection is dropped by us first.
KEEPALIVE_EXPIRY = 4.0
# Longest sleep between polls that keep failing, while the task's deadline allows.
FAILED_POLL_PAUSE = 10.0
# "Task not found" this soon after the submit may be transient (a task lives on one of BFL's clusters):
# polled again, backing off from the first pause to the longest, until the grace window has passed.
NOT_FOUND_GRACE = 30.0
NOT_FOUND_PAUSES = (1.0, 8.0)
# The longest pause before a submit that X-RateLimit-Remaining/Reset ask for (a far-off reset is not trusted).
RATE_LIMIT_PAUSE_MAX = 60.0


class AsyncFluxClient:
    """An async FLUX.2 client for the BFL cloud or any server speaking its protocol.

    ``transport`` replaces the network (e.g. ``httpx.ASGITransport(app)`` in tests); ``limits``
    bounds what is read from answers and for how long.

    >>> async with AsyncFluxClient(api_key, "http://127.0.0.1:8800") as client:  # doctest: +SKIP
    ...     result = await client.generate(FluxRequest("a red fox", seed=1))
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        base_url: str = BFL_HOSTS["global"],
        *,
        max_active: int = MAX_ACTIVE_TASKS,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        task_timeout: float = 600.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: BodyLimits | None = None,
        shared_slots: SharedSlots | None = None,
    ) -> None:
        api_key = Secret.of(api_key)  # from here on no local or attribute holds the key in the clear
        if max_active < 1:
            raise ValidationError(f"max_active must be at least 1, got {max_active}")
        self.base_url = base_url.rstrip("/")
        base = httpx.URL(self.base_url)
        if api_key and base.scheme == "http" and not is_loopback(base.host):
            raise ValidationError(
                f"base_url {self.base_url!r} is plain http to another machine: the API key is sent only over "
                "https (or to this machine); use an https URL"
            )
        self.max_active = max_active
        self.task_timeout = task_timeout
        self.retry = retry or RetryPolicy()
        self.limits = limits or BodyLimits()
        self.durations = DurationModel()
        #: Seconds after the submit within which "Task not found" is polled again.
        self.not_found_grace = NOT_FOUND_GRACE
        self._submit_after = 0.0  # time.monotonic() before which no submit goes out (X-RateLimit-Reset)
        self._auth = ApiKey(api_key, self.base_url)
        self._slots = asyncio.Semaphore(max_active)
        #: The key's slots shared with every flux_nb process on this machine (None: this process counts alone).
        self.shared_slots = shared_slots
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
        """Close the connections; shared slots still held for tasks this client stopped following are given back."""
        if self.shared_slots is not None:
            await self.shared_slots.release_pending()
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
            lease = await self.shared_slots.acquire() if self.shared_slots else None
            task: Task | None = None
            sent = False
            try:
                await maybe_await(on_sending() if on_sending else None)
                sent = True
                task = await self.submit(request)
                answered = time.monotonic()
                await maybe_await(on_submitted(task) if on_submitted else None)
                answer, polls = await self.wait(task, on_progress=on_progress, since=answered)
            except BaseException as exc:
                self._give_back(lease, may_run(exc, sent, task), task, request.model)
                raise
            self._give_back(lease, False, task, request.model)
        return await self._finish(task, answer, polls, on_progress)

    async def resume(self, task: Task, *, on_progress: ProgressCallback | None = None) -> TaskResult:
        """Finish a task submitted earlier (maybe by another process) from its polling URL.

        The task already counts at the API: it takes a shared slot if one is free, and waits for none.
        """
        lease = await self.shared_slots.try_acquire() if self.shared_slots else None
        try:
            answer, polls = await self.wait(task, on_progress=on_progress)
        except BaseException as exc:
            self._give_back(lease, may_run(exc, True, task), task, task.model)
            raise
        self._give_back(lease, False, task, task.model)
        return await self._finish(task, answer, polls, on_progress)

    def _give_back(self, lease: Lease | None, running: bool, task: Task | None, model: str) -> None:
        """Return a shared slot: at once when no task runs at the API for it (it ended, or was never created),
        else once the task is likely over (a lost submit answer, a timeout, a cancelled wait)."""
        if lease is not None and self.shared_slots is not None:
            hold = hold_seconds(self.durations, task, model, self.task_timeout) if running else 0.0
            self.shared_slots.release_later(lease, hold)

    async def _finish(
        self, task: Task, answer: dict[str, Any], polls: int, on_progress: ProgressCallback | None
    ) -> TaskResult:
        ready_at = time.time()
        if on_progress:
            await maybe_await(on_progress(task, "Downloading", 1.0))
        for attempt in range(DELIVERY_REPOLLS + 1):
            try:
                data, image = await self.download(_sample_url(task, answer), task)
                break
            except DeliveryError as exc:
                # An expired sample URL is not the end of a paid image: ask the task again for one.
                if not exc.expired or attempt == DELIVERY_REPOLLS:
                    raise
                answer = await self.poll(task)
                polls += 1
        return TaskResult(
            task=task,
            image=data,
            width=image.width,
            height=image.height,
            format=(image.format or "").lower(),
            seed=seed_of(answer),
            ready_at=ready_at,
            finished_at=time.time(),
            polls=polls,
            engine=engine_of(answer),
            details=details_of(answer),
        )

    @asynccontextmanager
    async def active_slot(self) -> AsyncIterator[None]:
        """Hold one of the ``max_active`` in-flight slots."""
        async with self._slots:
            yield

    # -- protocol steps ----------------------------------------------------------------------

    async def _exchange(self, call: Call) -> Answer:
        """One JSON exchange, from send to last byte within ``answer_seconds``."""
        deadline = time.monotonic() + self.limits.answer_seconds
        return await exchange(self._http, call, deadline=deadline, scrub=self._auth.scrub)

    async def submit(self, request: FluxRequest) -> Task:
        """POST the request; retried only where the API cannot have created a task.

        A 429 waits (``Retry-After`` capped by the policy) within ``task_timeout``, then ends in RateLimitError.
        """
        request.validate()
        call = Call(
            "POST",
            f"{self.base_url}/v1/{request.model}",
            f"the submit to {self.base_url}",
            self.limits.json_bytes,
            idempotent=False,
            oversize=UnknownOutcomeError,
            json=request.to_payload(),
        )
        deadline = time.monotonic() + self.task_timeout
        await asyncio.sleep(max(0.0, min(self._submit_after, deadline) - time.monotonic()))
        answer = await self.retry.run(
            lambda: self._exchange(call),
            deadline=deadline,
            rate_limit_attempts=self.retry.rate_limit_attempts,
        )
        self._pace(answer.headers)
        if answer.is_error:
            raise error_for_answer(answer)
        return self._task_from_answer(answer, request)

    def _pace(self, headers: httpx.Headers) -> None:
        """Hold the next submits until the reset when the API says no submit is left (``X-RateLimit-*``)."""
        wait = rate_limit_wait(headers, time.time())
        if wait is not None:
            self._submit_after = max(self._submit_after, time.monotonic() + min(wait, RATE_LIMIT_PAUSE_MAX))

    def _task_from_answer(self, answer: Answer, request: FluxRequest) -> Task:
        """The Task of a submit answer: the id is required, every other field is taken only when sound."""
        try:
            body = answer.json()
        except ValueError:
            body = None
        task_id = task_id_of(body)
        if task_id is None or not isinstance(body, dict):
            raise UnknownOutcomeError(
                f"the submit answer from {self.base_url} has no usable task id: {answer.excerpt()!r}",
                status=answer.status,
                answer=answer.excerpt(),
            )
        polling_url = url_or_none(body.get("polling_url")) or f"{self.base_url}/v1/get_result?id={task_id}"
        size = (request.width, request.height) if request.width and request.height else None
        return Task(
            id=task_id,
            polling_url=polling_url,
            model=request.model,
            submitted_at=time.time(),
            cost=number_or_none(body.get("cost")),
            input_mp=number_or_none(body.get("input_mp")),
            output_mp=number_or_none(body.get("output_mp")),
            size=size,
            output_format=request.output_format,
        )

    async def poll(self, task: Task, *, deadline: float | None = None) -> dict[str, Any]:
        """GET the task's status once (retrying transient faults: a poll is always safe).

        A 429 is retried (honouring ``Retry-After``) until ``deadline`` (``time.monotonic()``;
        default: ``task_timeout`` from now), then ends in FluxTimeout: the task itself is not lost.
        """
        deadline = time.monotonic() + self.task_timeout if deadline is None else deadline
        call = Call("GET", task.polling_url, f"polling task {task.id}", self.limits.json_bytes)

        async def attempt() -> dict[str, Any]:
            answer = await self._exchange(call)
            if answer.status == 404:
                raise TaskNotFoundError(f"task {task.id} is unknown to the API (expired or never created)", status=404)
            if answer.is_error:
                raise error_for_answer(answer)
            try:
                body = answer.json()
            except ValueError:
                raise Transient(
                    TransportError(f"polling task {task.id} returned no JSON", status=answer.status)
                ) from None
            return body if isinstance(body, dict) else {}

        def timed_out(error: FluxError) -> FluxError:
            why = "the API kept answering 429" if error.status == 429 else str(error)
            return FluxTimeout(f"task {task.id} could not be polled before its deadline: {why}", status=error.status)

        return await self.retry.run(attempt, deadline=deadline, on_deadline=timed_out)

    async def wait(
        self, task: Task, *, on_progress: ProgressCallback | None = None, since: float | None = None
    ) -> tuple[dict[str, Any], int]:
        """Poll until the task is Ready (returns the answer and the poll count) or raise why not.

        ``since``: the ``time.monotonic()`` of the submit's answer, when this client sent it. The schedule and
        the durations learned count from there, not from whenever recording the task let the wait begin.
        """
        key = duration_key(task)
        plan = PollPlan(expected=self.durations.expected(key), earliest=self.durations.earliest(key))
        start = time.monotonic() if since is None else since
        deadline = start + self.task_timeout
        await asyncio.sleep(max(0.0, min(plan.first_delay(), self.task_timeout) - (time.monotonic() - start)))
        not_found_pause = NOT_FOUND_PAUSES[0]
        while True:
            try:
                answer = await self.poll(task, deadline=deadline)
            except TransportError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(min(FAILED_POLL_PAUSE, max(0.0, deadline - time.monotonic())))
                continue
            except TaskNotFoundError:
                answer = {"status": Status.TASK_NOT_FOUND.value}
            elapsed = time.monotonic() - start
            status, text = status_of(answer)
            if status is Status.TASK_NOT_FOUND and time.time() - task.submitted_at < self.not_found_grace:
                await asyncio.sleep(min(not_found_pause, max(0.0, deadline - time.monotonic())))
                not_found_pause = min(not_found_pause * 2, NOT_FOUND_PAUSES[1])
                continue
            if status is Status.READY:
                self.durations.observe(key, plan.finished_estimate(elapsed), upper_bound=plan.bound_only)
                return answer, plan.polls + 1
            if status is not Status.PENDING:
                raise error_for_status(task.id, status, answer)
            progress = progress_of(answer)
            if on_progress:
                await maybe_await(on_progress(task, text, progress))
            if time.monotonic() >= deadline:
                raise FluxTimeout(f"task {task.id} was not ready after {self.task_timeout:g} s")
            delay = plan.next_delay(elapsed, progress)
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))

    async def download(self, url: str, task: Task | None = None) -> tuple[bytes, Any]:
        """Fetch a sample at once (delivery URLs expire), within a byte cap and one deadline, and decode it fully.

        ``task`` (what was asked) sets the byte cap and the expected size; without it only the absolute caps apply.
        Faults are retried under the policy, but not an expired URL (403/404/410) nor a stall (``download_stall``).
        """
        size, fmt = (task.size, task.output_format) if task else (None, None)
        limit, stall = self.limits.image_cap(size, fmt), self.limits.download_stall
        call = Call("GET", url, "downloading the image", limit, oversize=DeliveryError, send_key=False, stall=stall)
        seconds = self.limits.download_time(self.task_timeout)
        deadline = time.monotonic() + seconds

        async def attempt() -> tuple[bytes, Any]:
            try:
                answer = await exchange(self._http, call, deadline=deadline, scrub=self._auth.scrub)
            except Transient as again:
                raise Transient(DeliveryError(str(again.error), status=again.error.status)) from None
            except TransportError as exc:
                raise DeliveryError(str(exc)) from None
            if answer.status in (403, 404, 410):
                raise DeliveryError(
                    f"the image's delivery URL answered {answer.status}: it has expired or never existed",
                    expired=True,
                    status=answer.status,
                    answer=answer.excerpt(),
                )
            if answer.is_error:
                raise Transient(DeliveryError(f"downloading the image failed with HTTP {answer.status}"))
            checksum = answer.headers.get("content-md5")
            try:
                # Decoding releases the GIL: off the loop, it does not hold up other tasks' polls.
                return answer.body, await asyncio.to_thread(_decode, answer.body, checksum, size)
            except DeliveryError as exc:
                raise Transient(exc) from None

        def timed_out(error: FluxError) -> FluxError:
            return FluxTimeout(f"the image did not arrive within {seconds:g} s ({error})")

        return await self.retry.run(attempt, deadline=deadline, on_deadline=timed_out)

    async def credits(self) -> float:
        """The account's credit balance (also a cheap check that the key works)."""
        call = Call("GET", f"{self.base_url}/v1/credits", "asking for the credits", self.limits.json_bytes)
        deadline = time.monotonic() + self.limits.answer_seconds
        answer = await self.retry.run(lambda: self._exchange(call), deadline=deadline)
        if answer.is_error:
            raise error_for_answer(answer)
        try:
            body = answer.json()
        except ValueError:
            body = None
        credits = number_or_none(body.get("credits")) if isinstance(body, dict) else None
        if credits is None:
            raise TransportError(f"the credits answer was not understood: {answer.excerpt()!r}", status=answer.status)
        return credits


def _decode(data: bytes, checksum: str | None, size: tuple[int, int] | None) -> Any:
    """Decode a delivered image (Pillow is imported here, on first use, not with the client)."""
    from flux_nb.images import decode_output

    return decode_output(data, checksum, expected_size=size)


def _sample_url(task: Task, answer: dict[str, Any]) -> str:
    sample = url_or_none(result_field(answer, "sample"))
    if sample is None or status_of(answer)[0] is not Status.READY:
        raise DeliveryError(f"task {task.id} is Ready but its answer has no usable sample URL")
    return sample


__all__ = ["ApiKey", "AsyncFluxClient", "BodyLimits", "RetryPolicy", "Secret", "Task", "TaskResult"]
