"""GET /health: can the API reach the broker and PostgreSQL right now, and how far behind are
the consumer groups and the pipeline stages?"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request, Response, status
from kafka import KafkaAdminClient, TopicPartition
from kafka.admin import OffsetSpec
from kafka.errors import KafkaError, KafkaTimeoutError, NoError, for_code
from psycopg import Connection
from psycopg import Error as DatabaseError
from psycopg.rows import TupleRow
from psycopg_pool import ConnectionPool
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from api.deps import Pool, Producer
from api.producer import BrokerUnavailable, LazyProducer
from events import topics
from infra.eventstore import EVENTS_TABLE, RELAY_TRACKING_PREFIX, TRACKING_TABLE
from projections.views import PROGRESS_TABLE

DB_TIMEOUT_S = 2.0
ADMIN_TIMEOUT_MS = 1000
LIVE_PROGRESS = "live"

router = APIRouter(tags=["health"])


def _omitted_if_none(value: object) -> bool:
    return value is None


class BrokerHealth(BaseModel):
    reachable: bool
    bootstrap: str
    error: str | None = Field(default=None, exclude_if=_omitted_if_none)


class DatabaseHealth(BaseModel):
    reachable: bool
    error: str | None = Field(default=None, exclude_if=_omitted_if_none)


class GroupLag(BaseModel):
    """Records of `topic` the group has not committed yet, summed over partitions: how many
    events wait for it (plus those it applied since its last commit, a few seconds' worth)."""

    topic: str
    lag: int


class Pipeline(BaseModel):
    """Global event-store positions reached by each stage; a lag is how many positions the
    stage is behind the event store.

    The relay publishes in position order, so its lag counts the events it has not published.
    The projector reads the partitions of crm.events side by side, each at its own pace, so
    its position is the highest it applied: 0 lag says it reached the newest event, but while
    it catches up, events below its position may still wait on other partitions. How many
    wait is the `crm-projector` group's Kafka lag."""

    event_store_position: int
    relayed_position: int = Field(description="tracked by the relay for the current crm.events")
    projected_position: int = Field(description="the highest applied by the live projector")
    relay_lag: int = Field(description="events not published yet")
    projector_lag: int = Field(
        description="positions between the newest event and the highest applied: a lower bound "
        "of the events waiting (the crm-projector Kafka lag counts them)"
    )


class Health(BaseModel):
    """`degraded` (with HTTP 503) when the broker or the database cannot be reached; lags never
    change the status. `lag` is null without a broker, `pipeline` null without a database."""

    status: Literal["ok", "degraded"]
    broker: BrokerHealth
    database: DatabaseHealth
    lag: dict[str, GroupLag] | None = Field(description="by consumer group")
    pipeline: Pipeline | None


@dataclass(frozen=True, slots=True)
class KafkaLag:
    """Lag of each watched consumer group, and the topic id of every watched topic."""

    groups: dict[str, GroupLag]
    topic_ids: dict[str, str]


class ConsumerLag:
    """Reads consumer-group lag through one KafkaAdminClient, created on first use and dropped
    after an error. Blocking, with short timeouts: call it from a worker thread."""

    def __init__(self, bootstrap: str, groups: Mapping[str, str]) -> None:
        self.bootstrap = bootstrap
        self.groups = dict(groups)
        """Topic consumed by each consumer group."""
        self._admin: KafkaAdminClient | None = None
        self._lock = threading.Lock()

    def read(self) -> KafkaLag:
        """Raise KafkaError when the broker does not answer in about ADMIN_TIMEOUT_MS."""
        if not self._lock.acquire(timeout=ADMIN_TIMEOUT_MS / 1000):
            raise KafkaTimeoutError("an earlier lag query is still waiting for the broker")
        try:
            if self._admin is None:
                self._admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap,
                    client_id="crm-api-health",
                    request_timeout_ms=ADMIN_TIMEOUT_MS,
                    bootstrap_timeout_ms=ADMIN_TIMEOUT_MS,
                )
            try:
                return _read_lag(self._admin, self.groups)
            except KafkaError:
                self._close_admin()
                raise
        finally:
            self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._close_admin()

    def _close_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            admin.close()


def _read_lag(admin: KafkaAdminClient, groups: dict[str, str]) -> KafkaLag:
    described = admin.describe_topics(sorted(set(groups.values())))
    for topic in described:
        if topic["error_code"] != NoError.errno:
            raise for_code(topic["error_code"])(f"cannot describe topic {topic['name']}")
    partitions = [
        TopicPartition(topic["name"], partition["partition_index"])
        for topic in described
        for partition in topic["partitions"]
    ]
    ends = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in partitions})
    lags = {}
    for group, topic in groups.items():
        committed = admin.list_group_offsets({group: None})[group]
        lag = 0
        for tp in (tp for tp in partitions if tp.topic == topic):
            done = committed[tp].offset if tp in committed else -1
            # Without a commit everything is behind. The embedded broker reports the base
            # offset of the last record batch + 1 as the end, possibly below a commit.
            lag += ends[tp].offset if done < 0 else max(0, ends[tp].offset - done)
        lags[group] = GroupLag(topic=topic, lag=lag)
    return KafkaLag(lags, {topic["name"]: topic["topic_id"] for topic in described})


