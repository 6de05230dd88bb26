"""The alerts of complaints and follow-ups beyond what one customer's events say, raised inside
the projector:

- `product.complaints.spike` when a batch files complaints about a product (`SpikeCheck`, in the
  batch's transaction): the product's filings of the last `spike_lookback` are read from the case
  rows, and the rule of projections.complaint_signals says whether an episode is going on now;
- `complaint.sla.breached` and `followup.overdue` by the passage of time (`DeadlineClock`, run at
  each turn of the desertion detector's loop, at most every `interval_s`, never while a catch-up
  is going on): a case still open at its deadline, a follow-up open past its due time.

An alert's id comes from its episode, so raising it again logs nothing twice. The projector
resolves a breach or overdue alert in the transaction of the event that ends its episode (the
resolution, the completion, a new due time). The clock locks the rows it alerts (and skips rows
the projector is writing), so an episode that just ended is never alerted after its end.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.errors import UndefinedTable
from psycopg_pool import AsyncConnectionPool

from infra.eventstore import EVENTS_TABLE
from infra.settings import Settings
from projections.alerts import Alert
from projections.complaint_signals import (
    ProductComplaint,
    SpikePolicy,
    new_filings,
    product_spike,
    spike_lookback,
)
from projections.complaints import CASES_TABLE, SlaPolicy, breach_alerts, case_from_json
from projections.customer_360 import CUSTOMER_360
from projections.followups import ITEMS_TABLE, item_from_json, overdue_alerts
from services.alert_log import log_alerts

log = logging.getLogger("crm.complaints")

COMPLAINTS_VIEW = "complaints"
SPIKE_LOCK = 7_310_003
"""Advisory lock: one spike check at a time across projectors, so two batches filing complaints
about the same product each see the other's filings (the second waits for the first's commit)."""
PAGE = 1000


def sla_policy(settings: Settings) -> SlaPolicy:
    return SlaPolicy(
        high=timedelta(hours=settings.sla_high_hours),
        medium=timedelta(hours=settings.sla_medium_hours),
        low=timedelta(hours=settings.sla_low_hours),
    )


def spike_policy(settings: Settings) -> SpikePolicy:
    return SpikePolicy(
        minimum=settings.spike_minimum,
        window=timedelta(hours=settings.spike_window_hours),
        baseline=timedelta(days=settings.spike_baseline_days),
        factor=settings.spike_factor,
    )


_FILINGS_SQL = (
    f"SELECT product_sku, filed_at, customer_id, complaint_id FROM {CASES_TABLE} "
    "WHERE product_sku = ANY(%s::text[]) AND filed_at > %s AND filed_at <= %s"
)


class SpikeCheck:
    """A projector batch check: the spike alerts of the products its new complaints are about."""

    def __init__(self, policy: SpikePolicy) -> None:
        self.policy = policy

    @classmethod
    def from_settings(cls, settings: Settings) -> SpikeCheck:
        return cls(spike_policy(settings))

    async def __call__(
        self,
        conn: AsyncConnection[Any],
        changes: Mapping[str, Sequence[tuple[Any, Any]]],
        now: datetime,
    ) -> list[Alert]:
        filings = new_filings(changes.get(COMPLAINTS_VIEW, ()))
        recent = now - 2 * self.policy.window  # an older filing is in no window going on now
        skus = sorted(sku for sku, found in filings.items() if any(c.at > recent for c in found))
        if not skus:
            return []
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SPIKE_LOCK,))
        since = now - spike_lookback(self.policy)
        cursor = await conn.execute(_FILINGS_SQL, (skus, since, now))
        by_sku: dict[str, list[ProductComplaint]] = defaultdict(list)
        for sku, at, customer_id, complaint_id in await cursor.fetchall():
            by_sku[sku].append(ProductComplaint(at, customer_id, complaint_id))
        alerts = []
        for sku in skus:
            alert = product_spike(sku, by_sku[sku], now, self.policy)
            if alert is not None:
                alerts.append(alert)
                log.info("event=product_spiking product_sku=%s complaints=%d alert_id=%s",
                         sku, alert.details["complaints"], alert.alert_id)  # fmt: skip
        return alerts


_UP_TO_DATE = (
    f"NOT EXISTS (SELECT 1 FROM {CUSTOMER_360.table} c WHERE c.customer_id = {{row}}.customer_id "
    f"AND c.version < (SELECT max(e.originator_version) FROM {EVENTS_TABLE} e "
    f"WHERE e.originator_id = {{row}}.customer_id))"
)
"""The customer's views are not behind the event store: an event recorded and not projected yet
(a resolution, a completion) waits to be applied before the clock judges the customer."""
_BREACHED_SQL = (
    f"SELECT k.doc FROM {CASES_TABLE} k WHERE k.status = 'open' "
    "AND k.alerted_episode < k.episode AND k.due_at <= %(now)s AND "
    + _UP_TO_DATE.format(row="k")
    + " ORDER BY k.due_at LIMIT %(limit)s FOR UPDATE OF k SKIP LOCKED"
)
_MARK_BREACHED_SQL = (
    f"UPDATE {CASES_TABLE} k SET alerted_episode = m.episode "
    "FROM unnest(%s::text[], %s::text[], %s::int[]) AS m(customer_id, complaint_id, episode) "
    "WHERE k.customer_id = m.customer_id AND k.complaint_id = m.complaint_id"
)
_OVERDUE_SQL = (
    f"SELECT f.customer_id, f.doc FROM {ITEMS_TABLE} f WHERE f.completed_at IS NULL "
    "AND f.alerted_due_at IS DISTINCT FROM f.due_at AND f.due_at < %(now)s AND "
    + _UP_TO_DATE.format(row="f")
    + " ORDER BY f.due_at LIMIT %(limit)s FOR UPDATE OF f SKIP LOCKED"
)
_MARK_OVERDUE_SQL = (
    f"UPDATE {ITEMS_TABLE} f SET alerted_due_at = m.due_at "
    "FROM unnest(%s::text[], %s::text[], %s::timestamptz[]) AS m(customer_id, followup_id, due_at) "
    "WHERE f.customer_id = m.customer_id AND f.followup_id = m.followup_id"
)


async def raise_breaches(pool: AsyncConnectionPool[Any], now: datetime) -> int:
    """Log `complaint.sla.breached` for every case open at its deadline on `now` whose episode
    the clock has not alerted yet; returns how many alerts were logged for the first time."""
    logged = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(_BREACHED_SQL, {"now": now, "limit": PAGE})
            cases = [case_from_json(doc) for (doc,) in await cursor.fetchall()]
            if cases:
                marks = ([c.customer_id for c in cases], [c.complaint_id for c in cases],
                         [c.episode for c in cases])  # fmt: skip
                await conn.execute(_MARK_BREACHED_SQL, marks)
            logged += await log_alerts(conn, breach_alerts(cases, now))
        if len(cases) < PAGE:
            return logged


async def raise_overdue_followups(pool: AsyncConnectionPool[Any], now: datetime) -> int:
    """Log `followup.overdue` for every follow-up open past its due time on `now` whose due
    time the clock has not alerted yet; returns how many alerts were logged for the first
    time."""
    logged = 0
    while True:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(_OVERDUE_SQL, {"now": now, "limit": PAGE})
            items = [item_from_json(c, doc) for c, doc in await cursor.fetchall()]
            if items:
                marks = ([i.customer_id for i in items], [i.followup_id for i in items],
                         [i.due_at for i in items])  # fmt: skip
                await conn.execute(_MARK_OVERDUE_SQL, marks)
            logged += await log_alerts(conn, overdue_alerts(items, now))
        if len(items) < PAGE:
            return logged


Scan = Callable[[AsyncConnectionPool[Any], datetime], Awaitable[int]]


class DeadlineClock:
    """The deadlines of complaints and follow-ups (`scans`), looked at every `interval_s` at
    most: a scan for the desertion detector's loop (`every_turn`), which gives it the time (an
    injectable clock) and pauses it while a catch-up is going on."""

    def __init__(
        self,
        interval_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
        scans: Sequence[Scan] = (raise_breaches, raise_overdue_followups),
    ) -> None:
        self.interval_s = interval_s
        self.monotonic = monotonic
        self.scans = scans
        self._next = float("-inf")

    async def __call__(self, pool: AsyncConnectionPool[Any], now: datetime) -> int:
        if self.monotonic() < self._next:
            return 0
        self._next = self.monotonic() + self.interval_s
        try:
            raised = [await scan(pool, now) for scan in self.scans]
        except (psycopg.OperationalError, UndefinedTable) as error:  # looked at again next turn
            log.warning("event=deadlines_failed error=%r", str(error))
            return 0
        if any(raised):
            log.info("event=deadlines_passed at=%s raised=%s",
                     now.isoformat(), ",".join(map(str, raised)))  # fmt: skip
        return sum(raised)
