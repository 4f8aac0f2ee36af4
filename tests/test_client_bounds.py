"""Client-side bounds: the URL probe's one deadline and believable sizes, list-like axes counted before they are
copied, IPython's history never filled into a prompt, no API key in anything sent, and downloads that stall.

Every server here is on 127.0.0.1: a raw socket site that trickles or claims sizes, and the hostile BFL-shaped
server of ``tests/hostile.py`` with a delivery that stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import socketserver
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell

from flux_nb import Flux, addresses
from flux_nb.core.axes import (
    Axis,
    PromptAxis,
    axes_of_options,
    expand,
    grid_axes,
    listed,
    option_axes,
    parse_floats,
    split_prompts,
)
from flux_nb.core.batch import Defaults, build, one_request, prepare
from flux_nb.core.templates import (
    MIN_KEY_LENGTH,
    Slot,
    choices,
    fill,
    parse,
    parse_vary,
    reference,
    refuse_keys,
    replacement_axes,
    with_replacements,
)
from flux_nb.errors import BudgetError, DeliveryError, FluxError, FluxTimeout, ValidationError
from flux_nb.http.client import AsyncFluxClient, RetryPolicy
from flux_nb.http.probe import ProbePolicy, ReferenceSizes, measure
from flux_nb.http.read_limits import BodyLimits
from flux_nb.protocol import REFERENCE_MP_CAP, FluxRequest, estimate_cost
from tests.hostile import HostileServer, png, png_header_only
from tests.test_magic import html_of, run

LOCAL = ProbePolicy(loopback=True)
SYSTEM_RESOLVE = addresses.resolve  # taken before conftest's autouse fixture swaps it for a loopback-only one
STEP = 0.25  # seconds between two trickled bytes
KEY = "sk-bounds-test-0123456789abcdef"
FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05)
ASKED = FluxRequest("bounds", seed=1, width=256, height=256, output_format="png")


# -- a raw image site on 127.0.0.1 --------------------------------------------------------------


class Site(socketserver.ThreadingTCPServer):
    """Answers GETs from ``answers`` (path -> (head, body, what trickles: "all", "body" or nothing))."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Trickle)
        self.answers: dict[str, tuple[bytes, str]] = {}
        self.paths: list[str] = []

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def serve(self, path: str, body: bytes, trickle: str = "") -> str:
        self.answers[path] = (body, trickle)
        return self.url(path)


class Trickle(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        site: Site = self.server  # type: ignore[assignment]
        path = self.rfile.readline().split()[1].decode()
        while self.rfile.readline() not in (b"\r\n", b""):
            pass
        site.paths.append(path)
        body, trickle = site.answers[path]
        head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n" % len(body)
        slow = head + body if trickle == "all" else body if trickle == "body" else b""
        try:
            self.wfile.write(head if trickle == "body" else b"" if trickle == "all" else head + body)
            for i in range(len(slow)):
                self.wfile.write(slow[i : i + 1])
                time.sleep(STEP)
        except OSError:  # the client hung up
            pass


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    server = Site()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


# -- 1. the URL probe: one deadline, sizes the API would take --------------------------------------


@pytest.mark.parametrize("trickle", ["all", "body"])
def test_a_trickling_reference_is_left_at_the_probes_one_deadline(site: Site, trickle: str) -> None:
    """A byte every 0.25 s never trips a per-read timeout; the probe's overall deadline (1 s) ends it."""
    url = site.serve(f"/trickle-{trickle}.png", png((640, 480)), trickle)
    start = time.monotonic()
    assert measure(url, LOCAL, timeout=1.0) is None
    assert time.monotonic() - start < 1.8  # the size needs 24 bytes: 6 s of trickle


def test_the_sessions_probe_takes_its_stated_deadline(site: Site) -> None:
    url = site.serve("/trickle-session.png", png((640, 480)), "body")
    sizes = ReferenceSizes(LOCAL, timeout=0.5)
    start = time.monotonic()
    assert sizes(url) is None and sizes.known == {url: None}
    assert time.monotonic() - start < 1.3


@pytest.mark.parametrize(
    ("claim", "believed"),
    [((2048, 2048), True), ((2048, 2064), False), ((100_000, 100_000), False), ((1500, 900), True)],
)
def test_a_claimed_size_beyond_the_apis_limits_is_not_believed(
    site: Site, claim: tuple[int, int], believed: bool
) -> None:
    url = site.serve(f"/claim-{claim[0]}x{claim[1]}.png", png_header_only(*claim))
    assert measure(url, LOCAL) == (claim if believed else None)


def test_an_absurd_claim_is_priced_at_the_cap_and_said_at_most(site: Site, tmp_path: Path) -> None:
    """100000x100000 once gave 955 credits as if exact; now the largest reference the API takes, "at most"."""
    url = site.serve("/claim-absurd.png", png_header_only(100_000, 100_000))
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=tmp_path, budget=1.0)
    try:
        prepared = flux.prepare("an edit", images=[url], model="flux-2-pro", seed=1, size="1024x1024")
        assert prepared.estimate_is_bound
        assert prepared.estimated_cost == pytest.approx(estimate_cost("flux-2-pro", 1024, 1024, [REFERENCE_MP_CAP]))
        with pytest.raises(BudgetError, match="at most"):
            flux.check_budget([prepared])
    finally:
        flux.close()


