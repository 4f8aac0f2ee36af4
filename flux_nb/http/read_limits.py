"""Bounds on what the client reads: bytes per answer and image, seconds per exchange.

A server (or anything a polling or delivery URL points at) may send an endless body, a huge
JSON answer or one byte a second. Every body is read in chunks against a byte cap, and every
exchange (send, headers, body) against one overall deadline, not only a per-read timeout. A
download also ends early when it stalls: no byte for ``download_stall`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx

from flux_nb.protocol import MAX_PIXELS

MIB = 1024 * 1024
# Worst case bytes per pixel of a delivered image: PNG holds RGBA plus a filter byte a row;
# JPEG and WebP of pure noise at the highest quality stay below 4.
BYTES_PER_PIXEL = {"png": 4.2, "jpeg": 4.0, "webp": 4.2}
# Headers, metadata and chunk overhead on top of the pixels.
IMAGE_SLACK_BYTES = MIB


class TooLarge(Exception):
    """A body passed its byte cap; ``read`` is how much had arrived."""

    def __init__(self, limit: int, read: int) -> None:
        super().__init__(f"more than {limit:,} bytes")
        self.limit = limit
        self.read = read


class Stalled(Exception):
    """No byte arrived for ``seconds`` (connecting, waiting for the headers or within the body)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no byte for {seconds:g} s")
        self.seconds = seconds


@dataclass(frozen=True)
class BodyLimits:
    """How much the client reads, and for how long.

    ``answer_seconds`` bounds one JSON exchange (submit, poll, credits) from send to last byte;
    ``download_seconds`` bounds one whole download, its retries included (and never runs past the
    client's ``task_timeout``); ``download_stall`` ends a download that sent no byte for that long.
    """

    json_bytes: int = 4 * MIB
    image_bytes: int = 64 * MIB
    answer_seconds: float = 60.0
    download_seconds: float = 120.0
    download_stall: float = 30.0

    def download_time(self, task_timeout: float) -> float:
        """Seconds one download may take: ``download_seconds``, or the task's own timeout when that is shorter."""
        return min(self.download_seconds, task_timeout)

    def image_cap(self, size: tuple[int, int] | None, output_format: str | None) -> int:
        """Bytes an image of ``size`` in ``output_format`` can plausibly need, never above ``image_bytes``.

        >>> BodyLimits().image_cap((256, 256), "png") < 2 * MIB
        True
        """
        pixels = size[0] * size[1] if size else MAX_PIXELS
        per_pixel = BYTES_PER_PIXEL.get((output_format or "").lower(), max(BYTES_PER_PIXEL.values()))
        return min(self.image_bytes, int(pixels * per_pixel) + IMAGE_SLACK_BYTES)


async def read_capped(
    response: httpx.Response, limit: int, *, truncate: bool = False, on_bytes: Callable[[], None] | None = None
) -> bytes:
    """The body of a streamed ``response``, or TooLarge as soon as it passes ``limit`` bytes.

    With ``truncate`` the first ``limit`` bytes are kept instead (an error answer: its status says enough).
    ``on_bytes`` is called as each chunk arrives (a stall timer rearms on it).
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and not truncate:
        raise TooLarge(limit, 0)
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        if on_bytes is not None:
            on_bytes()
        size += len(chunk)
        if size > limit:
            if truncate:
                chunks.append(chunk[: len(chunk) - (size - limit)])
                break
            raise TooLarge(limit, size)
        chunks.append(chunk)
    return b"".join(chunks)
