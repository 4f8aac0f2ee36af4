"""The preview engine's own speed: render and encode, per image size."""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from flux_nb.server.engines import RenderJob, get_engine
from flux_nb.server.task_table import encode


def time_size(side: int, repeats: int) -> dict[str, Any]:
    engine = get_engine("preview")
    renders, encodes = [], []
    for i in range(repeats):
        started = time.perf_counter()
        image = engine.render(RenderJob("a lighthouse on a cliff at dusk", i, side, side, "flux-2-klein-4b"))
        renders.append(time.perf_counter() - started)
        started = time.perf_counter()
        encode(image, "jpeg")
        encodes.append(time.perf_counter() - started)
    return {"side": side, "render_ms": statistics.median(renders) * 1000, "jpeg_ms": statistics.median(encodes) * 1000}


def run(smoke: bool = False) -> dict[str, Any]:
    sides = [256] if smoke else [512, 1024, 2048]
    return {"sizes": [time_size(side, 3 if smoke else 15) for side in sides]}


if __name__ == "__main__":
    print(run(smoke="--smoke" in sys.argv))
