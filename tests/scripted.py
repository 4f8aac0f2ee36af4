"""A BFL-shaped server whose answers a test scripts, served over real HTTP on 127.0.0.1.

The local preview server answers like a healthy API; this one answers what a test needs
to see (a 402, a moderated task, a submit whose answer never comes) to check the client.
"""

from __future__ import annotations

import asyncio
import io
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from PIL import Image

from flux_nb.server import EmbeddedServer


@dataclass
class Step:
    """One scripted answer: an HTTP status and JSON body, or a delay before answering."""

    status: int = 200
    body: Any = None
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


def png_bytes(color: tuple[int, int, int] = (40, 120, 200), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


class ScriptedApi:
    """Queues of answers for submit, poll and download; healthy defaults once a queue is empty."""

    def __init__(self) -> None:
        self.submits: deque[Step] = deque()
        self.polls: deque[Step] = deque()
        self.downloads: deque[Step] = deque()
        self.submit_count = 0
        self.poll_count = 0
        self.download_count = 0
        self.poll_ids: list[str] = []
        self.seen_keys: list[str | None] = []
        self.image = png_bytes()
        self.url = ""
        self.app = self._build()
        self._server: EmbeddedServer | None = None

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/{model}")
        async def submit(model: str, request: Request) -> Response:
            self.submit_count += 1
            self.seen_keys.append(request.headers.get("x-key"))
            step = self.submits.popleft() if self.submits else Step()
            await asyncio.sleep(step.delay)
            body = step.body if step.body is not None else self._task(f"task-{self.submit_count}")
            return JSONResponse(body, status_code=step.status, headers=step.headers)

        @app.get("/v1/get_result")
        async def poll(id: str, request: Request) -> Response:
            self.poll_count += 1
            self.poll_ids.append(id)
            self.seen_keys.append(request.headers.get("x-key"))
            step = self.polls.popleft() if self.polls else Step()
            await asyncio.sleep(step.delay)
            body = step.body if step.body is not None else self._ready(id)
            return JSONResponse(body, status_code=step.status, headers=step.headers)

        @app.get("/sample/{name}")
        async def download(name: str, request: Request) -> Response:
            self.download_count += 1
            self.seen_keys.append(request.headers.get("x-key"))
            step = self.downloads.popleft() if self.downloads else Step()
            await asyncio.sleep(step.delay)
            content = step.body if isinstance(step.body, bytes) else self.image
            return Response(content, status_code=step.status, media_type="image/png")

        return app

    def _task(self, task_id: str) -> dict[str, Any]:
        return {"id": task_id, "polling_url": f"{self.url}/v1/get_result?id={task_id}", "cost": 1.4}

    def _ready(self, task_id: str) -> dict[str, Any]:
        result = {"sample": f"{self.url}/sample/{task_id}.png", "seed": 7}
        return {"id": task_id, "status": "Ready", "result": result, "progress": 1.0, "details": {"engine": "scripted"}}

    def start(self) -> ScriptedApi:
        self._server = EmbeddedServer(app=self.app).start()
        self.url = self._server.url
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
