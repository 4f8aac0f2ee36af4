"""Shared pieces of the benchmarks: a local server in its own process, clocks, memory readings."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx


@contextmanager
def server_process(latency: float = 0.0, max_active: int = 24) -> Iterator[str]:
    """``flux-nb serve`` on a free loopback port in a child process (so it never shares our GIL)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flux_nb",
            "serve",
            "--port",
            "0",
            "--latency",
            str(latency),
            "--max-active",
            str(max_active),
            "--max-active-per-key",
            str(max_active),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "http://" not in line:
            raise RuntimeError(f"server did not start: {line}")
        url = "http://" + line.split("http://", 1)[1].split()[0]
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def server_stats(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/_flux/stats", timeout=10).json()


def _status_mb(field: str) -> float:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The most resident memory this process has had, in MB."""
    return _status_mb("VmHWM")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p95": percentile(values, 0.95), "mean": statistics.fmean(values)}


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
