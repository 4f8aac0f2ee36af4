"""The history at scale: frames, refreshes, filters and sums over 100,000 and 1,000,000 rows, beside pandas.

``python -m bench.history_scale [rows ...]``; ``bench.scale`` runs it inside the scale suite.
Every figure is measured in one run on one database per size, so ratios compare like with like.
"""

from __future__ import annotations

import gc
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from flux_nb.history.store import HistoryStore
from flux_nb.protocol import FluxRequest

ROOT = Path(__file__).resolve().parent.parent

# Rows made in SQL (no Python loop): 3 models, 2 backends, 2 notebooks, 100 experiments, 97 prompts,
# one row in 10 failed, one in 50 a use of an earlier image.
FILL = """
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :rows)
INSERT INTO records (record_id, created_at, updated_at, notebook, backend, endpoint, model, prompt, seed, width,
    height, safety_tolerance, output_format, input_hashes, request_key, tag, owner, status, task_id, polling_url,
    estimated_cost, cost, output_mp, submitted_at, ready_at, finished_at, duration_s, image_path, image_sha256,
    out_width, out_height, engine, result_seed, experiment, cached_from, seq)
SELECT printf('%012x', i), :now + i, :now + i, CASE i % 2 WHEN 0 THEN 'a.ipynb' ELSE 'b.ipynb' END,
    CASE i % 3 WHEN 0 THEN 'bfl' ELSE 'local:preview' END, 'http://127.0.0.1:1',
    CASE i % 3 WHEN 0 THEN 'flux-2-pro' WHEN 1 THEN 'flux-2-flex' ELSE 'flux-2-klein-4b' END,
    'prompt ' || (i % 97), i, 1024, 1024, 2, 'jpeg', '[]', printf('%064x', i), 'tag' || (i % 10), 'host:1',
    CASE WHEN i % 10 = 9 THEN 'failed' ELSE 'ready' END, 'task-' || i, 'http://127.0.0.1:1/v1/get_result?id=' || i,
    1.4, CASE WHEN i % 50 = 49 THEN 0.0 ELSE 1.4 END, 1.05, :now + i + 0.1, :now + i + 1, :now + i + 1.2, 1.2,
    printf('images/%02x/%064x.jpeg', i % 256, i), printf('%064x', i), 1024, 1024, 'preview', i,
    'exp-' || (i % 100), CASE WHEN i % 50 = 49 THEN printf('%012x', i - 1) END, i + 1
FROM n
"""


def build(folder: str, rows: int) -> HistoryStore:
    store = HistoryStore(folder)
    with sqlite3.connect(store.path) as db:
        db.execute(FILL, {"rows": rows, "now": time.time() - rows})
        db.execute("UPDATE changes SET seq = ?", (rows,))
    return store


