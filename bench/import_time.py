"""What importing flux_nb costs: ``import flux_nb`` and ``%load_ext flux_nb``, each in a fresh process.

Side by side with a baseline checkout when one is given (``--baseline PATH``: a folder holding an older
flux_nb), measured by wall time (median of several fresh processes) and by ``python -X importtime``'s
cumulative figure, and listing the heavy modules each one pulls in.

    python -m bench.import_time [--baseline /path/to/old/checkout] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("pandas", "PIL.PngImagePlugin", "ipywidgets", "fastapi", "uvicorn", "pyarrow", "traitlets", "IPython")
CASES = {
    "import flux_nb": "import flux_nb",
    "%load_ext flux_nb": (
        "from IPython.core.interactiveshell import InteractiveShell\n"
        "shell = InteractiveShell.instance()\n"
        "import time\nt0 = time.perf_counter()\n"
        "shell.run_line_magic('load_ext', 'flux_nb')\n"
    ),
}
PROBE = """
import json, sys, time
t = time.perf_counter()
{body}
took = time.perf_counter() - (t0 if 't0' in dir() else t)
print(json.dumps({{"seconds": took, "loaded": [m for m in {heavy!r} if m in sys.modules]}}))
"""


def _neutral_dir() -> str:
    """A new, empty working directory: no flux_nb in it (PYTHONPATH decides which one loads) and no history."""
    return tempfile.mkdtemp(prefix="flux-nb-import-")


def measure(source: Path, body: str, runs: int) -> dict[str, Any]:
    """Median seconds over ``runs`` fresh processes importing from ``source``, and what got loaded."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    env.pop("BFL_API_KEY", None)
    seconds, loaded = [], []
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-c", PROBE.format(body=body, heavy=HEAVY)],
            cwd=_neutral_dir(),
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        seconds.append(answer["seconds"])
        loaded = answer["loaded"]
    return {"median_s": statistics.median(seconds), "loaded": loaded}


def importtime(source: Path) -> float:
    """``python -X importtime -c 'import flux_nb'``: flux_nb's cumulative import time, in seconds."""
    env = {**os.environ, "PYTHONPATH": str(source)}
    command = [sys.executable, "-X", "importtime", "-c", "import flux_nb"]
    done = subprocess.run(command, cwd=_neutral_dir(), env=env, capture_output=True, text=True, check=True)
    line = next(line for line in done.stderr.splitlines() if line.rstrip().endswith("| flux_nb"))
    return int(line.split("|")[1]) / 1e6


def run(smoke: bool = False, baseline: Path | None = None, runs: int = 7) -> dict[str, Any]:
    runs = 2 if smoke else runs
    sources = {"now": ROOT, **({"baseline": baseline} if baseline else {})}
    results: dict[str, Any] = {}
    for label, source in sources.items():
        results[label] = {name: measure(source, body, runs) for name, body in CASES.items()}
        results[label]["importtime_s"] = importtime(source)
    if baseline:
        for name in CASES:
            results[f"ratio {name}"] = results["now"][name]["median_s"] / results["baseline"][name]["median_s"]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="a folder holding an older flux_nb, to compare with")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = run(baseline=args.baseline, runs=args.runs)
    for label in ("baseline", "now"):
        if label in results:
            for name in CASES:
                r = results[label][name]
                print(f"{label:9} {name:20} {r['median_s'] * 1000:7.1f} ms   loads: {', '.join(r['loaded']) or '-'}")
            print(f"{label:9} {'-X importtime':20} {results[label]['importtime_s'] * 1000:7.1f} ms")
    for name in CASES:
        if f"ratio {name}" in results:
            print(f"ratio now/baseline, {name}: {results[f'ratio {name}']:.2f}x")


if __name__ == "__main__":
    main()
