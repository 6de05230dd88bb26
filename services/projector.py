"""Projector: a faust-streaming app that folds crm.events into the read models in PostgreSQL.

Batches of up to 1,000 events are applied in one transaction per batch. Each read-model row holds
the customer version and global position it has applied; an event at or below it is skipped
(redelivery, a relay republishing after a broker restart), and a gap (an event the broker lost)
is filled from the event store in the same transaction, so a view is always the fold of the
customer's events 1..n. faust's own offset commits are only a hint; `concurrency=1`. The views
of recently seen customers are kept in memory, so a batch reads only unseen customers' rows.

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
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

import faust
import orjson
from faust.transport.drivers import aiokafka as faust_aiokafka
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from events import topics
from infra.eventstore import EVENTS_TABLE, SCHEMA_LOCK, EventStore
from infra.logs import configure_logging
from infra.settings import Settings
from projections.alerts import CREATE_ALERTS_SQL, Alert
from projections.balance import BALANCE, overdue_alerts
from projections.balance import from_json as balance_from_json
from projections.customer_360 import CUSTOMER_360
from projections.desertion import CREATE_DESERTION_SQL
from projections.recorded import RecordedEvent, decode_recorded, from_store
from projections.views import ADVANCE_PROGRESS_SQL, PROGRESS_SQL, CustomerView
from services.alert_log import log_alerts, resolve_alerts
from services.desertion import DesertionDetector

log = logging.getLogger("crm.projector")

FETCH_MAX_WAIT_MS = 20
set_json_loads(orjson.loads)  # read-model documents come back through orjson

VIEWS: dict[str, CustomerView[Any]] = {view.name: view for view in (CUSTOMER_360, BALANCE)}
BATCH = 1000
BATCH_WITHIN_S = 0.02
REPLAY_PAGE = 5000
FULL_GC_EVERY_S = 600.0
NEVER = 2**31 - 1  # a gc threshold no counter reaches


Clock = Callable[[], datetime]


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
    ):
        self.pool = pool
        self.views = views
        self.clock = clock
        self.caches = {view.name: ViewCache(cache_size) for view in views}
        self._ready = False

    async def create_tables(self) -> None:
        await self.pool.open()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            await conn.execute(PROGRESS_SQL)
            await conn.execute(CREATE_ALERTS_SQL)
            await conn.execute(CREATE_DESERTION_SQL)
            for view in self.views:
                await conn.execute(view.create_sql())

    async def create_tables_once(self) -> None:
        if not self._ready:
            await self.create_tables()
            self._ready = True

    async def apply(self, events: Sequence[RecordedEvent], progress_name: str = "live") -> int:
        """Fold the events into every view; returns how many views rows changed."""
        if not events:
            return 0
        await self.create_tables_once()
        by_customer: dict[str, list[RecordedEvent]] = defaultdict(list)
        for event in events:
            by_customer[event.envelope.customer_id].append(event)
        written: list[tuple[ViewCache, dict[str, Folded]]] = []
        alerts: list[Alert] = []
        ended: list[str] = []
        now = self.clock()
        async with self.pool.connection() as conn, conn.transaction():
            for view in self.views:
                cache = self.caches[view.name]
                folded = await _apply_view(conn, view, cache, by_customer, now, alerts, ended)
                written.append((cache, folded))
            await log_alerts(conn, alerts)
            await resolve_alerts(conn, ended, now)
            await conn.execute(
                ADVANCE_PROGRESS_SQL, (progress_name, max(e.position for e in events))
            )
        for cache, folded in written:  # only once committed
            cache.update(folded)
        return sum(len(folded) for _, folded in written)


class Folded(NamedTuple):
    """A customer's view state, with the customer version and global position it has applied."""

    version: int
    position: int
    state: Any


NEW = Folded(0, 0, None)


