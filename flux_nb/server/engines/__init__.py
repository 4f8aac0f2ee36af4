"""Engines render images for the local server; ``get_engine`` picks one by name."""

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


ENGINES = ("preview", "diffusers")

# An engine may leave a dict under this key in the image's ``info``: it joins the task's details
# (e.g. which Ray Serve replica rendered it) and is removed before the image is encoded.
DETAILS_KEY = "flux_nb.details"


def get_engine(name: str, options: dict[str, Any] | None = None) -> Engine:
    """The engine called ``name``, built with ``options``; a clear error lists the known ones."""
    if name == "preview":
        from flux_nb.server.engines.preview import PreviewEngine

        return PreviewEngine()
    if name == "diffusers":
        from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions

        return DiffusersEngine(DiffusersOptions(**(options or {})))
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
