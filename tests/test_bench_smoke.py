"""The benchmark suite runs end to end at tiny sizes, so it cannot rot (its figures are not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every benchmark, small

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_every_suite_and_writes_its_numbers(tmp_path: Path) -> None:
    target = tmp_path / "results.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--json", str(target)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads(target.read_text())
    assert {"throughput", "latency", "scale", "engine"} <= set(results)
    assert results["throughput"]["flux_nb_peak_active"] <= results["throughput"]["max_active"]
    assert all(n["tasks"] == 3 for n in results["latency"]["notice"])
    assert results["scale"]["history_frame"]["rows"] == 2_000
    assert "goal <= 1.15x floor" in run.stdout and "full numbers:" in run.stdout
