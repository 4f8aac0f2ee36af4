"""Which network addresses are public: the rule behind every fetch of a user-given URL.

The local server fetching reference images and webhooks (``flux_nb.server.outbound``) and the client
measuring a URL reference before pricing it (``flux_nb.http.probe``) both resolve a host first and
contact it only when every address it resolves to passes this rule.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64's well-known prefix: the IPv4 address is the low 32 bits.
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def unwrap(address: Address) -> Address:
    """The IPv4 address inside an IPv4-mapped, 6to4 or Teredo IPv6 address (else the address itself)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if inner is not None:
            return inner
        if address in NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def is_public(address: Address) -> bool:
    """True for a globally routable unicast address (an IPv6 wrapper counts as what it wraps)."""
    inner = unwrap(address)
    for candidate in {address, inner}:
        if (
            candidate.is_loopback
            or candidate.is_private
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
            or not candidate.is_global
        ):
            return False
    return True


def is_loopback(address: Address) -> bool:
    """True for 127.0.0.0/8 and ::1 (also when wrapped in IPv6)."""
    return address.is_loopback or unwrap(address).is_loopback


def parse_address(text: str) -> Address:
    """An address from a resolver's answer (an IPv6 zone such as ``%eth0`` dropped); ValueError if not one."""
    return ipaddress.ip_address(text.partition("%")[0])


def resolve(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to, with the system's resolver (numeric forms such as 2130706433 too)."""
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class Target:
    """A checked destination: the URL as given, and the address to connect to."""

    url: str
    host: str
    port: int
    address: str

    @property
    def connect_url(self) -> str:
        """The URL with the checked address in place of the host name."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((parts.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.url.startswith("https:") else 80
        return host if self.port == default else f"{host}:{self.port}"
