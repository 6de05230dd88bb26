"""The complaint and follow-up alerts with an injected clock, in process: events recorded in a
real event store (PostgreSQL), folded by the projector's code, the deadline clock and the spike
check run at whatever moment a test gives. Every expected time is worked out by hand below.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from events.envelope import validate_envelope
from infra.eventstore import EventStore
from projections.complaint_signals import SpikePolicy
from projections.recorded import RecordedEvent, from_store
from projections.reports import TOUCHPOINTS
from services.complaint_alerts import (
    DeadlineClock,
    SpikeCheck,
    raise_breaches,
    raise_overdue_followups,
)
from services.projector import VIEWS, Projector
from tests.integration.helpers import query
from tests.unit.examples import VALID_PAYLOADS, envelope

pytestmark = pytest.mark.integration

ALERT_NAMESPACE = uuid.UUID("11ef527a-f56f-4707-a1f1-b8efd878d3d7")
T = datetime(2030, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SPIKE = SpikePolicy(minimum=5, window=24 * HOUR, baseline=timedelta(days=28))


def alert_id(kind: str, customer_id: str, episode: str) -> str:
    return str(uuid.uuid5(ALERT_NAMESPACE, f"{kind}|{customer_id}|{episode}"))


def event(type_: str, customer_id: str, at: datetime, **payload: Any) -> dict[str, Any]:
    body = {**VALID_PAYLOADS[type_], **payload}
    return envelope(type_, {k: v for k, v in body.items() if v is not None},
                    event_id=str(uuid.uuid4()), customer_id=customer_id,
                    occurred_at=at.isoformat())  # fmt: skip


def filed(customer_id: str, complaint_id: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return event("complaint.filed", customer_id, at, complaint_id=complaint_id, **fields)


class World:
    """A fresh database with the event store; `record` appends events, `project` folds recorded
    events with the projector's code (views, touchpoint index, spike check) at a given time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.store = EventStore(dsn)
        self.store.create_tables()
        self.position = 0

    def record(self, *envelopes: dict[str, Any]) -> list[RecordedEvent]:
        self.store.record([validate_envelope(e) for e in envelopes])
        notes = self.store.read(self.position, 10_000)
        self.position = notes[-1].id
        return [from_store(n.state, position=n.id, version=n.originator_version) for n in notes]

    def project(self, batches: Sequence[Sequence[RecordedEvent]], now: datetime) -> None:
        async def run() -> None:
            async with self.pool() as pool:
                projector = Projector(
                    pool, list(VIEWS.values()), clock=lambda: now,
                    event_tables=[TOUCHPOINTS], checks=[SpikeCheck(SPIKE)],
                )  # fmt: skip
                for batch in batches:
                    await projector.apply(batch)

        asyncio.run(run())

    def send(self, now: datetime, *envelopes: dict[str, Any]) -> None:
        """Record and project at once, as one batch."""
        self.project([self.record(*envelopes)], now)

    def breaches(self, now: datetime) -> int:
        return self._run(raise_breaches, now)

    def overdue(self, now: datetime) -> int:
        return self._run(raise_overdue_followups, now)

    def _run(self, scan: Any, now: datetime) -> int:
        async def run() -> int:
            async with self.pool() as pool:
                return int(await scan(pool, now))

        return asyncio.run(run())

    def alerts(self, kind: str) -> list[tuple[str, dict[str, Any], str]]:
        rows = query(self.dsn, "SELECT alert_id, alert, status FROM crm_alerts WHERE kind = %s "
                     "ORDER BY seq", (kind,))  # fmt: skip
        return [(str(a), d, str(s)) for a, d, s in rows]  # type: ignore[misc]

    def pool(self) -> AsyncConnectionPool[Any]:
        return AsyncConnectionPool(self.dsn, min_size=1, max_size=2, open=False)


@pytest.fixture
def world(fresh_database: str) -> Iterator[World]:
    world = World(fresh_database)
    yield world
    world.store.close()


# --- SLA breaches ---------------------------------------------------------------------------


