"""The ``%%flux`` cell magic, the ``%flux`` line magics, and loading and unloading the extension.

Thin on purpose: read the line (options from ``command_line``, verbs from ``commands``), fill the prompt from
the notebook, call the session, hand results to display. A failure fails its cell, shown as one line.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import keyword
import re
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.display import display
from IPython.utils.process import arg_split

from flux_nb.core import templates
from flux_nb.core.axes import split_prompts
from flux_nb.core.events import Finished
from flux_nb.core.results import Result, SweepResult
from flux_nb.core.templates import PromptTemplate
from flux_nb.errors import BatchInterrupted, FluxError, ValidationError
from flux_nb.notebook import commands, render
from flux_nb.notebook.command_line import CommandParser, Once, add_request_options, request_batch, vary_of
from flux_nb.notebook.hints import in_notebook_words
from flux_nb.notebook.live_history import HISTORY_VARIABLE, HistoryVariable
from flux_nb.notebook.progress import BatchProgress
from flux_nb.notebook.render import caption, show_error, shown_path
from flux_nb.session import Flux, configured_keys, notebook_name

if TYPE_CHECKING:
    from IPython.core.interactiveshell import InteractiveShell

SESSION_VARIABLE = "flux"
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


class FluxMagicError(Exception):
    """A failed ``%flux``/``%%flux``: the cell fails (Run All stops) and IPython shows one line, not a traceback."""

    def __init__(self, error: FluxError) -> None:
        super().__init__(str(error))
        self.error = error

    def _render_traceback_(self) -> list[str]:
        return [f"flux_nb: {in_notebook_words(self.error)}"]


class FluxUsageError(FluxMagicError, UsageError):
    """Bad input to the magic (an option, a verb, a value): nothing was sent."""


def failure(error: FluxError) -> FluxMagicError:
    """The exception a failed magic raises for ``error``."""
    return FluxUsageError(error) if isinstance(error, ValidationError) else FluxMagicError(error)


def cell_parser() -> CommandParser:
    """The ``%%flux`` line: the request options ``flux-nb generate`` takes too, and ``-o`` for a variable."""
    parser = CommandParser("%%flux", help_hint="%%flux?")
    add_request_options(parser)
    parser.add_argument("-o", "--out", action=Once, help="store the result (or the sweep) in this variable")
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    return parser


GUIDE = """Generate FLUX.2 images with the cell body as the prompt.

The prompt goes on the lines below ``%%flux``; options go on the ``%%flux`` line. Several
prompts in one cell are separated by a line holding only ---. ``{name}`` in the prompt is
filled from the notebook's variables (plain names only): text and numbers are written in;
a list, tuple, range or pandas Series sweeps, as an axis named after the variable.
``{a|b|c}`` sweeps the alternatives (axes alt1, alt2, ... in order; ``{light=dawn|dusk}``
names the axis light); ``{{`` and ``}}`` are literal braces. ``--vary NAME=FIND,REPLACEMENT,...``
replaces FIND in the prompt by each value in turn (an axis NAME). Any list or range of options
sweeps too: every combination is generated concurrently and shown as a labelled grid (in a
terminal: listed in grid order and saved as a PNG).

