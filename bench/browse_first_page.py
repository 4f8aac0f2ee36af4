"""The history browser's first page at 100,000 rows: ``flux.browse()`` built and drawn, cold and warm.

``python -m bench.browse_first_page [rows]``: a history of ``rows`` rows made in SQL (``bench.history_scale``),
the newest page's 24 images written as real 1024x1024 JPEGs; then the browser is built three times in fresh
sessions: the first makes the thumbnails, the next ones read them back. A filtered first page and the
last page are timed too. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.history_scale import build
from flux_nb import Flux
from flux_nb.notebook.browse import PAGE_SIZE


def _images(folder: Path, paths: list[str]) -> None:
    """Real JPEGs at the paths the rows name (the built history names files it does not hold)."""
    rng = np.random.default_rng(0)
    for relative in paths:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buffer.getvalue())


def timed(label: str, work: object) -> float:
    started = time.perf_counter()
    work()  # type: ignore[operator]
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds * 1000:.0f} ms")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=int, nargs="?", default=100_000)
    rows = parser.parse_args().rows
    with tempfile.TemporaryDirectory() as folder:
        store = build(folder, rows)
        newest = store.tail(PAGE_SIZE)
        _images(Path(folder), [str(Path(p).relative_to(folder)) for p in newest["image_path"]])
        store.close()
        print(f"history: {rows:,} rows; first page: {PAGE_SIZE} thumbnails of 1024x1024 JPEGs")
        for attempt in ("cold (thumbnails made)", "warm (thumbnails kept)", "warm again"):
            session = Flux(history_dir=folder)
            timed(f"first page, {attempt}", lambda s=session: s.browse().close())
            session.close()
        session = Flux(history_dir=folder)
        browser = session.browse()
        timed("filter experiment=exp-7 (1,000 rows)", lambda: setattr(browser.experiment, "value", "exp-7"))
        browser.experiment.value = "(any)"
        timed("filter prompt text 'prompt 42'", lambda: setattr(browser.text, "value", "prompt 42"))
        browser.text.value = ""
        timed("next page (cards reused)", lambda: browser.next.click())
        timed(f"last page (page {rows // PAGE_SIZE + 1:,})", lambda: browser.go(rows // PAGE_SIZE))
        browser.close()
        session.close()


if __name__ == "__main__":
    main()