class ViewCache:
    """The folded views of the customers seen last, at most `size` of them (least recent out)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[str, Folded] = {}

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self._entries

    def get(self, customer_id: str) -> Folded | None:
        entry = self._entries.pop(customer_id, None)
        if entry is not None:
            self._entries[customer_id] = entry  # now the most recent
        return entry

    def update(self, entries: dict[str, Folded]) -> None:
        for customer_id, entry in entries.items():
            self._entries.pop(customer_id, None)
            self._entries[customer_id] = entry
        while len(self._entries) > self.size:
            del self._entries[next(iter(self._entries))]


async def _apply_view(
    conn: AsyncConnection[Any],
    view: CustomerView[Any],
    cache: ViewCache,
    by_customer: dict[str, list[RecordedEvent]],
    now: datetime,
    alerts: list[Alert],
    ended: list[str],
) -> dict[str, Folded]:
    """Fold each customer's events into its view and write the changed rows; returns them.

    The alerts the changes raise are appended to `alerts`, the ids of those they end to `ended`."""
    stored = await _load(conn, view, [c for c in by_customer if c not in cache])
    folded: dict[str, Folded] = {}
    for customer_id, customer_events in by_customer.items():
        version, position, state = cache.get(customer_id) or stored.get(customer_id) or NEW
        applied = version
        for event in sorted(customer_events, key=lambda e: e.version):
            if event.version <= version:
                continue  # already applied
            missing = []
            if event.version > version + 1:
                missing = await _read_gap(conn, customer_id, version, event.version)
            for step in (*missing, event):
                before, state = state, view.apply(state, step)
                if view.alerts is not None:  # event by event: batch boundaries change nothing
                    alerts.extend(view.alerts(before, state, now))
                if view.ended is not None:
                    ended.extend(view.ended(before, state))
            version, position = event.version, event.position
        if version > applied:
            folded[customer_id] = Folded(version, position, state)
    if folded:
        rows = folded.values()
        await conn.execute(
            view.upsert_sql(),
            (
                list(folded),
                [row.version for row in rows],
                [row.position for row in rows],
                [Jsonb(view.to_json(row.state), dumps=orjson.dumps) for row in rows],
            ),
        )
    return folded


async def _load(
    conn: AsyncConnection[Any], view: CustomerView[Any], customer_ids: list[str]
) -> dict[str, Folded]:
    if not customer_ids:
        return {}
    cursor = await conn.execute(view.select_many_sql(), (customer_ids,))
    rows = await cursor.fetchall()
    return {c: Folded(version, position, view.from_json(doc)) for c, version, position, doc in rows}


async def raise_overdue(pool: AsyncConnectionPool[Any], now: datetime) -> int:
    """Log `invoice.overdue` for every open invoice past its due date on `now`'s UTC day.

    Raised by the passage of time: run at start-up and when the day changes. An invoice is alerted
    once (its alert_id is its episode); returns how many alerts were logged for the first time."""
    today = now.astimezone(UTC).date()
    async with pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(OVERDUE_CANDIDATES_SQL, (today.isoformat(),))
        alerts = [
            alert
            for (doc,) in await cursor.fetchall()
            for alert in overdue_alerts(balance_from_json(doc), today, now)
        ]
        raised = await log_alerts(conn, alerts)
    log.info("event=overdue_scanned day=%s raised=%d", today, raised)
    return raised


OVERDUE_CANDIDATES_SQL = (
    f"SELECT doc FROM {BALANCE.table} WHERE jsonb_path_exists(doc, "
    "'$.ledgers.*.open_invoices[*] ? (@.due_date < $today)', jsonb_build_object('today', %s::text))"
)
"""Balances with an open invoice due before today (ISO dates compare as text)."""


async def _read_gap(
    conn: AsyncConnection[Any], customer_id: str, after: int, before: int
) -> list[RecordedEvent]:
    """Events of a customer the stream skipped (lost by the broker), from the event store."""
    cursor = await conn.execute(
        f"SELECT originator_version, notification_id, state FROM {EVENTS_TABLE} "
        "WHERE originator_id = %s AND originator_version > %s AND originator_version < %s "
        "ORDER BY originator_version",
        (customer_id, after, before),
    )
    gap = [from_store(bytes(s), position=p, version=v) for v, p, s in await cursor.fetchall()]
    log.warning("event=gap_filled customer_id=%s after=%d before=%d filled=%d",
                customer_id, after, before, len(gap))  # fmt: skip
    return gap


class _PromptConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust lets a fetch wait up to 1.5 s for data (hard-coded); the embedded broker does not
    answer a waiting fetch early when data arrives, so events would sit there. Ask every 50 ms."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by the fetcher at start
        return consumer


class _PromptConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _PromptConsumerThread:
        return _PromptConsumerThread(self, loop=self.loop, beacon=self.beacon)


def make_app(settings: Settings, projector: Projector, detector: DesertionDetector) -> faust.App:
    """The faust app: one agent on crm.events, batching, concurrency 1, and the desertion
    detector, which also runs the daily scans."""
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
    app.transport.Consumer = _PromptConsumer
    source = app.topic(topics.EVENTS, key_serializer="raw", value_serializer="raw")

    @app.agent(source, concurrency=1)
    async def project(stream: faust.StreamT[bytes]) -> None:
        manual = stream.noack()
        batch: list[faust.EventT] = []
        async for event in manual.events():
            batch.append(event)
            if len(batch) < BATCH and not manual.channel.empty():
                continue  # more has arrived already: take it into this batch
            events = [decode_recorded(e.value) for e in batch]
            changed = await projector.apply(events)
            detector.note(events)
            for done in batch:  # acked (faust may commit them) only once applied
                await manual.ack(done)
            oldest_ms = min(e.message.timestamp for e in batch) * 1000
            log.info("event=batch_applied events=%d rows=%d last_position=%d age_ms=%d",
                     len(events), changed, max(e.position for e in events),
                     time.time() * 1000 - oldest_ms)  # fmt: skip
            batch = []

    @app.task
    async def watch_the_clock() -> None:
        await projector.create_tables_once()
        await detector.run(lambda: app.should_stop, daily=(raise_overdue,))

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
    """Drop the named read models and rebuild them from the event store; returns events read."""
    views = [VIEWS[name] for name in names]
    store = EventStore(settings.dsn)
    async with AsyncConnectionPool(settings.dsn, min_size=1, max_size=2, open=False) as pool:
        projector = Projector(pool, views)
        async with pool.connection() as conn:
            for view in views:
                await conn.execute(f"DROP TABLE IF EXISTS {view.table}")
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
    store.close()
    return total


def main(argv: Sequence[str] = sys.argv[1:]) -> None:
    """`python -m services.projector` runs the faust worker; `... replay NAME...` rebuilds."""
    settings = Settings()
    if argv and argv[0] == "replay":
        configure_logging("replay")
        names = list(argv[1:]) or list(VIEWS)
        unknown = set(names) - set(VIEWS)
        if unknown:
            raise SystemExit(f"unknown read model(s) {sorted(unknown)}; known: {sorted(VIEWS)}")
        total = asyncio.run(replay(settings, names))
        print(f"rebuilt {', '.join(names)} from {total} events")
        return
    configure_logging("projector")
    pool = AsyncConnectionPool(settings.dsn, min_size=1, max_size=4, open=False)
    tune_gc()
    projector = Projector(pool, list(VIEWS.values()), settings.projector_cache_size)
    detector = DesertionDetector.from_settings(pool, settings, utc_now)
    app = make_app(settings, projector, detector)
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
