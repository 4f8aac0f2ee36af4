"""``flux-nb`` client commands: ``generate`` and the verbs of ``notebook.commands`` (history, cost, grid, replay,
resume, review, export, report), adapted to a shell.

Options and verbs are the magic's own definitions; this module only opens the session from the command line,
prints plain text on stdout (progress on stderr), and turns errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from flux_nb import errors
from flux_nb.core.axes import split_prompts
from flux_nb.core.events import Finished, Progress
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError, ValidationError
from flux_nb.notebook import commands
from flux_nb.notebook.command_line import add_request_options, request_batch, vary_of
from flux_nb.notebook.commands import CLI, Front, Verb, free_path, save_grid
from flux_nb.notebook.render import caption, result_text, shown_path
from flux_nb.session import Flux, configured_keys

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
    (errors.BatchInterrupted, "flux-nb resume --unsent finishes it: the sent ones, then the rest"),
)
REFUSALS = (errors.AuthError, errors.CreditsError, errors.BudgetError, errors.LargeBatchError)


def in_cli_words(error: FluxError) -> str:
    """``error`` as one line with the next step in flags (no notebook wording)."""
    if isinstance(error, errors.LargeBatchError):
        return f"{error} (pass --yes to send it)"
    if "kept as submitted" in error.hint:
        return f"{error} (the task was accepted and is kept: flux-nb resume finishes it)"
    hint = next((h for kind, h in HINTS if isinstance(error, kind)), error.hint)
    return f"{error} ({hint})" if hint else str(error)


def exit_code(error: BaseException | None) -> int:
    """The exit code for an error (None: success)."""
    if error is None:
        return EXIT_OK
    if isinstance(error, REFUSALS):
        return EXIT_REFUSED
    if isinstance(error, ValidationError):
        return EXIT_INPUT
    return EXIT_FAILED


@contextlib.contextmanager
def session_of(args: argparse.Namespace) -> Iterator[Flux]:
    settings = {n: getattr(args, n) for n in ("budget", "confirm_over") if getattr(args, n, None) is not None}
    flux = Flux(endpoint=getattr(args, "endpoint", None), history_dir=args.history_dir, **settings)
    try:
        yield flux
    finally:
        flux.close()


class ProgressLine:
    """A batch observer on stderr: on a terminal one line redrawn in place and cleared when the batch ends (or
    is stopped), so results and messages start on their own lines; elsewhere one line per finished request."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.total = self.done = self.failed = self._drawn = 0

    def __enter__(self) -> ProgressLine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.clear()

    def started(self, batch: Sequence[Any]) -> None:
        self.total = len(batch)

    def progress(self, event: Progress) -> None:
        return None

    def tick(self) -> None:
        return None

    def finished(self, event: Finished) -> None:
        self.done += 1
        self.failed += not event.result.ok
        if self.total < 2:
            return
        text = f"[{self.done}/{self.total}] {event.result.status}" + (f", {self.failed} failed" if self.failed else "")
        if not self._tty():
            print(text, file=self.stream, flush=True)
            return
        self.stream.write("\r" + text.ljust(self._drawn))
        self.stream.flush()
        self._drawn = len(text)
        if self.done == self.total:
            self.clear()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def _tty(self) -> bool:
        try:
            return self.stream.isatty()
        except (AttributeError, ValueError):
            return False


def line_of(result: Result, path: Path | None = None, labels: str = "") -> str:
    """``PATH  (caption)`` for an image (then which sweep value it is), else ``STATUS: reason (record, seed)``."""
    which = f"  [{labels}]" if labels else ""
    if result.ok:
        return f"{shown_path(path or result.path or '')}  ({caption(result)}){which}"
    if result.error is None:
        return result_text(result) + which
    return f"{result.status}: {in_cli_words(result.error)} (record {result.record_id}, seed {result.seed}){which}"


def _worst(results: Sequence[Result]) -> int:
    codes = [exit_code(r.error or FluxError(r.status)) for r in results if not r.ok]
    return max(codes, default=EXIT_OK)


# -- generate ---------------------------------------------------------------------------------------


