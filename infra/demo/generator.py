"""The demo history of many customers: each simulated on its own (`_Customer`), merged by time."""

from __future__ import annotations

import calendar
import heapq
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from infra.demo.customer import _Customer
from infra.demo.duplicates import duplicate_of, is_duplicate
from infra.demo.people import _profiles


def deserting_customers(customers: int, seed: int) -> set[str]:
    """Ids of the customers `generate(customers, seed=seed)` makes deserting: steady spend, then
    at most 40% of it (often nothing) in the last 4 months of the period."""
    return {p.customer_id for p, _ in _profiles(customers, seed) if p.spend_factor < 1}


@dataclass(frozen=True, slots=True)
class _Period:
    start: int
    end: int
    baseline: int  # the 6 months before the decline of deserting customers (clipped to start)
    decline: int  # the last 4 months
    baseline_months: int

    @classmethod
    def ending(cls, end: datetime, months: int) -> _Period:
        def back(n: int) -> int:
            return math.ceil(_months_before(end, min(n, months)).timestamp())

        return cls(
            back(months), int(end.timestamp()), back(10), back(4), max(0, min(6, months - 4))
        )


def _months_before(moment: datetime, months: int) -> datetime:
    year, month = divmod(moment.year * 12 + moment.month - 1 - months, 12)
    day = min(moment.day, calendar.monthrange(year, month + 1)[1])
    return moment.replace(year=year, month=month + 1, day=day)


def generate(
    customers: int = 2000, months: int = 12, seed: int = 42, end: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """Wire envelopes of `months` months of history of `customers` customers, ending at `end`
    (default: now, UTC, truncated to the hour), in occurred_at order.

    The same arguments give the same envelopes, event ids included. Customers are "C-000001"
    onwards. About a tenth are deserting (see `deserting_customers`): their spend in the last 4
    months falls against the 6 before, so `months` >= 10 shows it in full. One in
    `duplicates.EVERY` also has a duplicate account "W-..." that is merged into it.
    """
    if customers < 0 or months < 1:
        raise ValueError(f"expected customers >= 0 and months >= 1, got {customers}, {months}")
    if end is None:
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    elif end.tzinfo is None:
        raise ValueError(f"end must be timezone-aware, got {end.isoformat()}")
    period = _Period.ending(end, months)
    people = [
        _Customer(index, profile, rng, period)
        for index, (profile, rng) in enumerate(_profiles(customers, seed), start=1)
    ]
    lives: list[Iterator[tuple[int, int, int, dict[str, Any]]]] = [p.events() for p in people]
    lives += [
        _duplicate(customers + p.index, p, period, seed) for p in people if is_duplicate(p.index)
    ]
    return (envelope for *_, envelope in heapq.merge(*lives))


def _duplicate(
    index: int, person: _Customer, period: _Period, seed: int
) -> Iterator[tuple[int, int, int, dict[str, Any]]]:
    """The events of `person`'s duplicate account, sorted like a customer's (`index` unique)."""
    events = duplicate_of(
        person.p.customer_id, person.contact, person.p.currency, person.registered,
        period.end, seed,
    )  # fmt: skip
    for emitted, (ts, envelope) in enumerate(events, start=1):
        yield ts, index, emitted, envelope
