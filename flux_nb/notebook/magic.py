"""The ``%%flux`` cell magic, the ``%flux`` line magics, and ``load_ipython_extension``.

Thin on purpose: parse and check the input, call the session, hand results to display.
"""

from __future__ import annotations

import argparse
import getpass
import keyword
import shlex
import string
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import HTML, display

from flux_nb import protocol
from flux_nb.core.axes import Axis, expand, parse_floats, parse_numbers, split_prompts
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook.render import (
    BatchProgress,
    cost_html,
    cost_text,
    history_html,
    history_text,
    is_rich,
    show_error,
    side_by_side_html,
    side_by_side_text,
)
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


def _split_values(raw: list[str] | None) -> list[str]:
    return [v.strip() for item in raw or [] for v in item.split(",") if v.strip()]


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
            raise ValidationError(f"unexpected words on the %%flux line: {' '.join(args.command)!r}")
        if args.out is not None:
            check_variable_name(args.out)
        ns = self.shell.user_ns
        prompts = [fill_template(p, ns) for p in split_prompts(cell)]
        base: dict[str, Any] = {
            "images": [resolve_image(v, ns) for v in args.image or []] or None,
            "output_format": args.format,
            "webhook_url": args.webhook,
            "tag": args.tag,
            "fresh": args.fresh,
        }
        axes = self._axes(args, prompts)
        points = expand(base, axes)
        session = self.session
        session.notebook = notebook_name(ns) or session.notebook
        images = session.prepare_images(base["images"])
        batch = [session.prepare(**{**p.fields, "images": images}, labels=p.labels) for p in points]
        results = session.run(batch, BatchProgress())
        outcome: Result | SweepResult = (
            results[0] if len(results) == 1 and not axes_vary(axes) else SweepResult(results)
        )
        if isinstance(outcome, SweepResult):
            display(outcome)
        if args.out:
            ns[args.out] = outcome

    def _axes(self, args: argparse.Namespace, prompts: list[str]) -> list[Axis]:
        axes = [Axis("prompt", tuple(prompts))]
        numeric = {
            "seed": ("--seed", args.seed),
            "safety_tolerance": ("--safety", args.safety),
            "steps": ("--steps", args.steps),
        }
        for name, (option, raw) in numeric.items():
            if raw is not None:
                axes.append(Axis(name, tuple(parse_numbers(raw, option))))
        if args.guidance is not None:
            axes.append(Axis("guidance", tuple(parse_floats(args.guidance, "guidance"))))
        if args.size is not None and args.aspect is not None:
            raise ValidationError("give either --size or --aspect, not both (--aspect picks the size itself)")
        if args.size is not None or args.aspect is not None:
            if args.width is not None or args.height is not None:
                raise ValidationError("give either --size/--aspect or --width/--height, not both")
            sizes = [protocol.parse_size(s) for s in args.size.split(",")] if args.size else []
            if args.aspect:
                sizes += [protocol.aspect_size(a.strip()) for a in args.aspect.split(",")]
            axes.append(Axis("size", tuple(sizes)))
        for name, raw in (("width", args.width), ("height", args.height)):
            if raw is not None:
                axes.append(Axis(name, tuple(parse_numbers(raw, name))))
        models = _split_values(args.model)
        if models:
            for model in models:
                protocol.model_spec(model)
            axes.append(Axis("model", tuple(models)))
        return axes

    # -- %flux ... ----------------------------------------------------------------------------

    def _line(self, line: str) -> Any:
        words = shlex.split(line)
        if not words:
            raise ValidationError("%flux needs a command: history, replay, resume, cost, grid, login or panel")
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_cmd_{command}", None)
        if handler is None:
            raise ValidationError(
                f"unknown %flux command {command!r}: use history, replay, resume, cost, grid, login or panel "
                "(the prompt goes in a %%flux cell)"
            )
        return handler(rest)

    def _cmd_history(self, rest: list[str]) -> None:
        limit = 20
        if rest:
            if len(rest) > 1 or not rest[0].isdigit():
                raise ValidationError(f"%flux history takes one number of rows, got {' '.join(rest)!r}")
            limit = int(rest[0])
        frame = self.session.history()
        if is_rich():
            display(HTML(history_html(frame, limit=limit)))
        else:
            print(history_text(frame, limit=limit))

    def _cmd_replay(self, rest: list[str]) -> Result:
        if len(rest) != 1:
            raise ValidationError("%flux replay takes one record id (see %flux history)")
        session = self.session
        old = session.result_of(rest[0])
        new = session.replay(rest[0])
        titles = f"record {old.record_id}", f"replay {new.record_id}"
        if is_rich():
            display(HTML(side_by_side_html(old, new, *titles)))
        else:
            print(side_by_side_text(old, new, *titles))
        return None

    def _cmd_resume(self, rest: list[str]) -> None:
        if rest not in ([], ["--unsent"]):
            raise ValidationError(f"%flux resume takes no argument but --unsent, got {' '.join(rest)!r}")
        results = self.session.resume(BatchProgress(), unsent=bool(rest))
        unknown = sum(r.status == "unknown" for r in results)
        unsent = len(self.session.unsent())
        if not results and not unsent:
            print("flux_nb: nothing to resume: no task is pending")
        if unknown:
            print(
                f"flux_nb: {unknown} submit(s) were cut off mid-send: they may have created a task, "
                "so they are marked unknown and not resent (%flux replay ID sends one again on purpose)"
            )
        if unsent:
            print(f"flux_nb: {unsent} request(s) were never sent before their process stopped: %flux resume --unsent")

    def _cmd_cost(self, rest: list[str]) -> None:
        summary = self.session.cost()
        if is_rich():
            display(HTML(cost_html(summary)))
        else:
            print(cost_text(summary))

    def _cmd_grid(self, rest: list[str]) -> Any:
        """``%flux grid``: a grid of history records (seeds across, prompts down by default).

        In a terminal the grid is saved as a PNG (``--save PATH``, else in the history folder) and its path printed.
        """
        from flux_nb.notebook.grid import grid

        parser = argparse.ArgumentParser(prog="%flux grid", add_help=False, exit_on_error=False)
        for flag in ("--x", "--y", "--z", "--where", "--save"):
            parser.add_argument(flag)
        try:
            options = parser.parse_args(rest)
        except (argparse.ArgumentError, SystemExit) as exc:
            raise ValidationError(
                f"%flux grid: {exc} (usage: [--x FIELD [--y FIELD]] [--z FIELD] [--where EXPR] [--save PATH])"
            ) from None
        if options.x is None and options.y is None:
            options.x, options.y = "seed", "prompt"
        elif options.x is None:
            raise ValidationError(
                f"%flux grid --y {options.y} needs --x too (e.g. --x seed --y {options.y}); "
                "with neither, the grid is --x seed --y prompt"
            )
        frame = self.session.history()
        if options.where:
            try:
                frame = frame.query(options.where)
            except Exception as exc:
                raise ValidationError(f"%flux grid --where {options.where!r} failed: {exc}") from None
        result = grid(frame, x=options.x, y=options.y, z=options.z)
        target = options.save
        if target is None and not is_rich():
            target = _free_path(Path(self.session.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
        saved = result.save(target) if target else None
        if is_rich():
            display(result)
        else:
            for path in saved if isinstance(saved, list) else [saved]:
                print(f"flux_nb: grid saved to {path}")

    def _cmd_login(self, rest: list[str]) -> None:
        key = getpass.getpass("BFL API key (kept in memory only): ")
        self.session.login(key)
        print("flux_nb: key set for this session (not saved anywhere)")

    def _cmd_panel(self, rest: list[str]) -> None:
        display(self.session.panel())


def _free_path(folder: Path, stem: str) -> Path:
    """``folder/stem.png``, or ``stem-2.png``, ``stem-3.png``... if that is taken."""
    path, n = folder / f"{stem}.png", 1
    while path.exists() or any(folder.glob(f"{path.stem}_*.png")):  # GridPages adds _z_value to the name
        n += 1
        path = folder / f"{stem}-{n}.png"
    return path


def axes_vary(axes: list[Axis]) -> bool:
    return any(len(axis.values) > 1 for axis in axes)


def _show_flux_error(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: int | None = None) -> None:
    """Show a FluxError raised in a cell as one clear line, not a traceback."""
    if isinstance(value, FluxError):
        show_error(value)
        return None
    return shell.showtraceback((etype, value, tb), tb_offset=tb_offset)


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext flux_nb``: register the magics, the session and ``flux_history``."""
    session = Flux(parent=ipython)
    session.notebook = notebook_name(ipython.user_ns) or session.notebook
    ipython.configurables.append(session)
    ipython.register_magics(FluxMagics(ipython, session))
    existing = ipython.user_ns.get(SESSION_VARIABLE)
    if existing is None or isinstance(existing, Flux):
        ipython.push({SESSION_VARIABLE: session})
    ipython.set_custom_exc((FluxError,), _show_flux_error)
    session.observer_factory = BatchProgress  # flux.sweep(...) shows live progress too
    session.add_listener(lambda: ipython.user_ns.__setitem__(HISTORY_VARIABLE, session.history()))
    ipython.user_ns[HISTORY_VARIABLE] = session.history()
