"""``to_frame()`` time of one source tree beside another's, on the same databases, in one run.

``python -m bench.history_read [--before DIR] [rows ...]``: DIR holds an older ``flux_nb`` package
(``git archive REV flux_nb | tar -x -C DIR``); each tree reads in a fresh process of its own, best of 3
after one warm-up read. Without ``--before`` only this tree is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.history_scale import build

ROOT = Path(__file__).resolve().parent.parent
TIME = """
import gc, json, sys, time
from flux_nb.history.store import HistoryStore
store = HistoryStore(sys.argv[1])
store.to_frame()
times = []
for _ in range(3):
    gc.collect()
    started = time.perf_counter()
    frame = store.to_frame()
    times.append(time.perf_counter() - started)
print(json.dumps({"rows": len(frame), "to_frame_s": min(times)}))
"""


def time_tree(tree: Path, folder: str) -> float:
    """Best ``to_frame()`` seconds of the ``flux_nb`` in ``tree`` on the history in ``folder``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", TIME, folder], capture_output=True, text=True, check=True, env=env)
    return float(json.loads(out.stdout)["to_frame_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="a folder holding an older flux_nb package")
    parser.add_argument("rows", type=int, nargs="*", default=[1_000, 100_000])
    args = parser.parse_args()
    for rows in args.rows:
        with tempfile.TemporaryDirectory() as folder:
            build(folder, rows)
            line = f"to_frame, {rows:>9,} rows: this tree {time_tree(ROOT, folder):.3f} s"
            if args.before:
                line += f", before {time_tree(args.before, folder):.3f} s"
            print(line)


if __name__ == "__main__":
    main()