def generate(args: argparse.Namespace) -> int:
    """Generate an image, or a sweep (printed in grid order, its grid saved)."""
    with session_of(args) as flux:
        vary = vary_of(args, configured_keys(flux))
        batch, sweep = request_batch(flux, split_prompts(args.prompt), args, args.image or [], vary)
        scope = flux.experimenting(args.experiment) if args.experiment else contextlib.nullcontext()
        with scope, ProgressLine() as progress:
            results = flux.run(batch, progress, confirm=args.yes)
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


def sweep_labels(results: Sequence[Result]) -> list[str]:
    """Which value each result of a sweep is: its labels on the axes that vary (``animal: cat · seed: 2``)."""
    names = [n for n in dict.fromkeys(k for r in results for k in r.labels)]
    varying = [n for n in names if len({repr(r.labels.get(n)) for r in results}) > 1]
    return [" · ".join(f"{n}: {r.labels.get(n)}" for n in varying) for r in results]


def _print_sweep(flux: Flux, results: list[Result], out: str | None) -> None:
    """Each result in grid order (images copied into ``out``, a folder, when given), then the saved grid."""
    folder = Path(out) if out else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    for result, labels in zip(results, sweep_labels(results), strict=True):
        print(line_of(result, _copy(result, f"{folder}/") if folder is not None else None, labels))
    if not any(r.ok for r in results):
        return
    target = free_path(folder or Path(flux.history_dir) / "grids", f"grid-{time.strftime('%Y%m%d-%H%M%S')}")
    saved = save_grid(SweepResult(results).grid(), target)
    for path in saved if isinstance(saved, list) else [saved]:
        print(f"grid saved to {shown_path(path)}")


# -- the verbs ----------------------------------------------------------------------------------------


READING = {"history": EXIT_OK, "cost": EXIT_OK, "grid": EXIT_INPUT}  # without a history: said, and this code


def run_verb(verb: Verb, args: argparse.Namespace) -> int:
    """Run a verb of ``notebook.commands`` on the history named on the command line; print its text form."""
    if verb.name in READING and not (Path(args.history_dir) / "history.sqlite").exists():
        print(f"no history in {args.history_dir}")
        return READING[verb.name]
    with session_of(args) as flux:
        shown = verb.run(flux, args, Front(CLI, observer=ProgressLine))
    if not isinstance(shown, commands.Shown):
        return EXIT_OK
    print(repr(shown))
    if getattr(args, "out", None) and shown.results and (copied := _copy(shown.results[-1], args.out)):
        print(f"image copied to {shown_path(copied)}")
    return _worst(shown.results)


# -- options --------------------------------------------------------------------------------------


def common_options(parser: argparse.ArgumentParser, endpoint: bool = True) -> None:
    parser.add_argument("--history-dir", default=".flux", help="history folder (default: .flux)")
    if endpoint:
        parser.add_argument(
            "--endpoint", help="server base URL (default: BFL's API with BFL_API_KEY, else a local one)"
        )


def add_generate_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``generate``: the magic's options (one definition), and the session's settings as flags."""
    g = subparsers.add_parser(
        "generate",
        help="generate an image, or a sweep of them",
        description="Any option given as a list or a range sweeps: every combination is sent at once (identical "
        "requests once), printed in grid order, and the grid saved.",
        epilog=EXIT_CODES,
    )
    g.add_argument("prompt", help="the prompt; several prompts are separated by a line holding only ---")
    add_request_options(g)
    g.add_argument("--experiment", help="record the requests in this experiment")
    g.add_argument("--budget", type=float, help="credits this run may spend; refused (exit 3) before sending")
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


def add_verb_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """A sub-command for each verb of ``notebook.commands`` that works outside a notebook, and its handler."""
    handlers: dict[str, Handler] = {}
    for name in commands.names(Front(CLI)):
        verb = commands.VERBS[name]
        sub = subparsers.add_parser(name, help=verb.summary, epilog=EXIT_CODES)
        verb.arguments(sub)
        if name == "replay":
            sub.add_argument("-o", "--out", help="copy the new image to this file or folder")
        common_options(sub, endpoint=verb.sends)
        handlers[name] = functools.partial(run_verb, verb)
    return handlers
