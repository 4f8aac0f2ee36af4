"""Replicas on Ray Serve: images per second through one protocol front with 1 and with 2 engine replicas.

The preview engine with simulated latency stands in for a GPU: each replica is busy ``--latency``
seconds per image, so two replicas should render close to twice as many images per second.
Needs the [ray] extra; without it this says it is skipping and exits 0.

    python -m bench.ray_replicas [--images 32] [--latency 0.25] [--replicas 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

from flux_nb.http.client import AsyncFluxClient
from flux_nb.protocol import FluxRequest
from flux_nb.server import EmbeddedServer, ServerConfig


async def sweep_seconds(url: str, images: int, size: int, warm: int = 1) -> float:
    """Wall seconds for a sweep of ``images`` through the front, after ``warm`` images to warm the replicas."""
    async with AsyncFluxClient(None, url, task_timeout=3600) as client:
        await asyncio.gather(
            *(client.generate(FluxRequest("warm up", seed=s, width=size, height=size)) for s in range(warm))
        )
        started = time.perf_counter()
        await asyncio.gather(
            *(client.generate(FluxRequest("replicas", seed=s, width=size, height=size)) for s in range(images))
        )
        return time.perf_counter() - started


def replica_throughput(
    config: ServerConfig, replica_counts: list[int], images: int, size: int, **ray_options: Any
) -> dict[str, Any]:
    """Images per second of a sweep through one front, for each replica count, on one Ray instance.

    ``ray_options`` go to ``serve_with_ray`` (e.g. ``gpus_per_replica``, ``num_cpus_per_replica``).
    """
    from flux_nb.server.ray_serve import connect, disconnect, serve_with_ray

    most = max(replica_counts)
    cpus, gpus = ray_options.get("num_cpus_per_replica", 1.0), ray_options.get("gpus_per_replica") or 0.0
    started, connected, where = connect(ray_options.pop("ray_address", None), most * cpus, most * gpus)
    print(f"  Ray: {where}")
    results: dict[str, Any] = {"images": images, "size": size, "engine": config.engine, "latency_s": config.latency}
    try:
        for count in replica_counts:
            with serve_with_ray(config, replicas=count, app_name=f"bench-{count}", **ray_options) as serving:
                print(f"  {serving.note}")
                with EmbeddedServer(serving.config, app=serving.app()) as front:
                    wall = asyncio.run(sweep_seconds(front.url, images, size, warm=2 * count))
            results[f"{count}_replicas_images_per_s"] = images / wall
    finally:
        disconnect(started, connected)
    first, last = replica_counts[0], replica_counts[-1]
    results["speedup"] = results[f"{last}_replicas_images_per_s"] / results[f"{first}_replicas_images_per_s"]
    return results


def report(results: dict[str, Any], replica_counts: list[int]) -> None:
    cells = "   ".join(
        f"{n} replica{'s' if n > 1 else ''}: {results[f'{n}_replicas_images_per_s']:.2f}" for n in replica_counts
    )
    first, last = replica_counts[0], replica_counts[-1]
    print(f"images/s   {cells}   ratio {last} vs {first}: {results['speedup']:.2f}x (ideal {last / first:g}x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.25, help="seconds each replica is busy per image")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("ray") is None:
        print("bench.ray_replicas: skipping: the [ray] extra is not installed")
        return 0
    config = ServerConfig(latency=args.latency)
    results = replica_throughput(config, args.replicas, args.images, args.size, num_cpus_per_replica=0.5)
    report(results, args.replicas)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
