"""The %%flux and %flux magics, driven through a real IPython shell against a local server."""

from __future__ import annotations

import base64
import html
import io
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from PIL import Image

from flux_nb.core.results import Result, SweepResult
from flux_nb.history import store as store_module
from flux_nb.session import Flux


def run(shell: InteractiveShell, code: str) -> tuple[Any, Any]:
    """Run a cell; return (execution result, captured output)."""
    with capture_output() as captured:
        outcome = shell.run_cell(code)
    return outcome, captured


def html_of(captured: Any) -> str:
    parts = [o.data.get("text/html", "") for o in captured.outputs]
    return html.unescape("\n".join(p for p in parts if p))


def session_of(shell: InteractiveShell) -> Flux:
    return shell.user_ns["flux"]


def records(shell: InteractiveShell) -> pd.DataFrame:
    return session_of(shell).history()


def test_load_ext_registers_magics_session_and_history(ipython: InteractiveShell) -> None:
    assert "flux" in ipython.magics_manager.magics["cell"]
    assert "flux" in ipython.magics_manager.magics["line"]
    assert isinstance(ipython.user_ns["flux"], Flux)
    run(ipython, "empty = flux_history.empty")  # a new history: read when first named
    assert isinstance(ipython.user_ns["flux_history"], pd.DataFrame) and ipython.user_ns["empty"] is True


def test_cell_magic_generates_and_shows_the_image_with_its_caption(ipython: InteractiveShell, server: Any) -> None:
    outcome, captured = run(ipython, "%%flux --seed 42 --size 512x384 -o pic\na lighthouse at dusk")
    assert outcome.success
    shown = html_of(captured)
    assert "seed 42" in shown and "512×384" in shown
    result = ipython.user_ns["pic"]
    assert isinstance(result, Result) and result.ok
    assert result.image.size == (512, 384)
    thumb = shown.split('src="data:image/jpeg;base64,', 1)[1].split('"', 1)[0]
    assert max(Image.open(io.BytesIO(base64.b64decode(thumb))).size) <= session_of(ipython).thumbnail_size
    history = ipython.user_ns["flux_history"]
    assert len(history) == 1 and history.iloc[0]["status"] == "ready" and history.iloc[0]["seed"] == 42
    assert server.stats()["submits"] == 1


def test_short_options_and_format(ipython: InteractiveShell) -> None:
    outcome, _ = run(ipython, "%%flux -s 7 -W 256 -H 320 --format png -t study -o pic\na cat")
    assert outcome.success
    result = ipython.user_ns["pic"]
    assert (result.seed, result.width, result.height, result.tag) == (7, 256, 320, "study")
    assert result.path.suffix == ".png"


def test_aspect_picks_a_valid_size_near_one_megapixel(ipython: InteractiveShell) -> None:
    run(ipython, "%%flux --seed 1 --aspect 16:9 -o pic\na field")
    width, height = ipython.user_ns["pic"].image.size
    assert width % 16 == 0 and height % 16 == 0
    assert abs(width / height - 16 / 9) < 0.03
    assert 0.9 < width * height / 1024**2 < 1.1


def test_templates_fill_from_the_namespace_and_keep_double_braces(ipython: InteractiveShell) -> None:
    ipython.user_ns["animal"] = "otter"
    run(ipython, "%%flux --seed 3 --size 256x256 -o pic\na {animal} with {{braces}}")
    assert ipython.user_ns["pic"].prompt == "a otter with {braces}"


