"""Small realistic experiments written straight into a history folder (no server, no network).

Prompts x seeds, each image drawn by Pillow, a reference image on some records, a failed one,
and a mix of billed (``bfl``) and local backends: the data export, reports and MLflow read.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flux_nb.history.store import HistoryStore, RecordStatus
from flux_nb.images import prepare_image
from flux_nb.protocol import FluxRequest

PROMPTS = ("a red fox in fresh snow", "a lighthouse at dusk, long exposure", "macro shot of a dew-covered leaf")


def picture(seed: int, size: tuple[int, int], fmt: str = "png") -> bytes:
    """A picture that differs by seed: a gradient, a few shapes and a little noise."""
    rng = np.random.default_rng(seed)
    width, height = size
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    base = np.broadcast_to(ramp, (height, width, 3)) * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(4):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(4, max(5, width // 4)))
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    buffer = io.BytesIO()
    image.save(buffer, {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt], **({"quality": 90} if fmt != "png" else {}))
    return buffer.getvalue()


def make_experiment(
    root: Path,
    count: int = 12,
    *,
    size: tuple[int, int] = (64, 48),
    fmt: str = "png",
    failed: int = 1,
) -> HistoryStore:
    """A history at ``root`` with ``count`` records over ``PROMPTS`` x seeds; the last ``failed`` fail.

    Every third record has a reference image; even records ran on the BFL API (billed), odd ones locally.
    """
    store = HistoryStore(root)
    reference = prepare_image(Image.fromarray(np.full((16, 16, 3), 90, np.uint8), "RGB"))
    store.save_input(reference)
    for index in range(count):
        seed = 100 + index // len(PROMPTS)
        request = FluxRequest(
            PROMPTS[index % len(PROMPTS)], seed=seed, width=size[0], height=size[1], output_format=fmt
        )
        billed = index % 2 == 0
        hashes = [reference.sha256] if index % 3 == 0 else []
        record_id = store.create(
            request,
            backend="bfl" if billed else "local:preview",
            endpoint="https://api.bfl.ai/v1/flux-2-klein-4b" if billed else "http://127.0.0.1:8765/v1/flux-2-klein-4b",
            notebook="/home/someone/experiments/fox.ipynb",
            input_hashes=hashes,
            estimated_cost=1.4,
            tag="sweep-1",
        )
        store.mark_submitted(
            record_id,
            task_id=f"task-{index}",
            polling_url=f"http://127.0.0.1:8765/v1/get_result?id=task-{index}",
            cost=1.4 if billed else 0.0,
            input_mp=0.0,
            output_mp=size[0] * size[1] / 2**20,
            submitted_at=1_800_000_000.0 + index,
        )
        if index >= count - failed:
            store.mark_failed(
                record_id, status=RecordStatus.FAILED, error_kind="TaskFailedError", error="boom", finished_at=2e9
            )
            continue
        store.mark_ready(
            record_id,
            image=picture(index, size, fmt),
            ext=fmt,
            width=size[0],
            height=size[1],
            ready_at=1_800_000_001.0 + index,
            finished_at=1_800_000_001.5 + index,
            duration_s=1.5,
            engine="bfl" if billed else "preview",
            result_seed=seed,
        )
    return store
