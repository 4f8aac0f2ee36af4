"""The ``%%flux`` cell magic, the ``%flux`` line magics, and ``load_ipython_extension``.

Thin on purpose: parse and check the input, call the session, hand results to display.
"""

from __future__ import annotations

import keyword
import shlex
import string
from collections.abc import Mapping
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from flux_nb import protocol
from flux_nb.core.axes import option_axes, split_prompts
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook import commands, render
from flux_nb.notebook.progress import BatchProgress
from flux_nb.notebook.render import show_error
from flux_nb.session import Flux, notebook_name

HISTORY_VARIABLE = "flux_history"
SESSION_VARIABLE = "flux"


class _Namespace(Mapping[str, Any]):
    """The user's namespace as a template source, with a clear error for unknown names."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self._ns = namespace

    def __getitem__(self, key: str) -> Any:
        if key not in self._ns:
            raise ValidationError(
                f"prompt template: {{{key}}} is not defined in the notebook (define it, or write {{{{{key}}}}} "
                "for literal braces)"
            )
        return self._ns[key]

    def __iter__(self) -> Any:
        return iter(self._ns)

    def __len__(self) -> int:
        return len(self._ns)


def fill_template(body: str, namespace: dict[str, Any]) -> str:
    """Fill ``{name}`` in a prompt from the namespace; ``{{`` and ``}}`` stay literal braces."""
    try:
        return string.Formatter().vformat(body, (), _Namespace(namespace))
    except FluxError:
        raise
    except (ValueError, IndexError, AttributeError, KeyError) as exc:
        raise ValidationError(f"prompt template could not be filled: {exc}") from None


def check_variable_name(name: str) -> str:
    """``name`` if a result can be stored under it (``-o NAME``), else a ValidationError."""
    if not name.isidentifier() or keyword.iskeyword(name):
        raise ValidationError(
            f"-o/--out {name!r} is not a usable variable name: use letters, digits and _, "
            "not starting with a digit and not a Python keyword (e.g. -o pic)"
        )
    return name


def resolve_image(value: str, namespace: dict[str, Any]) -> Any:
    """A ``--image`` value: a variable's image, a URL, or a path."""
    if value.isidentifier() and value in namespace:
        obj = namespace[value]
        return obj.image if isinstance(obj, Result) else obj
    return value


@magics_class
class FluxMagics(Magics):
    """``%%flux`` generates; ``%flux`` manages history, replay, resume, cost, grids and login."""

    def __init__(self, shell: Any, session: Flux) -> None:
        super().__init__(shell)
        self.session = session

    @magic_arguments()
    @argument("-s", "--seed", help="seed, or a sweep: 1,2,3 or 1:8 (inclusive) or 0:100:25")
    @argument("-W", "--width", help="width in pixels (multiple of 16), or a list: 512,1024")
    @argument("-H", "--height", help="height in pixels (multiple of 16), or a list")
    @argument("--size", help="WIDTHxHEIGHT, or a list: 512x512,1024x768")
    @argument("--aspect", help="aspect ratio like 16:9; picks a valid size near 1 megapixel")
    @argument("-i", "--image", action="append", help="reference image: path, URL or variable name (repeatable)")
    @argument("--safety", help="safety tolerance 0 (strict) to 5, or a list")
    @argument("--format", choices=list(protocol.OUTPUT_FORMATS), help="output format")
    @argument("-m", "--model", action="append", help="model, or several: flux-2-klein-4b,flux-2-pro")
    @argument("--steps", help="flux-2-flex only: steps 1..50, or a list")
    @argument("--guidance", help="flux-2-flex only: guidance 1.5..10, or a list")
    @argument("-o", "--out", help="store the result (or the sweep) in this variable")
    @argument("-t", "--tag", help="free label stored in the history")
    @argument("--fresh", action="store_true", help="send even if an identical request is in the history cache")
    @argument("--webhook", help="URL the API posts the finished task to")
    @argument(
        "command",
        nargs="*",
        help="line magic: history [N] | replay ID | resume [--unsent] | cost | grid | login | panel",
    )
    @line_cell_magic
    def flux(self, line: str, cell: str | None = None) -> Any:
        """Generate FLUX.2 images with the cell body as the prompt.

        Several prompts in one cell are separated by a line holding only ---. ``{name}`` in
        the prompt is filled from the notebook's variables. Any list or range sweeps: every
        combination is generated concurrently and shown as a labelled grid.

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
        args = parse_argstring(self.flux, line)
        if args.command:
            raise ValidationError(
                f"unexpected words on the %%flux line: {' '.join(args.command)!r}; "
                "the prompt goes on the lines below %%flux, options on the %%flux line"
            )
        if args.out is not None:
            check_variable_name(args.out)
        ns = self.shell.user_ns
        prompts = [fill_template(p, ns) for p in split_prompts(cell)]
        axes = option_axes(
            seed=args.seed,
            width=args.width,
            height=args.height,
            size=args.size,
            aspect=args.aspect,
            safety=args.safety,
            steps=args.steps,
            guidance=args.guidance,
            models=args.model,
        )
        batch = self.session.batch(
            prompts,
            axes=axes,
            images=[resolve_image(v, ns) for v in args.image or []] or None,
            output_format=args.format,
            webhook_url=args.webhook,
            tag=args.tag,
            fresh=args.fresh,
        )
        results = self.session.run(batch, BatchProgress())
        varies = len(prompts) > 1 or any(len(axis.values) > 1 for axis in axes)
        outcome: Result | SweepResult = results[0] if len(results) == 1 and not varies else SweepResult(results)
        if isinstance(outcome, SweepResult):
            display(outcome)
        if args.out:
            ns[args.out] = outcome

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
    session.observer_factory = BatchProgress  # flux.sweep(...) shows live progress too
    session.add_listener(lambda: ipython.user_ns.__setitem__(HISTORY_VARIABLE, session.history()))
    ipython.user_ns[HISTORY_VARIABLE] = session.history()


def _follow_display_settings(session: Flux) -> None:
    """Keep the notebook's rendering in step with ``Flux.thumbnail_size`` and ``Flux.thumbnail_format``."""

    def update(change: Any = None) -> None:
        render.settings.thumbnail_size = session.thumbnail_size
        render.settings.thumbnail_format = session.thumbnail_format

    update()
    session.observe(update, names=["thumbnail_size", "thumbnail_format"])
