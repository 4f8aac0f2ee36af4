"""The ``%%flux`` cell magic, the ``%flux`` line magics, and ``load_ipython_extension``.

Thin on purpose: parse and check the input, call the session, hand results to display.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import keyword
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display
from IPython.utils.process import arg_split

from flux_nb import protocol
from flux_nb.core import templates
from flux_nb.core.axes import axes_of_options, split_prompts
from flux_nb.core.events import Finished
from flux_nb.core.results import Result, SweepResult
from flux_nb.core.templates import PromptTemplate
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook import commands, render
from flux_nb.notebook.live_history import HISTORY_VARIABLE, HistoryVariable
from flux_nb.notebook.progress import BatchProgress
from flux_nb.notebook.render import caption, show_error
from flux_nb.session import Flux, configured_keys, notebook_name

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

SESSION_VARIABLE = "flux"
#: A word on the %%flux line that reads as an option: -s, --seed, --seed=5 (not -5, a negative number).
OPTION = re.compile(r"^--?[A-Za-z]")
CELL_MAGIC = re.compile(r"^%%flux(\s|$)")


def fill_template(body: str, namespace: dict[str, Any], keys: Sequence[str] = ()) -> PromptTemplate:
    """A prompt from the cell: ``{name}`` filled from the namespace (lists sweep), ``{a|b}`` alternatives."""
    return templates.fill(body, namespace, keys=keys)


def check_variable_name(name: str, namespace: dict[str, Any] | None = None) -> str:
    """``name`` if a result can be stored under it (``-o NAME``), else a ValidationError."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValidationError(
            f"-o/--out {name!r} is not a usable variable name: use letters, digits and _, "
            "not starting with a digit and not a Python keyword (e.g. -o pic)"
        )
    held = (namespace or {}).get(name)
    if name in (SESSION_VARIABLE, HISTORY_VARIABLE) or isinstance(held, Flux):
        what = "the history DataFrame" if name == HISTORY_VARIABLE else "the flux_nb session"
        raise ValidationError(f"-o/--out {name!r} would overwrite {what}; pick another name (e.g. -o pic)")
    return name


def resolve_image(value: str, namespace: dict[str, Any], keys: Sequence[str] = ()) -> Any:
    """A ``--image`` value: a variable or an expression on one (``s1[0]``, ``results.image``), a URL, or a path."""
    found = templates.reference(value, namespace, what=f"-i {value}", keys=keys)
    if found is templates.NOT_A_REFERENCE:
        return value
    if isinstance(found, SweepResult):
        raise ValidationError(
            f"-i {value} is a sweep of {len(found)} results; pick one (e.g. -i {value}[0]) or give -i once for each"
        )
    return found


def check_options(parser: argparse.ArgumentParser, line: str) -> None:
    """Refuse unknown options (naming the nearest one) and value options given twice, before parsing."""
    actions = parser._option_string_actions
    seen: dict[str, str] = {}
    words = arg_split(line, strict=False)
    skip = False
    for word in words:
        if skip and not OPTION.match(word):
            skip = False
            continue
        skip = False
        if not OPTION.match(word):
            continue
        option, inline = (word.split("=", 1)[0], True) if word.startswith("--") and "=" in word else (word, False)
        if option not in actions and not option.startswith("--") and option[:2] in actions:
            option, inline = option[:2], True  # -s5
        action = actions.get(option) or _abbreviation(actions, option)
        if action is None:
            longs = {o.lstrip("-"): o for o in actions if o.startswith("--")}
            near = difflib.get_close_matches(option.lstrip("-"), list(longs), n=1, cutoff=0.6)
            hint = f"did you mean {longs[near[0]]}?" if near else "see %%flux? for the options"
            raise ValidationError(f"%%flux: unknown option {option}; {hint}")
        takes_value = action.nargs != 0
        skip = takes_value and not inline
        if takes_value and not isinstance(action, argparse._AppendAction):
            if action.dest in seen:
                raise ValidationError(
                    f"{seen[action.dest]} is given twice; give it once (several values go in one list, "
                    "e.g. --size 512x512,1024x768)"
                )
            seen[action.dest] = "/".join(action.option_strings)


