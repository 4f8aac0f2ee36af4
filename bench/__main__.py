"""``python -m bench [--smoke] [--only NAME ...] [--json PATH]``: run the benchmarks side by side.

Prints a short table of the measured figures and ratios against their goals, and writes
every number to a JSON file (default ``bench/results.json``; ``--smoke`` runs tiny sizes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from bench import engine, latency, scale, throughput

SUITES = {"throughput": throughput.run, "latency": latency.run, "scale": scale.run, "engine": engine.run}


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, goal) lines for the summary table."""
    out: list[tuple[str, str, str]] = []
    if t := results.get("throughput"):
        out.append(
            (
                f"sweep of {t['images']} at {t['latency_s']:g} s, limit {t['max_active']}",
                f"{t['flux_nb_s']:.2f} s = {t['flux_nb_vs_floor']:.2f}x floor",
                "<= 1.15x floor",
            )
        )
        out.append(
            (
                "  the same, first sweep of a new session",
                f"{t['flux_nb_first_s']:.2f} s = {t['flux_nb_first_vs_floor']:.2f}x floor",
                "",
            )
        )
        out.append(("  speed-up vs plain asyncio+httpx (1 s polls)", f"{t['speedup_vs_plain_httpx']:.2f}x", "> 1"))
        if t.get("speedup_vs_blackforest"):
            out.append(("  speed-up vs blackforest 0.1.3 loop", f"{t['speedup_vs_blackforest']:.1f}x", "> 1"))
    if lat := results.get("latency"):
        for n in lat["notice"]:
            out.append(
                (
                    f"notice delay at {n['latency_s']:g} s (median / p95)",
                    f"{n['median_delay_s'] * 1000:.0f} / {n['p95_delay_s'] * 1000:.0f} ms, "
                    f"{n['polls_per_task']:.1f} polls",
                    "<= 15% of latency, <= 5 polls",
                )
            )
        o = lat["overhead"]
        out.append(("client overhead, single image", f"{o['single_overhead_ms']:.1f} ms", "< 15 ms"))
        out.append(
            (
                f"client overhead, {o['sweep_images']}-image sweep",
                f"{o['sweep_overhead_per_image_ms']:.1f} ms/image",
                "< 15 ms",
            )
        )
    if s := results.get("scale"):
        m = s["sweep_memory"]
        out.append((f"RSS growth over a {m['images']}-image sweep", f"{m['peak_growth_mb']:.0f} MB", "< 150 MB"))
        h = s["history_frame"]
        out.append((f"history of {h['rows']:,} rows to a DataFrame", f"{h['to_frame_s']:.2f} s", "< 1 s"))
        if "history_scale" in s:
            out.extend(scale.history_scale.table(s["history_scale"]))
        if "commands" in s:
            out.extend(scale.commands_scale.table(s["commands"]))
        g = s["grid"]
        out.append((f"grid of {g['images']} images of {g['side']}px", f"{g['grid_s']:.2f} s", "< 1.5 s"))
        nb = s["notebook"]
        out.append(
            (
                f"notebook with {nb['images']} results of {nb['side']}px",
                f"{nb['flux_nb_mb']:.1f} MB (full PNG: {nb['full_png_mb']:.1f} MB, {nb['ratio']:.0f}x)",
                "< 6 MB",
            )
        )
    if e := results.get("engine"):
        for size in e["sizes"]:
            out.append(
                (
                    f"preview engine {size['side']}x{size['side']}",
                    f"{size['render_ms']:.1f} ms render + {size['jpeg_ms']:.1f} ms JPEG",
                    "< 30 ms at 1024",
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds: checks the suite runs")
    parser.add_argument("--only", nargs="*", choices=list(SUITES), help="run only these suites")
    parser.add_argument("--json", type=Path, default=Path(__file__).with_name("results.json"))
    args = parser.parse_args(argv)
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} {platform.python_version()}",
        "smoke": args.smoke,
    }
    for name in args.only or SUITES:
        started = time.perf_counter()
        print(f"running {name}...", file=sys.stderr, flush=True)
        results[name] = SUITES[name](smoke=args.smoke)
        results[name]["suite_s"] = time.perf_counter() - started
    profile = results.get("latency", {}).get("overhead", {}).pop("profile", None)
    width = max(len(r[0]) for r in rows(results))
    for what, measured, goal in rows(results):
        print(f"{what:<{width}}  {measured:<44}  goal {goal}")
    if profile:
        results["latency"]["overhead"]["profile_top"] = profile.splitlines()[:30]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2, default=str))
    print(f"full numbers: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
