"""Projector: a faust-streaming app that folds crm.events into the read models in PostgreSQL.

Batches of up to 1,000 events are folded, then written in one transaction per batch; the next
batch is folded while the last one is written (`Projector.fold`, `Projector.write`). Each
read-model row holds the customer version and global position it has applied; an event at or
below it is skipped (redelivery, a relay republishing after a broker restart), and a gap (an
event the broker lost) is filled from the event store (append-only) as the batch is folded, so
a view is always the fold of the customer's events 1..n. faust's own offset commits are only a
hint; `concurrency=1`. The views of recently seen customers are kept in memory, so a batch reads
only unseen customers' rows.

The complaint and follow-up views are sparse (they fold only their own event types), and keep a
row per case and per follow-up for queries across customers; the touchpoint index keeps a row
per event; the spike check reads the product's recent filings: all in the batch's transaction
(services/view_folds.py, services/complaint_alerts.py). The offers view (sparse) keeps the
co-purchase counts and daily spend, the identifier index the normalized phones and e-mails,
the merge index who was merged into whom (projections/offer_view.py, projections/identifiers.py,
projections/merge_index.py), in the same transaction. The desertion detector's loop runs the
daily scans, the deadline clock (SLA breaches, overdue follow-ups) and the value tiers' cut
points (services/offer_jobs.py). faust's consumer is services/faust_consumer.py's, which hands
messages over without a task each.

Run it with `python -m services.projector` (the `crm up` supervisor does), or
`python -m services.projector replay customer_360` to rebuild a read model from the event store.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
import mode.loop
import orjson
from psycopg import AsyncConnection
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool

from events import topics
from events.envelope import Envelope
from infra.eventstore import SCHEMA_LOCK, EventStore
from infra.logs import configure_logging
from infra.settings import Settings
from projections.alerts import CREATE_ALERTS_SQL, Alert
from projections.balance import BALANCE, overdue_alerts
from projections.balance import from_json as balance_from_json
from projections.complaints import complaints_view
from projections.customer_360 import CUSTOMER_360
from projections.desertion import CREATE_DESERTION_SQL
from projections.followups import FOLLOWUPS
from projections.identifiers import identifier_index
from projections.merge_index import MERGE_INDEX
from projections.offer_view import OFFERS
from projections.recorded import RecordedEvent, decode_recorded, from_store
from projections.reports import TOUCHPOINTS
from projections.views import (
    ADVANCE_PROGRESS_SQL,
    PROGRESS_SQL,
    CustomerView,
    EventIndex,
    EventTable,
)
from services.alert_log import log_alerts, resolve_alerts
from services.complaint_alerts import DeadlineClock, SpikeCheck, sla_policy
from services.desertion import DailyScan, DesertionDetector
from services.faust_consumer import PromptConsumer, each_batch
from services.intake_outbox import CREATE_OUTBOX_SQL, enqueue
from services.offer_jobs import TierCutsClock, refresh_tier_cuts
from services.post_purchase import PostPurchaseFollowups
from services.view_folds import (
    Change,
    Turns,
    ViewCache,
    ViewFold,
    fold_sparse_view,
    fold_view,
    insert_event_rows,
    upsert_index_rows,
    write_view,
)

log = logging.getLogger("crm.projector")

set_json_loads(orjson.loads)  # read-model documents come back through orjson

VIEWS: dict[str, CustomerView[Any]] = {
    view.name: view for view in (CUSTOMER_360, BALANCE, complaints_view(), FOLLOWUPS, OFFERS)
}
"""The read models with their default settings (tests; the names `crm replay` knows)."""
EVENT_TABLES: dict[str, EventTable] = {TOUCHPOINTS.name: TOUCHPOINTS}
EVENT_INDEXES = ("identifiers", "merges")
"""Event indexes by name (built with the settings' phone region: `configured_indexes`)."""
BATCH = 1000
REPLAY_PAGE = 5000
FULL_GC_EVERY_S = 600.0
OVERDUE_PAGE = 1000  # balances per transaction of the overdue scan
NEVER = 2**31 - 1  # a gc threshold no counter reaches


Clock = Callable[[], datetime]
BatchCheck = Callable[
    [AsyncConnection[Any], Mapping[str, Sequence[Change]], datetime], Awaitable[list[Alert]]
]
"""Looks at what a batch changed, across customers (by view name: the (before, after) states of
customers whose row was written, for views with tables), in the batch's transaction; returns
the alerts to log with it (the product complaint spike)."""
Emitter = Callable[[Sequence[RecordedEvent], datetime], Sequence[Envelope]]
"""The touchpoints a batch calls for (a post-purchase follow-up), enqueued in the intake outbox
in the batch's transaction; their event ids come from their causes (see intake_outbox)."""


def configured_views(settings: Settings) -> dict[str, CustomerView[Any]]:
    """The read models with the settings' SLA."""
    views = (CUSTOMER_360, BALANCE, complaints_view(sla_policy(settings)), FOLLOWUPS, OFFERS)
    return {view.name: view for view in views}


def configured_indexes(settings: Settings) -> dict[str, EventIndex]:
    """The event indexes with the settings' default phone region."""
    indexes = (identifier_index(settings.phone_region), MERGE_INDEX)
    return {index.name: index for index in indexes}


def utc_now() -> datetime:
    return datetime.now(UTC)


class Projector:
    """Applies batches of recorded events to every read model, one transaction per batch.

    The views of recently seen customers stay in memory (`cache_size` per view), so a batch reads
    from PostgreSQL only the customers it has not seen. A cached view is always the fold of the
    customer's events 1..version, and a write never lowers a row's version, so a stale entry (the
    row moved on under another instance) costs at most a gap fill from the event store.
    """

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        views: Sequence[CustomerView[Any]],
        cache_size: int = 100_000,
        clock: Clock = utc_now,
        event_tables: Sequence[EventTable] = (),
        checks: Sequence[BatchCheck] = (),
        emitters: Sequence[Emitter] = (),
        event_indexes: Sequence[EventIndex] = (),
    ):
        self.pool = pool
        self.views = views
        self.clock = clock
        self.event_tables = event_tables
        self.checks = checks
        self.emitters = emitters
        self.event_indexes = event_indexes
        self.caches = {view.name: ViewCache(cache_size) for view in views}
        self._ready = False

    async def create_tables(self) -> None:
        await self.pool.open()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            await conn.execute(PROGRESS_SQL)
            await conn.execute(CREATE_ALERTS_SQL)
            await conn.execute(CREATE_DESERTION_SQL)
            await conn.execute(CREATE_OUTBOX_SQL)
            for view in self.views:
                await conn.execute(view.create_sql())
                for table in view.tables:
                    await conn.execute(table.create_sql)
            for event_table in self.event_tables:
                await conn.execute(event_table.create_sql)
            for index in self.event_indexes:
                await conn.execute(index.create_sql)

    async def create_tables_once(self) -> None:
        if not self._ready:
            await self.create_tables()
            self._ready = True

    async def apply(self, events: Sequence[RecordedEvent], progress_name: str = "live") -> int:
        """Fold the events into every view and write them; returns how many views rows changed."""
        return await self.write(await self.fold(events, progress_name)) if events else 0

    async def fold(
        self, events: Sequence[RecordedEvent], progress_name: str = "live"
    ) -> FoldedBatch:
        """Fold the events (at least one) into every view, from the cached or stored rows, and
        stage the new states in the caches. It may run while the batch before is written: it
        folds on from that batch's staged states, and is to be dropped if that write fails."""
        await self.create_tables_once()
        by_customer: dict[str, list[RecordedEvent]] = defaultdict(list)
        for event in events:
            by_customer[event.envelope.customer_id].append(event)
        batch = FoldedBatch(events, progress_name, self.clock())
        turns = Turns()
        async with self.pool.connection() as conn, conn.transaction():
            for view in self.views:
                fold = fold_view if view.types is None else fold_sparse_view
                batch.views.append(
                    await fold(conn, view, self.caches[view.name], by_customer, batch.now,
                               batch.alerts, batch.ended, batch.filled, turns)
                )  # fmt: skip
        for folded in batch.views:
            self.caches[folded.view.name].stage(folded.folded)
        return batch

    async def write(self, batch: FoldedBatch) -> int:
        """Write a folded batch in one transaction, then keep its staged states (or, if it
        fails, drop them and those of any batch folded on from it); returns views rows changed.
        Batches are written in the order they were folded, one at a time."""
        try:
            await self._write(batch)
        except BaseException:
            for cache in self.caches.values():
                cache.discard()
            raise
        for cache in self.caches.values():
            cache.commit()
        return sum(len(folded.folded) for folded in batch.views)

    async def _write(self, batch: FoldedBatch) -> None:
        events, now, alerts = batch.events, batch.now, list(batch.alerts)
        changes: dict[str, list[Change]] = {}
        async with self.pool.connection() as conn, conn.transaction():
            for folded in batch.views:
                changes[folded.view.name] = await write_view(conn, folded)
            for table in self.event_tables:
                await insert_event_rows(conn, table, [*events, *batch.filled])
            for index in self.event_indexes:
                await upsert_index_rows(conn, index, [*events, *batch.filled])
            for check in self.checks:
                alerts.extend(await check(conn, changes, now))
            await log_alerts(conn, alerts)
            await resolve_alerts(conn, batch.ended, now)
            await enqueue(conn, [e for emit in self.emitters for e in emit(events, now)])
            await conn.execute(
                ADVANCE_PROGRESS_SQL, (batch.progress_name, max(e.position for e in events))
            )


