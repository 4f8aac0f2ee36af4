"""A private event loop on a background thread: async code callable from sync code.

Jupyter's kernel already runs an event loop, so ``asyncio.run`` fails inside a cell.
Instead of patching asyncio for the whole process (what nest-asyncio does), flux_nb
runs its client on a loop of its own, on a daemon thread, as ``jupyter_core.utils``
does for ``run_sync``. ``run`` blocks the caller; ``submit`` returns a future; from a
notebook cell ``await runner.wrap(coro)`` waits without blocking the kernel's loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopRunner:
    """Owns one event loop running forever on a daemon thread."""

    def __init__(self, name: str = "flux-nb-loop") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop, started on first use."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                self._start()
            assert self._loop is not None
            return self._loop

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=serve, name=self._name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the private loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` to completion and return its result, from any thread but the loop's own.

        Works in plain Python and inside a running Jupyter kernel alike.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError("LoopRunner.run() called from its own loop; await the coroutine instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except KeyboardInterrupt:
            future.cancel()
            raise

    async def wrap(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` (run on the private loop) from another running loop, e.g. a notebook cell."""
        if self.in_loop_thread():
            return await coro
        return await asyncio.wrap_future(self.submit(coro))

    def close(self) -> None:
        """Stop the loop and join its thread."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=5)
            if not loop.is_running():
                loop.close()


async def settled_gather(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """``asyncio.gather``, except that a cancelled batch ends only once every request has settled its record.

    A cancelled gather ends as soon as its first child ends, while the others still write their outcome
    (a submit cut off mid-send becomes ``unknown``): whoever reports the interrupt must see all of them.
    """
    tasks = [asyncio.ensure_future(coro) for coro in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
