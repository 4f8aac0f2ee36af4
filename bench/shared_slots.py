"""Shared slots: what one acquire + release costs, in one process and in three at once.

``python -m bench.shared_slots [--leases N] [--sweep] [--latency S] [--smoke] [--json PATH]`` prints microseconds
per lease side by side with an ``asyncio.Semaphore`` (the per-process limit it adds to) and the JSON of every figure.

- *sequential*: one task acquires and releases ``N`` times, nobody else waits (the cost a submit pays).
- *3 processes, sequential*: the same in three processes at once on one lock file.
- *3 processes, contended*: 8 tasks in each of three processes, limit 4, each lease held 2 ms: leases per
  second when most acquires wait in line and slots pass between processes.
- *sweeps* (``--sweep``): three processes each sweep 48 images at once through ``Flux`` against
  ``flux-nb serve --max-active 24 --latency S`` with a key, with shared slots off (each process assumes all 24)
  and on, and one process sweeping all 144 for reference: the 429s the server answered, and the wall time against
  the floor ``ceil(144 / 24) x S``. The wall time runs from the go signal to the moment the last process has its
  last image (``first_s``: the first process; ``to_exit_s``: until the last one exited).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from flux_nb.http.slots import SharedSlots

KEY = "bench-key"
ENDPOINT = "http://127.0.0.1:8800"
SPAWN = multiprocessing.get_context("spawn")


async def _sequential(slots: SharedSlots, leases: int) -> float:
    started = time.perf_counter()
    for _ in range(leases):
        slots.release(await slots.acquire())
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


SWEEP_KEY = "bench-shared-slots-key"
SWEEPER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from flux_nb import Flux
    url, history, name, count, go, share = sys.argv[1:7]
    flux = Flux(endpoint=url, history_dir=history, share_slots=share == "1", task_timeout=600)
    batch = flux.batch(f"{name} sweep", seed=list(range(int(count))), width=64, height=64)
    flux.connect()
    Path(history).mkdir(parents=True, exist_ok=True)
    (Path(history) / "ready").write_text("1")
    while not Path(go).exists():
        time.sleep(0.005)
    results = flux.run(batch)
    done = time.monotonic()  # one clock for every process on Linux: CLOCK_MONOTONIC
    flux.close()
    print(sum(r.status == "ready" for r in results), done)
    """
)


def _stats(url: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/_flux/stats", headers={"x-key": SWEEP_KEY})
    with urllib.request.urlopen(request, timeout=10) as answer:  # loopback only: the server started here
        return json.loads(answer.read())


def _sweep_once(latency: float, share: bool, processes: int = 3, count: int = 48) -> dict[str, Any]:
    """One round: a fresh server and slot table, ``processes`` children sweeping ``count`` each at one moment."""
    with tempfile.TemporaryDirectory() as folder:
        env = {k: v for k, v in os.environ.items() if k not in ("BFL_API_KEY", "FLUX_NB_ENDPOINT")}
        env.update(FLUX_NB_SERVER_KEYS=SWEEP_KEY, FLUX_NB_API_KEY=SWEEP_KEY, FLUX_NB_SLOTS_DIR=f"{folder}/slots")
        server = subprocess.Popen(
            [sys.executable, "-m", "flux_nb", "serve", "--port", "0", "--max-active", "24", "--latency", f"{latency}"],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            first = server.stdout.readline() if server.stdout else ""
            url = "http://" + first.split("http://", 1)[1].split()[0]
            go = Path(folder) / "go"
            children = [
                subprocess.Popen(
                    [sys.executable, "-c", SWEEPER, url, f"{folder}/h{i}", f"p{i}", str(count), str(go), f"{share:d}"],
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
                for i in range(processes)
            ]
            while not all((Path(folder) / f"h{i}" / "ready").exists() for i in range(processes)):
                time.sleep(0.01)
            started = time.monotonic()
            go.write_text("go")
            reports = [c.communicate()[0].split()[-2:] for c in children]
            to_exit = time.monotonic() - started
            ready = sum(int(count) for count, _ in reports)
            wall = max(float(done) for _, done in reports) - started
            earliest = min(float(done) for _, done in reports) - started
            stats = _stats(url)
        finally:
            server.terminate()
            server.communicate(timeout=15)
    floor = math.ceil(processes * count / 24) * latency
    return {
        "ready": ready,
        "rejected_429": stats["rejected"],
        "wall_s": wall,
        "first_s": earliest,
        "floor_s": floor,
        "ratio": wall / floor,
        "to_exit_s": to_exit,
    }


def sweeps(latency: float = 1.0, rounds: int = 3) -> dict[str, Any]:
    """3 processes x 48 images, shared slots off and on, alternated ``rounds`` times; the median of each.

    ``one``: a single process sweeping all 144 (same floor, no other process to share with): what this machine
    gives without any sharing between processes, for comparison; ``on_vs_one`` is the ratio of each round.
    """
    runs: dict[str, list[dict[str, Any]]] = {"off": [], "on": [], "one": []}
    for _ in range(rounds):
        for mode in runs:
            if mode == "one":
                runs[mode].append(_sweep_once(latency, share=True, processes=1, count=144))
            else:
                runs[mode].append(_sweep_once(latency, share=mode == "on"))
    summary: dict[str, Any] = {"latency_s": latency, "rounds": rounds}
    for mode, results in runs.items():
        median = sorted(results, key=lambda r: r["wall_s"])[len(results) // 2]
        summary[mode] = {
            **median,
            "rejected_429_all": [r["rejected_429"] for r in results],
            "wall_s_all": [round(r["wall_s"], 2) for r in results],
            "first_s_all": [round(r["first_s"], 2) for r in results],
            "to_exit_s_all": [round(r["to_exit_s"], 2) for r in results],
        }
    summary["on_vs_one"] = [round(a["wall_s"] / b["wall_s"], 3) for a, b in zip(runs["on"], runs["one"], strict=True)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=2000)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--sweep", action="store_true", help="also 3 processes x 48 images through Flux, off vs on")
    parser.add_argument("--latency", type=float, default=1.0, help="simulated latency of the sweep server (s)")
    parser.add_argument("--rounds", type=int, default=3, help="sweep rounds (off and on alternated)")
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
    if args.sweep:
        results["sweeps"] = found = sweeps(args.latency, args.rounds)
        print(f"3 processes x 48 images, latency {args.latency:g} s, floor {found['on']['floor_s']:g} s (median run):")
        for mode, label in (
            ("off", "3 procs, shared slots off    "),
            ("on", "3 procs, shared slots on     "),
            ("one", "1 proc x 144 (reference)     "),
        ):
            r = found[mode]
            print(
                f"  {label}: {r['rejected_429']:5d} x 429  {r['wall_s']:6.2f} s  {r['ratio']:5.2f}x the floor"
                f"  ({r['ready']} ready; per round: 429s {r['rejected_429_all']}, s {r['wall_s_all']},"
                f" first process done {r['first_s_all']})"
            )
        print(f"  on / one per round: {found['on_vs_one']}")
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
