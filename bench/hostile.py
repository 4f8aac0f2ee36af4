"""Peak memory and wall time of the client against every mode of the hostile server.

Each mode runs the client in a fresh process (so its peak RSS is its own) against
``tests/hostile.py`` served from this process. Deadlines are shortened to ``--seconds``
so the trickling modes end quickly; byte caps are the client's defaults.

    python -m bench.hostile [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time

from flux_nb.errors import FluxError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.http.read_limits import BodyLimits
from flux_nb.protocol import FluxRequest
from tests.hostile import MODES, HostileServer


async def _client_run(url: str, seconds: float) -> str:
    limits = BodyLimits(answer_seconds=seconds, download_seconds=seconds)
    retry = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2, max_retry_after=1.0)
    request = FluxRequest("hostile", seed=1, width=256, height=256, output_format="png")
    async with AsyncFluxClient("k", url, limits=limits, retry=retry, task_timeout=2 * seconds) as client:
        try:
            result = await client.generate(request)
        except FluxError as exc:
            return f"{exc.kind}: {str(exc)[:70]}"
    return f"ok {result.width}x{result.height}"


def child(url: str, seconds: float) -> None:
    """Run one generate against ``url``; print outcome, seconds and peak RSS (imports included) as JSON."""
    started = time.perf_counter()
    outcome = asyncio.run(_client_run(url, seconds))
    wall = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"outcome": outcome, "seconds": wall, "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="answer and download deadlines")
    parser.add_argument("--child", nargs=1, metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.seconds)
        return
    print(f"{'mode':<20} {'peak RSS MB':>11} {'seconds':>8}  outcome")
    rows = {}
    for mode in MODES:
        with HostileServer(mode, bad_value={} if mode == "bad_id" else "abc") as server:
            done = subprocess.run(
                [sys.executable, "-m", "bench.hostile", "--seconds", str(args.seconds), "--child", server.url],
                capture_output=True,
                text=True,
                check=True,
            )
            rows[mode] = row = json.loads(done.stdout.strip().splitlines()[-1])
            sent = f" (server sent {server.bytes_sent / 1024 / 1024:.1f} MB)" if server.bytes_sent > 1 << 20 else ""
        print(f"{mode:<20} {row['peak_rss_mb']:>11.1f} {row['seconds']:>8.2f}  {row['outcome']}{sent}")
    base = rows["healthy"]["peak_rss_mb"]
    worst = max(rows, key=lambda m: rows[m]["peak_rss_mb"])
    print(f"highest peak RSS: {worst}, {rows[worst]['peak_rss_mb'] / base:.2f}x the healthy run's")


if __name__ == "__main__":
    main()
