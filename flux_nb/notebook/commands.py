"""Every ``%flux`` and ``flux-nb`` verb, defined once: its options, its checks and what it does.

``VERBS`` is the one table: the magic and the CLI only adapt (parse a line or argv with ``parser_for``, open
the session, show the returned ``Shown``: HTML in a notebook, text in a terminal or a shell).
"""

from __future__ import annotations

import argparse
import getpass
import html
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flux_nb.core.results import Result
from flux_nb.errors import ValidationError
from flux_nb.notebook import render
from flux_nb.notebook.command_line import CommandParser, KnownOptions, unknown_words
from flux_nb.notebook.progress import BatchProgress
from flux_nb.session import Flux

MAGIC, CLI = "%flux", "flux-nb"


@dataclass(frozen=True)
class Front:
    """Where a verb runs: ``prog`` names it in messages (``%flux`` or ``flux-nb``); ``rich`` when HTML shows."""

    prog: str = MAGIC
    rich: bool = False
    observer: Callable[[], Any] = BatchProgress

    @property
    def cli(self) -> bool:
        return self.prog == CLI

    def say(self, text: str) -> str:
        """A message line: the magic says who speaks; the CLI's output is its own."""
        return text if self.cli else f"flux_nb: {text}"


class Shown:
    """What a verb returns: ``html`` in a notebook, ``text`` in a terminal; ``results`` it sent, if any."""

    def __init__(
        self, text: Callable[[], str], html: Callable[[], str] | None = None, results: Sequence[Result] = ()
    ) -> None:
        self._text, self._html, self.results = text, html, list(results)

    @property
    def has_html(self) -> bool:
        return self._html is not None

    def _repr_html_(self) -> str | None:
        return self._html() if self._html is not None else None

    def __repr__(self) -> str:
        return self._text()


Run = Callable[[Flux, argparse.Namespace, Front], Any]


@dataclass(frozen=True)
class Verb:
    """One verb: its summary and usage, its options (``arguments``) and what it does (``run``)."""

    name: str
    summary: str
    usage: str
    run: Run
    arguments: Callable[[argparse.ArgumentParser], None]
    notebook_only: bool = False
    sends: bool = False  # talks to a server (the CLI takes --endpoint)
    minus_words: bool = False  # words like -draft are the verb's own (tags to remove), not options


VERBS: dict[str, Verb] = {}


def verb(
    summary: str, usage: str = "", arguments: Callable[[argparse.ArgumentParser], None] = lambda _: None, **flags: bool
) -> Callable[[Run], Run]:
    """Register a verb under its function's name."""

    def register(run: Run) -> Run:
        VERBS[run.__name__] = Verb(run.__name__, summary, usage, run, arguments, **flags)
        return run

    return register


def names(front: Front) -> list[str]:
    """The verbs a front end offers, in the table's order."""
    return [name for name, v in VERBS.items() if front.prog == MAGIC or not v.notebook_only]


def settle(v: Verb, options: argparse.Namespace, extra: list[str], parser: KnownOptions) -> argparse.Namespace:
    """Words the parser left: a verb's own ``-word`` words, else a mistake naming the nearest option."""
    if v.minus_words:
        minus = [w for w in extra if w[:1] == "-" and w[1:2] not in ("-", "") and w not in parser.known]
        options.remove = [*options.remove, *(w[1:] for w in minus)]
        extra = [w for w in extra if w not in minus]
    if extra:
        parser.error(unknown_words(extra, parser.known))
    return options


def parse(v: Verb, words: Sequence[str], front: Front) -> argparse.Namespace:
    """The verb's options in ``words``; a mistake is one ValidationError line with the verb's usage."""
    parser = CommandParser(f"{front.prog} {v.name}", f"{front.prog} {v.name} {v.usage}".strip())
    v.arguments(parser)
    try:
        options, extra = parser.parse_known_args(list(words))
    except argparse.ArgumentError as exc:
        parser.error(str(exc))
    return settle(v, options, extra, parser)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="only this experiment's rows")
    parser.add_argument("--tag", help="only rows with this tag")


