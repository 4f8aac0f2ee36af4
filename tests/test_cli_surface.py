"""``flux-nb`` as a script uses it: every command in a subprocess against a local server, its exit code,
and the server's own counters proving what was (and was not) sent."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from flux_nb.cli import build_parser
from flux_nb.history.store import HistoryStore
from flux_nb.server.fault_injection import FaultPlan
from tests.test_cli import flux_nb


def lines(out: subprocess.CompletedProcess[str]) -> list[str]:
    return out.stdout.splitlines()


def neutral(*outs: subprocess.CompletedProcess[str]) -> bool:
    """No notebook wording anywhere in the command's output."""
    return not any("%flux" in o.stdout + o.stderr or "%config" in o.stdout + o.stderr for o in outs)


def test_help_documents_the_exit_codes_and_every_option() -> None:
    parser, handlers = build_parser()
    assert "exit codes: 0 done; 1 a request failed" in parser.format_help()
    assert "3 refused: API key, credits, --budget" in parser.format_help()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(handlers) >= {"serve", "generate", "history", "cost", "grid", "replay", "resume"}
    for name, command in sub.choices.items():
        for action in command._actions:
            assert action.help, f"flux-nb {name} {action.option_strings or action.dest} has no help text"
    generate = {s for a in sub.choices["generate"]._actions for s in a.option_strings}
    magic_options = ["--seed", "-W", "-H", "--size", "--aspect", "-i", "--safety", "--format", "-m", "--steps"]
    magic_options += ["--guidance", "--tag", "--fresh", "--webhook", "--out", "--experiment", "--yes", "--vary"]
    assert set(magic_options) | {"--prompt-upsampling", "--no-prompt-upsampling"} <= generate