def test_unknown_template_name_is_a_clear_error_and_sends_nothing(ipython: InteractiveShell, server: Any) -> None:
    _outcome, captured = run(ipython, "%%flux --seed 3\na {undefined_thing}")
    text = html_of(captured) + captured.stdout
    assert "undefined_thing" in text and "not defined" in text
    assert "Traceback" not in text
    assert server.stats()["submits"] == 0
    assert records(ipython).empty


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("a {undefined_thing}", "prompt template: {undefined_thing} is not defined in the notebook"),
        ("a {number.real.nope}", "prompt template {number.real.nope}: only plain names are filled"),
        ("a {0}", "prompt template {0}: only plain names are filled"),
        ("a {number!r}", "prompt template {number!r}: only plain names are filled"),
        ("a {number:>8}", "prompt template {number:>8}: only plain names are filled"),
        ("a } b", "prompt template: a single } at character 3"),
        ("a { b", "prompt template: the { at character 3 is not closed"),
    ],
)
def test_template_errors_name_the_template_once(ipython: InteractiveShell, body: str, expected: str) -> None:
    ipython.user_ns["number"] = 3
    _outcome, captured = run(ipython, f"%%flux --seed 3\n{body}")
    text = html_of(captured) + captured.stdout
    assert expected in text and text.count("prompt template") == 1, text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--width 1000 --height 4200", "megapixels"),
        ("--width 32", "below the minimum"),
        ("--size 4096x2048", "megapixels"),
        ("--size big", "WIDTHxHEIGHT"),
        ("--aspect 0:1", "aspect"),
        ("--safety 9", "safety_tolerance 9"),
        ("--seed -5", "seed"),
        ("--seed 5:1", "seed"),
        ("--seed abc", "seed"),
        ("--model flux-3-imaginary", "flux-3-imaginary"),
        ("--steps 10", "steps is not a setting of flux-2-klein-4b"),
        ("--model flux-2-flex --steps 99", "steps 99"),
        ("--image /no/such/file.png", "no file"),
        ("-i a.png -i b.png -i c.png -i d.png -i e.png", "at most 4"),
        ("--size 512x512 --width 512", "either --size"),
        ("--webhook ftp://example", "webhook_url"),
        ("--seed 1 extra words", "unexpected words"),
        ("--size 512x512 --aspect 16:9", "either --size or --aspect, not both"),
        ("-o 'not valid'", "is not a usable variable name"),
        ("-o for", "'for' is not a usable variable name"),
        ("-o 2nd", "'2nd' is not a usable variable name"),
    ],
)
def test_bad_options_give_one_clear_line_and_send_nothing(
    ipython: InteractiveShell, server: Any, tmp_path: Path, line: str, expected: str
) -> None:
    for name in "abcde":
        Image.new("RGB", (64, 64), "red").save(tmp_path / f"{name}.png")
    ipython.run_cell(f"import os; os.chdir({str(tmp_path)!r})")
    _outcome, captured = run(ipython, f"%%flux {line}\na harbour")
    text = html_of(captured) + captured.stdout + captured.stderr
    assert expected in text, text
    assert "Traceback" not in text
    assert server.stats()["submits"] == 0
    assert records(ipython).empty


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--sead 4", "unknown option --sead; did you mean --seed?"),
        ("--sed=4", "unknown option --sed; did you mean --seed?"),
        ("--sizes 512x512", "unknown option --sizes; did you mean --size?"),
        ("--wdith 512", "unknown option --wdith; did you mean --width?"),
        ("--colour red", "unknown option --colour; see %%flux? for the options"),
        ("-x 1", "unknown option -x; see %%flux? for the options"),
        ("--s 1", "%%flux: --s could be --safety, --seed, --size, --steps; write the option in full"),
        ("--asp 1:1 --aspect 2:1", "--aspect is given twice"),
    ],
)
def test_unknown_options_suggest_the_nearest(ipython: InteractiveShell, server: Any, line: str, expected: str) -> None:
    _outcome, captured = run(ipython, f"%%flux {line}\na harbour")
    assert expected in html_of(captured) + captured.stdout
    assert server.stats()["submits"] == 0


def test_negative_numbers_and_option_values_are_not_taken_for_options(ipython: InteractiveShell) -> None:
    _outcome, captured = run(ipython, "%%flux --seed -5\na harbour")
    assert "seed -5 is out of range" in html_of(captured)
    _outcome, captured = run(ipython, "%%flux -s5 --size=64x64 -o pic\na harbour")
    assert ipython.user_ns["pic"].seed == 5 and ipython.user_ns["pic"].image.size == (64, 64)
    _outcome, captured = run(ipython, "%%flux --se 6 --si 64x64 -o pic\na harbour")  # abbreviations, as argparse
    assert ipython.user_ns["pic"].seed == 6 and ipython.user_ns["pic"].image.size == (64, 64)