async def _consumer_lag(request: Request) -> ConsumerLag:
    consumer_lag: ConsumerLag = request.state.consumer_lag
    return consumer_lag


LagReader = Annotated[ConsumerLag, Depends(_consumer_lag)]


@router.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "Broker or database unreachable"}},
)
async def get_health(
    producer: Producer, pool: Pool, consumer_lag: LagReader, response: Response
) -> Health:
    """Check the broker (topic metadata) and PostgreSQL, each in a few seconds, and read the
    consumer-group lag (Kafka) and pipeline positions (PostgreSQL) at the same time."""
    broker, (database, positions), kafka_lag = await asyncio.gather(
        run_in_threadpool(_check_broker, producer),
        run_in_threadpool(_check_database, pool),
        run_in_threadpool(_read_kafka_lag, consumer_lag),
    )
    ok = broker.reachable and database.reachable
    if not ok:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if ok else "degraded",
        broker=broker,
        database=database,
        lag=None if kafka_lag is None else kafka_lag.groups,
        pipeline=None if positions is None else positions.pipeline(kafka_lag),
    )


def _check_broker(producer: LazyProducer) -> BrokerHealth:
    try:
        producer.check()
    except BrokerUnavailable as error:
        return BrokerHealth(reachable=False, bootstrap=producer.bootstrap, error=str(error))
    return BrokerHealth(reachable=True, bootstrap=producer.bootstrap)


def _read_kafka_lag(consumer_lag: ConsumerLag) -> KafkaLag | None:
    try:
        return consumer_lag.read()
    except KafkaError:
        return None


@dataclass(frozen=True, slots=True)
class StorePositions:
    """What PostgreSQL knows: the last event store position, the relay's tracked positions
    by tracking name, and the live projector's position."""

    stored: int
    relayed: dict[str, int]
    projected: int

    def pipeline(self, kafka_lag: KafkaLag | None) -> Pipeline:
        """Without the current crm.events topic id (no broker), the highest relay position."""
        topic_id = None if kafka_lag is None else kafka_lag.topic_ids.get(topics.EVENTS)
        if topic_id is None:
            relayed = max(self.relayed.values(), default=0)
        else:
            relayed = self.relayed.get(RELAY_TRACKING_PREFIX + topic_id, 0)
        return Pipeline(
            event_store_position=self.stored,
            relayed_position=relayed,
            projected_position=self.projected,
            relay_lag=max(0, self.stored - relayed),
            projector_lag=max(0, self.stored - self.projected),
        )


_EXISTING_SQL = "SELECT to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL"
_STORED_SQL = f"SELECT coalesce(max(notification_id), 0) FROM {EVENTS_TABLE}"
_RELAYED_SQL = (
    f"SELECT application_name, notification_id FROM {TRACKING_TABLE} "
    "WHERE starts_with(application_name, %s)"
)
_PROJECTED_SQL = f"SELECT coalesce(max(position), 0) FROM {PROGRESS_TABLE} WHERE name = %s"


def _check_database(pool: ConnectionPool) -> tuple[DatabaseHealth, StorePositions | None]:
    try:
        with pool.connection(timeout=DB_TIMEOUT_S) as conn:
            positions = _store_positions(conn)
    except DatabaseError as error:  # PoolTimeout included
        return DatabaseHealth(reachable=False, error=str(error)), None
    return DatabaseHealth(reachable=True), positions


def _store_positions(conn: Connection[TupleRow]) -> StorePositions:
    """Zeros for the tables not created yet (the projector creates its own on first use)."""
    has_store, has_progress = _one(conn, _EXISTING_SQL, (EVENTS_TABLE, PROGRESS_TABLE))
    stored, relayed, projected = 0, {}, 0
    if has_store:
        (stored,) = _one(conn, _STORED_SQL)
        relayed = dict(conn.execute(_RELAYED_SQL, (RELAY_TRACKING_PREFIX,)).fetchall())
    if has_progress:
        (projected,) = _one(conn, _PROJECTED_SQL, (LIVE_PROGRESS,))
    return StorePositions(stored, relayed, projected)


def _one(conn: Connection[TupleRow], query: str, params: tuple[str, ...] = ()) -> TupleRow:
    row = conn.execute(query, params).fetchone()
    assert row is not None, "an aggregate query returns one row"
    return row