# -- reading the history ----------------------------------------------------------------------------


def _history_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rows", nargs="?", metavar="N", help="rows to show (default 20)")
    parser.add_argument("-n", dest="n_rows", help=argparse.SUPPRESS)
    _filters(parser)


@verb("show the newest requests", "[N] [--experiment NAME] [--tag TAG]", _history_options)
def history(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    """The newest N rows (read without the rest)."""
    from flux_nb.notebook import selection, tables  # pandas loads with the first table, not at %load_ext

    rows = options.rows or options.n_rows or "20"
    if not rows.isdigit():
        raise ValidationError(
            f"{front.prog} history takes one number of rows, got {rows!r} (usage: {front.prog} history "
            f"{VERBS['history'].usage})"
        )
    limit = int(rows)
    frame = session.store.tail(limit, **selection.filters(options.experiment, options.tag))
    empty = f"no matching rows in {session.history_dir}" if front.cli else tables.EMPTY_HISTORY
    return Shown(
        lambda: tables.history_text(frame, limit=limit, empty=empty), lambda: tables.history_html(frame, limit=limit)
    )


HERE_AND_ALL = "here: the requests of this notebook; all: every request in the history folder"


@verb("credits by model and backend, billed and not billed apart", "[--experiment NAME] [--tag TAG]", _filters)
def cost(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    """Credits by model and backend (summed in SQL); in a notebook, its own share beside the whole history's."""
    from flux_nb.notebook import selection, tables  # pandas loads with the first table, not at %load_ext

    summary = selection.cost_summary(session, options.experiment, options.tag, everywhere=front.cli)
    charged = session.store.charged(experiment=options.experiment, tag=options.tag)
    note = HERE_AND_ALL if "notebook_requests" in summary.columns and len(summary) else ""
    return Shown(
        lambda: "\n\n".join(
            filter(None, [(f"{note}\n" if note else "") + tables.cost_text(summary), tables.charged_text(charged)])
        ),
        lambda: (
            (f'<div style="font-size:12px">{html.escape(note)}</div>' if note else "")
            + tables.cost_html(summary)
            + tables.charged_html(charged)
        ),
    )


GRID_USAGE = (
    "[--x FIELD [--y FIELD]] [--z FIELD] [--where EXPR] [--experiment NAME] [--tag TAG] [--label FIELD[,FIELD]] "
    "[--sort FIELD] [--save PATH]"
)


def _grid_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--x", help="field across (default seed)")
    parser.add_argument("--y", help="field down (default prompt)")
    parser.add_argument("--z", help="field that makes pages (one PNG each)")
    parser.add_argument("--where", help="pandas query on the history, e.g. \"model == 'flux-2-pro' and seed > 3\"")
    parser.add_argument("--save", help="PNG path (default: a new file in the history's grids folder)")
    parser.add_argument("--label", help="fields written under each image, e.g. model,seed")
    parser.add_argument("--sort", help="field the values of each axis are sorted by")
    _filters(parser)


@verb("a grid of history images (saved as PNG outside a notebook)", GRID_USAGE, _grid_options)
def grid(session: Flux, options: argparse.Namespace, front: Front) -> Any:
    """A grid of history records (seeds across, prompts down by default).

    ``--where`` is a pandas query expression; its ``column == value`` parts are filtered in SQL first
    (see ``selection``). Outside a notebook the grid is saved as a PNG (``--save PATH``, else in the
    history folder) and its path said.
    """
    from flux_nb.core.made_from import with_references
    from flux_nb.grids import grid as draw
    from flux_nb.notebook import selection  # pandas loads with the first table, not at %load_ext

    if options.x is None and options.y is not None:
        raise ValidationError(
            f"{front.prog} grid --y {options.y} needs --x too (e.g. --x seed --y {options.y}); "
            "with neither, the grid is --x seed --y prompt"
        )
    x, y = (options.x, options.y) if options.x is not None else ("seed", "prompt")
    frame = selection.select(session, options.where, **selection.filters(options.experiment, options.tag))
    label = [name for name in (options.label or "").split(",") if name]
    result = draw(with_references(frame), x=x, y=y, z=options.z, label=label, sort=options.sort)
    target = options.save
    if target is None and not front.rich:
        target = free_path(Path(session.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = save_grid(result, target, frame) if target else None
    if front.rich:
        return result
    paths = saved if isinstance(saved, list) else [saved]
    return Shown(lambda: "\n".join(front.say(f"grid saved to {p}") for p in paths))


# -- sending again ----------------------------------------------------------------------------------


def _replay_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="a record id (see history) or an image file flux_nb wrote")


@verb("send a recorded request again, and say whether the image matched", "ID_OR_IMAGE", _replay_options, sends=True)
def replay(session: Flux, options: argparse.Namespace, front: Front) -> Any:
    """A record again (shown beside the old one, saying whether the images match), or the request in an image."""
    target = options.target
    if Path(target).is_file():
        new = session.replay(target)
        if new.ok and front.rich:  # the file and its replay side by side, with the byte-identity line
            from flux_nb.notebook.compare import file_replay

            return file_replay(Path(target), new)
        title = f"replay of {target}: record {new.record_id}"
        return Shown(
            lambda: f"{title}\n{render.result_text(new)}",
            lambda: f"<b>{html.escape(title)}</b><br/>{render.result_html(new)}",
            [new],
        )
    old = session.result_of(target)
    new = session.replay(target)
    titles = f"record {old.record_id}", f"replay {new.record_id}"
    return Shown(
        lambda: render.side_by_side_text(old, new, *titles),
        lambda: render.side_by_side_html(old, new, *titles),
        [new],
    )


def _resume_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--unsent", action="store_true", help="also send requests that were never sent")


@verb("finish tasks a stopped process left open", "[--unsent]", _resume_options, sends=True)
def resume(session: Flux, options: argparse.Namespace, front: Front) -> Shown | None:
    results = session.resume(front.observer(), unsent=options.unsent)
    unknown = sum(r.status == "unknown" for r in results)
    unsent = len(session.unsent())
    lines = [render.result_text(r) for r in results] if front.cli else []
    if not results and not unsent and not results.elsewhere:
        lines.append(front.say("nothing to resume: no task is pending"))
    if unknown:
        lines.append(
            front.say(
                f"{unknown} submit(s) were cut off mid-send: they may have created a task, so they are marked "
                f"unknown and not resent ({front.prog} replay ID sends one again on purpose)"
            )
        )
    if unsent:
        lines.append(
            front.say(f"{unsent} request(s) were never sent before their process stopped: {front.prog} resume --unsent")
        )
    if note := results.note():
        lines.append(front.say(note))
    return Shown(lambda: "\n".join(lines), results=results) if lines else None


# -- review and hand-over ---------------------------------------------------------------------------


def stars_of(text: str) -> int | None:
    """A star count from text: 0 to 5, or ``none`` to clear (neutral message on anything else)."""
    if text.lower() in ("none", "clear"):
        return None
    if not text.isdigit() or not 0 <= int(text) <= 5:
        raise ValidationError(f"rating {text!r} is not a whole number of stars from 0 to 5 (or none to clear it)")
    return int(text)


def _count(ids: list[str]) -> str:
    return f"{len(ids)} image{'s' if len(ids) != 1 else ''}"


def _done(front: Front, text: str) -> Shown:
    return Shown(lambda: front.say(text))


def _words(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", help="record ids, then what the verb takes")


@verb("rate images 0-5 stars", "ID [ID...] 0-5 (none clears)", _words)
def rate(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    """``rate ID [ID...] STARS``: 0 to 5 stars (``none`` clears)."""
    words = options.words
    if len(words) < 2:
        raise ValidationError(f"{front.prog} rate takes record ids then stars: {front.prog} rate ID [ID...] 0-5 "
                              "(none clears)")  # fmt: skip
    stars = stars_of(words[-1])
    session.rate(words[:-1], stars)
    return _done(front, f"rated {_count(words[:-1])} {'(cleared)' if stars is None else f'{stars} stars'}")


def _note_options(parser: argparse.ArgumentParser) -> None:
    _words(parser)
    parser.add_argument("--clear", action="store_true", help="remove the note")


@verb("a note on an image", "ID TEXT (or ID --clear)", _note_options)
def note(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    words = options.words
    if not words or (len(words) < 2 and not options.clear):
        raise ValidationError(f"{front.prog} note takes a record id then the text: {front.prog} note ID TEXT "
                              "(or --clear)")  # fmt: skip
    text = None if options.clear else " ".join(words[1:])
    session.note(words[0], text)
    return _done(front, f"note {'cleared' if text is None else 'kept'} on {words[0]}")


def _tag_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", help="record ids, then +TAG to add and -TAG to remove")
    parser.add_argument("--add", action="append", default=[], metavar="TAG", help="tag to add (repeatable)")
    parser.add_argument("--remove", action="append", default=[], metavar="TAG", help="tag to remove (repeatable)")


@verb("add or remove review tags", "ID [ID...] +TAG -TAG", _tag_options, minus_words=True)
def tag(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    """``tag ID [ID...] +add -remove`` (or ``--add TAG``, ``--remove TAG``)."""
    ids = [w for w in options.words if not w.startswith("+")]
    add = [*options.add, *(w[1:] for w in options.words if w.startswith("+"))]
    remove = options.remove
    if not ids or not (add or remove):
        raise ValidationError(f"{front.prog} tag takes record ids then +tag to add, -tag to remove: "
                              f"{front.prog} tag ID +best -draft")  # fmt: skip
    session.tag(ids, add=add, remove=remove)
    changes = [f"+{t}" for t in add] + [f"-{t}" for t in remove]
    return _done(front, f"tags {' '.join(changes)} on {_count(ids)}")


def _favourite_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("words", nargs="*", metavar="ID", help="record ids")
    parser.add_argument("--off", action="store_true", help="unmark them")


@verb("mark images as favourites", "ID [ID...] [--off]", _favourite_options)
def favourite(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    ids = options.words
    if not ids:
        raise ValidationError(f"{front.prog} favourite takes record ids: {front.prog} favourite ID [ID...] [--off]")
    session.favourite(ids, on=not options.off)
    return _done(front, f"{_count(ids)} {'no longer' if options.off else 'marked'} favourite")


def _experiment_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="the experiment new rows are recorded in")
    parser.add_argument("--off", action="store_true", help="record new rows without one")


@verb("show or set the experiment new rows are recorded in", "[NAME|--off]", _experiment_options, notebook_only=True)
def experiment(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    if options.off or options.name is not None:
        session.experiment = "" if options.off else options.name
    name = session.experiment
    if not name:
        return _done(front, f"no experiment: new rows are recorded without one ({front.prog} experiment NAME sets one)")
    return _done(front, f"experiment {name!r}: every new row is recorded in it ({front.prog} experiment --off ends it)")


def _export_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", help="file to write")
    _filters(parser)


def _report_options(parser: argparse.ArgumentParser) -> None:
    _export_options(parser)
    parser.add_argument("--title", help="page title (default: the experiment or tag)")
    parser.add_argument("--grids", default="batches", help="batches (one grid each), none, or record ids ID,ID")


def _selected(session: Flux, options: argparse.Namespace, what: str) -> Any:
    """The rows ``--experiment``/``--tag`` select; none is said in words, before anything is written."""
    frame = session.history(experiment=options.experiment, tag=options.tag)
    if frame.empty:
        chosen = " and ".join(f"{k} {v!r}" for k, v in (("experiment", options.experiment), ("tag", options.tag)) if v)
        where = f"with {chosen}" if chosen else "at all"
        raise ValidationError(f"nothing to {what}: the history in {session.history_dir} has no rows {where}")
    return frame


@verb("write history rows as a self-contained .zip bundle", "PATH [--experiment NAME] [--tag TAG]", _export_options)
def export(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    frame = _selected(session, options, "export")
    written = session.export(frame, options.path)
    return _done(front, f"exported {len(frame)} row(s) to {written or options.path}")


@verb(
    "write history rows as one self-contained HTML page",
    "PATH [--experiment NAME] [--tag TAG] [--title TEXT] [--grids batches|none|ID,ID]",
    _report_options,
)
def report(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    frame = _selected(session, options, "report")
    title = options.title or options.experiment or options.tag or "flux_nb report"
    grids: str | list[str] = options.grids if options.grids in ("batches", "none") else options.grids.split(",")
    written = session.report(frame, options.path, title=title, grids=grids)
    return _done(front, f"report of {len(frame)} row(s) written to {written or options.path}")


# -- the notebook's own -----------------------------------------------------------------------------


@verb("ask for the API key (kept in memory only)", notebook_only=True)
def login(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    key = getpass.getpass("BFL API key (kept in memory only): ")
    session.login(key)
    return Shown(lambda: front.say("key set for this session (not saved anywhere)"))


@verb("the clickable panel (also flux.panel())", notebook_only=True)
def panel(session: Flux, options: argparse.Namespace, front: Front) -> Any:
    if not front.rich:
        raise ValidationError(
            "the panel needs a notebook front end (JupyterLab, Notebook 7, VS Code); in a terminal use %%flux cells"
        )
    return session.panel()


def save_grid(result: Any, target: str | Path, frame: Any = None) -> Path | list[Path]:
    """Save a grid (with ``frame``, the rows it was drawn from: each cell's request written into the PNG),
    turning an unwritable target into one clear line."""
    from flux_nb.export.grids import save_grid as save_with_requests

    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        if frame is not None:
            saved = save_with_requests(result, frame, target)
            return saved if isinstance(result, list) else saved[0]
        return result.save(target)
    except OSError as exc:
        raise ValidationError(f"could not save the grid to {target}: {exc.strerror or exc}") from None


@verb("the account's balance (GET /v1/credits)", sends=True)
def credits(session: Flux, options: argparse.Namespace, front: Front) -> Shown:
    """The balance in one line, said "not billed" on a server that bills nothing."""
    balance = session.credits()
    where = "" if session.backend.billed else " (not billed: this server's own figure)"
    line = f"balance {balance:.2f} credits{where}"
    return Shown(lambda: front.say(line))


def _compare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="+", help="two or more record ids")


@verb("two or more images with a slider, a flip, side by side and a difference", "ID ID [ID...]", _compare_options,
      notebook_only=True)  # fmt: skip
def compare(session: Flux, options: argparse.Namespace, front: Front) -> Any:
    if len(options.ids) < 2:
        raise ValidationError(f"{front.prog} compare takes two or more record ids (see {front.prog} history)")
    return session.compare(*options.ids)


@verb("the whole history as pages of thumbnails, with filters and reviews", notebook_only=True)
def browse(session: Flux, options: argparse.Namespace, front: Front) -> Any:
    return session.browse()


def free_path(folder: Path, stem: str) -> Path:
    """``folder/stem.png``, or ``stem-2.png``, ``stem-3.png``... if that is taken."""
    path, n = folder / f"{stem}.png", 1
    while path.exists() or any(folder.glob(f"{path.stem}_*.png")):  # GridPages adds _z_value to the name
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path
