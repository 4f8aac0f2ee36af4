"""How soon a finished task is in hand, and what the client adds on top of the server's own time."""

from __future__ import annotations

import asyncio
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from typing import Any

from bench.common import server_process, server_stats, summary
from flux_nb import Flux
from flux_nb.core.events import ignore
from flux_nb.http.client import AsyncFluxClient
from flux_nb.protocol import FluxRequest


async def _notice(url: str, count: int) -> list[tuple[str, float, int]]:
    async with AsyncFluxClient(None, url) as client:
        results = []
        for seed in range(count):
            result = await client.generate(FluxRequest("notice", seed=seed, width=512, height=512))
            results.append((result.task.id, result.finished_at, result.polls))
        return results


def notice_delay(latency: float, count: int) -> dict[str, Any]:
    """Delay between the server marking a task Ready and flux_nb holding the decoded image."""
    with server_process(latency=latency) as url:
        runs = asyncio.run(_notice(url, count))
        ready = server_stats(url)["ready_times"]
    delays = [finished - ready[task_id] for task_id, finished, _ in runs]
    polls = [p for _, _, p in runs]
    stats = summary(delays)
    return {
        "latency_s": latency,
        "tasks": count,
        "median_delay_s": stats["median"],
        "p95_delay_s": stats["p95"],
        "median_delay_fraction": stats["median"] / latency,
        "polls_per_task": statistics.fmean(polls),
    }


def profile_loop(flux: Flux, count: int) -> str:
    """cProfile of flux_nb's own loop thread (where the client works) over ``count`` requests."""
    profiler = cProfile.Profile()

    async def profiled() -> None:
        profiler.enable()
        try:
            batch = [flux.prepare("profile", seed=5000 + i, width=256, height=256) for i in range(count)]
            for prepared in batch:
                await flux._ready_executor().run_batch([prepared], ignore)
        finally:
            profiler.disable()

    flux._runner.run(profiled())
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    return text.getvalue()


def overhead(count: int, sweep_count: int) -> dict[str, Any]:
    """End-to-end time per image minus the server's own time, with --latency 0."""
    with server_process(latency=0.0) as url, tempfile.TemporaryDirectory() as history:
        flux = Flux(endpoint=url, history_dir=history, cache=False)
        flux.generate("warm up", seed=0, width=256, height=256)
        for seed in range(5):  # let the client learn how long this server takes
            flux.generate("warm up", seed=seed + 1, width=256, height=256)
        singles = []
        for seed in range(10, count + 10):
            started = time.time()
            result = flux.generate("overhead", seed=seed, width=256, height=256)
            singles.append((result.task_id, started, time.time()))
        profile = profile_loop(flux, count)
        stats = server_stats(url)
        server_own = {t: stats["ready_times"][t] - stats["submitted_times"][t] for t, _, _ in singles}
        single_overhead = [(f - s) - server_own[t] for t, s, f in singles]
        started = time.time()
        sweep = flux.sweep("overhead sweep", seed=list(range(1000, 1000 + sweep_count)), width=256, height=256)
        wall = time.time() - started
        stats = server_stats(url)
        ids = [r.task_id for r in sweep]
        server_span = max(stats["ready_times"][i] for i in ids) - min(stats["submitted_times"][i] for i in ids)
        flux.close()
    return {
        "single_overhead_ms": statistics.median(single_overhead) * 1000,
        "single_server_ms": statistics.median(server_own.values()) * 1000,
        "sweep_images": sweep_count,
        "sweep_wall_s": wall,
        "sweep_images_per_s": sweep_count / wall,
        "sweep_overhead_per_image_ms": max(0.0, wall - server_span) / sweep_count * 1000,
        "profile": profile,
    }


def run(smoke: bool = False) -> dict[str, Any]:
    plan = [(0.1, 3)] if smoke else [(0.3, 12), (1.0, 10), (3.0, 5)]
    return {
        "notice": [notice_delay(latency, count) for latency, count in plan],
        "overhead": overhead(3 if smoke else 20, 10 if smoke else 100),
    }


if __name__ == "__main__":
    out = run(smoke="--smoke" in sys.argv)
    print(out["overhead"].pop("profile"))
    print(out)