def best(work: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """The shortest of ``repeat`` runs (seconds) and the last result."""
    times, result = [], None
    for _ in range(repeat):
        gc.collect()
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return min(times), result


PEAK = """
import sys, time
from bench.common import peak_rss_mb, rss_mb
from flux_nb.history.store import HistoryStore
store = HistoryStore(sys.argv[1])
store.tail(1)
base = rss_mb()
frame = store.to_frame()
print(base, peak_rss_mb(), rss_mb(), frame.memory_usage(deep=False).sum() / 1e6)
"""


def peak_memory(folder: str) -> dict[str, float]:
    """Memory of a fresh process turning the history into a frame."""
    out = subprocess.run(
        [sys.executable, "-c", PEAK, folder], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout.split()
    base, peak, _after, frame_mb = map(float, out)
    return {"rss_before_mb": base, "peak_growth_mb": peak - base, "frame_mb": frame_mb}


def measure(rows: int, memory: bool = False) -> dict[str, Any]:
    """Every figure for one database of ``rows`` rows."""
    with tempfile.TemporaryDirectory() as folder:
        store = build(folder, rows)
        cold, frame = best(store.to_frame, repeat=1)
        assert len(frame) == rows
        warm, frame = best(store.to_frame)
        with sqlite3.connect(store.path) as db:
            plain, _ = best(lambda: pd.read_sql("select * from records", db), repeat=2)
        view = store.view()
        store.create(FluxRequest("one more", seed=1), backend="bfl", endpoint="e", notebook="a.ipynb",
                     input_hashes=[], estimated_cost=1.4, experiment="exp-1")  # fmt: skip
        refresh, refreshed = best(view.refresh, repeat=1)
        assert len(refreshed) == rows + 1
        store.rate(refreshed["record_id"].iloc[rows // 2], 4)
        rated, _ = best(view.refresh, repeat=1)
        figures: dict[str, Any] = {
            "rows": rows,
            "read_sql_s": plain,
            "to_frame_s": warm,
            "to_frame_first_s": cold,
            "to_frame_vs_read_sql": warm / plain,
            "refresh_new_row_s": refresh,
            "refresh_new_row_vs_full": refresh / warm,
            "refresh_rating_s": rated,
            "refresh_rating_vs_full": rated / warm,
            "spent_s": best(lambda: store.spent("a.ipynb"))[0],
            "spent_experiment_s": best(lambda: store.spent(experiment="exp-3"))[0],
            "tail_20_s": best(lambda: store.tail(20))[0],
            "query_experiment_s": best(lambda: store.query(experiment="exp-7"))[0],
            "query_experiment_rows": len(store.query(experiment="exp-7")),
            "query_prompt_model_s": best(lambda: store.query(prompt="prompt 5", model="flux-2-pro"))[0],
            "to_frame_notebook_s": best(lambda: store.to_frame(notebook="b.ipynb"))[0],
        }
        if memory:
            figures["memory"] = peak_memory(folder)
    return figures


def run(smoke: bool = False) -> dict[str, Any]:
    sizes = [2_000] if smoke else [100_000, 1_000_000]
    return {"sizes": [measure(rows, memory=rows >= 1_000_000) for rows in sizes]}


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, goal) lines."""
    out = []
    for s in results["sizes"]:
        n = f"{s['rows']:,} rows"
        ratio = f"{s['to_frame_vs_read_sql']:.2f}x (first call {s['to_frame_first_s']:.3f} s)"
        out.append(
            (f"to_frame, {n}", f"{s['to_frame_s']:.3f} s vs read_sql {s['read_sql_s']:.3f} s = {ratio}", "<= 0.4x")
        )
        out.append((f"refresh after one new row, {n}",
                    f"{s['refresh_new_row_s'] * 1000:.1f} ms = {s['refresh_new_row_vs_full']:.1%} of a full read",
                    "<= 5%"))  # fmt: skip
        out.append((f"refresh after one rating, {n}",
                    f"{s['refresh_rating_s'] * 1000:.1f} ms = {s['refresh_rating_vs_full']:.1%}", "<= 5%"))  # fmt: skip
        for key, label in [("spent_s", "spent(notebook)"), ("spent_experiment_s", "spent(experiment=)"),
                           ("tail_20_s", "tail(20)"), ("query_experiment_s", "query(experiment=)"),
                           ("query_prompt_model_s", "query(prompt=, model=)"),
                           ("to_frame_notebook_s", "to_frame(notebook=)")]:  # fmt: skip
            out.append((f"{label}, {n}", f"{s[key]:.3f} s", "< 0.5 s at 1M"))
        if m := s.get("memory"):
            memory = f"+{m['peak_growth_mb']:.0f} MB peak (frame {m['frame_mb']:.0f} MB)"
            out.append((f"to_frame memory, {n}", memory, ""))
    return out


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    results = {"sizes": [measure(rows, memory=rows >= 1_000_000) for rows in sizes]}
    for what, measured, goal in table(results):
        print(f"{what:<42} {measured:<72} goal {goal}")
