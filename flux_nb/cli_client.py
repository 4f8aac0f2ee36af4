"""``flux-nb`` client commands: generate, history, cost, grid, replay, resume and the review verbs.

Requests are built the way the magic builds them (``core.axes.axes_of_options`` then ``Flux.batch``).
Output is plain text on stdout; errors are one line on stderr, worded with this command's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from flux_nb import errors, protocol
from flux_nb.core import templates
from flux_nb.core.axes import axes_of_options, split_prompts
from flux_nb.core.events import Finished, Progress
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook import selection, tables
from flux_nb.notebook.commands import free_path, save_grid, stars_of
from flux_nb.notebook.render import caption, result_text
from flux_nb.session import Flux

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_REFUSED = 0, 1, 2, 3
EXIT_CODES = (
    "exit codes: 0 done; 1 a request failed (or the server could not be reached); 2 bad input, nothing sent; "
    "3 refused: API key, credits, --budget or the large-batch guard (pass --yes), nothing spent"
)
Handler = Callable[[argparse.Namespace], int]

# The next step, in this command's words (most specific first).
HINTS: tuple[tuple[type[FluxError], str], ...] = (
    (errors.UnknownOutcomeError, "not resent, to avoid paying twice; pass --fresh to send it again on purpose"),
    (errors.BudgetError, "raise --budget or make the request smaller"),
    (errors.AuthError, "set BFL_API_KEY (or FLUX_NB_API_KEY for another --endpoint)"),
    (errors.CreditsError, "add credits to the account"),
    (errors.RateLimitError, "send fewer requests at once, or wait a moment"),
    (errors.FluxTimeout, "the record is kept: flux-nb resume finishes it"),
    (errors.TransportError, "check the network and --endpoint, then try again"),
)
REFUSALS = (errors.AuthError, errors.CreditsError, errors.BudgetError)


def _large_batch(error: BaseException) -> bool:
    return type(error).__name__ == "LargeBatchError"


def in_cli_words(error: FluxError) -> str:
    """``error`` as one line with the next step in flags (no notebook wording)."""
    if _large_batch(error):
        return f"{error} (pass --yes to send it)"
    if "kept as submitted" in error.hint:
        return f"{error} (the task was accepted and is kept: flux-nb resume finishes it)"
    hint = next((h for kind, h in HINTS if isinstance(error, kind)), error.hint)
    return f"{error} ({hint})" if hint else str(error)


def exit_code(error: BaseException | None) -> int:
    """The exit code for an error (None: success)."""
    if error is None:
        return EXIT_OK
    if isinstance(error, REFUSALS) or _large_batch(error):
        return EXIT_REFUSED
    if isinstance(error, ValidationError):
        return EXIT_INPUT
    return EXIT_FAILED


def _session(args: argparse.Namespace) -> Flux:
    options: dict[str, Any] = {}
    for name in ("budget", "confirm_over"):
        if getattr(args, name, None) is not None:
            if not hasattr(Flux, name):
                raise ValidationError(f"this flux_nb has no {name} setting: update flux_nb")
            options[name] = getattr(args, name)
    return Flux(endpoint=getattr(args, "endpoint", None), history_dir=args.history_dir, **options)


@contextlib.contextmanager
def session_of(args: argparse.Namespace) -> Iterator[Flux]:
    flux = _session(args)
    try:
        yield flux
    finally:
        flux.close()


def _needs(flux: Flux, name: str) -> None:
    if not hasattr(flux, name):
        raise ValidationError(f"this flux_nb has no {name}(): update flux_nb")


class Lines:
    """A batch observer printing one line per finished request to stderr (stdout keeps the results)."""

    def __init__(self) -> None:
        self.total = self.done = 0

    def started(self, batch: Sequence[Any]) -> None:
        self.total = len(batch)

    def progress(self, event: Progress) -> None:
        return None

    def finished(self, event: Finished) -> None:
        self.done += 1
        if self.total > 1:
            print(f"[{self.done}/{self.total}] {event.result.status}", file=sys.stderr, flush=True)

    def tick(self) -> None:
        return None


def line_of(result: Result, path: Path | None = None) -> str:
    """``PATH  (caption)`` for an image, else ``STATUS: reason (record, seed)``."""
    if result.ok:
        return f"{path or result.path}  ({caption(result)})"
    return (
        result_text(result)
        if result.error is None
        else (f"{result.status}: {in_cli_words(result.error)} (record {result.record_id}, seed {result.seed})")
    )


def _worst(results: Sequence[Result]) -> int:
    codes = [exit_code(r.error or FluxError(r.status)) for r in results if not r.ok]
    return max(codes, default=EXIT_OK)


# -- generate ---------------------------------------------------------------------------------------


def generate(args: argparse.Namespace) -> int:
    """Generate an image, or a sweep (printed in grid order, its grid saved)."""
    axes = axes_of_options(args)
    prompts = split_prompts(args.prompt)
    fields: dict[str, Any] = {"output_format": args.format, "webhook_url": args.webhook, "tag": args.tag}
    if args.fresh:
        fields["fresh"] = True
    if args.prompt_upsampling is not None:
        fields["prompt_upsampling"] = args.prompt_upsampling
    vary = templates.parse_vary(args.vary) if args.vary else None
    with session_of(args) as flux:
        batch = flux.batch(prompts, axes=axes, images=args.image or None, vary=vary, **fields)
        confirm = {"confirm": True} if args.yes and "confirm" in inspect.signature(flux.run).parameters else {}
        if args.experiment:
            _needs(flux, "experimenting")
            scope: Any = flux.experimenting(args.experiment)
        else:
            scope = contextlib.nullcontext()
        with scope:
            results = flux.run(batch, Lines(), **confirm)
        sweep = len(batch) > 1 or any(len(axis.values) > 1 for axis in axes)
        if sweep:
            _print_sweep(flux, results, args.out)
        else:
            print(line_of(results[0], _copy(results[0], args.out)))
    return _worst(results)


def _copy(result: Result, out: str | None) -> Path | None:
    """Copy an image to ``out`` (a file, or into a folder); None when there is nothing to copy."""
    if not out or not result.ok or result.path is None:
        return None
    target = Path(out)
    if target.is_dir() or out.endswith(("/", "\\")):
        target.mkdir(parents=True, exist_ok=True)
        target = target / f"{result.record_id}{result.path.suffix}"
    try:
        return Path(shutil.copyfile(result.path, target))
    except OSError as exc:
        raise ValidationError(f"could not copy the image to {out}: {exc.strerror or exc}") from None


def _print_sweep(flux: Flux, results: list[Result], out: str | None) -> None:
    """Each result in grid order (images copied into ``out``, a folder, when given), then the saved grid."""
    folder = Path(out) if out else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for result in results:
        print(line_of(result, _copy(result, f"{folder}/") if folder is not None else None))
    if not any(r.ok for r in results):
        return
    target = free_path(folder or Path(flux.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    target.parent.mkdir(parents=True, exist_ok=True)
    saved = save_grid(SweepResult(results).grid(), target)
    for path in saved if isinstance(saved, list) else [saved]:
        print(f"grid saved to {path}")


# -- reading the history ----------------------------------------------------------------------------


def _has_history(args: argparse.Namespace) -> bool:
    if (Path(args.history_dir) / "history.sqlite").exists():
        return True
    print(f"no history in {args.history_dir}")
    return False


def history(args: argparse.Namespace) -> int:
    """The newest N rows (only those are read)."""
    limit = args.n if args.rows is None else args.rows
    if not _has_history(args):
        return EXIT_OK
    with session_of(args) as flux:
        frame = flux.store.tail(limit, **selection.filters(args.experiment, args.tag))
    print(tables.history_text(frame, limit=limit, empty=f"no matching rows in {args.history_dir}"))
    return EXIT_OK


def cost(args: argparse.Namespace) -> int:
    """Credits by model and backend, billed and not billed apart (summed in SQL)."""
    if not _has_history(args):
        return EXIT_OK
    with session_of(args) as flux:
        summary = selection.cost_summary(flux, args.experiment, args.tag, everywhere=True)
        charged = flux.store.charged(experiment=args.experiment, tag=args.tag)
    print("\n\n".join(filter(None, [tables.cost_text(summary), tables.charged_text(charged)])))
    return EXIT_OK


def credits(args: argparse.Namespace) -> int:
    """The account's balance (``GET /v1/credits``)."""
    from flux_nb.notebook.commands import credits_line

    with session_of(args) as flux:
        print(credits_line(flux).removeprefix("flux_nb: "))
    return EXIT_OK


