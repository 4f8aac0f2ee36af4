"""A catalogue of bad input across the magic, the Python API and the panel: each gets a clear error
naming the problem, sends nothing, and leaves the history as it was."""

from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from flux_nb import Flux
from flux_nb.core.results import Result, SweepResult
from flux_nb.errors import FluxError
from flux_nb.notebook.panel import Panel


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 300 MP PNG, over Pillow's decompression-bomb limit (36 KB, but a second to encode: made once)."""
    out = io.BytesIO()
    Image.new("1", (20_000, 15_000)).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def setup(server: Any, history_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bomb_png: bytes) -> Any:
    """A session with one record already in its history, files to point at, and the server."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (64, 64), "red").save(tmp_path / "ok.png")
    (tmp_path / "notes.png").write_text("this is text, not a picture")
    (tmp_path / "folder").mkdir()
    (tmp_path / "bomb.png").write_bytes(bomb_png)
    flux = Flux(endpoint=server.url, history_dir=history_dir)
    flux.generate("already recorded", seed=1, width=64, height=64)
    before = (server.stats()["http_requests"].copy(), flux.history())
    yield flux, server, before
    flux.close()


def assert_nothing_sent(flux: Flux, server: Any, before: tuple[dict, pd.DataFrame]) -> None:
    """No HTTP request reached the server, and the history is exactly as it was (every row, every value)."""
    assert server.stats()["http_requests"] == before[0]
    pd.testing.assert_frame_equal(flux.history(), before[1])


PYTHON_API = [
    ({"seed": 2**64}, f"seed {2**64} is out of range (0 to 2**64-1)"),
    ({"height": 48}, "height 48 is below the minimum of 64"),
    ({"width": 4096, "height": 4096}, "4 MP"),
    ({"width": "512"}, "whole number of pixels"),
    ({"seed": -3}, "seed -3 is out of range"),
    ({"seed": 2**70}, "out of range"),
    ({"seed": 1.5}, "seed must be a whole number"),
    ({"safety_tolerance": 6}, "safety_tolerance 6 is out of range"),
    ({"output_format": "gif"}, "output_format 'gif'"),
    ({"model": "flux-3-pro"}, "model 'flux-3-pro' is not a FLUX.2 model"),
    ({"images": ["ok.png"] * 5}, "5 reference images given; flux-2-klein-4b takes at most 4"),
    ({"images": ["missing.png"]}, "images[0]: no file at 'missing.png'"),
    ({"images": ["notes.png"]}, "not a readable image"),
    ({"images": ["folder"]}, "is a folder"),
    ({"images": ["bomb.png"]}, "too large to decode safely"),
    ({"images": ["ftp://example.com/a.png"]}, "not an http(s) URL"),
    ({"images": ["https:///nohost.png"]}, "has no host"),
    ({"images": [b""]}, "empty bytes"),
    ({"images": [np.zeros((4, 4, 7), dtype=np.uint8)]}, "is not HxW"),
    ({"images": [object()]}, "object is not an image"),
    ({"webhook_url": "mailto:x@y"}, "webhook_url"),
    ({"webhook_secret": "s"}, "webhook_secret was given without a webhook_url"),
    ({"steps": 10}, "steps is not a setting of flux-2-klein-4b"),
    ({"model": "flux-2-flex", "guidance": 20.0}, "guidance 20.0 is out of range"),
    ({"vary": {"bad": ["bad", "good"]}}, "vary= sweeps the prompt: generate makes one image; use flux.sweep"),
    ({"tag": "bad\ud800tag"}, "tag holds a lone surrogate \\ud800 at character 4"),
]

PROMPTS = [
    (123, "prompt must be text, got int 123"),
    (None, "prompt must be text, got NoneType None"),
    (b"a fox", "prompt must be text, got bytes b'a fox'"),
    ("a fox\ud83d in snow", "prompt holds a lone surrogate \\ud83d at character 6"),
]


@pytest.mark.parametrize(("fields", "message"), PYTHON_API, ids=[m[:40] for _, m in PYTHON_API])
def test_python_api(setup: Any, fields: dict[str, Any], message: str) -> None:
    flux, server, before = setup
    with pytest.raises(FluxError) as caught:
        flux.generate("a bad request", **fields)
    assert message in caught.value.one_line()
    assert_nothing_sent(flux, server, before)


@pytest.mark.parametrize(("prompt", "message"), PROMPTS, ids=[m[:40] for _, m in PROMPTS])
def test_prompts_that_are_not_text(setup: Any, prompt: Any, message: str) -> None:
    flux, server, before = setup
    with pytest.raises(FluxError) as caught:
        flux.generate(prompt, seed=1, width=64, height=64)
    assert message in caught.value.one_line()
    with pytest.raises(FluxError) as caught:
        flux.sweep(prompt, seed=[1, 2], width=64, height=64)
    assert message in caught.value.one_line()
    with pytest.raises(FluxError, match="prompt must be text, got int 7"):
        flux.sweep(["fine", 7], seed=1, width=64, height=64)
    assert_nothing_sent(flux, server, before)


SWEEPS = [
    ({"vary": {"animal": ["horse", "cat"]}}, "vary animal: 'horse' is not in the prompt"),
    ({"vary": {"animal": "dog"}}, "give a list whose first value is the text to find"),
    ({"vary": ["dog", "cat"]}, "vary must be a dict"),
    ({"vary": {"seed": ["dog", "cat"]}}, "has the name of a request field"),
    ({"vary": {"animal": ["dog", "bad\ud800"]}}, "prompt holds a lone surrogate \\ud800"),
]


@pytest.mark.parametrize(("fields", "message"), SWEEPS, ids=[m[:40] for _, m in SWEEPS])
def test_python_sweeps(setup: Any, fields: dict[str, Any], message: str) -> None:
    flux, server, before = setup
    with pytest.raises(FluxError) as caught:
        flux.sweep("a dog", seed=1, width=64, height=64, **fields)
    assert message in caught.value.one_line()
    assert_nothing_sent(flux, server, before)


def test_empty_prompt_and_budget_overrun(setup: Any) -> None:
    flux, server, before = setup
    with pytest.raises(FluxError, match="prompt is empty"):
        flux.generate("   ")
    flux.budget = 2.0
    with pytest.raises(FluxError, match=r"would pass the budget: 1\.40 of 2\.00 spent"):
        flux.sweep("over budget", seed=[1, 2], width=64, height=64)
    assert_nothing_sent(flux, server, before)


def test_absent_key_with_the_cloud_endpoint(setup: Any) -> None:
    flux, server, before = setup
    cloud = Flux(endpoint="https://api.bfl.ai", api_key="", history_dir=flux.history_dir)
    with pytest.raises(FluxError, match="needs an API key and none is set"):
        cloud.generate("no key", seed=1)
    assert_nothing_sent(flux, server, before)


MAGIC = [
    ("%%flux --seed 1:0\nx", "runs backwards"),
    ("%%flux --seed one\nx", "'one' is not a whole number"),
    ("%%flux --size 63x64\nx", "width 63 is below the minimum of 64 pixels"),
    ("%%flux --size huge\nx", "WIDTHxHEIGHT"),
    ("%%flux --aspect 0:0\nx", "aspect"),
    ("%%flux --aspect 100:1\nx", "between 1:16 and 16:1"),
    ("%%flux --seed 0:5000\nx", "more than 1000 values"),
    ("%%flux --seed 0:99 --width 64,128,192,256,320,384,448,512,576,640,704\nx", "1100 combinations"),
    ("%%flux -i not_defined_and_not_a_file\nx", "no file at"),
    ("%%flux\na {not_defined}", "{not_defined} is not defined"),
    ("%%flux --model flux-2-pro,flux-9\nx", "model 'flux-9'"),
    ("%%flux --seed 1\n---\n\n---", "holds no prompt"),
    ("%%flux --size 512x512 -W 512\nx", "either --size/--aspect or --width/--height"),
    ("%%flux --size 512x512 --aspect 16:9\nx", "give either --size or --aspect, not both"),
    ("%%flux --model flux-2-flex --guidance 20\nx", "guidance 20.0 is out of range (1.5 to 10)"),
    ("%%flux --model flux-2-flex --guidance 2:abc\nx", "--guidance: 'abc' is not a number"),
    ("%%flux --guidance 3\nx", "guidance is not a setting of flux-2-klein-4b"),
    ("%%flux -o 'not valid'\nx", "is not a usable variable name"),
    ("%%flux -o for\nx", "-o/--out 'for' is not a usable variable name"),
    ("%%flux --out 9lives\nx", "-o/--out '9lives' is not a usable variable name"),
    ("%%flux --format gif\nx", "invalid choice: 'gif'"),
    ("%flux replay no-such-record", "no history record 'no-such-record'"),
    ("%flux history many", "one number of rows"),
    ("%flux grid --x colour", "'colour' is not a column"),
    ("%flux grid --y prompt", "%flux grid --y prompt needs --x too"),
    ("%flux teleport", "unknown %flux command 'teleport'"),
    ("%%flux --seed 1\na fox\ud800 in snow", "prompt holds a lone surrogate \\ud800 at character 6"),
    ("%%flux --seed 1\na {word}", "prompt holds a lone surrogate \\udc00"),
    ("%%flux --size 512x512 --size 1024x1024\nx", "--size is given twice; give it once"),
    ("%%flux -s 1 --seed 2\nx", "-s/--seed is given twice"),
    ("%%flux -o a --out b\nx", "-o/--out is given twice"),
    ("%%flux --seed=1 --seed 2\nx", "-s/--seed is given twice"),
    ("%%flux -o flux\nx", "-o/--out 'flux' would overwrite the flux_nb session"),
    ("%%flux -o flux_history\nx", "-o/--out 'flux_history' would overwrite the history DataFrame"),
    ("%%flux -o my_session\nx", "-o/--out 'my_session' would overwrite the flux_nb session"),
    ("%%flux --sed 4\nx", "unknown option --sed; did you mean --seed?"),
    ("%%flux --colour red\nx", "unknown option --colour; see %%flux? for the options"),
    ("%%flux a cat", "the prompt goes on the lines below %%flux"),
    ("%%flux history", "history is a line magic: write %flux history (one percent sign)"),
    ("%%flux\na {styles}", "{styles} is a dict"),
    ("%%flux\na {flux._api_key}", "only plain names are filled"),
    ("%%flux\na {x!r}", "only plain names are filled"),
    ("%%flux --vary animal=horse,cat\na dog", "vary animal: 'horse' is not in the prompt"),
    ("%%flux --vary dog,cat\na dog", "must read NAME=FIND,REPLACEMENT"),
    ("%%flux -i flux._api_key\nx", "attributes not starting with _"),
    ("%%flux -i sweep\nx", "-i sweep is a sweep of 1 results; pick one"),
]


@pytest.mark.parametrize(("cell", "message"), MAGIC, ids=[m[:40] for _, m in MAGIC])
def test_magic(setup: Any, cell: str, message: str) -> None:
    flux, server, before = setup
    InteractiveShell.clear_instance()
    shell = InteractiveShell.instance()
    try:
        shell.run_line_magic("load_ext", "flux_nb")
        session = shell.user_ns["flux"]
        session.endpoint, session.history_dir = server.url, flux.history_dir
        shell.user_ns.update(
            my_session=session,
            word="bad\udc00",
            styles={"a": 1},
            sweep=SweepResult([Result("r", "ready", "p", "m", 1, 64, 64)]),
        )
        before_ns = {k: v for k, v in shell.user_ns.items() if isinstance(v, (Result, SweepResult, Flux))}
        with capture_output() as captured:
            shell.run_cell(cell)
        shown = html.unescape("".join(o.data.get("text/html", "") for o in captured.outputs))
        shown += captured.stdout + captured.stderr  # usage errors (unknown option, bad choice) go to stderr
        assert message in shown and "Traceback" not in shown
        after_ns = {k: v for k, v in shell.user_ns.items() if isinstance(v, (Result, SweepResult, Flux))}
        assert after_ns == before_ns  # nothing stored, nothing overwritten
        session.close()
    finally:
        InteractiveShell.clear_instance()
    assert_nothing_sent(flux, server, before)


def test_panel_empty_prompt(setup: Any) -> None:
    flux, server, before = setup
    panel = Panel(flux)
    panel.submit()
    assert "the prompt is empty" in html.unescape(panel.error.value)
    assert_nothing_sent(flux, server, before)


@pytest.mark.parametrize(
    ("reference", "message"),
    [(b"not an image", "not a readable image"), ("notes.png", "not a readable image"), (42, "int is not an image")],
)
def test_panel_bad_references_are_refused_when_added(setup: Any, reference: Any, message: str) -> None:
    flux, server, before = setup
    panel = Panel(flux)
    panel.add_reference(reference)
    assert message in html.unescape(panel.error.value) and panel.references.slots == []
    assert_nothing_sent(flux, server, before)


def test_panel_custom_size_is_refused_live(setup: Any) -> None:
    flux, server, before = setup
    panel = Panel(flux)
    panel.size.value = "custom"
    panel.width.value, panel.height.value = 3008, 3008
    assert panel.generate.disabled and "4 MP" in html.unescape(panel.size_note.value)
    assert_nothing_sent(flux, server, before)