def test_sweep_over_seeds_prompts_and_models_runs_every_combination(ipython: InteractiveShell, server: Any) -> None:
    cell = "%%flux --seed 1:3 --model flux-2-klein-4b,flux-2-pro --size 256x256 -o sweep\na boat\n---\na car"
    outcome, captured = run(ipython, cell)
    assert outcome.success
    sweep = ipython.user_ns["sweep"]
    assert isinstance(sweep, SweepResult) and len(sweep) == 12
    combos = {(r.labels["prompt"], r.labels["seed"], r.labels["model"]) for r in sweep}
    assert len(combos) == 12
    assert all(r.ok for r in sweep)
    assert server.stats()["submits"] == 12
    assert "<img" in html_of(captured)
    frame = ipython.user_ns["flux_history"]
    assert sorted(frame["model"].unique()) == ["flux-2-klein-4b", "flux-2-pro"]


def test_size_lists_sweep_width_and_height_together(ipython: InteractiveShell) -> None:
    run(ipython, "%%flux --seed 1 --size 256x256,384x256 -o sweep\na kite")
    sizes = sorted(r.image.size for r in ipython.user_ns["sweep"])
    assert sizes == [(256, 256), (384, 256)]


def test_reference_images_from_variables_paths_and_results(ipython: InteractiveShell, tmp_path: Path) -> None:
    path = tmp_path / "ref.png"
    Image.new("RGB", (128, 128), (200, 30, 30)).save(path)
    ipython.user_ns["ref_pil"] = Image.new("RGB", (96, 96), (30, 200, 30))
    run(ipython, "%%flux --seed 5 --size 256x256 -o base\na bowl")
    outcome, _ = run(ipython, f"%%flux --seed 5 --size 256x256 -i ref_pil -i {path} -i base -o edit\nmake it blue")
    assert outcome.success
    edit = ipython.user_ns["edit"]
    assert edit.ok
    row = records(ipython).set_index("record_id").loc[edit.record_id]
    assert len(row["input_hashes"]) == 3


def test_cache_answers_identical_requests_and_fresh_sends_again(ipython: InteractiveShell, server: Any) -> None:
    cell = "%%flux --seed 9 --size 256x256 -o pic\na quiet lake"
    run(ipython, cell)
    first = ipython.user_ns["pic"]
    _, captured = run(ipython, cell)
    second = ipython.user_ns["pic"]
    assert second.cached and second.path == first.path  # the first run's image, from the cache
    assert second.record_id == first.record_id and len(records(ipython)) == 1  # a re-run adds no row
    assert "cached" in html_of(captured)
    assert server.stats()["submits"] == 1
    run(ipython, cell.replace("-o pic", "-o pic --fresh"))
    assert not ipython.user_ns["pic"].cached
    assert server.stats()["submits"] == 2
    assert ipython.user_ns["pic"].path.read_bytes() == first.path.read_bytes()


def test_budget_refuses_before_sending(ipython: InteractiveShell, server: Any) -> None:
    run(ipython, "%config Flux.budget = 3.0")
    _outcome, captured = run(ipython, "%%flux --seed 1:4 --size 512x512\na hill")
    text = html_of(captured) + captured.stdout
    assert "budget" in text and "5.60" in text
    assert server.stats()["submits"] == 0
    assert records(ipython).empty
    run(ipython, "%%flux --seed 1:2 --size 512x512\na hill")
    assert server.stats()["submits"] == 2


def test_replay_is_byte_identical_on_the_preview_engine(ipython: InteractiveShell, tmp_path: Path) -> None:
    ipython.user_ns["ref"] = Image.new("RGB", (80, 120), (10, 90, 200))
    run(ipython, "%%flux --seed 21 --size 256x256 -i ref -o pic\na tower")
    old = ipython.user_ns["pic"]
    outcome, captured = run(ipython, f"%flux replay {old.record_id}")
    assert outcome.success
    assert "identical" in html_of(captured).lower()
    frame = records(ipython)
    replay = frame[frame["replay_of"] == old.record_id]
    assert len(replay) == 1
    assert Path(replay.iloc[0]["image_path"]).read_bytes() == old.path.read_bytes()


