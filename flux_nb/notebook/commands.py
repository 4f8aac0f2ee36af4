"""The ``%flux`` verbs: history, replay, resume, cost, grid, login, panel, experiment and the review verbs
(rate, note, tag, favourite), export and report.

Each verb returns an object that shows itself: HTML in a notebook, text in a terminal (IPython
asks for the form its front end renders, so thumbnails are never built for a terminal).
"""

from __future__ import annotations

import argparse
import difflib
import getpass
import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from flux_nb.errors import ValidationError
from flux_nb.notebook import render
from flux_nb.notebook.progress import BatchProgress
from flux_nb.session import Flux

GRID_USAGE = (
    "[--x FIELD [--y FIELD]] [--z FIELD] [--where EXPR] [--experiment NAME] [--tag TAG] [--label FIELD[,FIELD]] "
    "[--sort FIELD] [--save PATH]"
)


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


class _Parser(argparse.ArgumentParser):
    """Options of one verb; a mistake is one ValidationError line naming the verb and its usage."""

    def __init__(self, verb: str, usage: str) -> None:
        super().__init__(prog=f"%flux {verb}", add_help=False, exit_on_error=False, allow_abbrev=False)
        self.verb_usage = f"%flux {verb} {usage}"

    def error(self, message: str) -> NoReturn:
        raise ValidationError(f"{self.prog}: {message} (usage: {self.verb_usage})")

    def parse(self, rest: list[str]) -> argparse.Namespace:
        try:
            options, extra = self.parse_known_args(rest)
        except argparse.ArgumentError as exc:
            return self.error(str(exc))
        if extra:
            self.error(unknown_words(extra, list(self._option_string_actions)))
        return options


def unknown_words(extra: list[str], known: list[str]) -> str:
    """``unrecognized arguments: --sed (did you mean --seed?)``: the nearest known option, if any is near."""
    text = f"unrecognized arguments: {' '.join(extra)}"
    for word in extra:
        if word.startswith("-") and (near := difflib.get_close_matches(word.split("=")[0], known, n=1, cutoff=0.6)):
            return f"{text} (did you mean {near[0]}?)"
    return text


def _filtered(verb: str, usage: str, *positional: tuple[str, dict[str, Any]]) -> _Parser:
    parser = _Parser(verb, usage)
    for name, options in positional:
        parser.add_argument(name, **options)
    parser.add_argument("--experiment", help="only this experiment's rows")
    parser.add_argument("--tag", help="only rows with this tag")
    return parser


def history(session: Flux, rest: list[str]) -> Shown:
    """``%flux history [N] [--experiment X] [--tag T]``: the newest N rows (read without the rest)."""
    from flux_nb.notebook import selection, tables  # pandas loads with the first table, not at %load_ext

    usage = "[N] [--experiment NAME] [--tag TAG]"
    options = _filtered("history", usage, ("n", {"nargs": "?", "default": "20"})).parse(rest)
    if not options.n.isdigit():
        raise ValidationError(f"%flux history takes one number of rows, got {options.n!r} (usage: {usage})")
    limit = int(options.n)
    frame = session.store.tail(limit, **selection.filters(options.experiment, options.tag))
    return Shown(lambda: tables.history_text(frame, limit=limit), lambda: tables.history_html(frame, limit=limit))


def replay(session: Flux, rest: list[str]) -> Shown:
    """``%flux replay ID_OR_PATH``: a record again (shown beside the old one), or the request in an image file."""
    if len(rest) != 1:
        raise ValidationError("%flux replay takes one record id (see %flux history) or an image file's path")
    if Path(rest[0]).is_file():
        new = session.replay(rest[0])
        title = f"replay of {rest[0]}: record {new.record_id}"
        return Shown(
            lambda: f"{title}\n{render.result_text(new)}",
            lambda: f"<b>{html.escape(title)}</b><br/>{render.result_html(new)}",
        )
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
    """``%flux cost [--experiment X] [--tag T]``: credits by model and backend, billed and not billed apart."""
    from flux_nb.notebook import selection, tables  # pandas loads with the first table, not at %load_ext

    options = _filtered("cost", "[--experiment NAME] [--tag TAG]").parse(rest)
    summary = selection.cost_summary(session, options.experiment, options.tag)
    return Shown(lambda: tables.cost_text(summary), lambda: tables.cost_html(summary))


