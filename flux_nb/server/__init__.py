"""flux_nb's local server: the BFL FLUX.2 protocol on your own machine."""

from flux_nb.server.config import ServerConfig
from flux_nb.server.embedded import EmbeddedServer

__all__ = ["EmbeddedServer", "ServerConfig", "create_app"]


def create_app(config: ServerConfig | None = None, engine: object = None):  # type: ignore[no-untyped-def]
    """The ASGI app (imported lazily: FastAPI loads only when a server is made)."""
    from flux_nb.server.app import create_app as build

    return build(config, engine)  # type: ignore[arg-type]
