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


class Engine(Protocol):
    """Renders one job to a PIL image. Called on a worker thread."""

    name: str

    def render(self, job: RenderJob) -> Image.Image: ...


def get_engine(name: str) -> Engine:
    """The engine called ``name``; a clear error lists the known ones."""
    if name == "preview":
        from flux_nb.server.engines.preview import PreviewEngine

        return PreviewEngine()
    raise ValueError(f"unknown engine {name!r} (known: preview)")
