"""Projector: a faust-streaming app that folds crm.events into the read models in PostgreSQL.

Batches of up to 1,000 events are applied in one transaction per batch. Each read-model row holds
the customer version and global position it has applied; an event at or below it is skipped
(redelivery, a relay republishing after a broker restart), and a gap (an event the broker lost)
is filled from the event store in the same transaction, so a view is always the fold of the
customer's events 1..n. faust's own offset commits are only a hint; `concurrency=1`.

Run it with `python -m services.projector` (the `crm up` supervisor does), or
`python -m services.projector replay customer_360` to rebuild a read model from the event store.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import faust
import orjson
from faust.transport.drivers import aiokafka as faust_aiokafka
from psycopg import AsyncConnection
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb, set_json_loads
from psycopg_pool import AsyncConnectionPool

from events import topics
from infra.eventstore import EVENTS_TABLE, SCHEMA_LOCK, EventStore
from infra.logs import configure_logging
from infra.settings import Settings
from projections.customer_360 import CUSTOMER_360
from projections.recorded import RecordedEvent, decode_recorded, from_store
from projections.views import ADVANCE_PROGRESS_SQL, PROGRESS_SQL, CustomerView

log = logging.getLogger("crm.projector")

FETCH_MAX_WAIT_MS = 50
set_json_loads(orjson.loads)  # read-model documents come back through orjson

VIEWS: dict[str, CustomerView[Any]] = {view.name: view for view in (CUSTOMER_360,)}
BATCH = 1000
BATCH_WITHIN_S = 0.05
REPLAY_PAGE = 5000


class Projector:
    """Applies batches of recorded events to every read model, one transaction per batch."""

    def __init__(self, pool: AsyncConnectionPool[Any], views: Sequence[CustomerView[Any]]):
        self.pool = pool
        self.views = views
        self._ready = False

    async def create_tables(self) -> None:
        await self.pool.open()
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            await conn.execute(PROGRESS_SQL)
            for view in self.views:
                await conn.execute(view.create_sql())

    async def apply(self, events: Sequence[RecordedEvent], progress_name: str = "live") -> int:
        """Fold the events into every view; returns how many views rows changed."""
        if not events:
            return 0
        if not self._ready:
            await self.create_tables()
            self._ready = True
        changed = 0
        async with self.pool.connection() as conn, conn.transaction():
            for view in self.views:
                changed += await _apply_view(conn, view, events)
            await conn.execute(
                ADVANCE_PROGRESS_SQL, (progress_name, max(e.position for e in events))
            )
        return changed


async def _apply_view(
    conn: AsyncConnection[Any], view: CustomerView[Any], events: Sequence[RecordedEvent]
) -> int:
    by_customer: dict[str, list[RecordedEvent]] = defaultdict(list)
    for event in events:
        by_customer[event.envelope.customer_id].append(event)
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(view.select_for_update_sql(), (sorted(by_customer),))
    rows: dict[str, DictRow] = {row["customer_id"]: row for row in await cursor.fetchall()}

    ids, versions, positions, docs = [], [], [], []
    for customer_id, customer_events in by_customer.items():
        row = rows.get(customer_id)
        state = view.from_json(row["doc"]) if row else None
        version = row["version"] if row else 0
        position = 0
        for event in sorted(customer_events, key=lambda e: e.version):
            if event.version <= version:
                continue  # already applied
            if event.version > version + 1:
                for missing in await _read_gap(conn, customer_id, version, event.version):
                    state = view.apply(state, missing)
            state = view.apply(state, event)
            version, position = event.version, event.position
        if position:
            ids.append(customer_id)
            versions.append(version)
            positions.append(position)
            docs.append(Jsonb(view.to_json(state), dumps=_dumps))
    if ids:
        await conn.execute(view.upsert_sql(), (ids, versions, positions, docs))
    return len(ids)


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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


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


def make_app(settings: Settings, projector: Projector) -> faust.App:
    """The faust app: one agent on crm.events, batching, concurrency 1."""
    app = faust.App(
        settings.projector_group,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
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
        async for values in stream.take(BATCH, within=BATCH_WITHIN_S):
            events = [decode_recorded(value) for value in values]
            changed = await projector.apply(events)
            log.info("event=batch_applied events=%d rows=%d last_position=%d",
                     len(events), changed, max(e.position for e in events))  # fmt: skip

    return app


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
    app = make_app(settings, Projector(pool, list(VIEWS.values())))
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
