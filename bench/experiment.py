"""``python -m bench.experiment [--count 100] [--size 1024x768] [--format jpeg]``: an experiment leaving the notebook.

Builds a history of ``count`` images (drawn by Pillow, written through ``HistoryStore``), then times,
side by side: the bundle export against copying the same files, reopening it in a fresh process,
the HTML report, and provenance written into every image. Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flux_nb.export.bundle import export_bundle
from flux_nb.export.report import write_report
from flux_nb.metadata import embed_provenance, pixel_hash
from tests.experiments import make_experiment

ROOT = Path(__file__).resolve().parents[1]
REOPEN = """
import json, sys, time
start = time.perf_counter()
from flux_nb.export.bundle import open_bundle
from flux_nb.history.store import HistoryStore
imported = time.perf_counter()
frame = HistoryStore(open_bundle(sys.argv[1], sys.argv[2])).to_frame()
done = time.perf_counter()
print(json.dumps({"rows": len(frame), "import_s": imported - start, "open_s": done - imported}))
"""


def reopen(bundle: Path, into: Path) -> tuple[float, dict[str, float]]:
    """Open the bundle in a fresh interpreter: its wall time, and the import and open times inside it."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", REOPEN, str(bundle), str(into)],
        capture_output=True,
        text=True,
        check=True,
        cwd=into.parent,
        env={"PYTHONPATH": str(ROOT)},
    )
    return time.perf_counter() - start, json.loads(done.stdout)


def run(count: int, size: tuple[int, int], fmt: str) -> dict[str, float | int | str]:
    with tempfile.TemporaryDirectory(prefix="flux-bench-") as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        store = make_experiment(work / "history", count=count, size=size, fmt=fmt, failed=0)
        built = time.perf_counter() - start
        frame = store.to_frame()
        image_bytes = sum(Path(p).stat().st_size for p in frame["image_path"])

        start = time.perf_counter()
        shutil.copytree(store.root / "images", work / "copied")
        copy_s = time.perf_counter() - start

        start = time.perf_counter()
        bundle = export_bundle(frame, store.root, work / "bundle.zip")
        export_s = time.perf_counter() - start

        reopen_wall, inside = reopen(bundle, work / "opened")

        start = time.perf_counter()
        report = write_report(frame, store.root, work / "report.html", title="bench")
        report_s = time.perf_counter() - start

        rows = frame.to_dict("records")
        start = time.perf_counter()
        for row in rows:
            embed_provenance(Path(row["image_path"]).read_bytes(), row)
        embed_s = time.perf_counter() - start
        start = time.perf_counter()
        for row in rows[:10]:
            pixel_hash(Path(row["image_path"]))
        hash_s = (time.perf_counter() - start) / min(10, len(rows))
        return {
            "images": count,
            "size": f"{size[0]}x{size[1]} {fmt}",
            "history_build_s": built,
            "image_mb": image_bytes / 1e6,
            "bundle_mb": bundle.stat().st_size / 1e6,
            "bundle_vs_images": bundle.stat().st_size / image_bytes,
            "copy_images_s": copy_s,
            "export_s": export_s,
            "export_vs_copy": export_s / copy_s,
            "reopen_process_s": reopen_wall,
            "reopen_import_s": inside["import_s"],
            "reopen_open_s": inside["open_s"],
            "report_s": report_s,
            "report_mb": report.stat().st_size / 1e6,
            "embed_ms_per_image": embed_s / count * 1000,
            "pixel_hash_ms_per_image": hash_s * 1000,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--size", default="1024x768")
    parser.add_argument("--format", default="jpeg", choices=["jpeg", "png", "webp"])
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    figures = run(args.count, (width, height), args.format)
    for name, value in figures.items():
        print(f"{name:26} {value:.3f}" if isinstance(value, float) else f"{name:26} {value}")


if __name__ == "__main__":
    main()