def test_history_cost_and_grid_line_magics(ipython: InteractiveShell, tmp_path: Path) -> None:
    run(ipython, "%%flux --seed 1,2 --size 256x256\na cup\n---\na pot")
    _, captured = run(ipython, "%flux history 3")
    assert html_of(captured).count("<tr") == 4  # header + 3 rows
    _, captured = run(ipython, "%flux cost")
    assert "flux-2-klein-4b" in html_of(captured) and "5.60" in html_of(captured)
    target = tmp_path / "grid.png"
    outcome, captured = run(ipython, f'%flux grid --x seed --y prompt --where "width == 256" --save {target}')
    assert outcome.success
    assert Image.open(target).size[0] > 2 * 128
    _, captured = run(ipython, '%flux grid --x seed --where "no_such_column == 1"')
    assert "no_such_column" in html_of(captured) + captured.stdout


def test_grid_defaults_to_seeds_across_and_prompts_down(ipython: InteractiveShell, server: Any) -> None:
    run(ipython, "%%flux --seed 1,2 --size 64x64\na cup\n---\na pot")
    outcome, captured = run(ipython, "%flux grid")
    assert outcome.success
    assert 'alt="x: seed · y: prompt"' in html_of(captured)
    _, captured = run(ipython, "%flux grid --y model")
    assert "%flux grid --y model needs --x too" in html_of(captured) + captured.stdout
    assert server.stats()["submits"] == 4


def test_terminal_line_magics_print_text(ipython: InteractiveShell, history_dir: Path) -> None:
    ipython.display_formatter.active_types = ["text/plain"]
    run(ipython, "%%flux --seed 1,2 --size 64x64 -o sweep\na cup\n---\na pot")
    ids = [r.record_id for r in ipython.user_ns["sweep"]]
    _, captured = run(ipython, "%flux history 3")
    lines = captured.stdout.splitlines()
    assert "HTML object" not in captured.stdout
    assert len(lines) == 4 and lines[0].split()[:3] == ["id", "time", "status"]
    assert sum(record_id in captured.stdout for record_id in ids) == 3 and ".jpeg" in lines[1]
    _, captured = run(ipython, "%flux cost")
    assert "HTML object" not in captured.stdout
    assert "flux-2-klein-4b" in captured.stdout and "total" in captured.stdout and "5.60" in captured.stdout
    _, captured = run(ipython, f"%flux replay {ids[0]}")
    old, new, verdict = captured.stdout.splitlines()
    replayed = records(ipython).set_index("record_id")
    new_id = replayed.index[replayed["replay_of"] == ids[0]][0]
    assert old.startswith(f"record {ids[0]}: seed 1 · 64×64") and old.endswith(replayed.loc[ids[0], "image_path"])
    assert new.startswith(f"replay {new_id}: seed 1 · 64×64") and new.endswith(replayed.loc[new_id, "image_path"])
    assert verdict == "byte-identical images"
    _, captured = run(ipython, "%flux grid")
    saved = Path(captured.stdout.strip().removeprefix("flux_nb: grid saved to "))
    assert saved.parent == history_dir / "grids" and saved.suffix == ".png"
    assert Image.open(saved).size[0] > 2 * 64
    _, captured = run(ipython, "%flux grid --x seed --z prompt")
    pages = [Path(line.removeprefix("flux_nb: grid saved to ")) for line in captured.stdout.splitlines()]
    assert len(pages) == 2 and all(p.is_file() and p != saved for p in pages)


def test_a_single_slow_request_shows_its_state_until_the_result_replaces_it(
    ipython: InteractiveShell, server_factory: Any
) -> None:
    slow = server_factory(latency=1.5)
    session_of(ipython).endpoint = slow.url
    outcome, captured = run(ipython, "%%flux --seed 8 --size 64x64 -o pic\na slow picture")
    assert outcome.success and ipython.user_ns["pic"].ok
    first = [o for o in captured.outputs if not o.update]
    updates = [o for o in captured.outputs if o.update]
    assert len(first) == 1 and "flux-progress" in first[0].data["text/html"]
    display_id = first[0].transient["display_id"]
    assert all(o.transient["display_id"] == display_id for o in updates)
    states = " ".join(o.data["text/html"] for o in updates[:-1])
    assert "generating" in states or "queued" in states
    assert "flux-result" in updates[-1].data["text/html"] and "flux-progress" not in updates[-1].data["text/html"]


