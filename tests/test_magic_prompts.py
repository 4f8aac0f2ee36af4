"""Prompt axes, plain-name templates, -i expressions and where things go, through %%flux in a real IPython shell.

The server's request counter proves what was and was not sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from PIL import Image

from flux_nb.core.results import Result, SweepResult
from flux_nb.grids import Grid
from tests.test_magic import html_of, records, run, session_of

KEY = "sk-prompt-test-5566778899"


def shown(captured: Any) -> str:
    return html_of(captured) + captured.stdout + captured.stderr


def test_a_list_in_a_template_sweeps_an_axis_named_after_the_variable(ipython: InteractiveShell, server: Any) -> None:
    ipython.user_ns["styles"] = ["watercolour", "oil painting"]
    outcome, captured = run(ipython, "%%flux --seed 1 --size 64x64 -o s\na cat, {styles}")
    assert outcome.success and server.stats()["submits"] == 2
    sweep = ipython.user_ns["s"]
    assert isinstance(sweep, SweepResult)
    assert [r.prompt for r in sweep] == ["a cat, watercolour", "a cat, oil painting"]
    assert [r.labels["styles"] for r in sweep] == ["watercolour", "oil painting"]
    drawn = sweep.grid()
    assert isinstance(drawn, Grid) and drawn.x == "styles"
    assert {"x:watercolour", "x:oil painting"} <= set(drawn.label_boxes)
    assert 'alt="x: styles"' in html_of(captured)
    assert sorted(records(ipython)["prompt"]) == ["a cat, oil painting", "a cat, watercolour"]


def test_series_range_and_alternatives_combine_with_option_axes(ipython: InteractiveShell, server: Any) -> None:
    ipython.user_ns["moods"] = pd.Series(["calm", "stormy"])
    ipython.user_ns["count"] = range(2, 4)
    run(ipython, "%%flux --seed 1,2 --size 64x64 -o s\n{count} {moods} {boats|gulls}")
    sweep = ipython.user_ns["s"]
    assert len(sweep) == 16 and server.stats()["submits"] == 16
    assert {r.prompt for r in sweep} == {
        f"{n} {m} {w}" for n in (2, 3) for m in ("calm", "stormy") for w in ("boats", "gulls")
    }
    assert set(sweep[0].labels) == {"prompt", "count", "moods", "alt1", "seed", "size"}
    assert sweep[0].labels["prompt"] == "{count} {moods} {alt1}"


def test_vary_searches_and_replaces_over_the_prompt(ipython: InteractiveShell, server: Any) -> None:
    run(ipython, '%%flux --seed 3 --size 64x64 --vary "animal=dog,cat,red fox" -o s\na dog on a hill')
    sweep = ipython.user_ns["s"]
    assert [r.prompt for r in sweep] == ["a dog on a hill", "a cat on a hill", "a red fox on a hill"]
    assert sweep.grid().x == "animal" and server.stats()["submits"] == 3
    _, captured = run(ipython, "%%flux --seed 3 --vary animal=horse,cat\na dog on a hill")
    assert "vary animal: 'horse' is not in the prompt" in shown(captured)
    assert server.stats()["submits"] == 3


@pytest.mark.parametrize(
    ("setup", "body", "message"),
    [
        ({"opts": {"a": 1}}, "a {opts}", "{opts} is a dict"),
        ({"opts": {"a", "b"}}, "a {opts}", "{opts} is a set"),
        ({"thing": object()}, "a {thing}", "{thing} is a plain object"),
        ({"nothing": None}, "a {nothing}", "{nothing} is None"),
        ({"mixed": ["a", object()]}, "a {mixed}", "{mixed}[1] is a plain object"),
        ({}, "a {flux._api_key}", "prompt template {flux._api_key}: only plain names are filled"),
        ({}, "a {flux.__init__.__globals__[os]}", "only plain names are filled"),
        ({}, "a {flux}", "{flux} is a Flux object"),
        ({}, "a {flux_history}", "{flux_history} is a DataFrame object"),
    ],
)
def test_values_that_are_not_text_numbers_or_lists_are_refused_before_sending(
    ipython: InteractiveShell, server: Any, setup: dict[str, Any], body: str, message: str
) -> None:
    ipython.user_ns.update(setup)
    _, captured = run(ipython, f"%%flux --seed 1\n{body}")
    assert message in shown(captured) and "Traceback" not in shown(captured)
    assert server.stats()["submits"] == 0 and records(ipython).empty


def test_a_template_or_reference_holding_a_configured_key_is_refused(
    ipython: InteractiveShell, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    session_of(ipython).login(KEY)
    monkeypatch.setenv("BFL_API_KEY", "sk-env-bfl-key-12345678")
    monkeypatch.setenv("FLUX_NB_API_KEY", "sk-env-endpoint-key-1234")
    ipython.user_ns.update(
        mine=KEY, bfl="sk-env-bfl-key-12345678", endpoint=["x", "sk-env-endpoint-key-1234"], note=f"see {KEY}"
    )
    for cell in ("a {mine}", "a {bfl}", "a {endpoint}", "a {note}"):
        _, captured = run(ipython, f"%%flux --seed 1\n{cell}")
        text = shown(captured)
        assert "holds an API key" in text, text
        assert KEY not in text and "sk-env" not in text
    _, captured = run(ipython, '%%flux --seed 1 --vary "a=cat,sk-env-bfl-key-12345678"\na cat')
    assert "holds an API key" in shown(captured)
    _, captured = run(ipython, "%%flux --seed 1 -i mine\na cat")
    assert "-i mine holds an API key" in shown(captured)
    assert server.stats()["submits"] == 0 and records(ipython).empty


def test_image_takes_an_expression_on_a_variable(ipython: InteractiveShell, server: Any, tmp_path: Path) -> None:
    run(ipython, "%%flux --seed 1,2 --size 64x64 -o s1\na bowl")
    ipython.user_ns["holder"] = type("Holder", (), {"picture": Image.new("RGB", (64, 64), "blue")})()
    outcome, _ = run(ipython, "%%flux --seed 5 --size 64x64 -i s1[0] -i s1[-1].image -i holder.picture -o e\nblue")
    assert outcome.success and ipython.user_ns["e"].ok
    row = records(ipython).set_index("record_id").loc[ipython.user_ns["e"].record_id]
    assert len(row["input_hashes"]) == 3
    assert server.stats()["submits"] == 3


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("-i s1", "-i s1 is a sweep of 2 results; pick one (e.g. -i s1[0])"),
        ("-i s1[7]", "-i s1[7]: IndexError"),
        ("-i flux._api_key", "-i flux._api_key: only a name, attributes not starting with _"),
        ("-i s1.__class__", "nothing is called or evaluated"),
        ("-i 'flux.close()'", "nothing is called or evaluated"),
        ("-i s1[0:1]", "nothing is called or evaluated"),
    ],
)
def test_image_expressions_reaching_further_are_refused(
    ipython: InteractiveShell, server: Any, option: str, message: str
) -> None:
    ipython.user_ns["s1"] = SweepResult(
        [Result("a", "ready", "p", "m", 1, 64, 64), Result("b", "ready", "p", "m", 2, 64, 64)]
    )
    _, captured = run(ipython, f"%%flux --seed 1 {option}\nx")
    assert message in shown(captured), shown(captured)
    assert server.stats()["submits"] == 0


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("%%flux a cat\n", "the prompt goes on the lines below %%flux"),
        ("%%flux --seed 1 a cat\n", "unexpected words on the %%flux line: 'a cat'; the prompt goes on the lines below"),
        ("%%flux history 3\n", "history is a line magic: write %flux history 3 (one percent sign)"),
        ("%%flux --seed 1\n   \n", "the cell holds no prompt: write it on the lines below %%flux"),
        ("%flux a cat", "write the prompt on the lines below %%flux"),
    ],
)
def test_the_messages_say_where_the_prompt_goes(
    ipython: InteractiveShell, server: Any, cell: str, message: str
) -> None:
    _, captured = run(ipython, cell)
    assert message in shown(captured), shown(captured)
    assert server.stats()["submits"] == 0


def test_yes_is_accepted_and_passed_to_the_session(ipython: InteractiveShell, server: Any) -> None:
    session = session_of(ipython)
    seen: list[bool] = []
    original = session.run

    def run_with_confirm(batch: Any, observer: Any = None, *, confirm: bool = False) -> Any:
        seen.append(confirm)
        return original(batch, observer)

    session.run = run_with_confirm  # type: ignore[method-assign]
    run(ipython, "%%flux --seed 1,2 --size 64x64 --yes\na kite")
    run(ipython, "%%flux --seed 3 --size 64x64\na kite")
    assert seen == [True, False] and server.stats()["submits"] == 3


def test_a_terminal_sweep_lists_results_in_grid_order_and_saves_the_grid(
    ipython: InteractiveShell, server_factory: Any, history_dir: Path
) -> None:
    # The sweep expands seed 2 before seed 1; the grid (and so the listing) puts seed 1 first.
    ipython.display_formatter.active_types = ["text/plain"]
    ipython.user_ns["styles"] = ["ink", "oil"]
    _, captured = run(ipython, "%%flux --seed 2,1 --size 64x64 -o s\na {styles} boat")
    lines = captured.stdout.splitlines()
    cells = [line.split(": saved ")[0] for line in lines if ": saved " in line]
    assert cells == ["seed: 1 · styles: ink", "seed: 2 · styles: ink", "seed: 1 · styles: oil", "seed: 2 · styles: oil"]
    sweep = ipython.user_ns["s"]
    by_label = {f"seed: {r.seed} · styles: {r.labels['styles']}": str(r.path) for r in sweep}
    for line in lines:
        if ": saved " in line:
            label, rest = line.split(": saved ")
            assert rest.startswith(by_label[label] + " (seed ")
    assert "SweepResult(" not in captured.stdout
    assert lines[-2].startswith("flux_nb: 4/4 done")
    saved = Path(lines[-1].removeprefix("flux_nb: grid saved to "))
    assert saved.parent == history_dir / "grids" and saved.is_file()
    assert Image.open(saved).size == sweep.grid().image.size


@pytest.mark.slow
def test_a_terminal_sweep_over_sizes_and_pages(ipython: InteractiveShell, history_dir: Path) -> None:
    ipython.display_formatter.active_types = ["text/plain"]
    _, captured = run(ipython, "%%flux --seed 1,2 --size 64x64,128x64 -m flux-2-klein-4b,flux-2-klein-9b\na kite")
    cells = [line.split(": saved ")[0] for line in captured.stdout.splitlines() if ": saved " in line]
    assert cells[:2] == [
        "model: flux-2-klein-4b · seed: 1 · size: 64×64",
        "model: flux-2-klein-4b · seed: 2 · size: 64×64",
    ]
    assert len(cells) == 8 and cells[4].startswith("model: flux-2-klein-9b")
    saved = [line for line in captured.stdout.splitlines() if line.startswith("flux_nb: grid saved to ")]
    assert len(saved) == 2 and all(Path(line.split(" to ", 1)[1]).is_file() for line in saved)


def test_flex_prompt_upsampling_off_is_sent_and_recorded(ipython: Any, server: Any) -> None:
    """flux-2-flex rewrites prompts unless told not to: --prompt-upsampling off reaches the server."""
    run(ipython, "%%flux -m flux-2-flex --prompt-upsampling off --seed 3 --size 64x64 -o flex\na kite")
    result = ipython.user_ns["flex"]
    assert result.ok
    assert server.stats()["submits"] == 1
    import httpx

    polling_url = records(ipython)["polling_url"].iloc[-1]
    details = httpx.get(polling_url, timeout=10).json()["details"]
    assert details["settings"]["prompt_upsampling"] is False  # what the server received and recorded
