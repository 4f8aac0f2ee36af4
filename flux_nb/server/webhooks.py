"""Webhook signatures: ``X-BFL-Signature: sha256=<hex HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-BFL-Signature"


def sign_webhook(body: bytes, secret: str) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook(body: bytes, header: str | None, secret: str) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` (compared in constant time)."""
    if not header or not secret:
        return False
    return hmac.compare_digest(sign_webhook(body, secret), header.strip())