def test_a_case_open_at_its_deadline_is_alerted_once_by_the_clock_and_resolved_with_it(
    world: World,
) -> None:
    """High severity: 24 h. Filed at T, due at T + 24 h; resolved at T + 25 h, late."""
    world.send(T, filed("C-1", "K-1", T, severity="high", product_sku=None))

    assert world.breaches(T + 24 * HOUR - timedelta(microseconds=1)) == 0
    assert world.breaches(T + 24 * HOUR) == 1
    assert world.breaches(T + 30 * HOUR) == 0, "one alert per episode"

    [(ident, doc, status)] = world.alerts("complaint.sla.breached")
    assert ident == alert_id("complaint.sla.breached", "C-1", "K-1|1")
    assert (status, doc["customer_id"], doc["raised_at"]) == ("open", "C-1", "2030-03-03T09:00:00Z")
    assert doc["details"] == {
        "complaint_id": "K-1", "category": "delivery", "product_sku": None, "severity": "high",
        "assignee": None, "episode": 1, "opened_at": "2030-03-02T09:00:00Z",
        "due_at": "2030-03-03T09:00:00Z",
    }  # fmt: skip
    assert doc["suggested_action"]

    world.send(T + 25 * HOUR, event("complaint.resolved", "C-1", T + 25 * HOUR, complaint_id="K-1"))
    assert [s for _, _, s in world.alerts("complaint.sla.breached")] == ["resolved"]
    assert world.breaches(T + 40 * HOUR) == 0


def test_a_case_resolved_in_time_is_never_alerted_and_a_reopening_is_a_new_episode(
    world: World,
) -> None:
    """Medium: 72 h. Filed at T (due T + 72 h), resolved at T + 1 h, reopened at T + 100 h: the
    second episode is due at T + 172 h."""
    world.send(
        T,
        filed("C-2", "K-1", T),
        event("complaint.resolved", "C-2", T + HOUR, complaint_id="K-1"),
    )
    assert world.breaches(T + 99 * HOUR) == 0
    reopened = T + 100 * HOUR
    world.send(reopened, event("complaint.reopened", "C-2", reopened, complaint_id="K-1"))

    assert world.breaches(T + 171 * HOUR) == 0
    assert world.breaches(T + 172 * HOUR) == 1
    [(ident, doc, _)] = world.alerts("complaint.sla.breached")
    assert ident == alert_id("complaint.sla.breached", "C-2", "K-1|2")
    assert (doc["details"]["episode"], doc["details"]["due_at"]) == (2, "2030-03-09T13:00:00Z")


def test_a_resolution_recorded_but_not_projected_yet_holds_the_clock_back(world: World) -> None:
    """The resolution came in time (T + 23 h) but the projector has not applied it when the
    clock reaches the deadline: the customer's views are behind the store, the clock waits."""
    [filing] = world.record(filed("C-3", "K-1", T, severity="high"))
    world.project([[filing]], T)
    late = world.record(event("complaint.resolved", "C-3", T + 23 * HOUR, complaint_id="K-1"))

    assert world.breaches(T + 24 * HOUR) == 0
    world.project([late], T + 24 * HOUR)
    assert world.breaches(T + 25 * HOUR) == 0
    assert world.alerts("complaint.sla.breached") == []


def test_the_clock_looks_at_most_every_interval_and_survives_a_database_away() -> None:
    now_s = [0.0]
    seen: list[datetime] = []

    async def scan(pool: Any, now: datetime) -> int:
        seen.append(now)
        if now == T + HOUR:
            raise psycopg.OperationalError("the database went away")
        return 2

    clock = DeadlineClock(1.0, monotonic=lambda: now_s[0], scans=[scan])
    results = []
    for at_s, now in ((0.0, T), (0.5, T), (1.0, T + HOUR), (2.0, T + 2 * HOUR)):
        now_s[0] = at_s
        results.append(asyncio.run(clock(None, now)))  # type: ignore[arg-type]

    assert results == [2, 0, 0, 2]
    assert seen == [T, T + HOUR, T + 2 * HOUR]


# --- follow-ups -------------------------------------------------------------------------------


def scheduled(customer_id: str, followup_id: str, at: datetime, due: datetime) -> dict[str, Any]:
    return event("followup.scheduled", customer_id, at, followup_id=followup_id,
                 due_at=due.isoformat().replace("+00:00", "Z"))  # fmt: skip


