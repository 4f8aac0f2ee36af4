"""A URL reference's size, learned before sending to price it: a ranged GET of the image's first bytes.

The API bills every reference's megapixels, URLs included, but fetches URLs itself. To estimate a
request before paying for it, ``measure`` asks for the first ``PROBE_BYTES`` of the image (a
``Range`` request; a server that ignores it is read no further) and reads the width and height from
the header (``imagesize``). Only addresses the API itself could fetch are contacted: public ones, and
loopback ones when the backend is a server on this machine. The host is resolved and checked first,
the connection goes to the checked address, and redirects are not followed. The whole probe (resolving,
connecting, headers and a trickling body) has one deadline, ``PROBE_TIMEOUT_S``. Anything else (a refused
address, an error, a non-image, no size by the deadline, a size beyond the API's limits) gives None: the
estimate then assumes the largest reference and says "at most".
"""

from __future__ import annotations

import contextlib
import io
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx
import imagesize

from flux_nb import addresses as address_rules
from flux_nb.addresses import Target, is_loopback, is_public, parse_address
from flux_nb.protocol import MAX_PIXELS

PROBE_BYTES = 128 * 1024
# Seconds one probe may take in all, from resolving the host to the last byte read.
PROBE_TIMEOUT_S = 3.0
# host, port -> the addresses it resolves to (as text)
Resolver = Callable[[str, int], list[str]]


class ProbeRefused(Exception):
    """This URL is not contacted to measure it (the message says why)."""


@dataclass(frozen=True)
class ProbePolicy:
    """Which URLs may be measured: public addresses, and loopback ones when ``loopback`` (a local backend)."""

    loopback: bool = False

    @classmethod
    def for_endpoint(cls, base_url: str) -> ProbePolicy:
        """The policy for requests to ``base_url``: a server on loopback can fetch loopback URLs, no other can."""
        host = (urlsplit(base_url).hostname or "").lower()
        try:
            local = host == "localhost" or is_loopback(parse_address(host))
        except ValueError:
            local = False
        return cls(loopback=local)

    def target(self, url: str, resolver: Resolver | None = None) -> Target:
        """The checked address to contact for ``url``, or ProbeRefused; opens no connection."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            raise ProbeRefused(f"not an http(s) URL with a host: {url!r}")
        try:
            port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
            resolved = (resolver or address_rules.resolve)(parts.hostname, port)
            addresses = [parse_address(text) for text in resolved]
        except (OSError, UnicodeError, ValueError) as exc:
            raise ProbeRefused(f"{parts.hostname!r} does not resolve to addresses: {exc}") from None
        if not addresses:
            raise ProbeRefused(f"{parts.hostname!r} resolves to no address")
        refused = [str(a) for a in addresses if not (is_public(a) or (self.loopback and is_loopback(a)))]
        if refused:
            raise ProbeRefused(f"{parts.hostname!r} resolves to {', '.join(refused)}, which the API cannot fetch")
        return Target(url, parts.hostname, port, str(addresses[0]))


def measure(
    url: str,
    policy: ProbePolicy,
    *,
    resolver: Resolver | None = None,
    transport: httpx.BaseTransport | None = None,
    timeout: float = PROBE_TIMEOUT_S,
) -> tuple[int, int] | None:
    """The width and height of the image at ``url``, from its first bytes; None when they cannot be learned
    within ``timeout`` seconds in all (a server trickling bytes is left behind at the deadline)."""
    deadline = time.monotonic() + timeout
    found: list[tuple[int, int] | None] = []

    def probe() -> None:
        found.append(_measure(url, policy, resolver, transport, deadline))

    worker = threading.Thread(target=probe, name="flux-nb-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return found[0] if found else None


def _measure(
    url: str, policy: ProbePolicy, resolver: Resolver | None, transport: httpx.BaseTransport | None, deadline: float
) -> tuple[int, int] | None:
    """``measure``'s work; it stops reading at ``deadline`` (``time.monotonic()``)."""
    try:
        target = policy.target(url, resolver)
    except ProbeRefused:
        return None
    headers = {"host": target.host_header, "range": f"bytes=0-{PROBE_BYTES - 1}", "accept": "image/*"}
    extensions = {"sni_hostname": target.host} if url.lower().startswith("https:") else {}
    timeout = max(0.0, deadline - time.monotonic())
    head = b""
    try:
        with httpx.Client(transport=transport, timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request("GET", target.connect_url, headers=headers, extensions=extensions)
            with contextlib.closing(client.send(request, stream=True)) as answer:
                if answer.status_code not in (200, 206):
                    return None
                for chunk in answer.iter_bytes():
                    if time.monotonic() >= deadline:
                        return None
                    head = (head + chunk)[:PROBE_BYTES]
                    if (size := size_of_header(head)) is not None:
                        # a size the API would not take is not believed: priced at the cap, as "at most"
                        return size if size[0] * size[1] <= MAX_PIXELS else None
                    if len(head) >= PROBE_BYTES:
                        break
    except (httpx.HTTPError, OSError, ValueError):
        return None
    return None


def size_of_header(head: bytes) -> tuple[int, int] | None:
    """Width and height from an image's first bytes (PNG, JPEG, WebP, GIF, TIFF, ...); None if not there yet."""
    try:
        width, height = imagesize.get(io.BytesIO(head))
    except (ValueError, OSError, struct.error, IndexError):
        return None
    return (width, height) if width > 0 and height > 0 else None


@dataclass
class ReferenceSizes:
    """``measure`` with a policy, remembering each URL's answer for the session (a URL is measured once)."""

    policy: ProbePolicy
    timeout: float = PROBE_TIMEOUT_S
    known: dict[str, tuple[int, int] | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __call__(self, url: str) -> tuple[int, int] | None:
        with self._lock:
            if url in self.known:
                return self.known[url]
        size = measure(url, self.policy, timeout=self.timeout)
        with self._lock:
            self.known[url] = size
        return size


__all__ = ["PROBE_BYTES", "PROBE_TIMEOUT_S", "ProbePolicy", "ProbeRefused", "ReferenceSizes", "Target", "measure"]