@dataclass
class FoldedBatch:
    """A batch folded into every view, not written yet (`Projector.fold`, `Projector.write`)."""

    events: Sequence[RecordedEvent]
    progress_name: str
    now: datetime
    views: list[ViewFold] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    ended: list[str] = field(default_factory=list)
    filled: list[RecordedEvent] = field(default_factory=list)
    """Events read from the event store to fill gaps."""


async def raise_overdue(
    pool: AsyncConnectionPool[Any], now: datetime, page: int = OVERDUE_PAGE
) -> int:
    """Log `invoice.overdue` for every open invoice past its due date on `now`'s UTC day.

    Raised by the passage of time: run at start-up and when the day changes. An invoice is alerted
    once (its alert_id is its episode), so the scan goes `page` customers per transaction: the
    batches' transactions, which log alerts too, wait for one page at most, and the event loop
    gets its turn between pages. Returns how many alerts were logged for the first time."""
    today = now.astimezone(UTC).date()
    raised, after = 0, ""
    while True:
        async with pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                OVERDUE_CANDIDATES_SQL, {"today": today.isoformat(), "after": after, "page": page}
            )
            rows = await cursor.fetchall()
            alerts = [
                alert
                for _, doc in rows
                for alert in overdue_alerts(balance_from_json(doc), today, now)
            ]
            raised += await log_alerts(conn, alerts)
        if len(rows) < page:
            break
        after = rows[-1][0]
    log.info("event=overdue_scanned day=%s raised=%d", today, raised)
    return raised


