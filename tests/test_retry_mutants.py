"""The retry policy and the reading of answers, at each boundary and word for word (pure: no network, no sleeping).

Written against the survivors of ``bench/mutation.py --module retry`` (see ``bench/MUTATION.md``).
"""

from __future__ import annotations

import asyncio
import json
import types
from typing import Any

import httpx
import pytest

from flux_nb.errors import (
    AuthError,
    CreditsError,
    FluxError,
    ModeratedError,
    RateLimitError,
    RejectedError,
    TaskFailedError,
    TaskNotFoundError,
    TransportError,
    ValidationError,
)
from flux_nb.http import responses
from flux_nb.http import retry as retry_module
from flux_nb.http.responses import Answer
from flux_nb.http.retry import RetryPolicy, Transient
from flux_nb.protocol import Status

# -- the policy's delays -----------------------------------------------------------------------------


@pytest.fixture
def highest(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """``random.uniform`` returns its upper bound; the bounds asked for are kept."""
    asked: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return high

    monkeypatch.setattr(retry_module, "random", types.SimpleNamespace(uniform=uniform))
    return asked


def test_backoff_doubles_for_five_failures_then_stays(highest: list[tuple[float, float]]) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0)
    assert [policy.delay(n) for n in range(8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0, 32.0]
    assert {low for low, _ in highest} == {0}


def test_backoff_is_capped_at_max_delay(highest: list[tuple[float, float]]) -> None:
    assert RetryPolicy(base_delay=0.25, max_delay=1.0).delay(4) == 1.0
    assert RetryPolicy().delay(1) == 0.5


def test_retry_after_is_a_floor_capped_at_its_maximum(highest: list[tuple[float, float]]) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=100.0, max_retry_after=60.0)
    assert policy.delay(1, retry_after=None) == 2.0
    assert policy.delay(1, retry_after=float("nan")) == 2.0
    assert policy.delay(1, retry_after=1.0) == 2.0
    assert policy.delay(1, retry_after=5.0) == 5.0
    assert policy.delay(1, retry_after=500.0) == 60.0
    assert RetryPolicy(base_delay=0.0, max_delay=0.0).delay(1, retry_after=-3.0) == 0.0
    assert RetryPolicy(base_delay=0.0, max_delay=0.0).delay(1, retry_after=60.5) == 60.0


def test_a_transient_failure_carries_its_error() -> None:
    error = TransportError("HTTP 503")
    again = Transient(error, retry_after=2.5, rate_limited=True)
    assert (str(again), again.error, again.retry_after, again.rate_limited) == ("HTTP 503", error, 2.5, True)
    plain = Transient(error)
    assert (plain.retry_after, plain.rate_limited) == (None, False)


# -- the policy's loop -------------------------------------------------------------------------------


