"""Settings of the local BFL-compatible server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flux_nb.protocol import DELIVERY_TTL_SECONDS, MAX_ACTIVE_TASKS, MAX_PIXELS
from flux_nb.server.fault_injection import FaultPlan
from flux_nb.server.outbound import OutboundPolicy


@dataclass(frozen=True)
class ServerConfig:
    """How the local server behaves; the defaults mirror the BFL API."""

    latency: float = 0.0  # simulated generation seconds (the engine's own time overlaps it)
    max_active: int = 10 * MAX_ACTIVE_TASKS  # in-flight tasks on the whole server before 429
    max_active_per_key: int = MAX_ACTIVE_TASKS  # in-flight tasks of one key (of everyone, without keys) before 429
    delivery_ttl: float = DELIVERY_TTL_SECONDS  # sample URLs expire this long after Ready
    api_keys: frozenset[str] = field(default_factory=frozenset, repr=False)  # empty: no key check
    engine: str = "preview"
    engine_options: dict[str, Any] = field(default_factory=dict)  # e.g. model, device, dtype for diffusers
    public_url: str | None = None  # base of polling and delivery URLs (default: the request's)
    # Also listen on this port (0: a free one), same host, same tasks, and write that address (host
    # 127.0.0.1 named localhost) into every polling_url; delivery URLs stay on the main address. None: off.
    poll_port: int | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    body_timeout: float = 60.0  # a request's whole body must arrive within this many seconds (else 408)
    reference_max_pixels: int = MAX_PIXELS  # a larger reference image is refused from its header (422)
    # Decoded reference images held at once (8 bytes a pixel, from before decoding until the task is
    # rendered); a submit that would go over it gets 429, one whose references alone are larger 422.
    reference_memory: int = 1024 * 1024 * 1024
    fetch_timeout: float = 10.0  # reference images given by URL: each read, and the whole fetch
    fetch_max_bytes: int = 32 * 1024 * 1024
    retry_after: float = 1.0  # seconds, sent with 429
    task_ttl: float = 3600.0  # finished tasks are forgotten after this long
    faults: FaultPlan = field(default_factory=FaultPlan)  # nothing injected by default
    # Hosts the server may contact (reference-image URLs, webhooks); None allows any host, empty none.
    outbound_hosts: frozenset[str] | None = None
    # Host names, addresses or networks (CIDR) the server may contact although they are not public
    # (loopback, private, link-local, ...): by default it contacts public addresses only.
    allow_fetch: frozenset[str] = frozenset()
    # Keys that may also read the full statistics (task timings); they work as ordinary keys too.
    admin_keys: frozenset[str] = field(default_factory=frozenset, repr=False)
    docs: bool | None = None  # /docs and /openapi.json; None: served only when no keys are required
    # Connection limits (uvicorn, and the connection guard in server/guard.py):
    header_timeout: float = 10.0  # a connection must send a request's complete headers within this
    max_header_bytes: int = 64 * 1024  # a request's head larger than this closes the connection
    keep_alive_timeout: int = 5  # idle keep-alive connections are closed after this many seconds
    limit_concurrency: int = 1000  # connections plus running requests before 503 (idle ones are evicted first)

    @property
    def keys_required(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @property
    def serves_docs(self) -> bool:
        return self.docs if self.docs is not None else not self.keys_required

    def outbound_policy(self) -> OutboundPolicy:
        """What the server may contact: public addresses, and what ``allow_fetch`` adds."""
        return OutboundPolicy.of(self.outbound_hosts, self.allow_fetch)
