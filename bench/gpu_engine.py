"""FLUX.2 [klein] 4B on a GPU at 1024x1024: cold and warm, eager and compiled, the prompt cache, and flux_nb's overhead.

Needs a CUDA GPU, the [local] extra and the weights (``huggingface-cli download
black-forest-labs/FLUX.2-klein-4B``); anywhere else, or when the weights cannot be loaded, it says
why it is skipping and exits 0. One run prints, for the eager engine and then the compiled one,
cold (load, plus compile warm-up; then the first image) and warm figures (s/image and images/s),
the prompt cache's effect on a seed sweep, and the pipeline called directly beside the same
through flux_nb's server and client.

With two GPUs and the [ray] extra it also measures images per second through one front with 1 and
with 2 Ray Serve replicas of the engine (one GPU each), side by side.

    python -m bench.gpu_engine [--model ID_OR_FOLDER] [--images 8] [--no-compile]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SIZE = 1024


def skip_reason() -> str | None:
    if not all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers")):
        return "the [local] extra is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    return None


def direct(engine: Any, count: int) -> list[float]:
    """Seconds per image calling the pipeline directly, one after another."""
    import torch

    steps, guidance = engine.defaults(engine.pipeline)
    times = []
    for seed in range(count):
        started = time.perf_counter()
        engine.pipeline(
            prompt="a lighthouse on a cliff at dusk",
            height=SIZE,
            width=SIZE,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator("cpu").manual_seed(seed),
        )
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return times


def load(model: str, compile: bool) -> tuple[Any, str | None]:
    """The engine (None and the reason when the weights cannot be loaded)."""
    from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions, EngineUnavailable

    try:
        return DiffusersEngine(DiffusersOptions(model=model, compile=compile)), None
    except EngineUnavailable as exc:
        return None, str(exc)


def cold_and_warm(engine: Any, label: str, count: int) -> dict[str, float]:
    """Load (with compile warm-up) seconds, the first image's seconds, then warm seconds per image."""
    first = direct(engine, 1)[0]
    warm = statistics.median(direct(engine, count))
    print(
        f"{label:9} cold: load {engine.load_seconds:.1f} s, first image {first:.3f} s; "
        f"warm: {warm:.3f} s/image = {1 / warm:.2f} images/s"
    )
    return {"load_s": engine.load_seconds, "first_image_s": first, "s_per_image": warm, "images_per_s": 1 / warm}


def through_flux_nb(engine: Any, count: int) -> tuple[list[float], float]:
    """Seconds per single image, and wall seconds for a sweep of ``count``, through server and client."""
    from flux_nb.http.client import AsyncFluxClient
    from flux_nb.protocol import FluxRequest
    from flux_nb.server import EmbeddedServer, ServerConfig

    async def run(url: str) -> tuple[list[float], float]:
        async with AsyncFluxClient(None, url) as client:
            singles = []
            for seed in range(count):
                started = time.perf_counter()
                await client.generate(
                    FluxRequest("a lighthouse on a cliff at dusk", seed=seed, width=SIZE, height=SIZE)
                )
                singles.append(time.perf_counter() - started)
            started = time.perf_counter()
            await asyncio.gather(
                *(client.generate(FluxRequest("a sweep", seed=s, width=SIZE, height=SIZE)) for s in range(count))
            )
            return singles, time.perf_counter() - started

    with EmbeddedServer(ServerConfig(engine="diffusers"), engine=engine) as server:
        return asyncio.run(run(server.url))


def ray_replicas(args: argparse.Namespace) -> dict[str, Any]:
    """Images per second with 1 and 2 Ray Serve replicas of the diffusers engine, one GPU each."""
    import torch

    if importlib.util.find_spec("ray") is None:
        print("replicas on Ray: skipping: the [ray] extra is not installed")
        return {}
    if torch.cuda.device_count() < 2:
        print(f"replicas on Ray: skipping: {torch.cuda.device_count()} GPU (2 needed to compare 1 and 2 replicas)")
        return {}
    from bench.ray_replicas import replica_throughput, report
    from flux_nb.server import ServerConfig

    config = ServerConfig(engine="diffusers", engine_options={"model": args.model, "compile": args.compile})
    results = replica_throughput(config, [1, 2], args.images, SIZE, gpus_per_replica=1, num_cpus_per_replica=1)
    report(results, [1, 2])
    return {"ray_" + key: value for key, value in results.items()}


def free_gpu_memory() -> None:
    """Give back the memory of an engine no longer referenced (the next one loads its own copy)."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="black-forest-labs/FLUX.2-klein-4B")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the compiled engine")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("gpu_results.json"))
    args = parser.parse_args(argv)
    reason = skip_reason()
    engine = None
    if reason is None:
        engine, reason = load(args.model, compile=False)
    if engine is None:
        print(f"bench.gpu_engine: skipping: {reason}")
        return 0
    import torch

    from bench.prompt_cache import compare, report

    print(f"FLUX.2 [klein] {args.model} at {SIZE}x{SIZE} on {torch.cuda.get_device_name()}, {args.images} images")
    results: dict[str, Any] = {"size": SIZE, "model": args.model, "eager": cold_and_warm(engine, "eager", args.images)}
    results["prompt_cache"] = compare(engine, args.images, SIZE)
    print(report(results["prompt_cache"]))
    singles, sweep_wall = through_flux_nb(engine, args.images)
    direct_s = results["eager"]["s_per_image"]
    results["flux_nb_s_per_image"] = statistics.median(singles)
    results["flux_nb_sweep_images_per_s"] = args.images / sweep_wall
    results["single_overhead_ratio"] = results["flux_nb_s_per_image"] / direct_s
    print(
        f"through flux_nb: {results['flux_nb_s_per_image']:.3f} s/image "
        f"({results['single_overhead_ratio']:.3f}x direct, goal <= 1.05x); "
        f"sweep {results['flux_nb_sweep_images_per_s']:.2f} images/s (direct {1 / direct_s:.2f})"
    )
    engine = None
    free_gpu_memory()
    if args.compile:
        compiled, reason = load(args.model, compile=True)
        if compiled is None:
            print(f"compiled: skipping: {reason}")
        else:
            results["compiled"] = cold_and_warm(compiled, "compiled", args.images)
            compiled = None
            free_gpu_memory()
    results.update(ray_replicas(args))
    args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