def test_a_sweep_prints_in_grid_order_copies_its_images_and_saves_the_grid(server: Any, tmp_path: Path) -> None:
    out = flux_nb(
        "generate", "a cup\n---\na pot", "--seed", "1,2", "--size", "64x64", "-o", "shots", "--endpoint", server.url,
        cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    printed = lines(out)
    assert [line.split("(seed ")[1].split()[0] for line in printed[:4]] == ["1", "2", "1", "2"]
    ids = [line.rsplit("id ", 1)[1].split()[0].rstrip(")") for line in printed[:4]]
    rows = HistoryStore(tmp_path / ".flux").query().set_index("record_id")
    assert [(rows.loc[i, "prompt"], rows.loc[i, "seed"]) for i in ids] == [
        ("a cup", 1), ("a cup", 2), ("a pot", 1), ("a pot", 2)
    ]  # fmt: skip
    assert all(line.startswith(f"shots/{i}.jpeg  (") for line, i in zip(printed, ids, strict=False))
    assert printed[4].startswith("grid saved to shots/grid-") and len(printed) == 5
    grid = Image.open(tmp_path / printed[4].removeprefix("grid saved to "))
    assert grid.width > 2 * 64 and grid.height > 2 * 64
    assert server.stats()["submits"] == 4
    assert neutral(out)


def test_vary_replaces_text_in_the_prompt_one_image_per_value(server: Any, tmp_path: Path) -> None:
    out = flux_nb(
        "generate", "a dog on a red, sunny beach", "--vary", "animal=dog,cat,\"red fox\"", "--seed", "4",
        "--size", "64x64", "--endpoint", server.url, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = HistoryStore(tmp_path / ".flux").query()
    assert sorted(rows["prompt"]) == ["a cat on a red, sunny beach", "a dog on a red, sunny beach",
                                      "a red fox on a red, sunny beach"]  # fmt: skip
    assert server.stats()["submits"] == 3
    assert lines(out)[-1].startswith("grid saved to ")
    bad = flux_nb("generate", "a dog", "--vary", "animal", "--endpoint", server.url, cwd=tmp_path)
    assert bad.returncode == 2 and "NAME=FIND,REPLACEMENT" in bad.stderr and server.stats()["submits"] == 3


def test_identical_requests_in_one_run_are_sent_once(server: Any, tmp_path: Path) -> None:
    out = flux_nb("generate", "a kite", "--seed", "5,5", "--size", "64x64", "--endpoint", server.url, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert sum("(seed 5 · 64×64" in line for line in lines(out)) == 2
    assert server.stats()["submits"] == 1


def test_references_are_taken_from_paths_repeatably(server: Any, tmp_path: Path) -> None:
    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (64, 64), colour).save(tmp_path / name)
    out = flux_nb(
        "generate", "blend them", "-i", "a.png", "-i", "b.png", "--seed", "2", "--size", "64x64", "-o", "x.jpeg",
        "--endpoint", server.url, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    record = HistoryStore(tmp_path / ".flux").query().iloc[0]
    assert len(record["input_hashes"]) == 2 and Image.open(tmp_path / "x.jpeg").size == (64, 64)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-W", "60", "-H", "64"], "width 60 is below the minimum of 64 pixels"),
        (["-m", "flux-2-nope"], "flux-2-nope"),
        (["--size", "64x64", "-W", "64"], "give either --size/--aspect or --width/--height"),
        (["--seed", "1:x"], "--seed"),
        (["--no-prompt-upsampling", "--size", "64x64"], "prompt_upsampling"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_sends_nothing(
    server: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    out = flux_nb("generate", "x", *args, "--endpoint", server.url, cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr.startswith("flux-nb: ") and message in out.stderr and len(out.stderr.splitlines()) == 1
    assert server.stats()["http_requests"] == {}
    assert neutral(out)


def test_an_unknown_option_exits_2_names_the_nearest_and_sends_nothing(server: Any, tmp_path: Path) -> None:
    out = flux_nb("generate", "x", "--sed", "3", "--endpoint", server.url, cwd=tmp_path)
    assert out.returncode == 2 and "unknown option --sed; did you mean --seed?" in out.stderr
    assert server.stats()["http_requests"] == {}


def test_budget_and_key_refusals_exit_3(server_factory: Any, tmp_path: Path) -> None:
    open_server = server_factory()
    out = flux_nb("generate", "x", "--size", "64x64", "--budget", "0.5", "--endpoint", open_server.url, cwd=tmp_path)
    assert out.returncode == 3 and "raise --budget" in out.stderr
    assert open_server.stats()["http_requests"] == {}
    locked = server_factory(api_keys=frozenset({"right-key"}))
    out = flux_nb(
        "generate", "x", "--size", "64x64", "--endpoint", locked.url, cwd=tmp_path, env={"FLUX_NB_API_KEY": "wrong"}
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "wrong" not in out.stdout + out.stderr
    assert locked.stats()["submits"] == 0
    assert neutral(out)


def test_a_failed_request_exits_1(server_factory: Any, tmp_path: Path) -> None:
    failing = server_factory(faults=FaultPlan.parse("task_error=1"))
    out = flux_nb("generate", "x", "--seed", "1", "--size", "64x64", "--endpoint", failing.url, cwd=tmp_path)
    assert out.returncode == 1
    assert lines(out)[0].startswith("failed: ") and "(record " in lines(out)[0]
    assert failing.stats()["submits"] == 1


def test_history_cost_grid_replay_and_resume_read_and_send_what_they_say(server: Any, tmp_path: Path) -> None:
    made = flux_nb("generate", "a cup", "--seed", "1:3", "--size", "64x64", "-t", "cups", "--endpoint", server.url,
                   cwd=tmp_path)  # fmt: skip
    assert made.returncode == 0
    history = flux_nb("history", "2", cwd=tmp_path)
    assert history.returncode == 0 and lines(history)[0].split()[:3] == ["id", "time", "status"]
    assert [line.split()[6] for line in lines(history)[1:]] == ["3", "2"]  # newest first (id, day, time, status, a cup)
    assert "no matching rows" in flux_nb("history", "--tag", "nothing", cwd=tmp_path).stdout
    cost = flux_nb("cost", cwd=tmp_path)
    assert cost.returncode == 0 and "(not billed)" in cost.stdout
    assert ["total", "not", "billed", "3", "4.20"] in [line.split() for line in lines(cost)]
    charged = lines(cost)[-1].split()  # estimate before sending, then what the API said it charged
    assert charged[0] == "flux-2-klein-4b" and charged[-3:] == ["3", "4.20", "4.20"]
    grid = flux_nb("grid", "--where", "seed == 2", "--save", "two.png", cwd=tmp_path)
    assert grid.returncode == 0 and grid.stdout.strip() == "grid saved to two.png"
    bad = flux_nb("grid", "--where", "nosuch == 1", cwd=tmp_path)
    assert bad.returncode == 2 and "--where 'nosuch == 1' failed" in bad.stderr
    assert "is not a condition" in flux_nb("grid", "--where", "3", cwd=tmp_path).stderr
    record_id = lines(history)[1].split()[0]
    replay = flux_nb("replay", record_id, "--endpoint", server.url, cwd=tmp_path)
    assert replay.returncode == 0 and "seed 3 · 64×64" in replay.stdout and "byte-identical images" in replay.stdout
    assert server.stats()["submits"] == 4
    resume = flux_nb("resume", "--endpoint", server.url, cwd=tmp_path)
    assert resume.returncode == 0 and resume.stdout.strip() == "nothing to resume: no task is pending"
    assert server.stats()["submits"] == 4
    assert neutral(made, history, cost, grid, bad, replay, resume)


def test_the_large_batch_guard_refuses_with_exit_3_until_yes(server: Any, tmp_path: Path) -> None:
    args = ["generate", "x", "--seed", "1:3", "--size", "64x64", "--confirm-over", "2", "--endpoint", server.url]
    refused = flux_nb(*args, cwd=tmp_path)
    assert refused.returncode == 3 and refused.stderr.rstrip().endswith("(pass --yes to send it)")
    assert server.stats()["http_requests"] == {}
    sent = flux_nb(*args, "--yes", cwd=tmp_path)
    assert sent.returncode == 0, sent.stderr
    assert server.stats()["submits"] == 3
    assert neutral(refused, sent)


def test_flex_prompt_upsampling_can_be_turned_off(server: Any, tmp_path: Path) -> None:
    out = flux_nb("generate", "x", "-m", "flux-2-flex", "--no-prompt-upsampling", "--size", "64x64",
                  "--endpoint", server.url, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert server.stats()["submits"] == 1


def test_experiment_option_records_the_rows_in_it(server: Any, tmp_path: Path) -> None:
    out = flux_nb("generate", "x", "--seed", "1,2", "--size", "64x64", "--experiment", "study-9",
                  "--endpoint", server.url, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert list(HistoryStore(tmp_path / ".flux").query()["experiment"]) == ["study-9", "study-9"]
    cost = flux_nb("cost", "--experiment", "study-9", cwd=tmp_path)
    assert ["total", "not", "billed", "2", "2.80"] in [line.split() for line in lines(cost)]
    assert lines(cost)[-1].split()[-3:] == ["2", "2.80", "2.80"]  # the experiment's estimate and charge


def test_review_commands_change_the_review_columns(server: Any, tmp_path: Path) -> None:
    flux_nb("generate", "x", "--seed", "1,2", "--size", "64x64", "--endpoint", server.url, cwd=tmp_path)
    ids = list(HistoryStore(tmp_path / ".flux").query()["record_id"])
    assert flux_nb("rate", *ids, "5", cwd=tmp_path).returncode == 0
    assert flux_nb("note", ids[0], "keep", "this", cwd=tmp_path).returncode == 0
    assert flux_nb("tag", ids[0], "--add", "best", cwd=tmp_path).returncode == 0
    assert flux_nb("favourite", ids[1], cwd=tmp_path).returncode == 0
    assert flux_nb("rate", ids[0], "7", cwd=tmp_path).returncode == 2
    frame = HistoryStore(tmp_path / ".flux").query().set_index("record_id")
    assert list(frame.loc[ids, "rating"]) == [5, 5] and frame.loc[ids[0], "note"] == "keep this"
    assert frame.loc[ids[0], "tags"] == "best" and bool(frame.loc[ids[1], "favourite"])


def test_ray_options_need_ray(tmp_path: Path) -> None:
    out = flux_nb("serve", "--port", "0", "--replicas", "2", cwd=tmp_path)
    assert out.returncode == 2 and "--replicas configure Ray Serve: add --ray" in out.stderr


@pytest.mark.slow
def test_serve_ray_without_ray_installed_exits_2(tmp_path: Path) -> None:
    code = "import sys; sys.modules['ray'] = None; from flux_nb.cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run(
        [sys.executable, "-c", code, "serve", "--port", "0", "--ray"], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2 and out.stderr.startswith("flux-nb serve --ray: ")
    assert out.stdout == ""


@pytest.mark.ray
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the ray extra: pip install 'flux-nb[ray]'")
def test_serve_ray_serves_the_protocol_with_the_note_on_stderr(tmp_path: Path) -> None:
    from tests.test_cli import serving

    output: dict[str, str] = {}
    with serving("--ray", "--replicas", "1", "--cpus-per-replica", "0.5", env={}, output=output) as url:
        answer = httpx.post(f"{url}/v1/flux-2-klein-4b", json={"prompt": "x", "width": 64, "height": 64}).json()
        assert "polling_url" in answer
    assert "flux-nb serve: Ray:" in output["stderr"]
    assert output["stdout"].startswith("flux_nb local server on http://127.0.0.1:")


def test_refusals_exit_3_and_hints_are_worded_as_flags() -> None:
    from flux_nb import errors
    from flux_nb.cli_client import exit_code, in_cli_words

    guard = errors.LargeBatchError("1000 requests, 1400.00 credits estimated")
    assert exit_code(guard) == 3 and in_cli_words(guard).endswith("(pass --yes to send it)")
    assert [exit_code(e) for e in (errors.AuthError("a"), errors.CreditsError("c"), errors.BudgetError("b"))] == [3] * 3
    assert exit_code(errors.ValidationError("v")) == 2 and exit_code(errors.TaskFailedError("t")) == 1
    assert exit_code(errors.TransportError("down")) == 1 and exit_code(None) == 0
    assert "flux-nb resume finishes it" in in_cli_words(errors.FluxTimeout("slow"))
    assert "--fresh" in in_cli_words(errors.UnknownOutcomeError("cut off"))
    words = [in_cli_words(k("x")) for k in (errors.BudgetError, errors.AuthError, errors.FluxTimeout)]
    assert not any("%" in w for w in words)
