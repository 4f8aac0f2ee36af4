"""The server's outbound traffic (reference-image URLs, webhooks), safe against SSRF.

A URL's host is resolved first; every address it resolves to must be public (not loopback,
private, link-local, multicast, reserved, shared or unspecified) unless the operator allowed
that host, address or network (``ServerConfig.allow_fetch``). The connection then goes to the
address that was checked (the Host header and TLS name stay the URL's), so a second, different
DNS answer cannot slip past the check; redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from flux_nb.addresses import Address, Target, is_public, parse_address, unwrap

logger = logging.getLogger("flux_nb.server")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses the host resolves to (as text)
Resolver = Callable[[str, int], Awaitable[list[str]]]


class OutboundRefused(Exception):
    """The server will not contact this URL; the message is for the log, never for the client."""


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system's resolver (numeric forms such as 2130706433 included)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class OutboundPolicy:
    """Which URLs the server may contact.

    ``hosts``: when set, only these host names (as written in the URL; empty: none). ``allowed``: host names,
    addresses or networks (CIDR) that may be contacted although they are not public.
    """

    hosts: frozenset[str] | None = None
    allowed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, hosts: Iterable[str] | None, allowed: Iterable[str]) -> OutboundPolicy:
        return cls(None if hosts is None else frozenset(hosts), frozenset(a.strip().lower() for a in allowed))

    def _networks(self) -> list[Network]:
        networks = []
        for entry in self.allowed:
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                continue  # a host name
        return networks

    def allows_address(self, host: str, address: Address) -> bool:
        if is_public(address) or host.lower() in self.allowed:
            return True
        return any(address in network or unwrap(address) in network for network in self._networks())

    async def check(self, url: str, resolver: Resolver = system_resolver) -> Target:
        """The address to connect to for ``url``, or OutboundRefused; opens no connection."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundRefused(f"not an http(s) URL with a host: {url!r}")
        host = parts.hostname
        if self.hosts is not None and host not in self.hosts:
            raise OutboundRefused(f"host {host!r} is not in the outbound host list")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise OutboundRefused(f"bad port in {url!r}") from None
        try:
            resolved = await resolver(host, port)
        except (OSError, UnicodeError) as exc:
            raise OutboundRefused(f"{host!r} does not resolve: {exc}") from None
        addresses = []
        for text in resolved:
            try:
                addresses.append(parse_address(text))
            except ValueError:
                raise OutboundRefused(f"{host!r} resolved to {text!r}, not an address") from None
        if not addresses:
            raise OutboundRefused(f"{host!r} resolved to no address")
        refused = [str(a) for a in addresses if not self.allows_address(host, a)]
        if refused:
            raise OutboundRefused(f"{host!r} resolves to {', '.join(refused)}, which this server does not contact")
        return Target(url, host, port, str(addresses[0]))


def checked_request(client: httpx.AsyncClient, method: str, target: Target, **kwargs: object) -> httpx.Request:
    """A request to the checked address that still names the URL's host (Host header, TLS SNI and certificate)."""
    headers = {**dict(kwargs.pop("headers", None) or {}), "host": target.host_header}  # type: ignore[call-overload]
    extensions = {"sni_hostname": target.host} if target.url.startswith("https:") else {}
    return client.build_request(method, target.connect_url, headers=headers, extensions=extensions, **kwargs)  # type: ignore[arg-type]