OVERDUE_CANDIDATES_SQL = (
    f"SELECT customer_id, doc FROM {BALANCE.table} WHERE customer_id > %(after)s "
    "AND jsonb_path_exists(doc, '$.ledgers.*.open_invoices[*] ? (@.due_date < $today)', "
    "jsonb_build_object('today', %(today)s::text)) ORDER BY customer_id LIMIT %(page)s"
)
"""A page of the balances with an open invoice due before today (ISO dates compare as text),
after a customer id."""


def make_app(
    settings: Settings,
    projector: Projector,
    detector: DesertionDetector,
    every_turn: Sequence[DailyScan] = (),
) -> faust.App:
    """The faust app: one agent on crm.events, batching, concurrency 1, and the desertion
    detector, which also runs the daily scans and, at every turn, the `every_turn` scans (the
    deadline clock)."""
    datadir = settings.data_dir / "faust" / settings.projector_group
    datadir.parent.mkdir(parents=True, exist_ok=True)  # faust makes only the last folder
    app = faust.App(
        settings.projector_group,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.replication_factor,
        broker_session_timeout=settings.session_timeout_ms / 1000,
        broker_heartbeat_interval=settings.heartbeat_interval_ms / 1000,
        broker_request_timeout=max(30.0, settings.session_timeout_ms / 1000 + 5),
        consumer_auto_offset_reset="earliest",
        web_enabled=False,
        producer_acks=-1,
    )
    app.transport.Consumer = PromptConsumer
    source = app.topic(topics.EVENTS, key_serializer="raw", value_serializer="raw")

    @app.agent(source, concurrency=1)
    async def project(stream: faust.StreamT[bytes]) -> None:
        await each_batch(stream, BATCH, fold, write)

    async def fold(batch: list[faust.EventT]) -> tuple[FoldedBatch, float]:
        folded = await projector.fold([decode_recorded(e.value) for e in batch])
        return folded, min(e.message.timestamp for e in batch)

    async def write(folded_at: tuple[FoldedBatch, float]) -> None:
        folded, oldest = folded_at
        changed = await projector.write(folded)
        detector.note(folded.events)
        log.info("event=batch_applied events=%d rows=%d last_position=%d age_ms=%d",
                 len(folded.events), changed, max(e.position for e in folded.events),
                 (time.time() - oldest) * 1000)  # fmt: skip

    @app.task
    async def watch_the_clock() -> None:
        await projector.create_tables_once()
        await detector.run(lambda: app.should_stop, daily=(raise_overdue,), every_turn=every_turn)

    @app.timer(FULL_GC_EVERY_S)
    async def collect_cycles() -> None:
        started = time.perf_counter()
        found = gc.collect()
        elapsed_ms = (time.perf_counter() - started) * 1000
        log.info("event=gc_collected objects=%d ms=%d", found, elapsed_ms)

    return app


