"""Sweep throughput: 48 images against a 24-task limit, flux_nb beside two common ways of calling the API."""

from __future__ import annotations

import asyncio
import math
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from bench import official_client
from bench.common import server_process, server_stats
from flux_nb import Flux

SIZE = 512


def run_flux_nb(url: str, count: int, repeats: int = 3) -> tuple[float, float]:
    """Seconds for the first sweep of a new session (it also opens the history and the client),
    and the median of ``repeats`` later sweeps in the same session, as a notebook runs them."""
    times = []
    with tempfile.TemporaryDirectory() as history:
        flux = Flux(endpoint=url, history_dir=history, cache=False)
        for repeat in range(1 + repeats):
            started = time.perf_counter()
            seeds = list(range(repeat * count, (repeat + 1) * count))
            sweep = flux.sweep("throughput", seed=seeds, width=SIZE, height=SIZE)
            times.append(time.perf_counter() - started)
            assert not sweep.failed, sweep.failed[0].error_message
        flux.close()
    return times[0], statistics.median(times[1:])


async def _plain_one(client: httpx.AsyncClient, url: str, seed: int) -> bytes:
    body = {"prompt": "throughput", "seed": seed, "width": SIZE, "height": SIZE}
    while True:
        answer = await client.post(f"{url}/v1/flux-2-klein-4b", json=body)
        if answer.status_code != 429:
            break
        await asyncio.sleep(1.0)
    polling_url = answer.json()["polling_url"]
    while True:
        await asyncio.sleep(1.0)
        result = (await client.get(polling_url)).json()
        if result["status"] == "Ready":
            return (await client.get(result["result"]["sample"])).content


async def _plain(url: str, count: int) -> float:
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=100)) as client:
        started = time.perf_counter()
        images = await asyncio.gather(*(_plain_one(client, url, seed) for seed in range(count)))
        took = time.perf_counter() - started
    assert all(images)
    return took


def run_plain_httpx(url: str, count: int) -> float:
    """asyncio + httpx, polling every second, as BFL's published examples do."""
    return asyncio.run(_plain(url, count))


BLACKFOREST_LOOP = (
    official_client.PREAMBLE
    + """
url, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
client = BFLClient(api_key="bench", base_url=url)
started = time.perf_counter()
for seed in range(count):
    result = client.generate("flux-2-klein-4b", {"prompt": "throughput", "seed": seed, "width": size, "height": size},
                             ClientConfig(sync=True, timeout=120))
    assert requests.get(result.result["sample"], timeout=60).content
print(time.perf_counter() - started)
"""
)


def run_blackforest(url: str, count: int) -> float | None:
    python = official_client.python()
    if python is None:
        return None
    out = subprocess.run(
        [str(python), "-c", BLACKFOREST_LOOP, url, str(count), str(SIZE)], capture_output=True, text=True, check=True
    ).stdout
    return float(out.strip().splitlines()[-1])


def run(smoke: bool = False) -> dict[str, Any]:
    count, latency, limit = (8, 0.2, 4) if smoke else (48, 1.0, 24)
    floor = math.ceil(count / limit) * latency
    results: dict[str, Any] = {"images": count, "latency_s": latency, "max_active": limit, "floor_s": floor}
    with server_process(latency=latency, max_active=limit) as url:
        results["flux_nb_first_s"], results["flux_nb_s"] = run_flux_nb(url, count, repeats=1 if smoke else 3)
        results["flux_nb_peak_active"] = server_stats(url)["peak_active"]
        results["plain_httpx_s"] = statistics.median(run_plain_httpx(url, count) for _ in range(1 if smoke else 3))
        if not smoke:
            results["blackforest_s"] = run_blackforest(url, count)
    results["flux_nb_vs_floor"] = results["flux_nb_s"] / floor
    results["flux_nb_first_vs_floor"] = results["flux_nb_first_s"] / floor
    results["speedup_vs_plain_httpx"] = results["plain_httpx_s"] / results["flux_nb_s"]
    if results.get("blackforest_s"):
        results["speedup_vs_blackforest"] = results["blackforest_s"] / results["flux_nb_s"]
    return results


if __name__ == "__main__":
    print(run(smoke="--smoke" in sys.argv))