class Clock:
    """time.monotonic and asyncio.sleep for the policy: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, highest: list[tuple[float, float]]) -> Clock:
    fake = Clock()
    monkeypatch.setattr(retry_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(retry_module, "asyncio", types.SimpleNamespace(sleep=fake.sleep))
    return fake


def failing(*failures: Transient, then: Any = "done") -> tuple[Any, list[int]]:
    calls: list[int] = []
    queue = list(failures)

    async def attempt() -> Any:
        calls.append(1)
        if queue:
            raise queue.pop(0)
        return then

    return attempt, calls


def run(policy: RetryPolicy, attempt: Any, **options: Any) -> Any:
    return asyncio.run(policy.run(attempt, **options))


def test_faults_are_retried_with_growing_delays_until_an_attempt_succeeds(clock: Clock) -> None:
    policy = RetryPolicy(attempts=3, base_delay=1.0, max_delay=100.0)
    error = TransportError("HTTP 502")
    attempt, calls = failing(Transient(error), Transient(error))
    assert run(policy, attempt, deadline=clock.now + 100) == "done"
    assert len(calls) == 3 and clock.slept == [2.0, 4.0]


def test_the_last_allowed_fault_raises_its_error(clock: Clock) -> None:
    policy = RetryPolicy(attempts=3, base_delay=1.0)
    errors = [TransportError(f"HTTP 50{n}") for n in range(4)]
    attempt, calls = failing(*(Transient(e) for e in errors))
    with pytest.raises(TransportError) as caught:
        run(policy, attempt, deadline=clock.now + 100)
    assert caught.value is errors[2] and len(calls) == 3 and len(clock.slept) == 2


def test_429s_have_their_own_count_and_faults_theirs(clock: Clock) -> None:
    policy = RetryPolicy(attempts=2, base_delay=1.0, max_delay=100.0)
    limited = RateLimitError("HTTP 429")
    fault = TransportError("HTTP 503")
    steps = [Transient(limited, rate_limited=True), Transient(fault), Transient(limited, rate_limited=True)]
    attempt, calls = failing(*steps)
    assert run(policy, attempt, deadline=clock.now + 100, rate_limit_attempts=3) == "done"
    assert len(calls) == 4 and clock.slept == [2.0, 2.0, 4.0]  # each count grows on its own
    attempt, calls = failing(*(Transient(limited, rate_limited=True) for _ in range(5)))
    with pytest.raises(RateLimitError):
        run(policy, attempt, deadline=clock.now + 100, rate_limit_attempts=3)
    assert len(calls) == 3


def test_without_a_429_cap_the_deadline_ends_the_waiting(clock: Clock) -> None:
    policy = RetryPolicy(attempts=2, base_delay=1.0, max_delay=1.0)
    limited = RateLimitError("HTTP 429")
    attempt, calls = failing(*(Transient(limited, rate_limited=True, retry_after=4.0) for _ in range(10)))
    with pytest.raises(RateLimitError) as caught:
        run(policy, attempt, deadline=clock.now + 8.5, rate_limit_attempts=None)
    assert caught.value is limited and clock.slept == [4.0, 4.0, 0.5] and len(calls) == 4


def test_the_deadline_error_is_made_from_the_last_error(clock: Clock) -> None:
    policy = RetryPolicy(attempts=5, base_delay=1.0)
    fault = TransportError("HTTP 503")
    timeout = FluxError("too late")
    made: list[FluxError] = []

    def on_deadline(error: FluxError) -> FluxError:
        made.append(error)
        return timeout

    attempt, calls = failing(Transient(fault), Transient(fault))
    with pytest.raises(FluxError) as caught:
        run(policy, attempt, deadline=clock.now, on_deadline=on_deadline)  # no time left at all: no wait
    assert caught.value is timeout and made == [fault] and clock.slept == [] and len(calls) == 1


def test_an_error_that_is_not_transient_stops_at_once(clock: Clock) -> None:
    async def attempt() -> None:
        raise AuthError("HTTP 401")

    with pytest.raises(AuthError):
        run(RetryPolicy(), attempt, deadline=clock.now + 100)
    assert clock.slept == []


# -- answers: errors ---------------------------------------------------------------------------------


def answer(status: int, body: Any = b"", headers: dict[str, str] | None = None, scrub: Any = None) -> Answer:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    options = {"scrub": scrub} if scrub else {}
    return Answer(status, data, httpx.URL("https://api.example/v1/x"), httpx.Headers(headers or {}), **options)


@pytest.mark.parametrize(
    ("status", "kind", "message"),
    [
        (400, RejectedError, "the API rejected the request: bad"),
        (422, RejectedError, "the API rejected the request: bad"),
        (413, ValidationError, "the request is too large for the API (HTTP 413): bad"),
        (401, AuthError, "the API refused the key (HTTP 401): bad"),
        (403, AuthError, "the API refused the key (HTTP 403): bad"),
        (402, CreditsError, "out of credits (HTTP 402): bad"),
        (429, RateLimitError, "too many active tasks (HTTP 429): bad"),
        (500, TransportError, "HTTP 500 from api.example: bad"),
        (404, TransportError, "HTTP 404 from api.example: bad"),
    ],
)
def test_each_error_status_is_its_own_error_with_the_apis_words(status: int, kind: type, message: str) -> None:
    error = responses.error_for_answer(answer(status, {"detail": "bad"}))
    assert type(error) is kind and str(error) == message
    assert (error.status, error.answer) == (status, {"detail": "bad"})


def test_a_413_says_how_to_make_the_request_smaller() -> None:
    error = responses.error_for_answer(answer(413, {"detail": "bad"}))
    assert error.hint == "downscale the reference images (or pass them as URLs) and send it again"


def test_the_details_are_scrubbed_of_the_key() -> None:
    error = responses.error_for_answer(
        answer(401, {"detail": "key KEY refused"}, scrub=lambda t: t.replace("KEY", "*"))
    )
    assert str(error) == "the API refused the key (HTTP 401): key * refused"
    assert error.answer == {"detail": "key * refused"}


def test_an_answer_is_an_error_from_400() -> None:
    assert answer(400).is_error and not answer(399).is_error and answer(500).is_error


def test_the_detail_of_an_answer_in_its_every_shape() -> None:
    assert responses.detail_text(answer(500, b"")) == "HTTP 500"
    assert responses.detail_text(answer(500, b"x" * 400)) == "x" * 300
    assert responses.detail_text(answer(500, {"message": "m"})) == "{'message': 'm'}"
    assert responses.detail_text(answer(500, ["a"])) == "['a']"
    fields = [{"loc": ["body", "width", 0], "msg": "too big"}, {"msg": "no loc"}, "skip", {"loc": "x", "msg": "s"}]
    assert responses.detail_text(answer(422, {"detail": fields})) == "width.0: too big; no loc; s"
    assert responses.detail_text(answer(422, {"detail": [{"loc": ["body"]}]})) == "[{'loc': ['body']}]"
    assert responses.detail_text(answer(422, {"detail": ["only text"]})) == "['only text']"
    assert responses.detail_text(answer(422, {"detail": [{"msg": "m" * 400}]})) == "m" * 300
    assert responses.detail_text(answer(422, {"detail": "d" * 400})) == "d" * 300
    assert responses.detail_text(answer(422, {"detail": [{"loc": ["body", "w"]}, {"msg": "a"}, {}]})) == "w: ; a; "
    assert responses.detail_text(answer(502, b"\xff bad gateway")) == "\ufffd bad gateway"


def test_an_excerpt_is_parsed_json_when_small_else_the_start_of_the_text() -> None:
    assert answer(500, {"a": 1}).excerpt() == {"a": 1}
    assert answer(500, b"plain words").excerpt() == "plain words"
    big = json.dumps({"a": "b" * 1200}).encode()
    assert answer(500, big).excerpt() == big[:300].decode()
    exactly = b'"' + b"c" * 1198 + b'"'  # 1200 bytes of JSON: still parsed
    assert answer(500, exactly).excerpt() == "c" * 1198
    assert answer(500, b"\xff" * 10).excerpt() == "\ufffd" * 10
    assert answer(500, b'"\xff"').excerpt() == "\ufffd"  # JSON with a byte that is not UTF-8: still parsed
    assert answer(500, b"\xff" * 1300).excerpt() == "\ufffd" * 300


def test_a_long_excerpt_is_scrubbed_within_its_first_1200_bytes() -> None:
    body = b"x" * 1190 + b"SECRETKEY" + b"y" * 400
    assert answer(500, body, scrub=lambda text: text.replace("x", "")).excerpt() == "SECRETKEYy"
    assert answer(200, {"x": 1}).json() == {"x": 1}


def test_retry_after_reads_finite_seconds_only() -> None:
    assert responses.retry_after(httpx.Headers({"Retry-After": "2.5"})) == 2.5
    assert responses.retry_after(httpx.Headers({"Retry-After": "-4"})) == 0.0
    assert responses.retry_after(httpx.Headers({"Retry-After": "0"})) == 0.0
    for text in ("soon", "inf", "nan"):
        assert responses.retry_after(httpx.Headers({"Retry-After": text})) is None
    assert responses.retry_after(httpx.Headers({})) is None


def test_final_statuses_become_their_errors() -> None:
    reasons = {"details": {"Moderation Reasons": ["nudity", "x" * 150]}}
    moderated = responses.error_for_status("t1", Status.REQUEST_MODERATED, reasons)
    assert isinstance(moderated, ModeratedError) and moderated.status == 200
    assert str(moderated) == f"the request was moderated: nudity, {'x' * 100} (not charged)"
    assert moderated.reasons == ["nudity", "x" * 100] and moderated.task_status == "Request Moderated"
    image = responses.error_for_status("t1", Status.CONTENT_MODERATED, {"details": {"Moderation Reasons": "nope"}})
    assert str(image) == "the generated image was moderated (not charged)" and image.reasons == []
    assert image.task_status == "Content Moderated"
    assert str(responses.error_for_status("t1", Status.CONTENT_MODERATED, {"details": "x"})).startswith("the generated")
    missing = responses.error_for_status("t9", Status.TASK_NOT_FOUND, {})
    assert isinstance(missing, TaskNotFoundError) and missing.status == 200
    assert str(missing) == "task t9 is unknown to the API (expired or never created)"
    failed = responses.error_for_status("t2", Status.ERROR, {"details": {"error": "e" * 400}})
    assert isinstance(failed, TaskFailedError) and failed.status == 200
    assert str(failed) == f"task t2 failed: {'e' * 300}"
    assert str(responses.error_for_status("t2", Status.ERROR, {"details": None})) == "task t2 failed"


# -- answers: fields ---------------------------------------------------------------------------------


def test_numbers_are_finite_and_not_negative() -> None:
    assert [responses.number_or_none(v) for v in (0, 2, 1.5)] == [0.0, 2.0, 1.5]
    for value in (-0.5, True, "3", None, float("inf"), float("nan"), [1]):
        assert responses.number_or_none(value) is None


def test_a_task_id_is_printable_text_of_at_most_200_characters() -> None:
    assert responses.task_id_of({"id": " abc "}) == "abc"
    assert responses.task_id_of({"id": 42}) == "42"
    assert responses.task_id_of({"id": "i" * 200}) == "i" * 200
    for body in ({"id": "i" * 201}, {"id": True}, {"id": ""}, {"id": "  "}, {"id": "a\nb"}, {"id": 1.5}, ["id"]):
        assert responses.task_id_of(body) is None


def test_a_url_is_absolute_http_of_at_most_4096_characters() -> None:
    assert responses.url_or_none("https://x.example/a") == "https://x.example/a"
    assert responses.url_or_none("http://x.example/a") == "http://x.example/a"
    longest = "https://x.example/" + "a" * (4096 - 18)
    assert responses.url_or_none(longest) == longest
    for value in (
        longest + "a",
        "ftp://x.example/a",
        "/relative",
        5,
        "http:///path",
        "https://[::1/",
        "https://a\x00b/",
    ):
        assert responses.url_or_none(value) is None


def test_status_progress_and_result_fields() -> None:
    assert responses.status_of({"status": "Ready"}) == (Status.READY, "Ready")
    assert responses.status_of({"status": 3}) == (Status.PENDING, "Pending")
    assert responses.status_of({"status": "s" * 80}) == (Status.PENDING, "s" * 60)
    assert responses.progress_of({"progress": 0.25}) == 0.25
    assert responses.progress_of({"progress": 1.0}) == 1.0
    assert responses.progress_of({"progress": 7}) == 1.0
    assert responses.progress_of({"progress": "half"}) is None and responses.progress_of({}) is None
    assert responses.result_field({"result": {"sample": "u"}}, "sample") == "u"
    assert responses.result_field({"result": "u"}, "sample") is None
    assert responses.seed_of({"result": {"seed": 7}}) == 7
    assert (
        responses.seed_of({"result": {"seed": True}}) is None and responses.seed_of({"result": {"seed": "7"}}) is None
    )


def test_details_are_kept_only_when_small_json() -> None:
    details = {"engine": "e", "n": 1, "f": 0.5, "b": True, "l": [1], "d": {}, "z": None, "k" * 150: "v", "o": object()}
    kept = responses.details_of({"details": details})
    assert kept == {"engine": "e", "n": 1, "f": 0.5, "b": True, "l": [1], "d": {}, "z": None, "k" * 100: "v"}
    fifty = {str(n): n for n in range(50)}
    assert responses.details_of({"details": fifty}) == fifty
    assert responses.details_of({"details": {**fifty, "51": 51}}) == {}
    assert responses.details_of({"details": ["engine"]}) == {}
    assert responses.engine_of({"details": {"engine": "e" * 150}}) == "e" * 100
    assert responses.engine_of({"details": {"engine": 5}}) is None and responses.engine_of({"details": "x"}) is None