def test_unknown_line_command_is_a_clear_error(ipython: InteractiveShell) -> None:
    _, captured = run(ipython, "%flux frobnicate")
    assert "unknown %flux command 'frobnicate'" in html_of(captured) + captured.stdout


def test_config_changes_reach_the_session(ipython: InteractiveShell) -> None:
    run(
        ipython,
        "%config Flux.default_width = 320\n%config Flux.default_height = 256\n%config Flux.model = 'flux-2-klein-9b'",
    )
    run(ipython, "%%flux --seed 2 -o pic\na desk")
    pic = ipython.user_ns["pic"]
    assert pic.image.size == (320, 256) and pic.model == "flux-2-klein-9b"


def test_python_api_errors_show_as_one_line(ipython: InteractiveShell) -> None:
    _outcome, captured = run(ipython, "flux.generate('a tree', width=63)")
    text = html_of(captured) + captured.stdout + captured.stderr
    assert "width 63 is below the minimum of 64 pixels" in text
    assert "Traceback" not in text


def test_history_variable_refreshes_after_python_api_calls(ipython: InteractiveShell) -> None:
    run(ipython, "r = flux.generate('a tree', seed=1, width=256, height=256)")
    assert len(ipython.user_ns["flux_history"]) == 1


def test_login_keeps_the_key_in_memory_only(ipython: InteractiveShell, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("getpass.getpass", lambda prompt="": "sk-login-test-7788")
    _, captured = run(ipython, "%flux login")
    assert "key set" in captured.stdout and "sk-login-test-7788" not in captured.stdout
    session = session_of(ipython)
    assert "sk-login-test-7788" not in repr(session)
    run(ipython, "%%flux --seed 1 --size 64x64\nafter login")
    stored = b"".join(p.read_bytes() for p in Path(session.history_dir).rglob("*") if p.is_file())
    assert b"sk-login-test-7788" not in stored


def test_terminal_ipython_prints_saved_paths(ipython: InteractiveShell) -> None:
    ipython.display_formatter.active_types = ["text/plain"]
    _, captured = run(ipython, "%%flux --seed 4 --size 64x64 -o pic\na terminal picture")
    assert captured.stdout.startswith(f"saved {ipython.user_ns['pic'].path} (seed 4 · 64×64")
    _, captured = run(ipython, "%%flux --width 50\nbad")
    assert captured.stdout.strip() == "flux_nb: width 50 is below the minimum of 64 pixels"


def test_resume_settles_what_a_dead_process_left_open(ipython: InteractiveShell, server: Any) -> None:
    session = session_of(ipython)
    never_sent = session.prepare("never sent", seed=5, width=64, height=64)
    cut_off = session.prepare("cut off", seed=6, width=64, height=64)
    ids = session._ready_executor()._record([never_sent, cut_off])
    session.store.mark_sending(ids[1])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with sqlite3.connect(session.store.path) as db:
        db.execute("UPDATE records SET owner = ?", (f"{store_module.socket.gethostname()}:{int(dead.stdout)}",))
    _, captured = run(ipython, "%flux resume")
    assert "1 submit(s) were cut off mid-send" in captured.stdout
    assert "1 request(s) were never sent before their process stopped: %flux resume --unsent" in captured.stdout
    assert server.stats()["submits"] == 0
    assert session.record(ids[1]).status == "unknown" and session.record(ids[0]).status == "pending"
    _, captured = run(ipython, "%flux resume --unsent")
    assert "were never sent" not in captured.stdout and server.stats()["submits"] == 1
    record = session.record(ids[0])
    assert record.status == "ready" and record.image_file is not None and record.image_file.is_file()
    assert list(ipython.user_ns["flux_history"].sort_values("seed")["status"]) == ["ready", "unknown"]
    _, captured = run(ipython, "%flux resume")
    assert "nothing to resume" in captured.stdout
