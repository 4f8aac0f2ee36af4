"""A hostile BFL-shaped server on 127.0.0.1: one mode per misbehaviour, raw asyncio HTTP.

Healthy by default (submit -> Ready at the first poll -> a PNG of the asked size); a mode makes
one answer hostile: endless or huge bodies, bodies trickling a byte a second, absurd
``Retry-After``, fields of the wrong type, images of absurd or wrong dimensions, a polling URL
on another port. It records every request (path, port, the ``x-key`` it carried) so tests can
assert what the client sent. Used by ``tests/test_hostile_server.py`` and ``bench/hostile.py``.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import struct
import threading
import zlib
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

MODES = (
    "healthy",
    "endless_image",
    "huge_json_submit",
    "huge_json_poll",
    "trickle_image",
    "trickle_json",
    "retry_after_day",
    "retry_after_inf",
    "bad_fields",
    "bad_id",
    "giant_image",
    "wrong_size_image",
    "other_port_polling",
)
CHUNK = 64 * 1024


def png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 90, 160)).save(buffer, "PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but holds almost no data: decoding it would be the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


@dataclass
class Seen:
    method: str
    path: str
    port: int
    key: str | None


@dataclass
class HostileServer:
    """Serve ``mode`` on two loopback ports (the second for polling URLs elsewhere) from a thread."""

    mode: str = "healthy"
    size: tuple[int, int] = (256, 256)
    bad_field: str = "cost"
    bad_value: Any = "abc"
    seen: list[Seen] = field(default_factory=list)
    bytes_sent: int = 0
    streamed: int = 0  # body bytes of the endless and trickling answers only
    port: int = 0
    other_port: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r} (one of {', '.join(MODES)})")
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> HostileServer:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def cancel_all() -> None:
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(cancel_all(), self._loop)
        self._thread.join(10)

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        main = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        other = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = main.sockets[0].getsockname()[1]
        self.other_port = other.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        main.close()
        other.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
            if int(headers.get("content-length", "0")):
                await reader.readexactly(int(headers["content-length"]))
            port = writer.get_extra_info("sockname")[1]
            self.seen.append(Seen(method, path, port, headers.get("x-key")))
            await self._answer(method, path, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> None:
        mode = self.mode
        if method == "POST":
            if mode == "huge_json_submit":
                return await self._endless(writer, b'{"id": "t1", "pad": "', b"a" * CHUNK, "application/json")
            if mode in ("retry_after_day", "retry_after_inf"):
                wait = "86400" if mode == "retry_after_day" else "inf"
                if sum(s.method == "POST" for s in self.seen) == 1:
                    return await self._send(writer, 429, {"detail": "busy"}, {"Retry-After": wait})
            return await self._send(writer, 200, self._task())
        if path.startswith("/v1/get_result"):
            if mode == "huge_json_poll":
                return await self._endless(writer, b'{"status": "Pending", "pad": "', b"a" * CHUNK, "application/json")
            if mode == "trickle_json":
                return await self._trickle(writer, json.dumps(self._ready_answer()).encode(), "application/json")
            return await self._send(writer, 200, self._ready_answer())
        if mode == "endless_image":
            return await self._endless(writer, png(self.size)[:33], b"\0" * CHUNK, "image/png")
        if mode == "trickle_image":
            return await self._trickle(writer, png(self.size), "image/png")
        if mode == "giant_image":
            return await self._send(writer, 200, png_header_only(12000, 12000))
        if mode == "wrong_size_image":
            return await self._send(writer, 200, png((self.size[0] * 2, self.size[1] * 2)))
        return await self._send(writer, 200, png(self.size))

    def _task(self) -> dict[str, Any]:
        base = f"http://127.0.0.1:{self.other_port}" if self.mode == "other_port_polling" else self.url
        task: dict[str, Any] = {"id": "t1", "polling_url": f"{base}/v1/get_result?id=t1", "cost": 1.4}
        if self.mode == "bad_fields" and self.bad_field in ("cost", "input_mp", "output_mp", "polling_url"):
            task[self.bad_field] = self.bad_value
        if self.mode == "bad_id":
            task["id"] = self.bad_value
        return task

    def _ready_answer(self) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "id": "t1",
            "status": "Ready",
            "progress": 1.0,
            "result": {"sample": f"{self.url}/sample.png", "seed": 1},
            "details": {"engine": "hostile"},
        }
        if self.mode == "bad_fields" and self.bad_field in ("progress", "details", "status"):
            answer[self.bad_field] = self.bad_value
        if self.mode == "bad_fields" and self.bad_field in ("seed",):
            answer["result"]["seed"] = self.bad_value
        if self.mode == "bad_fields" and self.bad_field == "result":
            answer["result"] = self.bad_value
        if self.mode == "bad_fields" and self.bad_field == "sample":
            answer["result"]["sample"] = self.bad_value
        return answer

    async def _send(self, writer: asyncio.StreamWriter, status: int, body: Any, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        kind = "image/png" if isinstance(body, bytes) else "application/json"
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\n{extra}"
        writer.write(f"{head}connection: close\r\n\r\n".encode() + data)
        self.bytes_sent += len(data)
        await writer.drain()

    async def _endless(self, writer: asyncio.StreamWriter, start: bytes, filler: bytes, kind: str) -> None:
        """A chunked body that never ends (until the client hangs up)."""
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ntransfer-encoding: chunked\r\n\r\n".encode())
        for piece in itertools.chain([start], itertools.repeat(filler)):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.bytes_sent += len(piece)
            self.streamed += len(piece)
            await writer.drain()

    async def _trickle(self, writer: asyncio.StreamWriter, data: bytes, kind: str) -> None:
        """The whole body announced, then one byte a second."""
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: {kind}\r\ncontent-length: {len(data)}\r\n\r\n".encode())
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            self.bytes_sent += 1
            self.streamed += 1
            await writer.drain()
            await asyncio.sleep(1.0)
