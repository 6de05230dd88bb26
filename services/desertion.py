"""Desertion detector: judges customers as their spend changes and as the calendar moves on.

It runs inside the projector (services/projector.py), which tells it about every batch it applied
(`note`). Only complete months are judged, so what changes a verdict is the calendar and a
purchase or refund that lands in a past month (recorded late, or history being loaded).
A customer is judged:
- at once after a purchase or refund, `hold_s` later if it occurred over `history` ago (it may
  be the first of a catch-up), unless a catch-up is going on: at least `catch_up_events` events that
  occurred over `history` ago applied within `settle_s` seconds (a demo, a bulk import, a projector
  working through a backlog). Customers a catch-up touches are judged once it has
  stopped for `settle_s`, on their complete history, so a catch-up raises only the alerts that
  history supports, never one raised and resolved again within it;
- every customer with spend, at start-up and whenever the UTC day changes (once no catch-up is
  going on): a silent customer is caught by the clock alone.
A customer whose view is behind the event store (events recorded, not projected yet) waits.

Each judgement runs in one transaction that serializes with every other (an advisory lock): it
reads the customer's monthly spend from the 360 and their open episode, and writes the verdict,
the episode change and its alerts together, so an episode is alerted once whatever repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from infra.eventstore import EVENTS_TABLE
from infra.settings import Settings
from projections.customer_360 import CUSTOMER_360
from projections.desertion import (
    DESERTION_TABLE,
    UPSERT_DESERTION_SQL,
    DesertionRule,
    Episodes,
    judge,
    month_start,
    transition,
)
from projections.recorded import RecordedEvent
from services.alert_log import log_alerts, resolve_alerts

log = logging.getLogger("crm.desertion")

SPEND_TYPES = frozenset({"purchase.made", "purchase.refunded"})
JUDGE_LOCK = 7_310_002  # advisory lock id: one judgement at a time, across instances
PAGE = 1000
TICK_S = 1.0

DailyScan = Callable[[AsyncConnectionPool[Any], datetime], Awaitable[int]]

_JUDGE_SQL = (
    f"SELECT c.customer_id, c.version, c.doc->'purchases'->'by_month', "
    f"c.doc->'touchpoints'->>'first_at', "
    f"(SELECT max(e.originator_version) FROM {EVENTS_TABLE} e "
    f" WHERE e.originator_id = c.customer_id), "
    f"d.episodes, d.open, d.since, d.episode_baseline "
    f"FROM {CUSTOMER_360.table} c LEFT JOIN {DESERTION_TABLE} d USING (customer_id) "
    f"WHERE c.customer_id = ANY(%s::text[])"
)
_SPENDERS_SQL = (
    f"SELECT customer_id FROM {CUSTOMER_360.table} WHERE customer_id > %s "
    f"AND doc->'purchases'->'by_month' <> '{{}}'::jsonb ORDER BY customer_id LIMIT %s"
)


class DesertionDetector:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        rule: DesertionRule,
        clock: Callable[[], datetime],
        history: timedelta = timedelta(hours=1),
        settle_s: float = 5.0,
        catch_up_events: int = 100,
        hold_s: float = 0.5,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.rule = rule
        self.clock = clock
        self.history = history
        self.settle_s = settle_s
        self.monotonic = monotonic
        self.due: set[str] = set()  # judge at the next turn
        self.held: deque[tuple[float, set[str]]] = deque()  # judge at that time, if settled
        self.pending: set[str] = set()  # judge once history has settled
        self.hold_s = hold_s
        self.catch_up_events = catch_up_events
        self._quiet_since = monotonic()  # start-up counts as a catch-up
        self._recent_history: deque[tuple[float, int]] = deque()  # (when, historic events)
        self._recent_historic = 0  # their sum
        self._wake = asyncio.Event()

    @classmethod
    def from_settings(
        cls, pool: AsyncConnectionPool[Any], settings: Settings, clock: Callable[[], datetime]
    ) -> DesertionDetector:
        rule = DesertionRule(
            recent_months=settings.desertion_recent_months,
            baseline_months=settings.desertion_baseline_months,
            ratio=settings.desertion_ratio,
            minimum=settings.desertion_minimum,
        )
        history = timedelta(seconds=settings.desertion_history_seconds)
        return cls(
            pool,
            rule,
            clock,
            history,
            settings.desertion_settle_seconds,
            settings.desertion_catch_up_events,
            settings.desertion_hold_seconds,
        )

    def note(self, events: Iterable[RecordedEvent]) -> None:
        """Take note of a batch the projector applied (and committed)."""
        now, today = self.monotonic(), self.clock()
        horizon, this_month = today - self.history, month_start(today)
        spenders, late, historic = set(), set(), 0
        for event in events:
            envelope = event.envelope
            old = envelope.occurred_at < horizon
            historic += old
            # spend in the current month changes no verdict: that month is not complete
            if envelope.type in SPEND_TYPES and envelope.occurred_at < this_month:
                (late if old else spenders).add(envelope.customer_id)
        self._recent_history.append((now, historic))
        self._recent_historic += historic
        while self._recent_history[0][0] < now - self.settle_s:
            self._recent_historic -= self._recent_history.popleft()[1]
        if self._recent_historic >= self.catch_up_events:
            self._quiet_since = now  # a catch-up is going on
        if not self.settled():  # nobody is judged while a catch-up goes on
            self.pending |= spenders | late | self.due | self._held_customers()
            self.due = set()
            self.held.clear()
            return
        waiting = self.pending | self._held_customers()
        if late - waiting:  # maybe the first events of a catch-up: wait to see
            self.held.append((now + self.hold_s, late - waiting))
        self.due |= spenders - waiting - late
        self._wake.set()

    def _held_customers(self) -> set[str]:
        return set().union(*(customers for _, customers in self.held))

    def _release_held(self) -> None:
        while self.held and self.held[0][0] <= self.monotonic():
            self.due |= self.held.popleft()[1]

    def settled(self) -> bool:
        """No catch-up for `settle_s` seconds (nor since start-up)."""
        return self.monotonic() - self._quiet_since >= self.settle_s

    async def run(
        self,
        stopping: Callable[[], bool],
        daily: Iterable[DailyScan] = (),
        every_turn: Iterable[DailyScan] = (),
    ) -> None:
        """Judge due customers as they come, pending ones once settled, and everyone (plus the
        other `daily` scans) at start-up and when the UTC day changes, once settled. The
        `every_turn` scans run at each turn (at least every second) once settled: the deadlines
        of complaints and follow-ups, which must not wait for a day to change."""
        scanned_day = None
        while not stopping():
            wait = TICK_S if not self.held else self.held[0][0] - self.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(TICK_S, max(wait, 0)))
            self._wake.clear()
            self._release_held()
            now = self.clock()
            due, self.due = self.due, set()
            if self.settled():
                if now.astimezone(UTC).date() != scanned_day:
                    self.pending.clear()  # the scan judges them
                    await self.scan(now)
                    for scan in daily:
                        await scan(self.pool, now)
                    scanned_day = now.astimezone(UTC).date()
                for scan in every_turn:
                    await scan(self.pool, now)
                due |= self.pending
                self.pending = set()
            ordered = sorted(due)
            for start in range(0, len(ordered), PAGE):
                page = ordered[start : start + PAGE]
                try:
                    await self.judge(page, now)
                except psycopg.OperationalError as error:  # judged again at the next turn
                    log.warning("event=judge_failed customers=%d error=%r", len(page), str(error))
                    self.pending.update(page)

    async def scan(self, now: datetime) -> int:
        """Judge every customer who ever spent; returns how many alerts were logged."""
        logged, after = 0, ""
        while True:
            async with self.pool.connection() as conn:
                cursor = await conn.execute(_SPENDERS_SQL, (after, PAGE))
                page = [customer_id for (customer_id,) in await cursor.fetchall()]
            if not page:
                break
            logged += await self.judge(page, now)
            after = page[-1]
        log.info("event=desertion_scanned at=%s alerts=%d", now.isoformat(), logged)
        return logged

    async def judge(self, customer_ids: Iterable[str], now: datetime) -> int:
        """Judge these customers at `now`; returns how many alerts were logged. A customer whose
        view is behind the event store is left pending."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (JUDGE_LOCK,))
            cursor = await conn.execute(_JUDGE_SQL, (list(customer_ids),))
            rows = await cursor.fetchall()
            judged, alerts, resolved = [], [], []
            for customer_id, version, by_month, first_at, stored, *episode in rows:
                if stored is not None and version < stored:
                    self.pending.add(customer_id)
                    continue
                verdict = judge(_spend(by_month), _time(first_at), now, self.rule)
                step = transition(customer_id, _episodes(*episode), verdict, now, self.rule)
                judged.append((customer_id, version, step.episodes, verdict.to_json()))
                alerts.extend(step.alerts)
                resolved.extend(step.resolved)
            await _write(conn, judged, now)
            logged = await log_alerts(conn, alerts)
            await resolve_alerts(conn, resolved, now)
        for alert in alerts:
            log.info("event=alert kind=%s customer_id=%s alert_id=%s",
                     alert.kind, alert.customer_id, alert.alert_id)  # fmt: skip
        return logged


async def _write(
    conn: AsyncConnection[Any],
    judged: list[tuple[str, int, Episodes, dict[str, Any]]],
    now: datetime,
) -> None:
    if not judged:
        return
    rows = [
        (customer_id, e.count, e.open, e.since, e.baseline_monthly, Jsonb(v, dumps=orjson.dumps),
         now, version)
        for customer_id, version, e, v in judged
    ]  # fmt: skip
    await conn.execute(UPSERT_DESERTION_SQL, [list(column) for column in zip(*rows, strict=True)])


def _spend(by_month: dict[str, dict[str, str]] | None) -> dict[str, dict[str, Decimal]]:
    return {
        currency: {month: Decimal(amount) for month, amount in months.items()}
        for currency, months in (by_month or {}).items()
    }


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


def _episodes(
    count: int | None, is_open: bool | None, since: datetime | None, baseline: Decimal | None
) -> Episodes:
    return Episodes() if count is None else Episodes(count, bool(is_open), since, baseline)
