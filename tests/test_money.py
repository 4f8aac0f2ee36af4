"""Money: estimates never below the bill, the balance in view and enforced, gateways that bill, a lost task
never advised to be paid for twice. Against the local server and a stand-in (``ScriptedApi``) on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flux_nb import BudgetError, Flux, ValidationError, protocol
from flux_nb.cli import main as cli_main
from flux_nb.core.backend import resolve_backend
from flux_nb.errors import LargeBatchError
from flux_nb.http import client as client_module
from flux_nb.notebook import commands
from flux_nb.notebook.hints import in_notebook_words
from flux_nb.server import EmbeddedServer
from tests.scripted import ScriptedApi, Step, png_bytes

# Answers BFL gave (BFL_API.md, issue 25): (model, width, height, reference megapixels, credits charged).
OBSERVED = [
    ("flux-2-pro", 1440, 1440, [], 4.5),  # output_mp 1.98, charged 4.5 (the fractional formula said 4.47)
    ("flux-2-pro", 1024, 1040, [], 4.5),  # 1.02 MP rounds up to 2 (the fractional formula said 3.02)
    ("flux-2-pro", 1024, 1024, [0.25], 4.5),  # a 0.25 MP reference counts 1 MP: adds 1.5, not 0.375
    ("flux-2-klein-4b", 1024, 1024, [], 1.4),
    ("flux-2-klein-4b", 1024, 1024, [1.0], 1.5),
]


@pytest.mark.parametrize(("model", "width", "height", "references", "charged"), OBSERVED)
def test_estimates_cover_every_observed_charge(
    model: str, width: int, height: int, references: list[float], charged: float
) -> None:
    assert protocol.estimate_cost(model, width, height, references) == pytest.approx(charged)


def test_only_whole_megapixels_make_an_exact_estimate() -> None:
    assert protocol.estimate_is_exact(1024, 1024) and protocol.estimate_is_exact(2048, 1024, [1.0, 2.0])
    assert not protocol.estimate_is_exact(1024, 1040)
    assert not protocol.estimate_is_exact(512, 512)  # priced as 1 MP: BFL may charge less
    assert not protocol.estimate_is_exact(1024, 1024, [0.25])


def test_megapixels_round_up_to_whole_ones_and_sides_down_to_sixteens() -> None:
    observed = (0.0, 0.25, 1.0, 1.0000001, 1.98, 2.0, 4.0)
    assert [protocol.priced_megapixels(mp) for mp in observed] == [1, 1, 1, 2, 2, 2, 4]
    assert protocol.priced_megapixels(1024 * 1024 * 3 / 2**20) == 3  # a float that is a whole number stays one
    assert [protocol.rendered_side(s) for s in (64, 79, 80, 1080, 1088)] == [64, 64, 80, 1072, 1088]
    assert protocol.size_note(1024, 1024) is None and protocol.size_note(None, None) is None
    assert protocol.size_note(1920, 1080) == (
        "1920x1080 comes back as 1920x1072: the API renders sides in multiples of 16 "
        "(the history records the size that came back)"
    )
    assert protocol.size_note(None, 1000) is not None and protocol.size_note(1000, None) is not None
    request = protocol.FluxRequest("x", width=1000, height=1080)
    assert protocol.output_size(request) == (992, 1072)
    assert protocol.output_size(protocol.FluxRequest("x", width=1000)) == (992, 1024)


def test_a_rounded_estimate_is_said_at_most_and_an_exact_one_about(flux: Flux) -> None:
    rounded = flux.prepare("a fox", model="flux-2-pro", width=1024, height=1040, seed=1)
    exact = flux.prepare("a fox", width=1024, height=1024, seed=1)
    assert (rounded.estimated_cost, rounded.estimate_is_bound) == (4.5, True)
    assert (exact.estimated_cost, exact.estimate_is_bound) == (1.4, False)
    flux.budget = 1.0
    with pytest.raises(BudgetError, match=r"estimated cost at most 4\.50 credits"):
        flux.check_budget([rounded])
    with pytest.raises(BudgetError, match=r"estimated cost about 1\.40 credits"):
        flux.check_budget([exact])


# -- a stand-in that bills: a gateway with a balance ------------------------------------------------


@pytest.fixture
def gateway() -> Iterator[ScriptedApi]:
    """A BFL-shaped stand-in (not a BFL host) with ``GET /v1/credits`` answering a balance of 2 credits."""
    api = ScriptedApi()
    api.balance_asks = 0  # type: ignore[attr-defined]

    @api.app.get("/v1/credits")
    async def credits() -> dict[str, float]:
        api.balance_asks += 1  # type: ignore[attr-defined]
        return {"credits": 2.0}

    api.start()
    yield api
    api.stop()


def test_the_balance_refuses_a_batch_that_passes_it_before_anything_is_sent(
    gateway: ScriptedApi, history_dir: Path
) -> None:
    flux = Flux(endpoint=gateway.url, history_dir=history_dir, billed=True)
    try:
        assert flux.balance is None and flux.credits() == 2.0 and flux.balance == 2.0
        with pytest.raises(BudgetError) as refused:
            flux.sweep("a fox", seed=[1, 2], confirm=True)  # 2 x 1.4 credits
        assert "estimated cost about 2.80 credits for 2 request(s)" in str(refused.value)
        assert "passes the account's balance of 2.00 credits: nothing was sent" in str(refused.value)
        assert gateway.submit_count == 0
        result = flux.generate("a fox", seed=1)  # 1.4 fits; the stand-in charges its 1.4
        assert result.ok and flux.balance == pytest.approx(0.6)
    finally:
        flux.close()


def run_verb(session: Flux, words: list[str], name: str = "credits") -> commands.Shown:
    """``%flux NAME WORDS`` as the magic runs it."""
    verb, front = commands.VERBS[name], commands.Front()
    return verb.run(session, commands.parse(verb, words, front), front)


def test_credits_are_shown_by_the_magic_the_cli_and_the_panel(
    gateway: ScriptedApi, server: EmbeddedServer, history_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local = Flux(endpoint=server.url, history_dir=history_dir)
    billed = Flux(endpoint=gateway.url, history_dir=history_dir, billed=True)
    try:
        said = repr(run_verb(local, []))
        assert said == "flux_nb: balance 1000000.00 credits (not billed: this server's own figure)"
        assert repr(run_verb(billed, [])) == "flux_nb: balance 2.00 credits"
        with pytest.raises(ValidationError, match="%flux credits: unknown option --now"):
            run_verb(billed, ["--now"])
        assert cli_main(["credits", "--endpoint", server.url, "--history-dir", str(history_dir)]) == 0
        assert capsys.readouterr().out.strip() == "balance 1000000.00 credits (not billed: this server's own figure)"
        asked = gateway.balance_asks  # type: ignore[attr-defined]
        panel = billed.panel()
        deadline = time.monotonic() + 10
        while "balance" not in panel.cost.value and time.monotonic() < deadline:
            time.sleep(0.01)  # the panel asks in the background
        assert "balance 2.00 credits" in panel.cost.value
        assert gateway.balance_asks == asked + 1  # type: ignore[attr-defined]
        assert "balance" not in local.panel().cost.value  # a local server's figure is no balance
    finally:
        local.close()
        billed.close()


# -- billed endpoints ------------------------------------------------------------------------------


def test_billed_is_auto_for_bfl_and_local_and_a_gateway_can_say_it_bills() -> None:
    assert resolve_backend("https://api.bfl.ai", "k").billed
    assert resolve_backend("https://api.bfl.ai", "k", billed=True).label == "bfl"
    assert not resolve_backend("http://127.0.0.1:9", None).billed
    gateway = resolve_backend("http://127.0.0.1:9", "k", billed=True)
    assert gateway.billed and gateway.label == "billed:127.0.0.1:9"
    with pytest.raises(ValidationError, match="BFL's API bills every task"):
        resolve_backend("https://api.eu.bfl.ai", "k", billed=False)


def test_a_billed_gateway_gets_the_large_batch_guard_and_billed_totals(gateway: ScriptedApi, history_dir: Path) -> None:
    flux = Flux(endpoint=gateway.url, history_dir=history_dir)
    try:
        big = flux.batch("a fox", seed=list(range(48)))  # 48 x 1.4 = 67.2 credits
        flux.check_budget(big, confirm=False)  # not billed: no guard
        flux.billed = True
        assert flux.backend.billed
        with pytest.raises(LargeBatchError, match="48 request"):
            flux.run(big)
        assert gateway.submit_count == 0
        assert flux.generate("a fox", seed=1).billed
        summary = flux.store.spent()
        assert summary["billed"].tolist() == [True]
        assert "total billed" in repr(run_verb(flux, [], "cost"))
    finally:
        flux.close()


# -- estimate against charge -------------------------------------------------------------------------


def test_flux_cost_shows_the_estimate_against_what_the_api_charged(gateway: ScriptedApi, history_dir: Path) -> None:
    gateway.image = png_bytes(size=(1024, 1040))
    flux = Flux(endpoint=gateway.url, history_dir=history_dir)
    try:
        for seed in (1, 2):  # estimated 1.5 each (1.02 MP rounds up); the stand-in charges 1.4
            assert flux.generate("a fox", seed=seed, width=1024, height=1040).ok
        text = repr(run_verb(flux, [], "cost"))
    finally:
        flux.close()
    assert "estimated before sending vs charged by the API" in text
    assert text.splitlines()[-1].split()[-3:] == ["2", "3.00", "2.80"]


# -- a task the API no longer knows ----------------------------------------------------------------


@pytest.fixture
def quick_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "NOT_FOUND_PAUSES", (0.01, 0.05), raising=False)


@pytest.fixture
def scripted() -> Iterator[ScriptedApi]:
    api = ScriptedApi().start()
    yield api
    api.stop()


def test_task_not_found_soon_after_the_submit_is_polled_again(
    scripted: ScriptedApi, history_dir: Path, quick_grace: None
) -> None:
    lost = {"id": "task-1", "status": "Task not found", "result": None}
    scripted.polls.extend([Step(body=lost), Step(status=404, body=lost)])  # then Ready
    flux = Flux(endpoint=scripted.url, history_dir=history_dir)
    try:
        result = flux.generate("a fox", seed=1)
    finally:
        flux.close()
    assert result.ok and scripted.poll_count == 3 and scripted.submit_count == 1


def test_task_not_found_after_the_grace_window_ends_unknown_never_failed(
    scripted: ScriptedApi, history_dir: Path, quick_grace: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "NOT_FOUND_GRACE", 1.0, raising=False)
    lost = {"id": "task-1", "status": "Task not found", "result": None}
    scripted.polls.extend([Step(body=lost)] * 200)
    flux = Flux(endpoint=scripted.url, history_dir=history_dir)
    try:
        result = flux.run(flux.batch("a fox", seed=1))[0]
        record = flux.record(result.record_id)
    finally:
        flux.close()
    assert result.status == record.status == "unknown"
    assert scripted.poll_count >= 3  # polled again within the window
    words = in_notebook_words(result.error)  # type: ignore[arg-type]
    assert "run the cell again" not in words
    assert "charged twice" in words and "%flux credits" in words


# -- sizes and seeds, recorded as they came back ---------------------------------------------------------


def test_a_size_off_sixteens_is_sent_said_and_recorded_as_it_came_back(flux: Flux) -> None:
    with pytest.warns(UserWarning, match="1000x1080 comes back as 992x1072"):
        result = flux.generate("a fox", seed=1, width=1000, height=1080)
    record = flux.record(result.record_id)
    assert (record.width, record.height) == (1000, 1080)  # what was asked
    assert (record.out_width, record.out_height) == (992, 1072)  # what came back
    assert record.estimated_cost == 1.5  # 992x1072 is 1.01 MP: rounded up


def test_a_64_bit_seed_is_sent_stored_and_read_back(flux: Flux) -> None:
    top = 2**64 - 1
    result = flux.generate("a fox", seed=top, width=64, height=64)
    record = flux.record(result.record_id)
    assert result.seed == record.seed == record.result_seed == top
    assert flux.history()["seed"].tolist() == [top]
    again = flux.generate("a fox", seed=top, width=64, height=64)
    assert again.cached  # the same request is found in the history again


def test_a_prompt_is_capped_by_bfls_tokens_not_32000_characters(flux: Flux) -> None:
    long = "a lighthouse " * 3_000  # 39,000 characters: far under 32K tokens
    assert flux.generate(long, seed=1, width=64, height=64).ok
    with pytest.raises(ValidationError, match="BFL takes up to 32,000 tokens"):
        flux.prepare("p" * (protocol.PROMPT_MAX + 1))
