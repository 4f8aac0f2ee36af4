"""How both front ends read a command line: the options of ``%%flux`` and ``flux-nb generate`` (one set, one
help text) and the parser every ``%flux``/``flux-nb`` verb uses, whose mistakes are one ValidationError line.
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Sequence
from typing import Any, NoReturn

from flux_nb import protocol
from flux_nb.core import templates
from flux_nb.core.axes import axes_of_options
from flux_nb.errors import ValidationError
from flux_nb.session import Flux, PreparedRequest

#: A word that reads as an option: -s, --seed, --seed=5 (not -5, a negative number).
OPTION = re.compile(r"^--?[A-Za-z]")
_AMBIGUOUS = re.compile(r"ambiguous option: (\S+) could match (.+)")


class KnownOptions(argparse.ArgumentParser):
    """An ArgumentParser that keeps the option strings it is given (``known``), to name the nearest one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.known: list[str] = []
        self.subcommands: dict[str, KnownOptions] = {}  # filled by whoever adds sub-commands
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.known += action.option_strings
        return action


class CommandParser(KnownOptions):
    """One command's options; a mistake raises one ValidationError naming the command (and its usage)."""

    def __init__(self, prog: str, usage_line: str = "", help_hint: str = "") -> None:
        super().__init__(prog=prog, add_help=False, exit_on_error=False)
        self.usage_line, self.help_hint = usage_line, help_hint

    def error(self, message: str) -> NoReturn:
        if found := _AMBIGUOUS.match(message):
            options = sorted(o.strip() for o in found[2].split(","))
            message = f"{found[1]} could be {', '.join(options)}; write the option in full"
        usage = f" (usage: {self.usage_line})" if self.usage_line else ""
        raise ValidationError(f"{self.prog}: {message}{usage}")

    def parse(self, words: Sequence[str]) -> argparse.Namespace:
        """The options in ``words``; unknown words are refused, naming the nearest option."""
        try:
            options, extra = self.parse_known_args(list(words))
        except argparse.ArgumentError as exc:
            self.error(str(exc))
        if extra:
            self.error(unknown_words(extra, self.known, self.help_hint))
        return options


def unknown_words(extra: Sequence[str], known: Sequence[str], help_hint: str = "") -> str:
    """``unknown option --sed; did you mean --seed?``: the first unknown option and the nearest known one."""
    for word in extra:
        if not OPTION.match(word):
            continue
        option = word.split("=", 1)[0]
        longs = {o.lstrip("-"): o for o in known if o.startswith("--")}
        near = difflib.get_close_matches(option.lstrip("-"), list(longs), n=1, cutoff=0.6)
        if near:
            return f"unknown option {option}; did you mean {longs[near[0]]}?"
        return f"unknown option {option}" + (f"; see {help_hint} for the options" if help_hint else "")
    return f"unexpected words: {' '.join(extra)}"


class Once(argparse.Action):
    """Store an option's value, refusing it a second time (several values go in one list)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        if getattr(namespace, self.dest, None) is not None:
            raise ValidationError(
                f"{'/'.join(self.option_strings)} is given twice; give it once (several values go in one list, "
                "e.g. --size 512x512,1024x768)"
            )
        setattr(namespace, self.dest, values)


def add_request_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``%%flux`` and ``flux-nb generate``: the same names, meanings and help in both."""
    parser.add_argument("-s", "--seed", action=Once, help="seed, or a sweep: 1,2,3 or 1:8 (inclusive) or 0:100:25")
    parser.add_argument("-W", "--width", action=Once, help="width in pixels (multiple of 16), or a list: 512,1024")
    parser.add_argument("-H", "--height", action=Once, help="height in pixels (multiple of 16), or a list")
    parser.add_argument("--size", action=Once, help="WIDTHxHEIGHT, or a list: 512x512,1024x768")
    parser.add_argument("--aspect", action=Once, help="aspect ratio like 16:9 (a size near 1 megapixel), or a list")
    parser.add_argument(
        "-i",
        "--image",
        action="append",
        help="reference image: a path or a URL (in a notebook also a variable or an expression on one: s1[0], "
        "results.image); repeatable",
    )
    parser.add_argument("--safety", action=Once, help="safety tolerance 0 (strict) to 5, or a list")
    parser.add_argument("--format", action=Once, choices=list(protocol.OUTPUT_FORMATS), help="output format")
    parser.add_argument(
        "-m", "--model", action="append", help="model, or several: -m flux-2-pro -m flux-2-flex, or a,b"
    )
    parser.add_argument("--steps", action=Once, help="flux-2-flex only: steps 1..50, or a list")
    parser.add_argument("--guidance", action=Once, help="flux-2-flex only: guidance 1.5..10 (API default 5), or a list")
    parser.add_argument(
        "--prompt-upsampling",
        action=Once,
        nargs="?",
        const="on",
        choices=["on", "off"],
        help="flux-2-flex only: let the API rewrite the prompt (on/off; unset: the API's default, which is on)",
    )
    parser.add_argument(
        "--no-prompt-upsampling",
        dest="prompt_upsampling",
        action="store_const",
        const="off",
        help="flux-2-flex only: the same as --prompt-upsampling off",
    )
    parser.add_argument(
        "--vary",
        action="append",
        metavar="NAME=FIND,REPL,...",
        help="search and replace over the prompt: the first value is the text to find, each value one image "
        "(repeatable; quote a value holding commas)",
    )
    parser.add_argument("-t", "--tag", action=Once, help="free label stored in the history")
    parser.add_argument("--fresh", action="store_true", help="send even if an identical request is in the history")
    parser.add_argument("--webhook", action=Once, help="URL the API posts the finished task to (https for BFL's API)")
    parser.add_argument("--yes", action="store_true", help="send a batch even past the large-batch guard")


def vary_of(options: argparse.Namespace, keys: Sequence[str]) -> dict[str, list[str]] | None:
    """The ``--vary`` replacements, checked (no API key among them) before the prompt is filled."""
    if not options.vary:
        return None
    vary = templates.parse_vary(options.vary)
    templates.replacement_axes(vary, keys)
    return vary


def request_batch(
    session: Flux, prompts: Sequence[Any], options: argparse.Namespace, images: list[Any], vary: Any
) -> tuple[list[PreparedRequest], bool]:
    """The requests the options ask for, validated and priced, and whether they form a sweep."""
    axes = axes_of_options(options)
    upsampling = {} if options.prompt_upsampling is None else {"prompt_upsampling": options.prompt_upsampling == "on"}
    batch = session.batch(
        list(prompts),
        axes=axes,
        images=images or None,
        output_format=options.format,
        webhook_url=options.webhook,
        tag=options.tag,
        fresh=options.fresh,
        vary=vary,
        **upsampling,
    )
    return batch, len(batch) > 1 or any(len(axis.values) > 1 for axis in axes)