def _abbreviation(actions: dict[str, argparse.Action], option: str) -> argparse.Action | None:
    """The action an abbreviation names (``--asp`` for ``--aspect``, as argparse allows); ambiguous ones are refused."""
    if not option.startswith("--"):
        return None
    matches = sorted(o for o in actions if o.startswith(option))
    if len(matches) > 1:
        raise ValidationError(f"%%flux: {option} could be {', '.join(matches)}; write the option in full")
    return actions[matches[0]] if matches else None


@magics_class
class FluxMagics(Magics):
    """``%%flux`` generates; ``%flux`` manages history, replay, resume, cost, grids and login."""

    shell: InteractiveShell  # always set: the magics are registered on a running shell

    def __init__(self, shell: Any, session: Flux) -> None:
        super().__init__(shell)
        self.session = session

    @magic_arguments()
    @argument("-s", "--seed", help="seed, or a sweep: 1,2,3 or 1:8 (inclusive) or 0:100:25")
    @argument("-W", "--width", help="width in pixels (multiple of 16), or a list: 512,1024")
    @argument("-H", "--height", help="height in pixels (multiple of 16), or a list")
    @argument("--size", help="WIDTHxHEIGHT, or a list: 512x512,1024x768")
    @argument("--aspect", help="aspect ratio like 16:9; picks a valid size near 1 megapixel")
    @argument(
        "-i",
        "--image",
        action="append",
        help="reference image: path, URL, variable or an expression on one (s1[0], results.image); repeatable",
    )
    @argument("--safety", help="safety tolerance 0 (strict) to 5, or a list")
    @argument("--format", choices=list(protocol.OUTPUT_FORMATS), help="output format")
    @argument("-m", "--model", action="append", help="model, or several: flux-2-klein-4b,flux-2-pro")
    @argument("--steps", help="flux-2-flex only: steps 1..50, or a list")
    @argument("--guidance", help="flux-2-flex only: guidance 1.5..10 (the API's default 5), or a list")
    @argument(
        "--prompt-upsampling",
        choices=["on", "off"],
        help="flux-2-flex only: let BFL rewrite the prompt (the API's default is on)",
    )
    @argument(
        "--vary",
        action="append",
        help="search and replace over the prompt: NAME=FIND,REPLACEMENT,... (the first value is the text to find; "
        "repeatable)",
    )
    @argument("-o", "--out", help="store the result (or the sweep) in this variable")
    @argument("-t", "--tag", help="free label stored in the history")
    @argument("--fresh", action="store_true", help="send even if an identical request is in the history cache")
    @argument("--yes", action="store_true", help="send a batch even if its estimate passes Flux.confirm_over")
    @argument("--webhook", help="URL the API posts the finished task to")
    @argument(
        "command",
        nargs="*",
        help="line magic: history [N] | replay ID | resume [--unsent] | cost | grid | login | panel",
    )
    @line_cell_magic
    def flux(self, line: str, cell: str | None = None) -> Any:
        """Generate FLUX.2 images with the cell body as the prompt.

        The prompt goes on the lines below ``%%flux``; options go on the ``%%flux`` line. Several
        prompts in one cell are separated by a line holding only ---. ``{name}`` in the prompt is
        filled from the notebook's variables (plain names only): text and numbers are written in;
        a list, tuple, range or pandas Series sweeps, as an axis named after the variable.
        ``{a|b|c}`` sweeps the alternatives (axes alt1, alt2, ... in order); ``{{`` and ``}}`` are
        literal braces. ``--vary NAME=FIND,REPLACEMENT,...`` replaces FIND in the prompt by each
        value in turn (an axis NAME). Any list or range of options sweeps too: every combination is
        generated concurrently and shown as a labelled grid (in a terminal: listed in grid order and
        saved as a PNG).

        Line forms: ``%flux history [N]``, ``%flux replay ID``, ``%flux resume [--unsent]``,
        ``%flux cost``, ``%flux grid [--x FIELD [--y FIELD]] [--z FIELD] [--where EXPR] [--save PATH]``
        (default: --x seed --y prompt),
        ``%flux login``, ``%flux panel``.
        """
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except FluxError as exc:
            show_error(exc)
            return None

    # -- %%flux -------------------------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        check_options(self.flux.parser, line)
        args = parse_argstring(self.flux, line)
        if args.command:
            raise ValidationError(_misplaced(args.command))
        ns = self.shell.user_ns
        if args.out is not None:
            check_variable_name(args.out, ns)
        if not cell.strip():
            raise ValidationError("the cell holds no prompt: write it on the lines below %%flux")
        keys = configured_keys(self.session)
        vary = templates.parse_vary([unquote(v) for v in args.vary]) if args.vary else None
        if vary:
            templates.replacement_axes(vary, keys)
        prompts = [fill_template(p, ns, keys) for p in split_prompts(cell)]
        axes = axes_of_options(args)
        batch = self.session.batch(
            prompts,
            axes=axes,
            images=[resolve_image(unquote(v), ns, keys) for v in args.image or []] or None,
            output_format=args.format,
            webhook_url=args.webhook,
            tag=args.tag,
            fresh=args.fresh,
            vary=vary,
            **({} if args.prompt_upsampling is None else {"prompt_upsampling": args.prompt_upsampling == "on"}),
        )
        varies = len(batch) > 1 or any(len(axis.values) > 1 for axis in axes)
        rich = render.is_rich()
        progress = BatchProgress if rich or not varies else GridOrderProgress
        observer = progress(server=self.session.endpoint)
        results = self._run(batch, observer, confirm=args.yes)
        outcome: Result | SweepResult = results[0] if len(results) == 1 and not varies else SweepResult(results)
        if isinstance(outcome, SweepResult):
            if rich:
                display(outcome)
            else:
                print_sweep(outcome, observer, Path(self.session.history_dir))
        if args.out:
            ns[args.out] = outcome

    def _run(self, batch: list[Any], observer: BatchProgress, *, confirm: bool) -> list[Result]:
        """Run the batch; ``--yes`` goes ahead past ``Flux.confirm_over`` where the session has that guard."""
        if "confirm" in inspect.signature(self.session.run).parameters:
            return self.session.run(batch, observer, confirm=confirm)
        return self.session.run(batch, observer)

    # -- %flux ... ----------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise ValidationError(f"%flux {line}: {exc} (close the quote)") from None
        if not words:
            raise ValidationError("%flux needs a command: history, replay, resume, cost, grid, login or panel")
        command, rest = words[0], words[1:]
        handler = commands.COMMANDS.get(command)
        if handler is None:
            raise ValidationError(
                f"unknown %flux command {command!r}: use {', '.join(commands.COMMANDS)}; to generate, "
                "write the prompt on the lines below %%flux (two percent signs, options on that line)"
            )
        shown = handler(self.session, rest)
        if isinstance(shown, commands.Shown) and not (shown.has_html and render.is_rich()):
            print(repr(shown))  # plain lines, and a terminal's text forms: never HTML
        elif shown is not None:
            display(shown)
        return None


