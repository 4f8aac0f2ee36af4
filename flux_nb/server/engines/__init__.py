"""Engines render images for the local server; ``get_engine`` picks one by name."""

from __future__ import annotations

from typing import Any

from flux_nb.server.engines.base import DETAILS_KEY, Engine, JobRefused, RenderJob, review, served_routes, unserved

__all__ = [
    "DETAILS_KEY",
    "ENGINES",
    "Engine",
    "JobRefused",
    "RenderJob",
    "get_engine",
    "review",
    "served_routes",
    "unserved",
]


ENGINES = ("preview", "diffusers")


def get_engine(name: str, options: dict[str, Any] | None = None) -> Engine:
    """The engine called ``name``, built with ``options``; a clear error lists the known ones."""
    if name == "preview":
        from flux_nb.server.engines.preview import PreviewEngine

        return PreviewEngine()
    if name == "diffusers":
        from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions

        return DiffusersEngine(DiffusersOptions(**(options or {})))
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")
