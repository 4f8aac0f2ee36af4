"""The local server's core, free of HTTP: tasks, rendering, delivery tokens and statistics."""

from __future__ import annotations

import asyncio
import io
import json
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
from PIL import Image

from flux_nb import protocol
from flux_nb.server.config import ServerConfig
from flux_nb.server.engines import DETAILS_KEY, Engine, RenderJob
from flux_nb.server.fault_injection import FaultCounter
from flux_nb.server.memory import ReferenceMemory
from flux_nb.server.outbound import OutboundRefused, Resolver, checked_request, logger, system_resolver
from flux_nb.server.webhooks import SIGNATURE_HEADER, sign_webhook

MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class TooManyActiveTasks(Exception):
    """The server already runs ``max_active`` tasks, or the caller's key ``max_active_per_key`` (answered with 429)."""


@dataclass
class ServerTask:
    """One task on the local server."""

    id: str
    model: str
    job: RenderJob
    output_format: str
    cost: float
    input_mp: float
    output_mp: float
    submitted_at: float
    base_url: str = ""
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    status: str = protocol.Status.PENDING.value
    started_at: float | None = None
    ready_at: float | None = None
    image: bytes | None = None
    token: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)  # the engine's own, e.g. the replica that rendered it
    owner: str | None = field(default=None, repr=False)  # who submitted it (a digest of the key), None: no keys
    warnings: tuple[str, ...] = ()  # what the engine changed or cut (e.g. a truncated prompt)
    reference_bytes: int = 0  # held in the table's reference memory until the task is rendered

    @property
    def active(self) -> bool:
        return self.status == protocol.Status.PENDING.value


@dataclass
class Statistics:
    """Counters for tests and benchmarks (served at ``/_flux/stats``)."""

    submits: int = 0
    rejected: int = 0
    polls: int = 0
    downloads: int = 0
    ready: int = 0
    failed: int = 0
    active: int = 0
    peak_active: int = 0
    webhooks_sent: int = 0
    webhooks_refused: int = 0
    charged: int = 0
    http_requests: Counter[str] = field(default_factory=Counter)  # by method and first path part
    requests_seen: Counter[str] = field(default_factory=Counter)  # tasks created per distinct request
    submitted_times: dict[str, float] = field(default_factory=dict)
    ready_times: dict[str, float] = field(default_factory=dict)


def encode(image: Image.Image, output_format: str) -> bytes:
    """Encode deterministically in the requested format."""
    buffer = io.BytesIO()
    if output_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    elif output_format == "webp":
        image.save(buffer, "WEBP", quality=90, method=2)
    else:
        image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