def unquote(text: str) -> str:
    """An option value without the quotes around it (the magic's line keeps them): "red fox" -> red fox."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def keep_empty_cells(lines: list[str]) -> list[str]:
    """Let a ``%%flux`` cell with nothing below its line reach the magic, which says where the prompt goes.

    (IPython would stop it first with "the cell body is empty".)
    """
    if lines and CELL_MAGIC.match(lines[0]) and not "".join(lines[1:]).strip():
        return [lines[0].rstrip("\n") + "\n", "\n"]
    return lines


# IPython's check_complete skips such transformers: a terminal's ``%%flux`` line then waits for its prompt.
keep_empty_cells.has_side_effects = True  # type: ignore[attr-defined]


def _misplaced(words: list[str]) -> str:
    """Why words on the ``%%flux`` line are refused, and where they go."""
    if words[0] in commands.COMMANDS:
        return f"{words[0]} is a line magic: write %flux {' '.join(words)} (one percent sign) in a cell of its own"
    return (
        f"unexpected words on the %%flux line: {' '.join(words)!r}; the prompt goes on the lines below %%flux "
        "(options stay on the %%flux line)"
    )


class GridOrderProgress(BatchProgress):
    """Terminal progress for a sweep: the live line only; the results are listed in grid order at the end."""

    def finished(self, event: Finished) -> None:
        self.running.discard(event.index)
        self.results[event.index] = event.result
        self._redraw(force=True)
        if len(self.results) == self.total:
            self._clear_terminal()


def print_sweep(sweep: SweepResult, progress: BatchProgress, history_dir: Path) -> None:
    """A sweep in a terminal: one line per grid cell, in grid order, then the grid saved as a PNG."""
    try:
        drawn = sweep.grid()
    except FluxError as exc:  # no grid to draw: list the results as they were asked for
        for result in sweep:
            print(_cell_line(", ".join(f"{k}: {v}" for k, v in result.labels.items()), result))
        print(f"flux_nb: {progress.status_line()} (no grid: {exc})")
        return
    pages = list(drawn) if isinstance(drawn, list) else [drawn]
    by_id = {r.record_id: r for r in sweep}
    for page in pages:
        where = [f"{page.z}: {_value_text(page.z_value)}"] if page.z else []
        for (x, y), record_id in page.cells.items():
            label = " · ".join([*where, *(f"{n}: {_value_text(v)}" for n, v in ((page.x, x), (page.y, y)) if n)])
            found = by_id.get(record_id) if record_id else None
            print(_cell_line(label, found) if found else f"{label}: missing")
    print(f"flux_nb: {progress.status_line()}")
    target = commands.free_path(history_dir / "grids", f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = commands.save_grid(drawn, target)
    for path in saved if isinstance(saved, list) else [saved]:
        print(f"flux_nb: grid saved to {path}")


def _value_text(value: Any) -> str:
    """A grid value as a line reads it: sizes as 512×512."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}×{value[1]}"
    return str(value)