The magics use the notebook's ``flux`` variable when it holds a Flux (for example
``flux = Flux(endpoint=..., api_key=...)`` typed in a cell), else the session ``%load_ext`` made.
"""


def magic_help() -> str:
    """``%%flux?`` and ``%flux?``: the guide, every option, and the verbs (the list a mistyped verb gets)."""
    verbs = "\n".join(f"  %flux {v.name} {v.usage}".rstrip() + f"\n      {v.summary}" for v in commands.VERBS.values())
    return f"{GUIDE}\n{cell_parser().format_help()}\nLine forms, %flux VERB:\n{verbs}\n"


def verb_names() -> str:
    return ", ".join(commands.names(commands.Front()))


@magics_class
class FluxMagics(Magics):
    """``%%flux`` generates; ``%flux VERB`` runs a verb of ``commands.VERBS``."""

    shell: InteractiveShell  # always set: the magics are registered on a running shell

    def __init__(self, shell: Any, session: Flux, history: HistoryVariable) -> None:
        super().__init__(shell)
        self.session, self.history = session, history

    @line_cell_magic
    def flux(self, line: str, cell: str | None = None) -> Any:
        try:
            if cell is None:
                return self._line(line)
            return self._cell(line, cell)
        except BatchInterrupted:
            raise  # an interrupt stays a KeyboardInterrupt; the extension shows it as one line
        except FluxError as exc:
            raise failure(exc) from None

    def current(self) -> Flux:
        """The notebook's ``flux`` when it holds a Flux (one made in a cell included), else the extension's own."""
        held = self.shell.user_ns.get(SESSION_VARIABLE)
        return held if isinstance(held, Flux) else self.session

    # -- %%flux -------------------------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        options = cell_parser().parse(arg_split(line, strict=False))
        if options.words:
            raise ValidationError(_misplaced(options.words))
        ns = self.shell.user_ns
        if options.out is not None:
            check_variable_name(options.out, ns)
        if not cell.strip():
            raise ValidationError("the cell holds no prompt: write it on the lines below %%flux")
        session = self.current()
        keys = configured_keys(session)
        options.vary = [unquote(v) for v in options.vary or []]
        vary = vary_of(options, keys)
        prompts = [fill_template(p, ns, keys) for p in split_prompts(cell)]
        images = [resolve_image(unquote(v), ns, keys) for v in options.image or []]
        batch, varies = request_batch(session, prompts, options, images, vary)
        rich = render.is_rich()
        progress = BatchProgress if rich else GridOrderProgress if varies else TerminalProgress
        observer = progress(server=session.endpoint)
        try:
            results = session.run(batch, observer, confirm=options.yes)
        finally:
            if isinstance(observer, TerminalProgress):
                observer.stop()
        outcome: Result | SweepResult = results[0] if len(results) == 1 and not varies else SweepResult(results)
        if isinstance(outcome, SweepResult):
            if rich:
                display(outcome)
            else:
                print_sweep(outcome, observer, Path(session.history_dir))
        if options.out:
            ns[options.out] = outcome
        if isinstance(outcome, Result):
            outcome.raise_for_error()  # as flux.generate does: the card shows it, and the cell fails (Run All stops)

    # -- %flux ... ----------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise ValidationError(f"%flux {line}: {exc} (close the quote)") from None
        if not words:
            raise ValidationError(f"%flux needs a command: {verb_names()} (%flux? says what each does)")
        command, rest = words[0], words[1:]
        verb = commands.VERBS.get(command)
        if verb is None:
            near = difflib.get_close_matches(command, list(commands.VERBS), n=1)
            meant = f" (did you mean {near[0]}?)" if near else ""
            raise ValidationError(
                f"unknown %flux command {command!r}{meant}: use {verb_names()}; to generate, "
                "write the prompt on the lines below %%flux (two percent signs, options on that line)"
            )
        front = commands.Front(rich=render.is_rich())
        shown = verb.run(self.current(), commands.parse(verb, rest, front), front)
        if isinstance(shown, commands.Shown) and not (shown.has_html and front.rich):
            print(repr(shown))  # plain lines, and a terminal's text forms: never HTML
        elif shown is not None:
            display(shown)
        return None

    def unload(self) -> None:
        """Take back what loading added: the magics, the session (closed), ``flux``, ``flux_history``, hooks."""
        shell = self.shell
        for kind in ("line", "cell"):
            shell.magics_manager.magics[kind].pop("flux", None)
        shell.magics_manager.registry.pop(type(self).__name__, None)
        configurables: list[Any] = shell.configurables
        if self.session in configurables:
            configurables.remove(self.session)
        with contextlib.suppress(ValueError):
            shell.events.unregister("pre_run_cell", self.history.before_cell)
        if keep_empty_cells in shell.input_transformers_cleanup:
            shell.input_transformers_cleanup.remove(keep_empty_cells)
        if shell.custom_exceptions == CUSTOM_EXCEPTIONS:
            shell.set_custom_exc((), None)
        if shell.user_ns.get(SESSION_VARIABLE) is self.session:
            del shell.user_ns[SESSION_VARIABLE]
        shell.user_ns.pop(HISTORY_VARIABLE, None)
        self.session.close()


FluxMagics.flux.__doc__ = magic_help()


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
    if words[0] in commands.VERBS:
        return f"{words[0]} is a line magic: write %flux {' '.join(words)} (one percent sign) in a cell of its own"
    return (
        f"unexpected words on the %%flux line: {' '.join(words)!r}; the prompt goes on the lines below %%flux "
        "(options stay on the %%flux line)"
    )


class TerminalProgress(BatchProgress):
    """Terminal progress whose live line is cleared when the run stops, however it stops (Ctrl-C included), so
    what is said next starts on its own line."""

    def stop(self) -> None:
        self._clear_terminal()


class GridOrderProgress(TerminalProgress):
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
        print(f"flux_nb: grid saved to {shown_path(path)}")


def _value_text(value: Any) -> str:
    """A grid value as a line reads it: sizes as 512×512."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]}×{value[1]}"
    return str(value)


def _cell_line(label: str, result: Result) -> str:
    if result.ok:
        return f"{label}: saved {shown_path(result.path or '')} ({caption(result)})"
    return f"{label}: {result.status}: {result.error_message or 'no image'} (record {result.record_id})"


def _show_flux_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    """Show a FluxError raised in a cell (by the magics too) as one clear line, not a traceback."""
    error = value.error if isinstance(value, FluxMagicError) else value
    if isinstance(error, FluxError):
        show_error(error)
        return None
    return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


CUSTOM_EXCEPTIONS = (FluxError, FluxMagicError)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext flux_nb``: register the magics, the session and ``flux_history``."""
    session = Flux(parent=ipython)
    session.notebook_detector = lambda: notebook_name(ipython.user_ns)
    _follow_display_settings(session)
    ipython.configurables.append(session)
    history = HistoryVariable(ipython, session)
    ipython.register_magics(FluxMagics(ipython, session, history))
    existing = ipython.user_ns.get(SESSION_VARIABLE)
    if existing is None or isinstance(existing, Flux):
        ipython.push({SESSION_VARIABLE: session})
    ipython.set_custom_exc(CUSTOM_EXCEPTIONS, _show_flux_error)
    if keep_empty_cells not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.append(keep_empty_cells)
    session.observer_factory = lambda: BatchProgress(server=session.endpoint)  # flux.sweep(...) shows it too
    session.add_listener(history.after_request)
    ipython.events.register("pre_run_cell", history.before_cell)
    try:
        history.load()
    except FluxError as exc:  # the magics still load; flux_history follows once the history can be read
        show_error(exc)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext flux_nb`` (and the first half of ``%reload_ext``): the magics, hooks and session go."""
    magics = ipython.magics_manager.registry.get(FluxMagics.__name__)
    if isinstance(magics, FluxMagics):
        magics.unload()


def _follow_display_settings(session: Flux) -> None:
    """Keep the notebook's rendering in step with ``Flux.thumbnail_size`` and ``Flux.thumbnail_format``."""

    def update(change: Any = None) -> None:
        render.settings.thumbnail_size = session.thumbnail_size
        render.settings.thumbnail_format = session.thumbnail_format

    update()
    session.observe(update, names=["thumbnail_size", "thumbnail_format"])