def test_a_follow_up_is_overdue_just_after_its_due_time_once_per_due_time(world: World) -> None:
    due = T + 48 * HOUR
    world.send(T, scheduled("C-4", "F-1", T, due), scheduled("C-4", "F-2", T, due))

    assert world.overdue(due) == 0, "at its due time a follow-up is still open"
    assert world.overdue(due + timedelta(microseconds=1)) == 2
    assert world.overdue(due + HOUR) == 0

    first = alert_id("followup.overdue", "C-4", "2030-03-04T09:00:00Z|F-1")
    second = alert_id("followup.overdue", "C-4", "2030-03-04T09:00:00Z|F-2")
    assert [(i, s) for i, _, s in world.alerts("followup.overdue")] == [
        (first, "open"),
        (second, "open"),
    ]
    # F-1 is done; F-2 is moved to a new due time: both episodes end
    later = due + 24 * HOUR
    world.send(
        due + 2 * HOUR,
        event("followup.completed", "C-4", due + 2 * HOUR, followup_id="F-1"),
        scheduled("C-4", "F-2", due + 2 * HOUR, later),
    )
    assert [(i, s) for i, _, s in world.alerts("followup.overdue")] == [
        (first, "resolved"),
        (second, "resolved"),
    ]
    assert world.overdue(later) == 0
    assert world.overdue(later + timedelta(seconds=1)) == 1
    third = alert_id("followup.overdue", "C-4", "2030-03-05T09:00:00Z|F-2")
    assert [i for i, _, _ in world.alerts("followup.overdue")] == [first, second, third]


# --- product spikes ---------------------------------------------------------------------------


def test_a_quiet_product_spikes_at_its_fifth_complaint_in_a_day_once_per_episode(
    world: World,
) -> None:
    at = [T + k * HOUR for k in range(7)]
    for k in range(4):
        world.send(at[k], filed(f"C-q{k}", "K-1", at[k], product_sku="QUIET"))
    assert world.alerts("product.complaints.spike") == []

    world.send(at[4], filed("C-q4", "K-1", at[4], product_sku="QUIET"))
    [(ident, doc, _)] = world.alerts("product.complaints.spike")
    assert ident == alert_id("product.complaints.spike", "product", "2030-03-02T13:00:00Z|QUIET")
    assert doc["customer_id"] == "C-q4"
    assert doc["details"]["complaints"] == 5
    assert doc["details"]["customer_ids"] == [f"C-q{k}" for k in range(5)]

    world.send(at[5], filed("C-q5", "K-1", at[5], product_sku="QUIET"))  # the same episode
    assert len(world.alerts("product.complaints.spike")) == 1


def test_a_noisy_product_spikes_only_at_three_times_its_usual_rate(world: World) -> None:
    """2 complaints a day (at 07:00 and 08:00) over the 28 days before: usual 2 per 24 h, a
    spike needs 6 within the 24 h up to a filing."""
    baseline = [
        filed(f"C-n{d}-{m}", "K-1", T - d * 24 * HOUR - (2 - m) * HOUR, product_sku="NOISY")
        for d in range(1, 29)
        for m in range(2)
    ]
    world.send(T, *baseline)
    today = [T + k * timedelta(minutes=10) for k in range(6)]
    for k in range(5):
        world.send(today[k], filed(f"C-t{k}", "K-1", today[k], product_sku="NOISY"))
    assert world.alerts("product.complaints.spike") == [], "5 is the minimum, not 3 x usual"

    world.send(today[5], filed("C-t5", "K-1", today[5], product_sku="NOISY"))
    [(_, doc, _)] = world.alerts("product.complaints.spike")
    assert (doc["details"]["complaints"], doc["details"]["usual"]) == (6, "2.00")


# --- the sparse views ---------------------------------------------------------------------------


def test_a_complaint_event_lost_on_the_way_is_filled_from_the_event_store(world: World) -> None:
    events = world.record(
        event("customer.registered", "C-5", T),
        filed("C-5", "K-1", T + HOUR),
        event("call.logged", "C-5", T + 2 * HOUR),
        event("complaint.assigned", "C-5", T + 3 * HOUR, complaint_id="K-1", assignee="ana"),
        event("call.logged", "C-5", T + 4 * HOUR),
    )
    registered, _filing, call, assigned, last_call = events
    # the filing never arrives; the rest arrive one per batch, the assignment after a call
    world.project([[registered], [assigned], [call], [last_call]], T + 5 * HOUR)

    [(status, assignee, doc)] = query(
        world.dsn, "SELECT status, assignee, doc FROM rm_complaint_cases WHERE customer_id = 'C-5'"
    )
    assert (status, assignee) == ("open", "ana")
    assert [s["action"] for s in doc["history"]] == ["filed", "assigned"]  # type: ignore[index]
    [(version,)] = query(world.dsn, "SELECT version FROM rm_complaints WHERE customer_id = 'C-5'")
    assert version == 4, "the version of the last complaint event"
    touchpoints = query(world.dsn, "SELECT count(*) FROM rm_touchpoints")
    assert touchpoints == [(5,)], "the gap filled for the 360 is indexed too"
