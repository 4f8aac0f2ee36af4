"""Settings of the local BFL-compatible server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from flux_nb.protocol import DELIVERY_TTL_SECONDS, MAX_ACTIVE_TASKS
from flux_nb.server.faults import FaultPlan


@dataclass(frozen=True)
class ServerConfig:
    """How the local server behaves; the defaults mirror the BFL API."""

    latency: float = 0.0  # simulated generation seconds (the engine's own time overlaps it)
    max_active: int = MAX_ACTIVE_TASKS  # in-flight tasks per server before 429
    delivery_ttl: float = DELIVERY_TTL_SECONDS  # sample URLs expire this long after Ready
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)  # empty: no key check
    engine: str = "preview"
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. model, device, dtype for diffusers
    public_url: str | None = None  # base of polling and delivery URLs (default: the request's)
    # Also listen on this port (0: a free one), same host, same tasks, and write that address (host
    # 127.0.0.1 named localhost) into every polling_url; delivery URLs stay on the main address. None: off.
    poll_port: int | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    fetch_timeout: float = 10.0  # reference images given by URL: each read, and the whole fetch
    fetch_max_bytes: int = 32 * 1024 * 1024
    retry_after: float = 1.0  # seconds, sent with 429
    task_ttl: float = 3600.0  # finished tasks are forgotten after this long
    faults: FaultPlan = field(default_factory=FaultPlan)  # nothing injected by default
    # Hosts the server may contact (reference-image URLs, webhooks); None allows any host.
    outbound_hosts: frozenset[str] | None = None

    def allows_outbound(self, url: str) -> bool:
        """May the server contact this URL? Only http(s), and only listed hosts when a list is set."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
        return self.outbound_hosts is None or parts.hostname in self.outbound_hosts
