"""Which server a session talks to: the BFL cloud, a given endpoint, or the embedded local server.

Resolving is pure (it reads settings and the environment). Starting the embedded server is a
separate, announced step (``connect``), done with a starter the package wires in at import
(``flux_nb/__init__``): this layer never imports the server.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from flux_nb.errors import AuthError, ValidationError
from flux_nb.history.records import BILLED_PREFIX
from flux_nb.protocol import BFL_HOSTS, KEY_ENV, is_bfl_hostname

ENDPOINT_ENV = "FLUX_NB_ENDPOINT"
EMBEDDED_LABEL = "local:preview"

#: Starts the embedded preview server and returns its base URL (wired in by ``flux_nb/__init__``).
LocalStarter = Callable[[], str]

_lock = threading.Lock()
_starter: LocalStarter | None = None
_embedded_url: str | None = None


def label_in_words(label: str) -> str:
    """A backend label in words: ``BFL API``, ``local preview server``, ``endpoint HOST:PORT``."""
    if label == "bfl":
        return "BFL API"
    if label.startswith("local:"):
        return f"local {label.removeprefix('local:')} server"
    for prefix in ("endpoint:", BILLED_PREFIX):
        if label.startswith(prefix):
            return f"endpoint {label.removeprefix(prefix).rstrip(':')}"
    return label or "unknown backend"


@dataclass(frozen=True)
class Backend:
    """Where requests go, and how history labels them (the label is part of the cache key).

    ``base_url`` is empty for the embedded server until ``connect`` has started it.
    """

    base_url: str
    label: str
    billed: bool

    @property
    def is_embedded(self) -> bool:
        """The preview server this process starts itself (it takes no key)."""
        return self.label == EMBEDDED_LABEL

    @property
    def connected(self) -> bool:
        return bool(self.base_url)


def is_bfl_host(url: str) -> bool:
    return is_bfl_hostname(urlsplit(url).hostname or "")


def check_endpoint(endpoint: str) -> str:
    """Validate an endpoint URL and return it without a trailing slash."""
    try:
        parts = urlsplit(str(endpoint))
        usable = parts.scheme in ("http", "https") and bool(parts.hostname)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:  # "http://[::1" and other malformed URLs
        usable = False
    if not usable:
        raise ValidationError(f"endpoint {endpoint!r} must be an http(s) URL such as http://127.0.0.1:8800")
    return endpoint.rstrip("/")


def resolve_backend(
    endpoint: str | None, api_key: object | None, region: str = "global", billed: bool | None = None
) -> Backend:
    """Pick the backend: an explicit endpoint, else the BFL cloud with a key, else the embedded server.

    ``billed``: None (auto) bills BFL's hosts only; True says another endpoint (a gateway) bills too.
    Pure: the embedded server is not started here (its URL is filled in by ``connect``).
    """
    endpoint = endpoint or os.environ.get(ENDPOINT_ENV) or None
    if endpoint:
        url = check_endpoint(endpoint)
        if is_bfl_host(url):
            if not api_key:
                raise AuthError(f"{url} needs an API key and none is set")
            return _bfl(url, billed)
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port or ''}"
        if billed:
            return Backend(url, f"{BILLED_PREFIX}{where}", billed=True)
        return Backend(url, f"endpoint:{where}", billed=False)
    if api_key:
        if region not in BFL_HOSTS:
            raise ValidationError(f"region {region!r} is not one of {', '.join(BFL_HOSTS)}")
        return _bfl(BFL_HOSTS[region], billed)
    with _lock:
        return Backend(_embedded_url or "", EMBEDDED_LABEL, billed=False)


def _bfl(url: str, billed: bool | None) -> Backend:
    if billed is False:
        raise ValidationError("Flux.billed = False, but BFL's API bills every task: leave it None (auto)")
    return Backend(url, "bfl", billed=True)


def use_local_starter(starter: LocalStarter) -> None:
    """Install how the embedded server is started (``flux_nb/__init__`` does, once)."""
    global _starter
    _starter = starter


def connect(backend: Backend, announce: Callable[[str], None] = print) -> Backend:
    """``backend`` with a base URL: starts the embedded server (once per process) and says so in one line."""
    global _embedded_url
    if backend.connected:
        return backend
    with _lock:
        if _embedded_url is None:
            if _starter is None:
                raise RuntimeError("no local server starter installed: import flux_nb first")
            _embedded_url = _starter()
            announce(
                f"flux_nb: no {KEY_ENV} set, using the local preview server at {_embedded_url} "
                "(images are previews, nothing is billed)"
            )
        return replace(backend, base_url=_embedded_url)
