"""Which server a session talks to: the BFL cloud, a given endpoint, or the embedded local server."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

from flux_nb.errors import AuthError, ValidationError
from flux_nb.protocol import BFL_HOSTS, KEY_ENV, is_bfl_hostname

ENDPOINT_ENV = "FLUX_NB_ENDPOINT"

_embedded_lock = threading.Lock()
_embedded: object | None = None


@dataclass(frozen=True)
class Backend:
    """Where requests go, and how history labels them (the label is part of the cache key)."""

    base_url: str
    label: str
    billed: bool

    @property
    def is_local(self) -> bool:
        return not self.billed

    @property
    def is_embedded(self) -> bool:
        """The preview server this process started itself (it takes no key)."""
        return self.label.startswith("local:")


def is_bfl_host(url: str) -> bool:
    return is_bfl_hostname(urlsplit(url).hostname or "")


def check_endpoint(endpoint: str) -> str:
    """Validate an endpoint URL and return it without a trailing slash."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"endpoint {endpoint!r} must be an http(s) URL such as http://127.0.0.1:8800")
    return endpoint.rstrip("/")


def resolve_backend(endpoint: str | None, api_key: str | None, region: str = "global") -> Backend:
    """Pick the backend: an explicit endpoint, else the BFL cloud with a key, else the embedded server."""
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if endpoint:
        url = check_endpoint(endpoint)
        if is_bfl_host(url):
            if not api_key:
                raise AuthError(f"{url} needs an API key and none is set")
            return Backend(url, "bfl", billed=True)
        parts = urlsplit(url)
        return Backend(url, f"endpoint:{parts.hostname}:{parts.port or ''}", billed=False)
    if api_key:
        if region not in BFL_HOSTS:
            raise ValidationError(f"region {region!r} is not one of {', '.join(BFL_HOSTS)}")
        return Backend(BFL_HOSTS[region], "bfl", billed=True)
    return Backend(embedded_server_url(), "local:preview", billed=False)


def embedded_server_url() -> str:
    """Start (once per process) the local preview server on a free loopback port."""
    global _embedded
    with _embedded_lock:
        if _embedded is None:
            from flux_nb.server import EmbeddedServer

            server = EmbeddedServer().start()
            _embedded = server
            print(
                f"flux_nb: no {KEY_ENV} set, using the local preview server at {server.url} "
                "(images are previews, nothing is billed)",
            )
        return _embedded.url  # type: ignore[attr-defined]
