"""The history verbs at scale: ``%flux history N``, ``%flux cost`` and ``%flux grid --where`` (and their
``flux-nb`` twins, which share the code) on a history of 1,000,000 rows, beside what they cost when
they built the whole frame first (``flux.history()`` then pandas), measured in one run on one database.

``python -m bench.commands_scale [rows ...]``; ``bench.scale`` runs it inside the scale suite.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

from bench.history_scale import best, build
from flux_nb.notebook import commands, selection, tables
from flux_nb.session import Flux

# A selective --where (its equality goes to SQL) and one that cannot be pushed down (pandas on every row).
PUSHED = "experiment == 'exp-7' and seed % 3 == 0"
NOT_PUSHED = "seed < 1000"


def said(flux: Flux, name: str, *words: str) -> str:
    """A verb's text, as ``%flux NAME WORDS`` prints it in a terminal."""
    verb, front = commands.VERBS[name], commands.Front()
    return repr(verb.run(flux, commands.parse(verb, words, front), front))


def measure(rows: int) -> dict[str, Any]:
    """Seconds for each verb (the rows it reads plus its text table), and for the whole-frame way."""
    with tempfile.TemporaryDirectory() as folder:
        build(folder, rows)
        flux = Flux(endpoint="http://127.0.0.1:9", history_dir=folder)
        flux.notebook_detector = lambda: "a.ipynb"
        try:
            whole, _ = best(flux.history, repeat=2)
            figures: dict[str, Any] = {
                "rows": rows,
                "whole_frame_s": whole,
                "history_20_s": best(lambda: said(flux, "history", "20"))[0],
                "history_20_tag_s": best(lambda: said(flux, "history", "20", "--tag", "tag3"))[0],
                "cost_s": best(lambda: said(flux, "cost"))[0],
                "cost_experiment_s": best(lambda: tables.cost_text(flux.store.spent(experiment="exp-3")))[0],
                "cost_tag_s": best(lambda: said(flux, "cost", "--tag", "tag3"))[0],
                "where_pushed_s": best(lambda: selection.select(flux, PUSHED))[0],
                "where_pushed_rows": len(selection.select(flux, PUSHED)),
                "where_not_pushed_s": best(lambda: selection.select(flux, NOT_PUSHED), repeat=2)[0],
                "where_whole_frame_s": best(lambda: flux.history().query(PUSHED), repeat=2)[0],
            }
        finally:
            flux.close()
    return figures


def run(smoke: bool = False) -> dict[str, Any]:
    return {"sizes": [measure(rows) for rows in ([2_000] if smoke else [1_000_000])]}


def table(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, measured, goal) lines, each beside the whole-frame way."""
    out = []
    for s in results["sizes"]:
        n, whole = f"{s['rows']:,} rows", s["whole_frame_s"]

        def vs(key: str, s: dict[str, Any] = s, whole: float = whole) -> str:
            return f"{s[key]:.3f} s ({s[key] / whole:.1%} of building the frame, {whole:.2f} s)"

        out += [
            (f"%flux history 20, {n}", vs("history_20_s"), "< 0.5 s"),
            (f"%flux history 20 --tag, {n}", vs("history_20_tag_s"), "< 0.5 s"),
            (f"%flux cost, {n}", vs("cost_s"), "< 0.5 s"),
            (f"%flux cost --experiment, {n}", vs("cost_experiment_s"), "< 0.5 s"),
            (f"%flux cost --tag (10% of rows), {n}", vs("cost_tag_s"), "< 0.5 s"),
            (f"grid --where (pushed, {s['where_pushed_rows']} rows), {n}", vs("where_pushed_s"), "< 0.5 s"),
            (f"  same, whole frame then query, {n}", vs("where_whole_frame_s"), "baseline"),
            (f"grid --where (not pushable), {n}", vs("where_not_pushed_s"), "= a full read"),
        ]
    return out


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]] or [1_000_000]
    for what, measured, goal in table({"sizes": [measure(rows) for rows in sizes]}):
        print(f"{what:<48} {measured:<64} goal {goal}")
