"""flux_nb's local server: the BFL FLUX.2 protocol on your own machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flux_nb.server.config import ServerConfig
from flux_nb.server.embedded import EmbeddedServer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from flux_nb.server.engines import Engine
    from flux_nb.server.outbound import Resolver

__all__ = ["EmbeddedServer", "ServerConfig", "create_app"]


def create_app(
    config: ServerConfig | None = None, engine: Engine | None = None, *, resolver: Resolver | None = None
) -> FastAPI:
    """The ASGI app (``engine`` overrides ``config.engine``); FastAPI loads only when a server is made.

    ``resolver`` (``async (host, port) -> [addresses]``) replaces the system resolver for outbound checks.

    >>> app = create_app(ServerConfig(latency=0.5))  # doctest: +SKIP
    """
    from flux_nb.server.app import create_app as build

    return build(config, engine) if resolver is None else build(config, engine, resolver=resolver)
