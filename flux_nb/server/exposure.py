"""Whether the server may listen where it was asked to: beyond loopback, only with keys (or on purpose)."""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def is_loopback_host(host: str) -> bool:
    """True for an address (or the name localhost) that only this machine can reach."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_refusal(host: str, keys_required: bool, insecure_open: bool) -> str | None:
    """Why the server must not start on ``host`` (None: it may).

    Beyond loopback, anyone who can reach the port could spend its GPU, read the tasks and make it
    fetch URLs: that needs keys, or an explicit ``--insecure-open``.
    """
    if is_loopback_host(host) or keys_required or insecure_open:
        return None
    return f"refusing to listen on {host} without keys: anyone who reaches that address could use this server"
