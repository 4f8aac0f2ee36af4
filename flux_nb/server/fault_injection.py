"""Fault injection for the local server: the failures a real API has, on demand, reproducibly.

Off by default. Each fault fires at a rate, on given request numbers, or both; a seeded
random generator makes a run repeatable. HTTP-level faults (5xx, dropped connections,
slow answers, 429 storms, broken deliveries) live in ``FaultMiddleware``; task outcomes
(Error, moderation) are drawn by the task table.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux_nb.server.bfl_errors import error_bytes


@dataclass(frozen=True)
class Fault:
    """When one fault fires: a rate (0..1) and/or 1-based request numbers of its route."""

    rate: float = 0.0
    on: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return self.rate > 0 or bool(self.on)


@dataclass(frozen=True)
class FaultPlan:
    """Which faults to inject. ``FaultPlan.parse("submit_5xx=0.2,drop_after=#3|#9")`` reads the CLI form."""

    seed: int = 0
    submit_5xx: Fault = Fault()
    poll_5xx: Fault = Fault()
    drop_before: Fault = Fault()  # submit connection reset before the request is processed
    drop_after: Fault = Fault()  # ... after it was processed: the task exists, the answer is lost
    slow_submit: Fault = Fault()  # the answer comes after ``slow_seconds`` (past a client's timeout)
    slow_poll: Fault = Fault()
    storm_429: Fault = Fault()  # 429 whatever the active count
    credits_402: Fault = Fault()  # a submit answered 402: out of credits
    poll_429: Fault = Fault()  # a poll answered 429 (a rate limit on GETs)
    task_error: Fault = Fault()
    request_moderated: Fault = Fault()
    content_moderated: Fault = Fault()
    delivery_404: Fault = Fault()  # the sample URL expired early
    delivery_truncated: Fault = Fault()
    delivery_corrupt: Fault = Fault()
    slow_seconds: float = 5.0

    @property
    def active(self) -> bool:
        return any(isinstance(getattr(self, f.name), Fault) and getattr(self, f.name) for f in fields(self))

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> FaultPlan:
        """``name=rate`` or ``name=#n|#m`` pairs, comma-separated; ``slow_seconds=S`` too."""
        values: dict[str, Any] = {"seed": seed}
        names = {f.name for f in fields(cls)}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            name = name.strip()
            if name not in names or name == "seed":
                raise ValueError(f"unknown fault {name!r} (known: {', '.join(sorted(names - {'seed'}))})")
            if name == "slow_seconds":
                values[name] = float(value)
            elif value.startswith("#"):
                values[name] = Fault(on=frozenset(int(n.strip("# ")) for n in value.split("|")))
            else:
                rate = float(value)
                if not 0 <= rate <= 1:
                    raise ValueError(f"fault {name} rate {rate} is not between 0 and 1")
                values[name] = Fault(rate=rate)
        return cls(**values)


@dataclass
class FaultCounter:
    """Draws faults reproducibly and counts what fired, by kind."""

    plan: FaultPlan
    fired: Counter[str] = field(default_factory=Counter)
    numbers: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.plan.seed)
        self._lock = threading.Lock()

    def next_number(self, route: str) -> int:
        with self._lock:
            self.numbers[route] += 1
            return self.numbers[route]

    def fires(self, name: str, number: int) -> bool:
        fault: Fault = getattr(self.plan, name)
        if not fault:
            return False
        with self._lock:
            hit = number in fault.on or (fault.rate > 0 and self._rng.random() < fault.rate)
            if hit:
                self.fired[name] += 1
        return hit


class InjectedDrop(Exception):
    """Raised after the response started: the server closes the connection mid-answer."""


class _QuietDrops(logging.Filter):
    """Keep the server's log free of the drops it was asked to make (and the short body they leave)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, InjectedDrop) or "Too little data for declared Content-Length" in str(error))


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


def route_of(scope: Scope) -> str | None:
    path, method = scope.get("path", ""), scope.get("method", "")
    if method == "POST" and path.startswith("/v1/"):
        return "submit"
    if method == "GET" and path == "/v1/get_result":
        return "poll"
    if method == "GET" and path.startswith("/delivery/"):
        return "delivery"
    return None


class FaultMiddleware:
    """ASGI middleware that injects the HTTP-level faults of a plan."""

    def __init__(self, app: ASGIApp, counter: FaultCounter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = route_of(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        number = self.counter.next_number(route)
        fires = self.counter.fires
        if route == "submit":
            if fires("drop_before", number):
                await _drop(send)
            if fires("storm_429", number):
                await _answer(send, 429, error_bytes(429, "too many active tasks (storm)"), [(b"retry-after", b"0.2")])
                return
            if fires("credits_402", number):
                await _answer(send, 402, error_bytes(402, "insufficient credits (injected)"))
                return
            if fires("submit_5xx", number):
                await _answer(send, 503, b'{"detail":"injected failure"}')
                return
            if fires("slow_submit", number):
                await asyncio.sleep(self.counter.plan.slow_seconds)
            if fires("drop_after", number):
                await self._drop_after(scope, receive, send)
                return
        elif route == "poll":
            if fires("poll_429", number):
                await _answer(send, 429, error_bytes(429, "too many requests (injected)"), [(b"retry-after", b"0.05")])
                return
            if fires("poll_5xx", number):
                await _answer(send, 500, b'{"detail":"injected failure"}')
                return
            if fires("slow_poll", number):
                await asyncio.sleep(self.counter.plan.slow_seconds)
        elif route == "delivery":
            if fires("delivery_404", number):
                await _answer(send, 404, b'{"detail":"expired (injected)"}')
                return
            damage = "truncated" if fires("delivery_truncated", number) else None
            damage = damage or ("corrupt" if fires("delivery_corrupt", number) else None)
            if damage:
                await self._damaged(scope, receive, send, damage)
                return
        await self.app(scope, receive, send)

    async def _drop_after(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def swallow(message: Message) -> None:
            return None

        await self.app(scope, receive, swallow)  # the task is created, its answer never sent
        await _drop(send)

    async def _damaged(self, scope: Scope, receive: Receive, send: Send, damage: str) -> None:
        messages: list[Message] = []

        async def collect(message: Message) -> None:
            messages.append(message)

        await self.app(scope, receive, collect)
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.response.body")
        start = next(m for m in messages if m["type"] == "http.response.start")
        if start["status"] != 200:
            await _answer(send, start["status"], body)
            return
        if damage == "truncated":
            body = body[: len(body) // 2]
        else:
            middle = len(body) // 2
            body = body[:middle] + bytes(b ^ 0xFF for b in body[middle : middle + 64]) + body[middle + 64 :]
        headers = [(k, v) for k, v in start["headers"] if k.lower() != b"content-length"]
        await _answer(send, 200, body, headers)


async def _answer(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = list(headers or [])
    if not any(k.lower() == b"content-type" for k, _ in headers):
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _drop(send: Send) -> None:
    """Start an answer, then abort: the client sees the connection close mid-response."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"1000")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"{", "more_body": True})
    raise InjectedDrop("connection dropped (injected)")