def grid(args: argparse.Namespace) -> int:
    """A grid of history rows saved as PNG (``--save``, else in the history's grids folder)."""
    from flux_nb.grids import grid as draw

    if args.x is None and args.y is not None:
        raise ValidationError(
            f"--y {args.y} needs --x too (e.g. --x seed --y {args.y}); with neither: --x seed --y prompt"
        )
    x, y = (args.x, args.y) if args.x is not None else ("seed", "prompt")
    if not _has_history(args):
        return EXIT_INPUT
    with session_of(args) as flux:
        frame = selection.select(flux, args.where, **selection.filters(args.experiment, args.tag))
        drawn = draw(frame, x=x, y=y, z=args.z)
        target = args.save or free_path(Path(flux.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        saved = save_grid(drawn, target)
    for path in saved if isinstance(saved, list) else [saved]:
        print(f"grid saved to {path}")
    return EXIT_OK


# -- sending again ----------------------------------------------------------------------------------


def replay(args: argparse.Namespace) -> int:
    """Send a recorded request (a record id, or an image file carrying its request) again."""
    with session_of(args) as flux:
        result = flux.replay(args.target)
    print(line_of(result, _copy(result, args.out)))
    return _worst([result])


def resume(args: argparse.Namespace) -> int:
    """Finish tasks a stopped process left open (and, with --unsent, send what it never sent)."""
    with session_of(args) as flux:
        results = flux.resume(Lines(), unsent=args.unsent)
        left = len(flux.unsent())
    for result in results:
        print(line_of(result))
    if not results and not left and not results.elsewhere:
        print("nothing to resume: no task is pending")
    if unknown := sum(r.status == "unknown" for r in results):
        print(f"{unknown} submit(s) were cut off mid-send and may have created a task: marked unknown, not resent "
              "(flux-nb replay ID sends one again on purpose)")  # fmt: skip
    if left:
        print(f"{left} request(s) were never sent before their process stopped: flux-nb resume --unsent sends them")
    if note := results.note():
        print(note)
    return _worst(results)


# -- review and hand-over ---------------------------------------------------------------------------


def rate(args: argparse.Namespace) -> int:
    stars = stars_of(args.stars)
    with session_of(args) as flux:
        _needs(flux, "rate")
        flux.rate(args.ids, stars)
    print(f"rated {len(args.ids)} image(s) {'(cleared)' if stars is None else f'{stars} stars'}")
    return EXIT_OK


def note(args: argparse.Namespace) -> int:
    text = None if args.clear else " ".join(args.text)
    if text is not None and not text:
        raise ValidationError("give the note's text after the record id (or --clear)")
    with session_of(args) as flux:
        _needs(flux, "note")
        flux.note(args.id, text)
    print(f"note {'cleared' if text is None else 'kept'} on {args.id}")
    return EXIT_OK


def tag(args: argparse.Namespace) -> int:
    if not (args.add or args.remove):
        raise ValidationError("give --add TAG and/or --remove TAG")
    with session_of(args) as flux:
        _needs(flux, "tag")
        flux.tag(args.ids, add=args.add, remove=args.remove)
    changes = [f"+{t}" for t in args.add] + [f"-{t}" for t in args.remove]
    print(f"tags {' '.join(changes)} on {len(args.ids)} image(s)")
    return EXIT_OK


def favourite(args: argparse.Namespace) -> int:
    with session_of(args) as flux:
        _needs(flux, "favourite")
        flux.favourite(args.ids, on=not args.off)
    print(f"{len(args.ids)} image(s) {'no longer' if args.off else 'marked'} favourite")
    return EXIT_OK


def export(args: argparse.Namespace) -> int:
    with session_of(args) as flux:
        _needs(flux, "export")
        frame = flux.history(experiment=args.experiment, tag=args.tag)
        written = flux.export(frame, args.path)
    print(f"exported {len(frame)} row(s) to {written or args.path}")
    return EXIT_OK


def report(args: argparse.Namespace) -> int:
    with session_of(args) as flux:
        _needs(flux, "report")
        frame = flux.history(experiment=args.experiment, tag=args.tag)
        title = args.title or args.experiment or args.tag or "flux_nb report"
        written = flux.report(frame, args.path, title=title)
    print(f"report of {len(frame)} row(s) written to {written or args.path}")
    return EXIT_OK


# -- options --------------------------------------------------------------------------------------


def common_options(parser: argparse.ArgumentParser, endpoint: bool = True) -> None:
    parser.add_argument("--history-dir", default=".flux", help="history folder (default: .flux)")
    if endpoint:
        parser.add_argument(
            "--endpoint", help="server base URL (default: BFL's API with BFL_API_KEY, else a local one)"
        )


def filter_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", help="only this experiment's rows")
    parser.add_argument("--tag", help="only rows with this tag")


def add_generate_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``generate``: every option of the notebook magic, under the same names."""
    g = commands.add_parser(
        "generate",
        help="generate an image, or a sweep of them",
        description="Any option given as a list or a range sweeps: every combination is sent at once (identical "
        "requests once), printed in grid order, and the grid saved.",
        epilog=EXIT_CODES,
    )
    g.add_argument("prompt", help="the prompt; several prompts are separated by a line holding only ---")
    g.add_argument("-s", "--seed", help="seed, or a sweep: 1,2,3 or 1:8 (inclusive) or 0:100:25")
    g.add_argument("-W", "--width", help="width in pixels (multiple of 16), or a list: 512,1024")
    g.add_argument("-H", "--height", help="height in pixels (multiple of 16), or a list")
    g.add_argument("--size", help="WIDTHxHEIGHT, or a list: 512x512,1024x768")
    g.add_argument("--aspect", help="aspect ratio like 16:9 (a size near 1 megapixel), or a list")
    g.add_argument("-i", "--image", action="append", help="reference image: a path or a URL (repeatable)")
    g.add_argument("--safety", help="safety tolerance 0 (strict) to 5, or a list")
    g.add_argument("--format", choices=list(protocol.OUTPUT_FORMATS), help="output format (default jpeg)")
    g.add_argument("-m", "--model", action="append", help="model, or several: -m flux-2-pro -m flux-2-flex, or a,b")
    g.add_argument("--steps", help="flux-2-flex only: steps 1..50, or a list")
    g.add_argument("--guidance", help="flux-2-flex only: guidance 1.5..10, or a list")
    g.add_argument(
        "--prompt-upsampling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="flux-2-flex only: let the API rewrite the prompt (unset: the API's default, which is on)",
    )
    g.add_argument(
        "--vary",
        action="append",
        metavar="NAME=FIND,REPL,...",
        help="search and replace over the prompt: the first value is the text to find, each value one image "
        "(repeatable; quote a value holding commas)",
    )
    g.add_argument("-t", "--tag", help="free label stored in the history")
    g.add_argument("--fresh", action="store_true", help="send even if an identical request is in the history")
    g.add_argument("--webhook", help="URL the API posts the finished task to (https for BFL's API)")
    g.add_argument("--experiment", help="record the requests in this experiment")
    g.add_argument("--budget", type=float, help="credits this run may spend; refused (exit 3) before sending")
    g.add_argument("--yes", action="store_true", help="send a batch even past the large-batch guard")
    g.add_argument(
        "--confirm-over",
        type=float,
        metavar="CREDITS",
        help="large-batch guard: an estimate past this needs --yes (default 50 on BFL's API, off on a local server)",
    )
    g.add_argument(
        "-o", "--out", help="copy the image to this file or folder (a sweep: into this folder, with its grid)"
    )
    common_options(g)
