"""What every engine shares: the job it renders, how it refuses one, and the Engine protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image


@dataclass(frozen=True)
class RenderJob:
    """What an engine renders: everything that shapes the image."""

    prompt: str
    seed: int
    width: int
    height: int
    model: str
    references: tuple[Image.Image, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


class JobRefused(ValueError):
    """The engine cannot render this job as asked (answered with 422 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class Engine(Protocol):
    """Renders one job to a PIL image, on a worker thread (the engine's own ``executor``, if it has one).

    An engine may also have ``review(job) -> list[str]``: called before the task is accepted, it raises
    JobRefused for a job it cannot render, and returns warnings (what it will change) for the task's details.
    """

    name: str

    def render(self, job: RenderJob) -> Image.Image: ...


def review(engine: Engine, job: RenderJob) -> tuple[str, ...]:
    """The engine's warnings for ``job`` (none when it has no ``review``); raises JobRefused."""
    check = getattr(engine, "review", None)
    return tuple(check(job)) if check is not None else ()
