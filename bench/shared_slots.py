"""Shared slots: what one acquire + release costs, in one process and in three at once.

``python -m bench.shared_slots [--leases N] [--smoke] [--json PATH]`` prints microseconds per lease side by side with
an ``asyncio.Semaphore`` (the per-process limit it adds to) and the JSON of every figure.

- *sequential*: one task acquires and releases ``N`` times, nobody else waits (the cost a submit pays).
- *3 processes, sequential*: the same in three processes at once on one table (they share SQLite's lock).
- *3 processes, contended*: 8 tasks in each of three processes, limit 4, each lease held 2 ms: leases per
  second when most acquires wait in line and slots pass between processes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from flux_nb.http.slots import SharedSlots

KEY = "bench-key"
ENDPOINT = "http://127.0.0.1:8800"
SPAWN = multiprocessing.get_context("spawn")


async def _sequential(slots: SharedSlots, leases: int) -> float:
    started = time.perf_counter()
    for _ in range(leases):
        await slots.release(await slots.acquire())
    return time.perf_counter() - started


async def _semaphore(leases: int) -> float:
    semaphore = asyncio.Semaphore(24)
    started = time.perf_counter()
    for _ in range(leases):
        async with semaphore:
            await asyncio.sleep(0)
    return time.perf_counter() - started


async def _contended(slots: SharedSlots, tasks: int, rounds: int, hold: float) -> float:
    async def one() -> None:
        for _ in range(rounds):
            async with slots.slot():
                await asyncio.sleep(hold)

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(tasks)))
    return time.perf_counter() - started


def _child(folder: str, leases: int, contended_leases: int, barrier: Any, out: Any) -> None:
    """Both three-process figures, each phase started together with the other children."""
    sequential = SharedSlots.for_key(KEY, ENDPOINT, 24, Path(folder))
    contended = SharedSlots.for_key(KEY, ENDPOINT + "/contended", 4, Path(folder))
    sequential.held(), contended.held()  # open the table before the clock starts
    barrier.wait()
    out.put(("sequential", asyncio.run(_sequential(sequential, leases))))
    barrier.wait()
    out.put(("contended", asyncio.run(_contended(contended, 8, contended_leases // 8, 0.002))))


def _three(folder: str, leases: int, contended_leases: int) -> dict[str, float]:
    """Wall seconds of each phase with three processes at once (the slowest one's own clock)."""
    barrier, out = SPAWN.Barrier(4), SPAWN.Queue()
    children = [SPAWN.Process(target=_child, args=(folder, leases, contended_leases, barrier, out)) for _ in range(3)]
    for child in children:
        child.start()
    seconds: dict[str, float] = {}
    for _phase in ("sequential", "contended"):
        barrier.wait(timeout=600)
        for _ in children:
            name, took = out.get(timeout=600)
            seconds[name] = max(seconds.get(name, 0.0), took)
    for child in children:
        child.join(60)
    return seconds


def run(leases: int = 2000) -> dict[str, Any]:
    """Every figure, in microseconds per lease (and leases per second where slots are contended)."""
    with tempfile.TemporaryDirectory() as folder:
        slots = SharedSlots.for_key(KEY, ENDPOINT, 24, Path(folder))
        asyncio.run(_sequential(slots, 50))  # warm up: the table, the thread pool
        single = asyncio.run(_sequential(slots, leases))
        semaphore = asyncio.run(_semaphore(leases))
        contended_leases = max(24, leases // 4)
        three = _three(folder, leases, contended_leases)
    per = 1e6 / leases
    return {
        "leases": leases,
        "single_us": single * per,
        "semaphore_us": semaphore * per,
        "single_vs_semaphore": single / semaphore,
        "three_processes_us": three["sequential"] * per,
        "three_vs_single": three["sequential"] / single,
        "contended": {
            "processes": 3,
            "tasks_each": 8,
            "limit": 4,
            "hold_ms": 2,
            "leases": 3 * (contended_leases // 8) * 8,
            "leases_per_s": 3 * (contended_leases // 8) * 8 / three["contended"],
            "floor_leases_per_s": 4 / 0.002,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    results = run(100 if args.smoke else args.leases)
    c = results["contended"]
    print(f"acquire + release, one process:        {results['single_us']:8.0f} us per lease")
    print(f"asyncio.Semaphore, for comparison:     {results['semaphore_us']:8.1f} us per lease")
    print(f"  ratio:                               {results['single_vs_semaphore']:8.0f}x")
    print(f"three processes at once (each):        {results['three_processes_us']:8.0f} us per lease")
    print(f"  vs one process:                      {results['three_vs_single']:8.2f}x")
    print(
        f"contended, 3 x {c['tasks_each']} tasks, limit {c['limit']}, {c['hold_ms']} ms held: "
        f"{c['leases_per_s']:.0f} leases/s (floor {c['floor_leases_per_s']:.0f}/s)"
    )
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
