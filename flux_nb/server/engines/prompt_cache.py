"""A bounded cache of prompt encodings: a seed sweep over one prompt runs the text encoder once.

Keys name everything the encoding depends on (weights, prompt, the encoder's settings); the
least recently used entry goes first. Used from the engine's one worker thread.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class PromptCache:
    """At most ``size`` encodings (0 keeps none); ``hits`` and ``misses`` count lookups."""

    def __init__(self, size: int) -> None:
        if size < 0:
            raise ValueError(f"the prompt cache size must be 0 or more, not {size}")
        self.size, self.hits, self.misses = size, 0, 0
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, encode: Callable[[], Any]) -> Any:
        """The encoding under ``key``, from ``encode()`` on a miss (then kept, evicting the oldest)."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = encode()
        if self.size:
            self._entries[key] = value
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value
