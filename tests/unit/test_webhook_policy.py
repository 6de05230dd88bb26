"""The webhook retry policy: what is retried, after how long, and when a delivery gives up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.webhook_policy import Decision, Outcome, RetryPolicy, Status, decide

POLICY = RetryPolicy(backoff_seconds=1, max_backoff_seconds=300, retry_seconds=3600)
CREATED = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
NETWORK_ERROR = Outcome(None, "ConnectError: [Errno 111] Connection refused")


def after(seconds: float) -> datetime:
    return CREATED + timedelta(seconds=seconds)


def decide_now(outcome: Outcome, attempt: int = 1, jitter: float = 0.0) -> Decision:
    return decide(POLICY, outcome, attempt, CREATED, CREATED, jitter)


@pytest.mark.parametrize("code", [200, 201, 202, 204, 299])
def test_2xx_is_delivered(code: int) -> None:
    assert decide_now(Outcome(code)) == Decision(Status.DELIVERED)


@pytest.mark.parametrize("outcome", [NETWORK_ERROR, Outcome(None, "timeout after 5 s"),
                                     Outcome(429), Outcome(500), Outcome(502), Outcome(503),
                                     Outcome(599)])  # fmt: skip
def test_network_errors_429_and_5xx_are_retried(outcome: Outcome) -> None:
    decision = decide_now(outcome)

    assert decision.status is Status.PENDING
    assert decision.next_attempt_at is not None
    assert decision.next_attempt_at > CREATED
    assert decision.error == outcome.describe()


@pytest.mark.parametrize("code", [301, 302, 400, 401, 403, 404, 410, 413, 422, 499])
def test_other_statuses_fail_at_once(code: int) -> None:
    assert decide_now(Outcome(code)) == Decision(Status.FAILED, error=f"HTTP {code} (not retried)")


def test_the_error_of_a_network_failure_is_its_message() -> None:
    assert decide_now(NETWORK_ERROR).error == "ConnectError: [Errno 111] Connection refused"


def test_the_backoff_doubles_from_the_first_delay_up_to_the_cap() -> None:
    # jitter 1.0 (excluded in practice) gives the nominal delay: 1, 2, 4, ... capped at 300
    delays = [POLICY.backoff(attempt, jitter=1.0) for attempt in range(1, 12)]

    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert POLICY.backoff(10_000, jitter=1.0) == 300


@given(attempt=st.integers(1, 100), jitter=st.floats(0, 1, exclude_max=True))
def test_jitter_keeps_the_delay_between_half_and_all_of_the_nominal_one(
    attempt: int, jitter: float
) -> None:
    nominal = min(2.0 ** (attempt - 1), 300)

    assert nominal / 2 <= POLICY.backoff(attempt, jitter) <= nominal


def test_the_next_attempt_is_now_plus_the_backoff() -> None:
    now = after(100)

    decision = decide(POLICY, Outcome(503), 3, CREATED, now, jitter=0.5)

    assert decision.next_attempt_at == now + timedelta(seconds=4 / 2 + 0.5 * 4 / 2)


@pytest.mark.parametrize("code", [429, 503])
def test_retry_after_in_seconds_is_honoured_on_429_and_503(code: int) -> None:
    decision = decide_now(Outcome(code, retry_after="120"))

    assert decision.next_attempt_at == after(120)


def test_retry_after_as_an_http_date_is_honoured() -> None:
    decision = decide_now(Outcome(503, retry_after="Sun, 01 Feb 2026 09:01:30 GMT"))

    assert decision.next_attempt_at == after(90)


def test_retry_after_never_shortens_the_backoff() -> None:
    decision = decide(POLICY, Outcome(429, retry_after="0"), 5, CREATED, CREATED, jitter=0.0)

    assert decision.next_attempt_at == after(8)


def test_retry_after_is_capped_at_the_longest_backoff() -> None:
    decision = decide_now(Outcome(503, retry_after="86400"))

    assert decision.next_attempt_at == after(300)


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome(500, retry_after="120"),
        Outcome(503, retry_after="soon"),
        Outcome(503, retry_after=""),
    ],
)
def test_retry_after_is_ignored_on_other_statuses_and_when_malformed(outcome: Outcome) -> None:
    assert decide_now(outcome).next_attempt_at == after(0.5)


def test_a_delivery_gives_up_when_the_next_attempt_would_pass_the_retry_window() -> None:
    last_in_window = decide(POLICY, Outcome(503), 20, CREATED, after(3599), jitter=0.0)
    outside = decide(POLICY, Outcome(503), 21, CREATED, after(3599), jitter=0.0)

    assert last_in_window.status is Status.FAILED  # 3599 + 150 > 3600
    assert outside == Decision(
        Status.FAILED, error="HTTP 503 (gave up after 21 attempts in 3600 s)"
    )
    assert decide(POLICY, Outcome(503), 20, CREATED, after(3000), 0.0).status is Status.PENDING


def test_a_retry_exactly_at_the_end_of_the_window_is_still_made() -> None:
    decision = decide(POLICY, NETWORK_ERROR, 1, CREATED, after(3599.5), jitter=0.0)

    assert decision == Decision(Status.PENDING, after(3600), NETWORK_ERROR.error)