def grid(session: Flux, rest: list[str]) -> Any:
    """A grid of history records (seeds across, prompts down by default).

    ``--where`` is a pandas query expression; its ``column == value`` parts are filtered in SQL first
    (see ``selection``). In a terminal the grid is saved as a PNG (``--save PATH``, else in the history
    folder) and its path said.
    """
    from flux_nb.grids import grid as draw
    from flux_nb.notebook import selection  # pandas loads with the first table, not at %load_ext

    parser = _filtered("grid", GRID_USAGE)
    for flag in ("--x", "--y", "--z", "--where", "--save", "--label", "--sort"):
        parser.add_argument(flag)
    options = parser.parse(rest)
    if options.x is None and options.y is None:
        options.x, options.y = "seed", "prompt"
    elif options.x is None:
        raise ValidationError(
            f"%flux grid --y {options.y} needs --x too (e.g. --x seed --y {options.y}); "
            "with neither, the grid is --x seed --y prompt"
        )
    frame = selection.select(session, options.where, **selection.filters(options.experiment, options.tag))
    label = [name for name in (options.label or "").split(",") if name]
    result = draw(frame, x=options.x, y=options.y, z=options.z, label=label, sort=options.sort)
    rich = render.is_rich()
    target = options.save
    if target is None and not rich:
        target = free_path(Path(session.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = save_grid(result, target, frame) if target else None
    if rich:
        return result
    paths = saved if isinstance(saved, list) else [saved]
    return Shown(lambda: "\n".join(f"flux_nb: grid saved to {p}" for p in paths))


def stars_of(text: str) -> int | None:
    """A star count from text: 0 to 5, or ``none`` to clear (neutral message on anything else)."""
    if text.lower() in ("none", "clear"):
        return None
    if not text.isdigit() or not 0 <= int(text) <= 5:
        raise ValidationError(f"rating {text!r} is not a whole number of stars from 0 to 5 (or none to clear it)")
    return int(text)


def split_tags(words: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Ids, tags to add (``+name``) and tags to remove (``-name``) from the words after ``tag``."""
    ids = [w for w in words if w[:1] not in "+-"]
    add = [w[1:] for w in words if w.startswith("+")]
    remove = [w[1:] for w in words if w.startswith("-")]
    return ids, add, remove


def _done(text: str) -> Shown:
    return Shown(lambda: f"flux_nb: {text}")


def _count(ids: list[str]) -> str:
    return f"{len(ids)} image{'s' if len(ids) != 1 else ''}"


def rate(session: Flux, rest: list[str]) -> Shown:
    """``%flux rate ID [ID...] STARS``: 0 to 5 stars (``none`` clears)."""
    if len(rest) < 2:
        raise ValidationError("%flux rate takes record ids then stars: %flux rate ID [ID...] 0-5 (none clears)")
    stars = stars_of(rest[-1])
    session.rate(rest[:-1], stars)
    return _done(f"rated {_count(rest[:-1])} {'(cleared)' if stars is None else f'{stars} stars'}")


def note(session: Flux, rest: list[str]) -> Shown:
    """``%flux note ID TEXT...`` (``--clear`` removes the note)."""
    if len(rest) < 2:
        raise ValidationError("%flux note takes a record id then the text: %flux note ID TEXT (or --clear)")
    text = None if rest[1:] == ["--clear"] else " ".join(rest[1:])
    session.note(rest[0], text)
    return _done(f"note {'cleared' if text is None else 'kept'} on {rest[0]}")


def tag(session: Flux, rest: list[str]) -> Shown:
    """``%flux tag ID [ID...] +add -remove ...``."""
    ids, add, remove = split_tags(rest)
    if not ids or not (add or remove):
        raise ValidationError("%flux tag takes record ids then +tag to add, -tag to remove: %flux tag ID +best -draft")
    session.tag(ids, add=add, remove=remove)
    changes = [f"+{t}" for t in add] + [f"-{t}" for t in remove]
    return _done(f"tags {' '.join(changes)} on {_count(ids)}")


def favourite(session: Flux, rest: list[str]) -> Shown:
    """``%flux favourite ID [ID...] [--off]``."""
    on = "--off" not in rest
    ids = [w for w in rest if w != "--off"]
    if not ids:
        raise ValidationError("%flux favourite takes record ids: %flux favourite ID [ID...] [--off]")
    session.favourite(ids, on=on)
    return _done(f"{_count(ids)} {'marked' if on else 'no longer'} favourite")


def experiment(session: Flux, rest: list[str]) -> Shown:
    """``%flux experiment [NAME|--off]``: show the experiment new rows are recorded in, or set it."""
    if len(rest) > 1:
        raise ValidationError(f"%flux experiment takes one name (or --off), got {' '.join(rest)!r}")
    if rest:
        session.experiment = "" if rest == ["--off"] else rest[0]
    name = session.experiment
    if not name:
        return _done("no experiment: new rows are recorded without one (%flux experiment NAME sets one)")
    return _done(f"experiment {name!r}: every new row is recorded in it (%flux experiment --off ends it)")


def _export_options(verb: str, rest: list[str], title: bool = False) -> argparse.Namespace:
    usage = "PATH [--experiment NAME] [--tag TAG]" + (" [--title TEXT] [--grids batches|none|ID,ID]" if title else "")
    parser = _filtered(verb, usage, ("path", {}))
    if title:
        parser.add_argument("--title")
        parser.add_argument("--grids", default="batches")
    return parser.parse(rest)


def export(session: Flux, rest: list[str]) -> Shown:
    """``%flux export PATH [--experiment X] [--tag T]``: a self-contained bundle of those rows."""
    options = _export_options("export", rest)
    frame = session.history(experiment=options.experiment, tag=options.tag)
    written = session.export(frame, options.path)
    return _done(f"exported {len(frame)} row(s) to {written or options.path}")


def report(session: Flux, rest: list[str]) -> Shown:
    """``%flux report PATH [--experiment X] [--tag T] [--title TEXT] [--grids batches|none|ID,ID]``: one
    self-contained HTML page (by default one grid per batch)."""
    options = _export_options("report", rest, title=True)
    frame = session.history(experiment=options.experiment, tag=options.tag)
    title = options.title or options.experiment or options.tag or "flux_nb report"
    grids: str | list[str] = options.grids if options.grids in ("batches", "none") else options.grids.split(",")
    written = session.report(frame, options.path, title=title, grids=grids)
    return _done(f"report of {len(frame)} row(s) written to {written or options.path}")


def save_grid(result: Any, target: str | Path, frame: Any = None) -> Path | list[Path]:
    """Save a grid (with ``frame``, the rows it was drawn from: each cell's request written into the PNG),
    turning an unwritable target into one clear line."""
    from flux_nb.export.grids import save_grid as save_with_requests

    try:
        if frame is not None:
            saved = save_with_requests(result, frame, target)
            return saved if isinstance(result, list) else saved[0]
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
    "experiment": experiment,
    "rate": rate,
    "note": note,
    "tag": tag,
    "favourite": favourite,
    "export": export,
    "report": report,
}
