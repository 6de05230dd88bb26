"""The projector folds a batch while the batch before it is being written (services/projector.py):
the second folds on from the first's uncommitted states, and a failed write drops both. In
process, against a real PostgreSQL; the scratch database has no event store, so a batch that
did not see the one before (a gap to fill) fails instead of passing by luck."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from events.envelope import validate_envelope
from projections.alerts import Alert
from projections.recorded import RecordedEvent
from services.projector import VIEWS, Projector
from services.view_folds import Change
from tests.unit.examples import envelope

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CUSTOMERS = ("C-1", "C-2", "C-3")
PURCHASES = 6  # per customer: versions 1..6, totals 10.01, 20.02, ...


def purchases() -> list[RecordedEvent]:
    """Six purchases of each customer, interleaved across customers as on the stream."""
    events = []
    for version in range(1, PURCHASES + 1):
        for n, customer_id in enumerate(CUSTOMERS):
            total = Decimal("10.01") * version * (n + 1)
            item = {"sku": f"SKU-{version}", "quantity": 1, "unit_price": str(total)}
            data = envelope(
                "purchase.made",
                {"order_id": f"O-{customer_id}-{version}", "items": [item],
                 "total": str(total), "currency": "EUR"},
                event_id=f"00000000-0000-4000-8000-{len(events) + 1:012d}",
                customer_id=customer_id,
                occurred_at=f"2026-05-{version:02d}T10:00:00Z",
            )  # fmt: skip
            events.append(RecordedEvent(len(events) + 1, version, validate_envelope(data)))
    return events


def expected_spent(events: Sequence[RecordedEvent]) -> dict[str, tuple[int, str]]:
    """Per customer: purchases and total spent, summed here from the sent payloads."""
    spent: dict[str, tuple[int, Decimal]] = {}
    for event in events:
        customer_id, total = event.envelope.customer_id, Decimal(event.envelope.payload["total"])
        count, spent_so_far = spent.get(customer_id, (0, Decimal(0)))
        spent[customer_id] = (count + 1, spent_so_far + total)
    return {c: (count, f"{total:.2f}") for c, (count, total) in spent.items()}


def stored_spent(dsn: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(dsn, row_factory=dict_row) as conn:
        rows = conn.execute("SELECT customer_id, version, doc FROM rm_customer_360").fetchall()
    return {
        row["customer_id"]: (row["doc"]["purchases"]["count"],
                             row["doc"]["purchases"]["total_spent"]["EUR"])
        for row in rows
    }  # fmt: skip


def split(events: list[RecordedEvent]) -> tuple[list[RecordedEvent], list[RecordedEvent]]:
    """Versions 1-3 of every customer, then 4-6: each customer is in both batches."""
    return [e for e in events if e.version <= 3], [e for e in events if e.version > 3]


class FailOnce:
    """A batch check that fails the first write it sees (PostgreSQL going away, say)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(
        self, conn: Any, changes: Mapping[str, Sequence[Change]], now: datetime
    ) -> list[Alert]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("the write failed")
        return []


def projector(pool: AsyncConnectionPool[Any], checks: Sequence[Any] = ()) -> Projector:
    return Projector(pool, list(VIEWS.values()), clock=lambda: NOW, checks=checks)


def test_a_batch_folded_before_the_one_before_it_is_written_counts_both_once(
    fresh_database: str,
) -> None:
    events = purchases()
    first, second = split(events)

    async def run() -> None:
        async with AsyncConnectionPool(fresh_database, min_size=1, max_size=2) as pool:
            project = projector(pool)
            folded_first = await project.fold(first)
            folded_second = await project.fold(second)  # nothing of the first is written yet
            assert stored_spent(fresh_database) == {}
            await project.write(folded_first)
            assert stored_spent(fresh_database) == expected_spent(first)
            await project.write(folded_second)

    asyncio.run(run())

    assert stored_spent(fresh_database) == expected_spent(events)


def test_a_failed_write_drops_its_batch_and_the_one_folded_on_from_it(
    fresh_database: str,
) -> None:
    events = purchases()
    first, second = split(events)
    check = FailOnce()

    async def run() -> None:
        async with AsyncConnectionPool(fresh_database, min_size=1, max_size=2) as pool:
            project = projector(pool, checks=[check])
            folded_first = await project.fold(first)
            await project.fold(second)
            with pytest.raises(RuntimeError, match="the write failed"):
                await project.write(folded_first)
            assert stored_spent(fresh_database) == {}  # rolled back
            # the agent drops the second batch; both come again, as after a restart
            await project.apply(first)
            await project.apply(second)

    asyncio.run(run())

    assert check.calls == 3
    assert stored_spent(fresh_database) == expected_spent(events)
