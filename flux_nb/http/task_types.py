"""What the client hands back: a ``Task`` the API accepted and the ``TaskResult`` it became.

A Task holds all that is needed to finish it later, even from another process: its id and
polling URL, plus what was asked (size, format) so that the delivered image can be checked.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """A task the API accepted: what is needed to poll it later, even from another process.

    ``size`` and ``output_format`` are what was asked (None when unknown or left to the API).
    """

    id: str
    polling_url: str
    model: str
    submitted_at: float
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None
    size: tuple[int, int] | None = None
    output_format: str | None = None


@dataclass
class TaskResult:
    """A finished task with its downloaded image bytes and what the API said about it."""

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
    #: The task's details from the API (the engine, a replica, warnings such as a truncated prompt).
    details: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Task, str, float | None], Awaitable[None] | None]
SubmittedCallback = Callable[[Task], Awaitable[None] | None]
SendingCallback = Callable[[], Awaitable[None] | None]


async def maybe_await(value: Awaitable[None] | None) -> None:
    """Await a callback's result when it is awaitable (callbacks may be plain functions)."""
    if value is not None:
        await value
