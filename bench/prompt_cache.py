"""The prompt cache's effect on a seed sweep: one prompt, N seeds, with and without it, side by side.

Runs the tiny FLUX.2 [klein] built offline (CPU, about a minute); ``bench.gpu_engine`` runs the same
comparison on klein-4B at 1024x1024. Needs the [local] extra; says it is skipping without it.

    python -m bench.prompt_cache [--images 8] [--side 64]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from typing import Any

PROMPT = "a lighthouse on a cliff at dusk, waves breaking below, warm light in the lantern room"


def sweep(engine: Any, images: int, side: int, *, cache: int) -> dict[str, float]:
    """Seconds per image of a ``images``-seed sweep over one prompt, keeping ``cache`` encodings (0: none)."""
    from flux_nb.server.engines import RenderJob
    from flux_nb.server.engines.prompt_cache import PromptCache

    torch = engine._torch
    engine.prompts = PromptCache(cache)
    times = []
    for seed in range(images):
        started = time.perf_counter()
        engine.render(RenderJob(PROMPT, seed, side, side, "flux-2-klein-4b"))
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    encodes = engine.prompts.misses if cache else images
    return {"s_per_image": sum(times) / images, "median_s": statistics.median(times), "encodes": encodes}


def compare(engine: Any, images: int, side: int) -> dict[str, Any]:
    """The sweep without the cache, then with it (cold: its first image encodes), on the same engine."""
    sweep(engine, 1, side, cache=0)  # warm up the allocator and kernels, outside both figures
    without = sweep(engine, images, side, cache=0)
    with_cache = sweep(engine, images, side, cache=32)
    return {
        "images": images,
        "side": side,
        "without_s_per_image": without["s_per_image"],
        "with_s_per_image": with_cache["s_per_image"],
        "speedup": without["s_per_image"] / with_cache["s_per_image"],
        "encodes_without": without["encodes"],
        "encodes_with": with_cache["encodes"],
    }


def report(result: dict[str, Any]) -> str:
    return (
        f"prompt cache, {result['images']}-seed sweep at {result['side']}x{result['side']}: "
        f"{result['with_s_per_image']:.3f} s/image with, {result['without_s_per_image']:.3f} without "
        f"({result['speedup']:.2f}x); text encoder runs {result['encodes_with']} vs {result['encodes_without']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--side", type=int, default=64)
    args = parser.parse_args(argv)
    if not all(importlib.util.find_spec(m) for m in ("torch", "diffusers", "transformers")):
        print("bench.prompt_cache: skipping: the [local] extra is not installed")
        return 0
    from flux_nb.server.engines.diffusers import DiffusersEngine, DiffusersOptions
    from tests.tiny_klein import tiny_pipeline

    engine = DiffusersEngine(DiffusersOptions(model="tiny FLUX.2 [klein]", device="cpu"), pipeline=tiny_pipeline())
    print(report(compare(engine, args.images, args.side)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
