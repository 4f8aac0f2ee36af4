"""Scale: memory over a 1,000-image sweep, a 100,000-row history, a 64-image grid, notebook size,
and the history at 100,000 and 1,000,000 rows beside pandas (``bench.history_scale``)."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nbformat
import pandas as pd
from nbformat.v4 import new_code_cell, new_notebook, new_output

from bench import commands_scale, history_scale
from bench.common import server_process
from flux_nb.grids import grid
from flux_nb.history.store import COLUMNS, HistoryStore
from flux_nb.server.engines import RenderJob, get_engine

ROOT = Path(__file__).resolve().parent.parent

SWEEP_MEMORY = """
import sys, tempfile
from bench.common import rss_mb, peak_rss_mb
from flux_nb import Flux
flux = Flux(endpoint=sys.argv[1], history_dir=tempfile.mkdtemp(), cache=False)
flux.sweep("warm up", seed=[0, 1], width=256, height=256)
base = rss_mb()
sweep = flux.sweep("memory", seed=list(range(2, 2 + int(sys.argv[2]))), width=512, height=512)
assert not sweep.failed
print(base, peak_rss_mb(), rss_mb())
"""


def sweep_memory(count: int) -> dict[str, Any]:
    """Peak RSS growth of the notebook-side process over a sweep (images go to disk, not memory)."""
    with server_process() as url:
        out = subprocess.run(
            [sys.executable, "-c", SWEEP_MEMORY, url, str(count)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        ).stdout.split()
    base, peak, after = map(float, out)
    return {"images": count, "rss_before_mb": base, "peak_growth_mb": peak - base, "growth_after_mb": after - base}


def history_frame(rows: int) -> dict[str, Any]:
    """Seconds to turn a history of ``rows`` records into a DataFrame."""
    with tempfile.TemporaryDirectory() as folder:
        store = HistoryStore(folder)
        now = time.time()
        names = list(COLUMNS)
        template = {name: None for name in names}
        template.update(
            model="flux-2-klein-4b",
            status="ready",
            input_hashes="[]",
            backend="bfl",
            width=1024,
            height=1024,
            safety_tolerance=2,
            output_format="jpeg",
            estimated_cost=1.4,
            cost=1.4,
            duration_s=1.2,
            out_width=1024,
            out_height=1024,
            image_path="images/ab/x.jpeg",
        )
        records = [
            tuple(
                {
                    **template,
                    "record_id": f"{i:012x}",
                    "created_at": now + i,
                    "updated_at": now + i,
                    "prompt": f"prompt {i % 97}",
                    "seed": i,
                }[n]
                for n in names
            )
            for i in range(rows)
        ]
        with sqlite3.connect(store.path) as db:
            db.executemany(f"INSERT INTO records ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})", records)
        started = time.perf_counter()
        frame = store.to_frame()
        took = time.perf_counter() - started
    assert len(frame) == rows
    return {"rows": rows, "to_frame_s": took}


def grid_time(count: int, side: int) -> dict[str, Any]:
    """Seconds to draw a labelled grid of ``count`` images of side x side (JPEG on disk)."""
    engine = get_engine("preview")
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for i in range(count):
            path = Path(folder) / f"{i}.jpeg"
            engine.render(RenderJob(f"prompt {i // 8}", i % 8, side, side, "m")).save(path, quality=90)
            rows.append(
                {
                    "record_id": str(i),
                    "prompt": f"prompt {i // 8}",
                    "seed": i % 8,
                    "status": "ready",
                    "image_path": str(path),
                    "error": None,
                }
            )
        frame = pd.DataFrame(rows)
        started = time.perf_counter()
        page = grid(frame, x="seed", y="prompt")
        took = time.perf_counter() - started
    return {"images": count, "side": side, "grid_s": took, "grid_size": list(page.image.size)}


def notebook_size(count: int, side: int) -> dict[str, Any]:
    """Saved size of a notebook showing ``count`` results, beside the same with full PNG outputs."""
    sys.path.insert(0, str(ROOT / "notebooks"))
    from run import run_notebook  # notebooks/run.py

    cells = [new_code_cell("%load_ext flux_nb")]
    cells += [new_code_cell(f"%%flux --seed {i} --size {side}x{side}\na harbour at dawn") for i in range(count)]
    book = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "results.ipynb"
        nbformat.write(book, source)
        executed, _ = run_notebook(source, Path(folder) / "out")
        ours = executed.stat().st_size
        from PIL import Image

        plain_cells = []
        for path in sorted((Path(folder) / "out" / ".flux" / "images").rglob("*.jpeg")):
            buffer = io.BytesIO()
            Image.open(path).save(buffer, "PNG")
            output = new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode()})
            plain_cells.append(new_code_cell("display(Image.open(path))", outputs=[output]))
        plain = len(json.dumps(nbformat.from_dict(new_notebook(cells=plain_cells))).encode())
    return {"images": count, "side": side, "flux_nb_mb": ours / 1e6, "full_png_mb": plain / 1e6, "ratio": plain / ours}


def run(smoke: bool = False) -> dict[str, Any]:
    return {
        "sweep_memory": sweep_memory(20 if smoke else 1000),
        "history_frame": history_frame(2_000 if smoke else 100_000),
        "history_scale": history_scale.run(smoke),
        "commands": commands_scale.run(smoke),
        "grid": grid_time(8 if smoke else 64, 128 if smoke else 512),
        "notebook": notebook_size(3 if smoke else 100, 256 if smoke else 1024),
    }


if __name__ == "__main__":
    print(run(smoke="--smoke" in sys.argv))
