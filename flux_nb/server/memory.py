"""The memory the server lets decoded reference images take: reserved before decoding, given back after rendering."""

from __future__ import annotations

import threading

# Pillow holds an RGB pixel in 4 bytes; decoding keeps the file's image and its RGB copy at once.
BYTES_PER_PIXEL = 8


def decoded_bytes(sizes: list[tuple[int, int]]) -> int:
    """The memory that decoding images of these sizes may take."""
    return sum(width * height for width, height in sizes) * BYTES_PER_PIXEL


class ReferenceMemory:
    """A byte budget shared by every submit (both listeners: thread-safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def take(self, size: int) -> bool:
        """Reserve ``size`` bytes; False (nothing reserved) when that would go over the limit."""
        with self._lock:
            if self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size