def tune_gc() -> None:
    """Keep CPython's full collections off the hot path.

    The view cache holds ~25 objects per customer. An automatic full collection walks every one of
    them and stalls the event loop for hundreds of milliseconds, every few seconds under load. The
    cached views hold no reference cycles (refcounting frees them), so young collections stay
    automatic and a full one runs on a timer (`collect_cycles`), for the rare long-lived cycle.
    """
    gc.freeze()  # what start-up loaded is never garbage
    gc.set_threshold(gc.get_threshold()[0], gc.get_threshold()[1], NEVER)


async def replay(settings: Settings, names: Iterable[str]) -> int:
    """Drop the named read models (and their tables) and rebuild them from the event store;
    returns events read."""
    names = list(names)
    configured = configured_views(settings)
    views = [configured[name] for name in names if name in configured]
    event_tables = [EVENT_TABLES[name] for name in names if name in EVENT_TABLES]
    indexes = [i for name, i in configured_indexes(settings).items() if name in names]
    checks = [SpikeCheck.from_settings(settings)] if "complaints" in names else []
    store = EventStore(settings.dsn)
    async with AsyncConnectionPool(settings.dsn, min_size=1, max_size=2, open=False) as pool:
        projector = Projector(
            pool, views, event_tables=event_tables, checks=checks, event_indexes=indexes
        )
        async with pool.connection() as conn:
            tables = [t for v in views for t in (v.table, *(r.table for r in v.tables))]
            for table in [*tables, *(t.table for t in [*event_tables, *indexes])]:
                await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await projector.create_tables()
        position = total = 0
        while batch := store.read(position, REPLAY_PAGE):
            events = [
                from_store(n.state, position=n.id, version=n.originator_version) for n in batch
            ]
            await projector.apply(events, progress_name="replay")
            position, total = batch[-1].id, total + len(batch)
        if CUSTOMER_360 in views:  # judged once, on the complete history
            await DesertionDetector.from_settings(pool, settings, utc_now).scan(utc_now())
        if OFFERS in views:  # the cut points of the rebuilt spend
            await refresh_tier_cuts(pool, utc_now())
    store.close()
    return total


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    """`python -m services.projector` runs the faust worker; `... replay NAME...` rebuilds."""
    settings = Settings()
    if sys.platform != "win32":  # uvloop: about a tenth less CPU per event than asyncio's loop
        mode.loop.use("uvloop")
    if argv and argv[0] == "replay":
        configure_logging("replay")
        known = [*VIEWS, *EVENT_TABLES, *EVENT_INDEXES]
        names = list(argv[1:]) or known
        unknown = set(names) - set(known)
        if unknown:
            raise SystemExit(f"unknown read model(s) {sorted(unknown)}; known: {sorted(known)}")
        total = asyncio.run(replay(settings, names))
        print(f"rebuilt {', '.join(names)} from {total} events")
        return
    configure_logging("projector")
    pool = AsyncConnectionPool(settings.dsn, min_size=1, max_size=4, open=False)
    tune_gc()
    projector = Projector(
        pool,
        list(configured_views(settings).values()),
        settings.projector_cache_size,
        event_tables=list(EVENT_TABLES.values()),
        checks=[SpikeCheck.from_settings(settings)],
        emitters=[PostPurchaseFollowups.from_settings(settings)],
        event_indexes=list(configured_indexes(settings).values()),
    )
    detector = DesertionDetector.from_settings(pool, settings, utc_now)
    clock = DeadlineClock(settings.deadline_check_seconds)
    tiers = TierCutsClock(settings.tier_refresh_seconds)
    app = make_app(settings, projector, detector, every_turn=[clock, tiers])
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
