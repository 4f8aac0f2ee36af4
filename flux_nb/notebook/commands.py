"""The ``%flux`` verbs: history, replay, resume, cost, grid, login, panel.

Each verb returns an object that shows itself: HTML in a notebook, text in a terminal (IPython
asks for the form its front end renders, so thumbnails are never built for a terminal).
"""

from __future__ import annotations

import argparse
import getpass
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flux_nb.errors import ValidationError
from flux_nb.notebook import render
from flux_nb.notebook.progress import BatchProgress
from flux_nb.session import Flux

GRID_USAGE = "[--x FIELD [--y FIELD]] [--z FIELD] [--where EXPR] [--save PATH]"


class Shown:
    """Something a ``%flux`` verb returns: ``html`` in a notebook, ``text`` in a terminal."""

    def __init__(self, text: Callable[[], str], html: Callable[[], str] | None = None) -> None:
        self._text, self._html = text, html

    @property
    def has_html(self) -> bool:
        return self._html is not None

    def _repr_html_(self) -> str | None:
        return self._html() if self._html is not None else None

    def __repr__(self) -> str:
        return self._text()


def history(session: Flux, rest: list[str]) -> Shown:
    limit = 20
    if rest:
        if len(rest) > 1 or not rest[0].isdigit():
            raise ValidationError(f"%flux history takes one number of rows, got {' '.join(rest)!r}")
        limit = int(rest[0])
    frame = session.history()
    return Shown(lambda: render.history_text(frame, limit=limit), lambda: render.history_html(frame, limit=limit))


def replay(session: Flux, rest: list[str]) -> Shown:
    if len(rest) != 1:
        raise ValidationError("%flux replay takes one record id (see %flux history)")
    old = session.result_of(rest[0])
    new = session.replay(rest[0])
    titles = f"record {old.record_id}", f"replay {new.record_id}"
    return Shown(
        lambda: render.side_by_side_text(old, new, *titles), lambda: render.side_by_side_html(old, new, *titles)
    )


def resume(session: Flux, rest: list[str]) -> Shown | None:
    if rest not in ([], ["--unsent"]):
        raise ValidationError(f"%flux resume takes no argument but --unsent, got {' '.join(rest)!r}")
    results = session.resume(BatchProgress(), unsent=bool(rest))
    unknown = sum(r.status == "unknown" for r in results)
    unsent = len(session.unsent())
    lines = []
    if not results and not unsent and not results.elsewhere:
        lines.append("flux_nb: nothing to resume: no task is pending")
    if unknown:
        lines.append(
            f"flux_nb: {unknown} submit(s) were cut off mid-send: they may have created a task, "
            "so they are marked unknown and not resent (%flux replay ID sends one again on purpose)"
        )
    if unsent:
        lines.append(
            f"flux_nb: {unsent} request(s) were never sent before their process stopped: %flux resume --unsent"
        )
    if note := results.note():
        lines.append(f"flux_nb: {note}")
    return Shown(lambda: "\n".join(lines)) if lines else None


def cost(session: Flux, rest: list[str]) -> Shown:
    if rest:
        raise ValidationError(f"%flux cost takes no argument, got {' '.join(rest)!r}")
    summary = session.cost()
    return Shown(lambda: render.cost_text(summary), lambda: render.cost_html(summary))


def grid(session: Flux, rest: list[str]) -> Any:
    """A grid of history records (seeds across, prompts down by default).

    In a terminal the grid is saved as a PNG (``--save PATH``, else in the history folder) and its path said.
    """
    from flux_nb.grids import grid as draw

    parser = argparse.ArgumentParser(prog="%flux grid", add_help=False, exit_on_error=False)
    for flag in ("--x", "--y", "--z", "--where", "--save"):
        parser.add_argument(flag)
    try:
        options = parser.parse_args(rest)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ValidationError(f"%flux grid: {exc} (usage: {GRID_USAGE})") from None
    if options.x is None and options.y is None:
        options.x, options.y = "seed", "prompt"
    elif options.x is None:
        raise ValidationError(
            f"%flux grid --y {options.y} needs --x too (e.g. --x seed --y {options.y}); "
            "with neither, the grid is --x seed --y prompt"
        )
    frame = session.history()
    if options.where:
        try:
            frame = frame.query(options.where)
        except Exception as exc:
            raise ValidationError(f"%flux grid --where {options.where!r} failed: {exc}") from None
    result = draw(frame, x=options.x, y=options.y, z=options.z)
    rich = render.is_rich()
    target = options.save
    if target is None and not rich:
        target = free_path(Path(session.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = save_grid(result, target) if target else None
    if rich:
        return result
    paths = saved if isinstance(saved, list) else [saved]
    return Shown(lambda: "\n".join(f"flux_nb: grid saved to {p}" for p in paths))


def save_grid(result: Any, target: str | Path) -> Path | list[Path]:
    """Save a grid, turning an unwritable target into one clear line."""
    try:
        return result.save(target)
    except OSError as exc:
        raise ValidationError(f"could not save the grid to {target}: {exc.strerror or exc}") from None


def login(session: Flux, rest: list[str]) -> Shown:
    key = getpass.getpass("BFL API key (kept in memory only): ")
    session.login(key)
    return Shown(lambda: "flux_nb: key set for this session (not saved anywhere)")


def panel(session: Flux, rest: list[str]) -> Any:
    if not render.is_rich():
        raise ValidationError(
            "the panel needs a notebook front end (JupyterLab, Notebook 7, VS Code); in a terminal use %%flux cells"
        )
    return session.panel()


def free_path(folder: Path, stem: str) -> Path:
    """``folder/stem.png``, or ``stem-2.png``, ``stem-3.png``... if that is taken."""
    path, n = folder / f"{stem}.png", 1
    while path.exists() or any(folder.glob(f"{path.stem}_*.png")):  # GridPages adds _z_value to the name
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


COMMANDS: dict[str, Callable[[Flux, list[str]], Any]] = {
    "history": history,
    "replay": replay,
    "resume": resume,
    "cost": cost,
    "grid": grid,
    "login": login,
    "panel": panel,
}
