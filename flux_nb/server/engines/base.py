"""What every engine shares: the job it renders, how it refuses one, and the Engine protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from flux_nb import protocol
from flux_nb.server.engines.checkpoints import unserved_message

# An engine may leave a dict under this key in the image's ``info``: it joins the task's details
# (e.g. which Ray Serve replica rendered it) and is removed before the image is encoded.
DETAILS_KEY = "flux_nb.details"


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
    An engine with ``routes`` (route -> the weights that render it) serves only those routes.
    """

    name: str

    def render(self, job: RenderJob) -> Image.Image: ...


def review(engine: Engine, job: RenderJob) -> tuple[str, ...]:
    """The engine's warnings for ``job`` (none when it has no ``review``); raises JobRefused."""
    check = getattr(engine, "review", None)
    return tuple(check(job)) if check is not None else ()


def served_routes(engine: Engine) -> dict[str, str]:
    """Route -> what renders it: the engine's ``routes``, or every route by the engine itself (the preview)."""
    routes = getattr(engine, "routes", None)
    if routes is not None:
        return dict(routes)
    return {route: f"{engine.name} engine (stand-in images, not the model)" for route in protocol.MODELS}


def unserved(engine: Engine, route: str) -> str | None:
    """Why ``engine`` refuses ``route`` (no weights of that model), or None when it serves it."""
    routes = getattr(engine, "routes", None)
    if routes is None or route in routes:
        return None
    return unserved_message(route, engine.name, routes)
