"""When a webhook delivery is retried, and how long after: pure, no I/O and no clock of its own.

- 2xx: delivered.
- A network error or timeout (no status), 429 or 5xx: retried after an exponential backoff
  with jitter, capped, and never sooner than a `Retry-After` of 429 or 503 asks (also capped).
- Anything else (other 4xx, and 3xx: redirects are not followed): failed at once.
- A delivery whose next attempt would fall after `created_at + retry_seconds` fails for good.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

_MAX_DOUBLINGS = 62
"""Beyond it every backoff is capped anyway; keeps 2 ** n a small float."""


class Status(StrEnum):
    """The state of a delivery after an attempt."""

    DELIVERED = "delivered"
    PENDING = "pending"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt got: an HTTP status, or `error` (a network error or timeout) without."""

    status_code: int | None
    error: str | None = None
    retry_after: str | None = None
    """The response's `Retry-After` header, as sent."""

    def describe(self) -> str:
        return f"HTTP {self.status_code}" if self.status_code is not None else str(self.error)


@dataclass(frozen=True, slots=True)
class Decision:
    status: Status
    next_attempt_at: datetime | None = None
    """When to try again, for PENDING only."""
    error: str | None = None
    """Why the attempt did not deliver, as shown in the delivery's `last_error`."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    backoff_seconds: float
    """The delay after the first failed attempt; it doubles with every attempt."""
    max_backoff_seconds: float
    retry_seconds: float
    """How long after its creation a delivery may still be attempted."""

    def backoff(self, attempt: int, jitter: float) -> float:
        """Delay after failed attempt number `attempt` (1, 2, ...): half of the capped exponential
        delay plus `jitter` (0 <= jitter < 1) times the other half, so retries of many
        deliveries spread out and never come sooner than half the nominal delay."""
        nominal = self.backoff_seconds * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS)
        capped = min(nominal, self.max_backoff_seconds)
        return capped / 2 + jitter * capped / 2


def is_retryable(outcome: Outcome) -> bool:
    code = outcome.status_code
    return code is None or code == 429 or 500 <= code <= 599


def decide(
    policy: RetryPolicy,
    outcome: Outcome,
    attempt: int,
    created_at: datetime,
    now: datetime,
    jitter: float,
) -> Decision:
    """The state of a delivery created at `created_at` after attempt number `attempt` ended
    with `outcome` at `now`; `jitter` is a random number in [0, 1)."""
    code = outcome.status_code
    if code is not None and 200 <= code <= 299:
        return Decision(Status.DELIVERED)
    if not is_retryable(outcome):
        return Decision(Status.FAILED, error=f"{outcome.describe()} (not retried)")
    delay = policy.backoff(attempt, jitter)
    asked = retry_after_seconds(outcome, now)
    if asked is not None:
        delay = min(max(delay, asked), policy.max_backoff_seconds)
    next_attempt_at = now + timedelta(seconds=delay)
    if next_attempt_at > created_at + timedelta(seconds=policy.retry_seconds):
        return Decision(
            Status.FAILED,
            error=f"{outcome.describe()} (gave up after {attempt} attempts in "
            f"{policy.retry_seconds:g} s)",
        )
    return Decision(Status.PENDING, next_attempt_at, outcome.describe())


def retry_after_seconds(outcome: Outcome, now: datetime) -> float | None:
    """The wait a 429 or 503 asked for in `Retry-After` (seconds or an HTTP date), or None
    when there is none, it is malformed, or the status does not carry one."""
    if outcome.status_code not in (429, 503) or not outcome.retry_after:
        return None
    value = outcome.retry_after.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())