class TaskTable:
    """Accepts tasks up to ``max_active`` (``max_active_per_key`` per key), renders them on worker threads,
    hands out results."""

    def __init__(
        self,
        config: ServerConfig,
        engine: Engine,
        faults: FaultCounter | None = None,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.config = config
        self.resolver = resolver  # how webhook hosts are resolved before they are checked
        self.engine = engine
        self.faults = faults or FaultCounter(config.faults)
        self.tasks: dict[str, ServerTask] = {}
        self.tokens: dict[str, tuple[str, float]] = {}
        self.stats = Statistics()
        self.active_by_owner: Counter[str | None] = Counter()
        self.reference_memory = ReferenceMemory(config.reference_memory)
        self._background: set[asyncio.Task[None]] = set()

    def submit(
        self,
        model: str,
        job: RenderJob,
        *,
        output_format: str,
        reference_mp: Sequence[float] = (),
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        base_url: str = "",
        owner: str | None = None,
        warnings: tuple[str, ...] = (),
        reference_bytes: int = 0,
    ) -> ServerTask:
        """Accept a task and start rendering it; raises TooManyActiveTasks at either limit.

        ``reference_bytes`` (of the table's reference memory) are given back once the task is rendered.
        """
        self._forget_old()
        per_key = self.config.max_active_per_key
        if self.stats.active >= self.config.max_active:
            self.stats.rejected += 1
            raise TooManyActiveTasks(f"more than {self.config.max_active} active tasks")
        if self.active_by_owner[owner] >= per_key:
            self.stats.rejected += 1
            raise TooManyActiveTasks(f"more than {per_key} active tasks" + (" for this key" if owner else ""))
        output_mp = round(protocol.megapixels(job.width, job.height), 4)
        task = ServerTask(
            id=str(uuid.uuid4()),
            model=model,
            job=job,
            output_format=output_format,
            cost=protocol.estimate_cost(model, job.width, job.height, reference_mp),
            input_mp=round(sum(reference_mp), 4),
            output_mp=output_mp,
            submitted_at=time.monotonic(),
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            base_url=base_url,
            owner=owner,
            warnings=warnings,
            reference_bytes=reference_bytes,
        )
        self.tasks[task.id] = task
        self.stats.submits += 1
        self.stats.requests_seen[f"{model}|{job.prompt}|{job.seed}|{job.width}x{job.height}"] += 1
        self.stats.submitted_times[task.id] = time.time()
        self.stats.active += 1
        self.active_by_owner[owner] += 1
        self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        runner = asyncio.get_running_loop().create_task(self._run(task))
        self._background.add(runner)
        runner.add_done_callback(self._background.discard)
        return task

    async def _run(self, task: ServerTask) -> None:
        task.started_at = time.time()
        try:
            # With simulated latency, render halfway through it: the image is still ready on time, and
            # a burst of submits is answered without rendering competing with it for this process.
            await asyncio.sleep(self.config.latency / 2)
            loop = asyncio.get_running_loop()
            image = await loop.run_in_executor(getattr(self.engine, "executor", None), self.engine.render, task.job)
            task.details = dict(image.info.pop(DETAILS_KEY, None) or {})
            data = await asyncio.to_thread(encode, image, task.output_format)
            remaining = task.submitted_at + self.config.latency - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            outcome = self._injected_outcome()
            if outcome is None:
                self._mark_ready(task, data)
            else:
                task.status, task.error = outcome
                self.stats.failed += 1
        except Exception as exc:  # an engine failure ends the task with status Error
            task.status, task.error = protocol.Status.ERROR.value, f"{type(exc).__name__}: {exc}"
            self.stats.failed += 1
        finally:
            self._finished(task)
        if task.webhook_url:
            await self._send_webhook(task)

    def _finished(self, task: ServerTask) -> None:
        """The task no longer counts as active, and its reference images and their memory are let go."""
        self.stats.active -= 1
        self.active_by_owner[task.owner] -= 1
        if self.active_by_owner[task.owner] <= 0:
            del self.active_by_owner[task.owner]
        self.reference_memory.give_back(task.reference_bytes)
        task.reference_bytes, task.job = 0, replace(task.job, references=())

    def _mark_ready(self, task: ServerTask, data: bytes) -> None:
        task.image, task.token = data, secrets.token_urlsafe(24)
        task.status, task.ready_at = protocol.Status.READY.value, time.time()
        self.tokens[task.token] = (task.id, time.monotonic() + self.config.delivery_ttl)
        self.stats.ready += 1
        self.stats.charged += 1
        self.stats.ready_times[task.id] = task.ready_at

    def _injected_outcome(self) -> tuple[str, str] | None:
        """A failed or moderated ending drawn from the fault plan, if any (never charged)."""
        number = self.faults.next_number("task")
        for name, status in (
            ("task_error", protocol.Status.ERROR),
            ("request_moderated", protocol.Status.REQUEST_MODERATED),
            ("content_moderated", protocol.Status.CONTENT_MODERATED),
        ):
            if self.faults.fires(name, number):
                return status.value, f"injected {name}"
        return None

    def get(self, task_id: str, owner: str | None = None) -> ServerTask | None:
        """The task, if it exists and belongs to ``owner`` (another's task is as unknown as a missing one)."""
        self.stats.polls += 1
        task = self.tasks.get(task_id)
        return task if task is not None and task.owner == owner else None

    def progress(self, task: ServerTask) -> float | None:
        if not task.active:
            return 1.0 if task.status == protocol.Status.READY.value else None
        if self.config.latency <= 0:
            return None
        return min(0.99, (time.monotonic() - task.submitted_at) / self.config.latency)

    def delivery(self, token: str) -> ServerTask | None:
        """The task behind a delivery token, while the token is valid."""
        entry = self.tokens.get(token)
        if entry is None:
            return None
        task_id, expires = entry
        if time.monotonic() > expires:
            self.tokens.pop(token, None)
            return None
        self.stats.downloads += 1
        return self.tasks.get(task_id)

    def answer(self, task: ServerTask, base_url: str) -> dict[str, Any]:
        """The get_result answer for a task, BFL-shaped."""
        result = None
        if task.status == protocol.Status.READY.value and task.token:
            result = {
                "sample": f"{base_url}/delivery/{task.token}/sample.{task.output_format}",
                "prompt": task.job.prompt,
                "seed": task.job.seed,
                "width": task.job.width,
                "height": task.job.height,
                "start_time": task.started_at,
                "end_time": task.ready_at,
                "duration": (task.ready_at or 0) - (task.started_at or 0),
            }
        details: dict[str, Any] = {"engine": self.engine.name, **task.details}
        if task.error:
            details["error"] = task.error
        if task.job.extra:
            details["settings"] = dict(task.job.extra)  # e.g. flex's steps, guidance, prompt_upsampling
        if task.warnings:
            details["warnings"] = list(task.warnings)
        return {
            "id": task.id,
            "status": task.status,
            "result": result,
            "progress": self.progress(task),
            "details": details,
            "preview": None,
        }

    async def _send_webhook(self, task: ServerTask) -> None:
        """POST the finished task to its webhook, at a checked address, never following redirects."""
        body = json.dumps(self.answer(task, task.base_url)).encode()
        headers = {"content-type": "application/json"}
        if task.webhook_secret:
            headers[SIGNATURE_HEADER] = sign_webhook(body, task.webhook_secret)
        try:
            async with asyncio.timeout(10.0):
                target = await self.config.outbound_policy().check(task.webhook_url or "", self.resolver)
                async with httpx.AsyncClient(timeout=10.0, follow_redirects=False, trust_env=False) as client:
                    await client.send(checked_request(client, "POST", target, content=body, headers=headers))
            self.stats.webhooks_sent += 1
        except OutboundRefused as exc:
            self.stats.webhooks_refused += 1
            logger.info("webhook of task %s refused: %s", task.id, exc)
        except (httpx.HTTPError, TimeoutError):
            pass  # a receiver that is down does not fail the task

    def _forget_old(self) -> None:
        now = time.monotonic()
        expired = [t.id for t in self.tasks.values() if not t.active and now - t.submitted_at > self.config.task_ttl]
        for task_id in expired:
            task = self.tasks.pop(task_id)
            if task.token:
                self.tokens.pop(task.token, None)
            self.stats.ready_times.pop(task_id, None)
            self.stats.submitted_times.pop(task_id, None)

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "submits": stats.submits,
            "rejected": stats.rejected,
            "polls": stats.polls,
            "downloads": stats.downloads,
            "ready": stats.ready,
            "failed": stats.failed,
            "active": stats.active,
            "peak_active": stats.peak_active,
            "webhooks_sent": stats.webhooks_sent,
            "webhooks_refused": stats.webhooks_refused,
            "charged": stats.charged,
            "reference_bytes": self.reference_memory.held,
            "most_tasks_for_one_request": max(stats.requests_seen.values(), default=0),
            "requests_seen": dict(stats.requests_seen),
            "faults_fired": dict(self.faults.fired),
            "requests_by_route": dict(self.faults.numbers),
            "http_requests": dict(stats.http_requests),
            "submitted_times": dict(stats.submitted_times),
            "ready_times": dict(stats.ready_times),
        }