def _cell_line(label: str, result: Result) -> str:
    if result.ok:
        return f"{label}: saved {result.path} ({caption(result)})"
    return f"{label}: {result.status}: {result.error_message or 'no image'} (record {result.record_id})"


def _show_flux_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    """Show a FluxError raised in a cell as one clear line, not a traceback."""
    if isinstance(value, FluxError):
        show_error(value)
        return None
    return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext flux_nb``: register the magics, the session and ``flux_history``."""
    session = Flux(parent=ipython)
    session.notebook_detector = lambda: notebook_name(ipython.user_ns)
    _follow_display_settings(session)
    ipython.configurables.append(session)
    ipython.register_magics(FluxMagics(ipython, session))
    existing = ipython.user_ns.get(SESSION_VARIABLE)
    if existing is None or isinstance(existing, Flux):
        ipython.push({SESSION_VARIABLE: session})
    ipython.set_custom_exc((FluxError,), _show_flux_error)
    if keep_empty_cells not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(keep_empty_cells)
    session.observer_factory = lambda: BatchProgress(server=session.endpoint)  # flux.sweep(...) shows it too
    history = HistoryVariable(ipython, session)
    session.add_listener(history.after_request)
    ipython.events.register("pre_run_cell", history.before_cell)
    try:
        history.load()
    except FluxError as exc:  # the magics still load; flux_history follows once the history can be read
        show_error(exc)


def _follow_display_settings(session: Flux) -> None:
    """Keep the notebook's rendering in step with ``Flux.thumbnail_size`` and ``Flux.thumbnail_format``."""

    def update(change: Any = None) -> None:
        render.settings.thumbnail_size = session.thumbnail_size
        render.settings.thumbnail_format = session.thumbnail_format

    update()
    session.observe(update, names=["thumbnail_size", "thumbnail_format"])
