"""Webhook signatures: ``X-BFL-Signature: sha256=<hex HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-BFL-Signature"


def sign_webhook(body: bytes, secret: str) -> str:
    """The signature header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_webhook(body: bytes, header: str | bytes | None, secret: str) -> bool:
    """True when ``header`` signs ``body`` with ``secret`` (compared in constant time, as bytes).

    Anything malformed (a non-ASCII or non-text header, an unencodable secret) is simply False.
    """
    if not header or not secret or not isinstance(body, (bytes, bytearray, memoryview)):
        return False
    try:
        received = header.strip() if isinstance(header, bytes) else str(header).strip().encode("utf-8")
        expected = sign_webhook(bytes(body), secret).encode("ascii")
    except (UnicodeError, AttributeError, TypeError):
        return False
    return hmac.compare_digest(expected, received)