# -- 2. list-like axis values are counted before they are copied ---------------------------------

LAZY_ARRAY = np.broadcast_to(np.int64(7), (10**8,))  # 10**8 values in 8 bytes: tolist() would take gigabytes

HUGE: list[tuple[str, Callable[[], Any], str]] = [
    ("template range", lambda: fill("a {n}", {"n": range(10**9)}), r"\{n\} has 1000000000 values"),
    ("template array", lambda: fill("a {n}", {"n": LAZY_ARRAY}), r"\{n\} has 100000000 values"),
    ("template index", lambda: fill("a {n}", {"n": pd.RangeIndex(10**9)}), r"\{n\} has 1000000000 values"),
    ("vary", lambda: build("a dog", Defaults(), seed=1, vary={"dog": range(10**9)}), "has 1000000000 values"),
    ("field range", lambda: build("a dog", Defaults(), seed=range(10**9)), "seed has 1000000000 values"),
    ("field array", lambda: build("a dog", Defaults(), seed=LAZY_ARRAY), "seed has 100000000 values"),
    ("axis", lambda: Axis("seed", range(10**9)), "axis 'seed' has 1000000000 values"),
    ("generate", lambda: one_request({"seed": range(10**9)}), "seed is a list of 1000000000 values"),
]


@pytest.mark.parametrize(("how", "call", "message"), HUGE, ids=[h[0] for h in HUGE])
def test_a_huge_list_like_is_refused_before_it_is_copied(how: str, call: Callable[[], Any], message: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(ValidationError, match=message):
            call()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_list_likes_at_the_limits_still_sweep() -> None:
    assert len(build("a {x|y}", Defaults(), seed=np.arange(512))) == 1024
    assert len(Axis("seed", range(1024)).values) == 1024
    assert len(fill("a {n}", {"n": pd.Series(range(1000))}).axes[0].values) == 1000
    with pytest.raises(ValidationError, match="axis 'seed' has 1025 values; at most 1024"):
        Axis("seed", range(1025))
    with pytest.raises(ValidationError, match="seed has 1025 values; at most 1024"):
        build("a fox", Defaults(), seed=range(1025))


# -- 3. IPython's history is never a template variable ---------------------------------------------

HISTORY_NAMES = ["_", "__", "___", "_i", "_ii", "_iii", "_i1", "_i27", "_1", "_42", "_oh", "_ih", "_dh", "In", "Out"]


@pytest.mark.parametrize("name", HISTORY_NAMES)
def test_ipythons_history_names_are_never_filled_in(name: str) -> None:
    with pytest.raises(ValidationError) as refused:
        fill(f"a portrait of {{{name}}}", {name: "password = 'hunter2-secret'"})
    text = str(refused.value)
    assert f"{{{name}}} is IPython's input/output history" in text and "assign" in text and "hunter2" not in text


@pytest.mark.parametrize("name", ["____", "_i1a", "_x", "In2", "Outer", "_io", "i1"])
def test_names_that_only_look_like_history_are_filled(name: str) -> None:
    assert fill(f"a {{{name}}}", {name: "fox"}).render({}) == "a fox"


def test_the_previous_cell_is_never_sent_from_a_notebook(ipython: InteractiveShell, server: Any) -> None:
    run(ipython, "password = 'hunter2-secret'")
    _, captured = run(ipython, "%%flux --seed 1 --size 64x64\na portrait of {_i}")
    shown = html_of(captured) + captured.stdout + captured.stderr
    assert "{_i} is IPython's input/output history" in shown and "hunter2" not in shown
    assert server.stats()["submits"] == 0


# -- 4 and 6. no API key in anything sent, however it got there ------------------------------------

KEYED: list[tuple[str, Any, dict[str, Any]]] = [
    ("typed", f"a photo of {KEY} on a wall", {}),
    ("alternative", "a photo of {a cat|" + KEY + "}", {}),
    ("split across an alternative", "a {x|" + KEY[:9] + "}" + KEY[9:], {}),
    ("prompt list", ["a cat", f"a note saying {KEY}"], {}),
    ("vary value", "a dog on a hill", {"vary": {"animal": ["dog", f"{KEY} fox"]}}),
    ("webhook", "a cat", {"webhook_url": f"https://hooks.example/{KEY}"}),
]


@pytest.mark.parametrize(("how", "prompt", "fields"), KEYED, ids=[k[0] for k in KEYED])
def test_a_key_anywhere_in_a_batch_is_refused_before_anything_is_sent_or_read(
    site: Site, server: Any, history_dir: Path, how: str, prompt: Any, fields: dict[str, Any]
) -> None:
    reference = site.serve(f"/keyed-{len(site.paths)}.png", png((64, 64)))
    flux = Flux(endpoint=server.url, history_dir=history_dir, api_key=KEY)
    try:
        with pytest.raises(ValidationError, match="holds an API key") as refused:
            flux.sweep(prompt, seed=[1, 2], images=[reference], **fields)
        assert KEY not in str(refused.value) and KEY not in repr(refused.value)
        assert server.stats()["submits"] == 0 and flux.history().empty
        assert site.paths.count(reference.rsplit(":", 1)[1].split("/", 1)[1]) == 0  # the URL was never measured
    finally:
        flux.close()


def test_a_key_typed_in_a_cell_or_a_vary_value_is_never_sent(ipython: InteractiveShell, server: Any) -> None:
    ipython.user_ns["flux"].login(KEY)
    for cell in (f"%%flux --seed 1\na photo of {KEY}", f"%%flux --seed 1 --vary 'dog=dog,{KEY}'\na dog"):
        _, captured = run(ipython, cell)
        shown = html_of(captured) + captured.stdout + captured.stderr
        assert "holds an API key" in shown and KEY not in shown
    assert server.stats()["submits"] == 0


def test_the_key_check_is_exact_at_the_minimum_key_length() -> None:
    """A key of MIN_KEY_LENGTH characters is refused inside a longer value; one character shorter only when equal."""
    at_minimum = "k" * (MIN_KEY_LENGTH - 1) + "Z"
    shorter = at_minimum[1:]
    with pytest.raises(ValidationError, match="prompt holds an API key"):
        prepare(f"a {at_minimum} b", Defaults(keys=(at_minimum,)), seed=1)
    with pytest.raises(ValidationError, match="prompt holds an API key"):
        prepare(at_minimum, Defaults(keys=(at_minimum,)), seed=1)
    assert prepare(f"a {shorter} b", Defaults(keys=(shorter,)), seed=1).request.prompt == f"a {shorter} b"
    with pytest.raises(ValidationError, match="prompt holds an API key"):
        prepare(shorter, Defaults(keys=(shorter,)), seed=1)
    assert prepare(at_minimum[:-1], Defaults(keys=(at_minimum,)), seed=1)  # shorter than the key: never refused
    refuse_keys("v", 12345678, ["87654321"])
    with pytest.raises(ValidationError, match="v holds an API key"):
        refuse_keys("v", 912345678, ["12345678"])


def test_the_session_refuses_the_keys_in_its_environment_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FLUX_NB_API_KEY", KEY)
    flux = Flux(endpoint="http://127.0.0.1:9", history_dir=tmp_path)
    try:
        with pytest.raises(ValidationError, match="prompt holds an API key"):
            flux.prepare(f"a {KEY}", seed=1)
        assert KEY not in repr(Defaults(keys=(KEY,)))
        with pytest.raises(ValidationError, match="prompt holds an API key"):
            flux.batch("a dog", seed=1, vary={"animal": ["dog", KEY]})
    finally:
        flux.close()


# -- 5. downloads: a stall ends early, the deadline follows task_timeout -----------------------------


class StallingDelivery(HostileServer):
    """Healthy until the image: its headers and half its bytes, then nothing (the connection held open)."""

    stall = True

    async def _answer(self, method: str, path: str, writer: asyncio.StreamWriter) -> None:
        if not (self.stall and path == "/sample.png"):
            return await super()._answer(method, path, writer)
        data = png(self.size)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: image/png\r\ncontent-length: %d\r\n\r\n" % len(data)
        writer.write(head + data[: len(data) // 2])
        await writer.drain()
        await asyncio.sleep(3600)


@pytest.fixture
def stalling() -> Iterator[StallingDelivery]:
    server = StallingDelivery().start()
    yield server
    server.stop()


def downloads(server: HostileServer) -> int:
    return sum(s.path == "/sample.png" for s in server.seen)


async def test_a_download_that_stalls_ends_early_with_a_delivery_error(stalling: StallingDelivery) -> None:
    limits = BodyLimits(download_stall=0.5)  # the whole download may take 120 s
    async with AsyncFluxClient("k", stalling.url, retry=FAST, limits=limits, task_timeout=60.0) as client:
        task = await client.submit(ASKED)
        start = time.monotonic()
        with pytest.raises(DeliveryError, match=r"downloading the image: 127\.0\.0\.1 sent nothing for 0\.5 s"):
            await asyncio.wait_for(client.download(f"{stalling.url}/sample.png", task), 20)
    assert time.monotonic() - start < 2.0 and downloads(stalling) == 1  # not retried


async def test_the_whole_download_deadline_follows_a_shorter_task_timeout() -> None:
    with HostileServer("trickle_image") as server:
        limits = BodyLimits(download_stall=60.0)  # a byte a second never stalls
        async with AsyncFluxClient("k", server.url, retry=FAST, limits=limits, task_timeout=1.5) as client:
            task = await client.submit(ASKED)
            start = time.monotonic()
            with pytest.raises(FluxTimeout, match=r"did not arrive within 1\.5 s"):
                await asyncio.wait_for(client.download(f"{server.url}/sample.png", task), 20)
            assert time.monotonic() - start < 2.5 and server.streamed <= 3


def test_flux_download_stall_is_a_setting_and_the_stalled_task_resumes(
    stalling: StallingDelivery, history_dir: Path
) -> None:
    flux = Flux(endpoint=stalling.url, history_dir=history_dir, cache=False, download_stall=0.5)
    try:
        start = time.monotonic()
        first = flux.run([flux.prepare("bounds", seed=1, width=256, height=256, output_format="png")])[0]
        assert time.monotonic() - start < 10.0
        assert first.status == "submitted" and "sent nothing for 0.5 s" in str(first.error_message)
        stalling.stall = False
        assert [r.status for r in flux.resume()] == ["ready"]
        assert [s.method for s in stalling.seen].count("POST") == 1
        with pytest.raises(FluxError, match="download_stall must be a finite number above 0"):
            flux.download_stall = 0
    finally:
        flux.close()


# -- addresses: which hosts may be contacted (decided on address values, no socket opened) --------

PUBLIC_V4 = "93.184.215.14"
NOT_PUBLIC = [
    "127.0.0.1",  # loopback
    "10.1.2.3",  # private
    "192.168.1.9",
    "172.16.0.1",
    "169.254.169.254",  # link-local (cloud metadata)
    "224.0.0.1",  # multicast
    "240.0.0.1",  # reserved
    "0.0.0.0",  # unspecified
    "100.64.0.1",  # shared address space: not private, not global
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:10.0.0.1",  # IPv4-mapped private
    "::ffff:127.0.0.1",
    "2002:a00:1::1",  # 6to4 of 10.0.0.1
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo of 10.0.0.1
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    f"::ffff:{PUBLIC_V4}",  # a wrapper passes only where both it and what it wraps are global
    "64:ff9b::5db8:d70e",
]


@pytest.mark.parametrize("text", NOT_PUBLIC)
def test_addresses_that_are_not_public_are_refused(text: str) -> None:
    assert not addresses.is_public(addresses.parse_address(text))


@pytest.mark.parametrize("text", [PUBLIC_V4, "2606:4700::1111", "8.8.8.8", "2a00:1450:4001::200e"])
def test_public_addresses_pass(text: str) -> None:
    assert addresses.is_public(addresses.parse_address(text))


@pytest.mark.parametrize(
    ("text", "inner"),
    [
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2002:a00:1::1", "10.0.0.1"),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", "10.0.0.1"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("64:ff9b::1:a00:1", "64:ff9b::1:a00:1"),  # outside the NAT64 /96: itself
        ("2606:4700::1111", "2606:4700::1111"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_an_ipv6_wrapper_is_judged_by_the_ipv4_address_it_carries(text: str, inner: str) -> None:
    assert addresses.unwrap(addresses.parse_address(text)) == addresses.parse_address(inner)


@pytest.mark.parametrize(
    ("text", "loopback"),
    [
        *[("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True)],
        *[("64:ff9b::7f00:1", True), ("10.0.0.1", False), (PUBLIC_V4, False), ("::2", False)],
        ("::ffff:10.0.0.1", False),
    ],
)
def test_loopback_is_recognised_also_when_wrapped(text: str, loopback: bool) -> None:
    assert addresses.is_loopback(addresses.parse_address(text)) is loopback


def test_a_resolvers_answer_is_parsed_without_its_zone_and_names_are_refused() -> None:
    assert addresses.parse_address("fe80::1%eth0") == addresses.parse_address("fe80::1")
    with pytest.raises(ValueError):
        addresses.parse_address("images.example")


def test_numeric_hosts_resolve_without_a_lookup() -> None:
    assert SYSTEM_RESOLVE("2130706433", 80) == ["127.0.0.1"]
    assert SYSTEM_RESOLVE("::1", 80) == ["::1"]


@pytest.mark.parametrize(
    ("url", "host", "port", "address", "connect", "host_header"),
    [
        ("https://img.example/a?v=1#x", "img.example", 443, PUBLIC_V4, f"https://{PUBLIC_V4}:443/a?v=1", "img.example"),
        ("http://img.example:8080", "img.example", 8080, PUBLIC_V4, f"http://{PUBLIC_V4}:8080/", "img.example:8080"),
        ("http://img.example/x", "img.example", 80, "2606:4700::1111", "http://[2606:4700::1111]:80/x", "img.example"),
        ("http://[::1]:8800/x", "::1", 8800, "::1", "http://[::1]:8800/x", "[::1]:8800"),
        ("https://img.example:80/x", "img.example", 80, PUBLIC_V4, f"https://{PUBLIC_V4}:80/x", "img.example:80"),
    ],
)
def test_a_target_connects_to_the_checked_address_and_names_the_host(
    url: str, host: str, port: int, address: str, connect: str, host_header: str
) -> None:
    target = addresses.Target(url, host, port, address)
    assert target.connect_url == connect and target.host_header == host_header


# -- templates, word for word (what a cell's prompt becomes, and each refusal's message) -----------


class Orange:
    pass


class owl:  # a lower-case class name: "an owl object"
    pass


def test_numpy_scalars_are_written_in_and_listed_as_python_values() -> None:
    assert fill("a {v}", {"v": np.bool_(True)}).render({}) == "a True"
    values = fill("a {v}", {"v": [np.int64(1), np.float64(2.5)]}).axes[0].values
    assert values == (1, 2.5) and [type(v) for v in values] == [int, float]
    with pytest.raises(ValidationError, match=r"\{v\} is a void object"):
        fill("a {v}", {"v": np.zeros(1, dtype=[("a", "i4")])[0]})


@pytest.mark.parametrize(("value", "kind"), [(Orange(), "an Orange object"), (owl(), "an owl object"), (Path(), "a")])
def test_a_refused_value_is_named_with_its_article(value: object, kind: str) -> None:
    with pytest.raises(ValidationError, match=rf"\{{v\}} is {kind}[ ;]"):
        fill("a {v}", {"v": value})


def test_values_that_are_not_text_are_never_compared_with_keys() -> None:
    refuse_keys("size", (1024, 768), ["(1024, 768)"])
    refuse_keys("image", object(), ["XXXX"])


def test_a_key_refusal_names_where_the_key_was() -> None:
    with pytest.raises(ValidationError, match=r"^prompt template: \{v\}\[1\] holds an API key"):
        fill("a {v}", {"v": ["x", KEY]}, keys=[KEY])
    with pytest.raises(ValidationError, match=r"^prompt template: \{v\} holds an API key"):
        fill("a {v}", {"v": KEY}, keys=[KEY])
    with pytest.raises(ValidationError, match=r"^-i k holds an API key"):
        reference("k", {"k": KEY}, what="-i k", keys=[KEY])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("a {b", "prompt template: the { at character 3 is not closed; write {{ for a literal brace"),
        ("{a{b} {c}", "prompt template: the { at character 1 is not closed; write {{ for a literal brace"),
        ("a {} b", "prompt template {}: only plain names are filled"),
        ("a } b", "prompt template: a single } at character 3; write }} for a literal brace"),
        ("a {\ud800 x}", "prompt template {\\ud800 x}: only plain names"),
        ("{" + "a b" * 20 + "}", "prompt template {" + "a b" * 20 + "}: only plain names"),
        ("{" + "a b" * 20 + "c}", "prompt template {" + ("a b" * 20)[:57] + "...}: only plain names"),
        ("{nope}", "prompt template: {nope} is not defined in the notebook (define it, or write {{nope}} for literal "),
        ("{d}", "prompt template: {d} is a dict; a template takes text, a number, or a list of them (which sweeps)"),
        ("{alt2}", "prompt template: {alt2} is a name kept for {a|b} alternatives; rename it"),
    ],
)
def test_template_refusals_say_where_and_what_to_do(body: str, message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        fill(body, {"d": {}, "alt2": ["x", "y"]})
    assert str(refused.value).startswith(message)


def test_a_template_keeps_text_braces_and_names_apart() -> None:
    assert fill("XXL {{shirt}} in {colours}", {"colours": ["red", "blue"]}).label == "XXL {shirt} in {colours}"
    assert parse("{a}") == [Slot("a")]
    assert fill("{alto} {alt}", {"alto": ["x", "y"], "alt": ["p", "q"]}).label == "{alto} {alt}"


def test_inline_alternatives_are_numbered_in_order() -> None:
    template = choices("x {a|b} y {c|d} z")
    assert [a.name for a in template.axes] == ["alt1", "alt2"]
    assert template.render({"alt1": "b", "alt2": "c"}) == "x b y c z"
    assert choices("{a|b}").parts == (Slot("alt1"),)


def test_vary_options_split_on_the_first_equals_and_honour_quotes_after_spaces() -> None:
    assert parse_vary(["eq=x=1,y=2"]) == {"eq": ["x=1", "y=2"]}
    assert parse_vary(['animal=dog, "red, fox"']) == {"animal": ["dog", "red, fox"]}
    with pytest.raises(ValidationError) as refused:
        parse_vary(["1bad=x,y"])
    assert str(refused.value).endswith("(e.g. animal=dog,cat,fox: the first value is the text to find in the prompt)")


def test_vary_refusals_name_the_axis_and_what_was_given() -> None:
    with pytest.raises(ValidationError, match=r"vary must be a dict like .*, got a list object"):
        replacement_axes(["dog"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"\{animal\} is an empty list"):
        replacement_axes({"animal": []})


def test_a_replacement_is_found_in_the_prompt_at_every_axis_first_value() -> None:
    found = with_replacements(choices("a {dog|cat}"), replacement_axes({"x": ["dog", "wolf"]}))
    assert found.replacements == (("x", "dog"),)


def test_reference_expressions_index_from_the_end_and_say_what_failed() -> None:
    assert reference("s[-1]", {"s": [1, 2, 3]}, what="-i s[-1]") == 3
    with pytest.raises(ValidationError, match=r"\(like s1\[0\] or results.image\); nothing is called or evaluated$"):
        reference('s[-"a"]', {"s": [1]}, what="-i x")
    with pytest.raises(ValidationError, match=r"^-i s\[5\]\.x: IndexError: list index out of range$"):
        reference("s[5].x", {"s": [1]}, what="-i s[5].x")


# -- axes, word for word (option text, expansion and grid axes) ------------------------------------


def test_list_likes_are_listed_as_python_values() -> None:
    for value in (np.array([1, 2]), pd.Series([1, 2]), range(1, 3), (1, 2)):
        assert [type(v) for v in listed(value, "seed")] == [int, int]


def test_option_text_becomes_axes_in_a_fixed_order() -> None:
    axes = option_axes(
        seed="1:2",
        width="512",
        height="512,768",
        safety="0,5",
        steps="4",
        guidance="2.5:3.5:0.5",
        models=["flux-2-pro, flux-2-flex", " ", "flux-2-klein-4b"],
    )
    assert [(a.name, a.values) for a in axes] == [
        ("seed", (1, 2)),
        ("safety_tolerance", (0, 5)),
        ("steps", (4,)),
        ("guidance", (2.5, 3.0, 3.5)),
        ("width", (512,)),
        ("height", (512, 768)),
        ("model", ("flux-2-pro", "flux-2-flex", "flux-2-klein-4b")),
    ]
    assert option_axes() == [] and option_axes(models=[" , "]) == []


def test_sizes_come_from_size_or_aspect_lists() -> None:
    assert option_axes(size="512x512,1024x768") == [Axis("size", ((512, 512), (1024, 768)))]
    assert option_axes(aspect="1:1, 2:1") == [Axis("size", ((1024, 1024), (1456, 720)))]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"safety": "x"}, "--safety: 'x' is not a whole number"),
        ({"steps": "1:x"}, "--steps: 'x' is not a whole number"),
        ({"seed": "x:3"}, "--seed: 'x' is not a whole number"),
        ({"seed": "1:3:x"}, "--seed: 'x' is not a whole number"),
        ({"width": "x"}, "--width: 'x' is not a whole number"),
        ({"height": "x"}, "--height: 'x' is not a whole number"),
        ({"guidance": "x"}, "--guidance: 'x' is not a number"),
        ({"size": "512x512", "aspect": "16:9"}, "give either --size or --aspect, not both (--aspect picks the size"),
        ({"size": "512x512", "width": "512"}, "give either --size/--aspect or --width/--height, not both"),
        ({"aspect": "16:9", "height": "512"}, "give either --size/--aspect or --width/--height, not both"),
        ({"models": ["flux-2-pro,nope"]}, "model 'nope' is not a FLUX.2 model"),
        ({"seed": "1,2,1:999"}, "--seed '1,2,1:999' gives more than 1000 values; narrow the range or raise STEP"),
    ],
)
def test_bad_option_text_names_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        option_axes(**options)
    assert str(refused.value).startswith(message)


def test_axes_of_options_reads_a_parsed_command_line() -> None:
    args = argparse.Namespace(
        seed="1", width=None, height=None, size=None, aspect="16:9", safety=None, steps="2", guidance="3", model=["m"]
    )
    with pytest.raises(ValidationError, match="model 'm'"):
        axes_of_options(args)
    args.model = ["flux-2-flex"]
    assert [a.name for a in axes_of_options(args)] == ["seed", "steps", "guidance", "size", "model"]
    args.aspect, args.width, args.height = None, "512", "256"
    assert [(a.name, a.values) for a in axes_of_options(args)][3:5] == [("width", (512,)), ("height", (256,))]
    args.width, args.height, args.size, args.safety = None, None, "512x512", "1"
    assert [(a.name, a.values) for a in axes_of_options(args)][1:3] == [("safety_tolerance", (1,)), ("steps", (2,))]
    assert axes_of_options(args)[4] == Axis("size", ((512, 512),))


def test_floats_keep_six_decimals_and_an_empty_cell_says_so() -> None:
    assert parse_floats("0.12345678", "guidance") == [0.123457]
    with pytest.raises(ValidationError) as refused:
        split_prompts("---\n  \n")
    assert str(refused.value) == "the cell holds no prompt: write what the image should show"


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ([Axis("colour", (1,))], "cannot sweep 'colour': sweepable fields are prompt, seed, width, height, size,"),
        (
            [Axis("seed", (1,)), Axis("model", ("a",)), Axis("seed", (2,)), Axis("model", ("b",))],
            "axis model, seed is given twice; merge its values into one list",
        ),
        (
            [Axis("size", ((512, 512),)), Axis("height", (512,))],
            "sweep either size or width/height, not both (size sets width and height)",
        ),
    ],
)
def test_axis_refusals_are_exact(axes: list[Axis], message: str) -> None:
    with pytest.raises(ValidationError) as refused:
        expand({}, axes)
    assert str(refused.value) == message or str(refused.value).startswith(message)


def test_a_prompt_axis_labels_a_point_and_later_axes_still_set_fields() -> None:
    points = expand({"model": "m"}, [PromptAxis("alt1", ("a", "b")), Axis("seed", (1, 2))])
    assert [p.fields for p in points] == [{"model": "m", "seed": s} for _ in "ab" for s in (1, 2)]
    assert points[1].labels == {"alt1": "a", "seed": 2}


def test_unhashable_label_values_vary_by_identity() -> None:
    assert grid_axes([{"images": {"a": 1}}, {"images": {"b": 2}}]) == ("images", None, None)
    shared = {"a": 1}
    assert grid_axes([{"images": shared, "seed": 1}, {"images": shared, "seed": 2}]) == ("seed", None, None)
