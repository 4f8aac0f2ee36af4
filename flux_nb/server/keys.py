"""Who is calling: the ``x-key`` check, and the tenant a task belongs to.

With keys configured, every task belongs to the key that submitted it (held as a digest, never
the key itself): another key polling it gets the same answer as for a task that does not exist.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Header, Request

from flux_nb.server.bfl_errors import NOT_AUTHENTICATED, APIError
from flux_nb.server.config import ServerConfig


@dataclass(frozen=True)
class Caller:
    """The caller of one request: its tenant (None when the server has no keys) and whether it is an admin."""

    owner: str | None = None
    admin: bool = False


def owner_of(key: str) -> str:
    """A stable tenant id for a key that does not reveal it."""
    return hashlib.sha256(b"flux_nb-tenant\x00" + key.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _listed(key: str, keys: frozenset[str]) -> bool:
    """Constant-time membership (per key), so timing does not tell how much of a key was right."""
    given = key.encode("utf-8", "surrogatepass")
    found = False
    for known in keys:
        found |= hmac.compare_digest(given, known.encode("utf-8", "surrogatepass"))
    return found


def identify(config: ServerConfig, key: str | None) -> Caller:
    """The caller behind ``key``; APIError 403 (BFL's answer) when keys are required and it is missing or wrong."""
    if not config.keys_required:
        return Caller()
    if not key:
        raise APIError(403, NOT_AUTHENTICATED)
    admin = _listed(key, config.admin_keys)
    if not admin and not _listed(key, config.api_keys):
        raise APIError(403, NOT_AUTHENTICATED)
    return Caller(owner_of(key), admin)


async def caller(request: Request, x_key: Annotated[str | None, Header()] = None) -> Caller:
    """FastAPI dependency: the request's caller (async: no thread hop per request)."""
    return identify(request.app.state.config, x_key)
