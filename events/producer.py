"""The producer SDK: departments send touchpoints to `crm.touchpoints` without losing any.

Every event is validated against the catalog before anything is sent, so a bad field raises
`InvalidEvent` naming it in the caller, not a dead letter later. Valid events go to Kafka
(kafka-python, idempotent, `acks="all"`, key = customer_id). When Kafka cannot take them (broker
down, topic missing, delivery failed after kafka-python's retries), they go to a bounded on-disk
spool and a background thread delivers them, oldest first, once Kafka is back; a later producer
on the same `spool_dir` delivers what an earlier one left behind. Delivery is at least once:
the platform deduplicates by `event_id`.

Usage::

    from datetime import UTC, date, datetime
    from decimal import Decimal

    from events import InvalidEvent, Item, TouchpointProducer

    with TouchpointProducer("kafka-1:9092,kafka-2:9092", source="sales") as crm:
        crm.customer_registered("C-0042", name="Ada Lovelace", email="ada@example.com")
        event_id = crm.purchase_made(
            "C-0042",
            order_id="O-1001",
            items=[Item(sku="ENG-1", quantity=1, unit_price=Decimal("100.00"))],
            total=Decimal("100.00"),
            currency="EUR",
            occurred_at=datetime(2026, 1, 5, 10, 15, tzinfo=UTC),  # default: now
            correlation_id="checkout-81f2",
        )
        crm.invoice_issued(
            "C-0042", invoice_id="INV-1", amount="100.00", currency="EUR", due_date=date(2026, 2, 4)
        )
        try:
            crm.call_logged("C-0042", direction="sideways", duration_seconds=30)
        except InvalidEvent as error:
            print(error.field, error.message)  # payload.direction expected one of inbound, outbound
        if crm.flush(timeout=10):  # the number of events not acknowledged yet
            print("Kafka is unreachable: the rest stays in the spool and is sent later")

Leaving the `with` block (or `close()`) waits while deliveries make progress, then keeps what is
left on disk for the next producer using the same `spool_dir`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner import DefaultPartitioner
from kafka.producer.future import FutureRecordMetadata

from events.codec import DEFAULT_MAX_BYTES, encode
from events.envelope import new_event_id, validate_envelope
from events.errors import InvalidEvent
from events.metadata import all_topics_metadata
from events.spool import Spool, SpooledRecord, SpoolFull
from events.topics import TOUCHPOINTS
from events.touchpoints import EventOptions, Item, Money, TypedTouchpoints, _rfc3339

log = logging.getLogger(__name__)

_DRAIN_BATCH = 1000  # spooled records sent per round
_RETRY_S = 0.5  # pause of the drain thread after a failed round, and its idle poll
_POLL_S = 0.01  # how often flush() and close() look at the pending count
_CLOSE_PATIENCE_S = 5.0  # close(timeout=None) gives up after this long without a delivery
_ABORT_WAIT_S = 5.0  # close() waits this long for kafka-python to fail the sends it aborts


class EventDropped(Exception):
    """An event Kafka did not take could not be spooled either (spool full or disk error)."""


@dataclass(frozen=True, slots=True)
class ProducerStats:
    """Events acknowledged by Kafka (`sent`), written to the spool (`spooled`, each is sent later
    and then counted in `sent`), and lost because the spool could not take them (`dropped`)."""

    sent: int
    spooled: int
    dropped: int


_LIVE: weakref.WeakSet[TouchpointProducer] = weakref.WeakSet()


class KeyPartitionCache(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2 of the key, as the Java client), remembering
    each key's partition: the same customers send again and again, and the pure-Python hash is
    a noticeable part of a send."""

    def __init__(self, max_keys: int = 200_000) -> None:
        self._max_keys = max_keys
        self._cache: dict[tuple[str, bytes, int], int] = {}

    def partition(
        self,
        topic: str,
        key: Any,
        serialized_key: bytes | None,
        value: Any,
        serialized_value: bytes | None,
        cluster: Any,
    ) -> int:
        if serialized_key is None:
            return super().partition(topic, key, None, value, serialized_value, cluster)
        count = len(cluster.partitions_for_topic(topic) or ())
        cached = self._cache.get((topic, serialized_key, count))
        if cached is None:
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            cached = super().partition(topic, key, serialized_key, value, serialized_value, cluster)
            self._cache[(topic, serialized_key, count)] = cached
        return cached


class TouchpointProducer(TypedTouchpoints):
    """Validated, never-silently-lost sending of touchpoints to Kafka; thread-safe.

    `bootstrap_servers`: the Kafka cluster ("host:port,host:port" or a list).
    `source`: the sending department or system, written into every envelope.
    `spool_dir`: where events wait while Kafka is unavailable. Default: `$CRM_SPOOL_DIR`, else
    `~/.cache/crm-sdk/spool/<bootstrap servers>` (one spool per cluster, so leftovers are never
    delivered to another cluster). Processes may share it; each adopts the leftovers of dead ones.
    `spool_max_bytes`: bound of the spool. When it is full, an event Kafka did not take is dropped:
    `on_drop(value, error)` is called if given, else `send` raises `EventDropped`. A send that
    fails later (after kafka-python's retries) has no caller to raise to: it is spooled then, and
    if that fails, `on_drop` is called from the SDK's background thread (keep it short) or,
    without `on_drop`, the event is logged at ERROR with its bytes. `stats.dropped` counts both.
    `linger_ms`, `max_block_ms`: as in kafka-python; `max_block_ms` bounds how long a call blocks
    waiting for Kafka (connecting, topic metadata) before the event goes to the spool instead.
    `kafka_config`: more `KafkaProducer` settings (security, `delivery_timeout_ms`, …); they
    override the defaults `acks="all"`, `enable_idempotence=True`, `allow_auto_create_topics=False`
    and `bootstrap_timeout_ms=max_block_ms`. kafka-python retries a send until
    `delivery_timeout_ms` (default 2 min) before it is handed to the spool.

    Send with the typed methods (`purchase_made`, …; one per catalog type, each also taking the
    keywords of `EventOptions`), `send` or `send_envelope`; each returns the event_id. Call
    `close()` (or use `with`) when done. After `os.fork()` the child gets a fresh connection on
    first use; the parent keeps delivering its own events.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        source: str,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        on_drop: Callable[[bytes, Exception], None] | None = None,
        linger_ms: int = 5,
        max_block_ms: int = 1000,
        **kafka_config: Any,
    ) -> None:
        self._source = source
        self._on_drop = on_drop
        self._kafka_config: dict[str, Any] = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "enable_idempotence": True,
            "allow_auto_create_topics": False,
            "linger_ms": linger_ms,
            "batch_size": 256 * 1024,  # fewer, larger requests: less work per event
            "partitioner": KeyPartitionCache(),
            "max_block_ms": max_block_ms,
            "bootstrap_timeout_ms": max_block_ms,
            **kafka_config,
        }
        self._spool_dir = Path(spool_dir or _default_spool_dir(bootstrap_servers))
        self._spool_max_bytes = spool_max_bytes
        self._spool = Spool(self._spool_dir, spool_max_bytes)
        self._closed = False
        self._kafka: KafkaProducer | None = None  # connected lazily, by the first send
        self._reset()
        self._start_drainer()
        _LIVE.add(self)

    def _reset(self) -> None:
        """State of a fresh producer over the spool (also the child's state after a fork)."""
        self._lock = threading.Lock()  # spool writes and the _spooling flag
        self._connect_lock = threading.Lock()  # creating and replacing self._kafka
        self._settle_lock = threading.Lock()  # taking answered sends out of _in_flight
        self._wake = threading.Event()
        self._drainer: threading.Thread | None = None
        # Sent to Kafka, not accounted for yet; `_settle` looks at the answered ones (polling,
        # not callbacks: a callback per send costs a fifth of the throughput).
        self._in_flight: dict[FutureRecordMetadata, tuple[bytes, bytes]] = {}
        self._spooling = len(self._spool) > 0  # while True, new events go to the spool (FIFO)
        self._unreachable = False  # the last connection attempt failed
        self._sent = 0  # acked sends, counted by _settle
        self._drained = 0  # acked spooled records, counted in the drain thread only
        self._spooled = 0
        self._dropped = 0

    def __enter__(self) -> TouchpointProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------

    def send(
        self,
        type: str,
        customer_id: str,
        payload: Mapping[str, Any],
        *,
        schema_version: int = 1,
        occurred_at: datetime | str | None = None,
        event_id: str | None = None,
        correlation_id: str | None = None,
        source: str | None = None,
    ) -> str:
        """Send an event of any catalog `type` with a wire-form `payload` (money as decimal
        strings, dates as "YYYY-MM-DD"); return its event_id.

        Raises `InvalidEvent` (nothing sent) when the event breaks the catalog, `EventDropped`
        when neither Kafka nor the spool can take it and no `on_drop` is set.
        """
        data: dict[str, Any] = {
            "event_id": new_event_id() if event_id is None else event_id,
            "type": type,
            "schema_version": schema_version,
            "customer_id": customer_id,
            "occurred_at": _now() if occurred_at is None else _rfc3339(occurred_at, "occurred_at"),
            "source": self._source if source is None else source,
            "payload": payload if isinstance(payload, dict) else dict(payload),
        }
        if correlation_id is not None:
            data["correlation_id"] = correlation_id
        return self._send_valid(data)

    def send_envelope(self, envelope: Mapping[str, Any]) -> str:
        """Send a complete wire-form envelope (as `POST /events` takes it); return its event_id,
        generated when the envelope has none. Raises like `send`."""
        data = dict(envelope)
        if data.get("event_id") is None:
            data["event_id"] = new_event_id()
        return self._send_valid(data)

    def _send_valid(self, data: dict[str, Any]) -> str:
        envelope = validate_envelope(data)
        value = encode(envelope)
        if len(value) > DEFAULT_MAX_BYTES:
            raise InvalidEvent(
                "size_violation",
                "",
                f"event is {len(value)} bytes, the limit is {DEFAULT_MAX_BYTES}",
            )
        self._publish(envelope.customer_id.encode(), value)
        return envelope.event_id

    def _publish(self, key: bytes, value: bytes) -> None:
        kafka = self._kafka
        if kafka is None or self._spooling:
            kafka = self._kafka_or_spool()
        if kafka is not None:
            try:
                future = kafka.send(TOUCHPOINTS, value=value, key=key)
            except KafkaError:  # no metadata within max_block_ms, or closed meanwhile
                pass
            else:
                self._in_flight[future] = (key, value)
                return
        error = self._to_spool(key, value)
        if error is None:
            return
        if self._on_drop is None:
            raise EventDropped(self._drop_message(error)) from error
        self._on_drop(value, error)

    def _kafka_or_spool(self) -> KafkaProducer | None:
        """The Kafka producer to send with, or None when the event must go to the spool."""
        if self._closed:
            raise RuntimeError("TouchpointProducer is closed")
        if self._drainer is None:  # first use in a forked child
            self._start_drainer()
        return None if self._spooling else self._connect()

    def _to_spool(self, key: bytes, value: bytes) -> Exception | None:
        """Spool one record (from now on new events are spooled too); return the error if not."""
        with self._lock:
            try:
                self._spool.append(SpooledRecord(TOUCHPOINTS, key, value))
            except (SpoolFull, OSError, ValueError) as error:  # ValueError: spool closed
                self._dropped += 1
                return error
            self._spooling = True
            self._spooled += 1
        return None

    def _drop_message(self, error: Exception) -> str:
        return (
            f"event dropped: Kafka did not take it and the spool {self._spool_dir} "
            f"(max {self._spool_max_bytes} bytes) could not either: {error}"
        )

    # -- waiting and closing -----------------------------------------------------------------

    def pending(self) -> int:
        """Events not acknowledged by Kafka yet: in flight, or in the spool (including leftovers
        of earlier producers adopted from `spool_dir`)."""
        return self._settle() + len(self._spool)

    @property
    def stats(self) -> ProducerStats:
        """Counters of this producer (reset in a forked child)."""
        self._settle()
        return ProducerStats(self._sent + self._drained, self._spooled, self._dropped)

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every event sent so far is acknowledged by Kafka and the spool is empty, or
        until `timeout` seconds have passed; return the number still pending (0: all delivered)."""
        self._wake.set()  # the drain thread tries at once
        return self._await_delivery(_deadline(timeout), closing=False)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what can be delivered, then release the connection and the spool; idempotent.

        Waits up to `timeout` seconds for pending events; with None, as long as deliveries make
        progress: it stops when Kafka is unreachable or after 5 s without any delivery. Events
        not delivered by then stay in `spool_dir` for the next producer using it.
        """
        if self._closed:
            return
        self._await_delivery(_deadline(timeout), closing=timeout is None)
        with self._connect_lock:
            self._closed = True
            kafka, self._kafka = self._kafka, None
        self._wake.set()
        if kafka is not None:
            _shut(kafka)  # unacknowledged sends fail, and _settle spools them
        if self._drainer is not None:
            self._drainer.join()
        deadline = time.monotonic() + _ABORT_WAIT_S
        while self._settle() and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        self._settle(give_up=True)  # may be delivered as well: at least once
        self._spool.close()
        _LIVE.discard(self)
        stats = self.stats
        log.info(
            "producer closed spool=%s sent=%d spooled=%d dropped=%d left_in_spool=%d",
            self._spool_dir, stats.sent, stats.spooled, stats.dropped, len(self._spool),
        )  # fmt: skip

    def _settle(self, *, give_up: bool = False) -> int:
        """Account for the sends Kafka answered: count the acknowledged ones, spool the failed
        ones (after kafka-python's retries) and, if `give_up`, the unanswered ones too; return
        how many are still in flight."""
        with self._settle_lock:
            settled = [(f, r) for f, r in list(self._in_flight.items()) if give_up or f.is_done]
            for future, (key, value) in settled:
                del self._in_flight[future]  # pending() settles first, so it never misses one
                if not future.is_done:
                    self._spool_failed(key, value, KafkaTimeoutError("unanswered at close"))
                elif future.exception is None:
                    self._sent += 1
                else:
                    self._spool_failed(key, value, future.exception)
            return len(self._in_flight)

    def _spool_failed(self, key: bytes, value: bytes, failure: Exception) -> None:
        """Spool a send Kafka failed; if that fails too, there is no caller to raise to."""
        error = self._to_spool(key, value)
        if error is None:
            return
        if self._on_drop is not None:
            self._on_drop(value, error)
        else:
            log.error(
                "event dropped spool=%s delivery_error=%r error=%r event=%s",
                self._spool_dir, failure, error, value.decode(errors="replace"),
            )  # fmt: skip

    def _await_delivery(self, deadline: float | None, *, closing: bool) -> int:
        """Wait until nothing is pending or the deadline passes; when `closing`, also stop once
        waiting is pointless (Kafka unreachable, or no delivery for a while)."""
        progress_at = time.monotonic()
        kafka = self._kafka
        if kafka is not None and self._in_flight:  # wait for these without polling
            limit = None if deadline is None else max(deadline - progress_at, 0.0)
            with contextlib.suppress(KafkaError):  # timed out, or replaced: the loop goes on
                kafka.flush(_CLOSE_PATIENCE_S if closing else limit)
        pending = self.pending()
        while pending:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if closing and (
                (self._unreachable and not self._settle()) or now - progress_at >= _CLOSE_PATIENCE_S
            ):
                break
            time.sleep(_POLL_S)
            current = self.pending()
            if current < pending:
                progress_at = time.monotonic()
            pending = current
        return pending

    # -- connection and the drain thread -----------------------------------------------------

    def _connect(self) -> KafkaProducer | None:
        """The Kafka producer, created if needed; None while Kafka is unreachable."""
        with self._connect_lock:
            if self._kafka is not None or self._closed:
                return self._kafka
            try:
                kafka = KafkaProducer(**self._kafka_config)
            except KafkaError as error:
                if not self._unreachable:
                    log.warning(
                        "kafka unavailable, spooling bootstrap=%s spool=%s error=%r",
                        self._kafka_config["bootstrap_servers"], self._spool_dir, error,
                    )  # fmt: skip
                self._unreachable = True
            else:
                # Ask for the metadata of all topics, never of one: a broker that ignores
                # allow_auto_create_topics (the embedded one) creates a topic it is asked about,
                # with a partition count the platform does not use. A missing topic then means
                # KafkaTimeoutError after max_block_ms, and the event is spooled.
                all_topics_metadata(kafka)
                self._kafka = kafka
                self._unreachable = False
            return self._kafka

    def _retire(self, kafka: KafkaProducer) -> None:
        """Replace a producer whose deliveries failed (after a broker restart an idempotent
        producer can stay broken for good); the next round connects anew."""
        with self._connect_lock:
            if self._kafka is kafka:
                self._kafka = None
        _shut(kafka)

    def _start_drainer(self) -> None:
        self._drainer = threading.Thread(target=self._drain_loop, name="crm-sdk-drain", daemon=True)
        self._drainer.start()

    def _drain_loop(self) -> None:
        delay = 0.0
        while not self._closed:
            self._wake.wait(delay)
            self._wake.clear()
            if self._closed:
                return
            self._settle()  # frees the acknowledged futures even when nobody asks
            try:
                delay = 0.0 if self._drain_once() else _RETRY_S
            except Exception:
                log.exception("spool drain round failed spool=%s", self._spool_dir)
                delay = _RETRY_S

    def _drain_once(self) -> bool:
        """Send the oldest spooled records, commit the acknowledged prefix; True if all went."""
        batch = self._spool.peek_batch(_DRAIN_BATCH)
        if not batch.records:
            with self._lock:
                if self._spooling and len(self._spool) == 0:
                    self._spooling = False
                    log.info("spool drained, sending directly spool=%s", self._spool_dir)
            return False
        self._spooling = True  # records adopted from a dead process come before new ones
        kafka = self._connect()
        if kafka is None:
            return False
        futures = []
        try:
            for record in batch.records:
                futures.append(kafka.send(record.topic, value=record.value, key=record.key))
        except KafkaError as error:
            failure: Exception | None = error
        else:
            failure = None
        acked = 0
        for future in futures:
            try:
                future.get()
            except KafkaError as error:
                failure = error
                break
            acked += 1
        if acked:
            self._spool.commit(batch.prefix(acked))
            self._drained += acked
        if failure is None:
            return True
        log.warning(
            "spool delivery failed acked=%d of=%d spool=%s error=%r",
            acked, len(batch.records), self._spool_dir, failure,
        )  # fmt: skip
        self._retire(kafka)
        return False

    def _after_fork_in_child(self) -> None:
        if self._closed:
            return
        if self._kafka is not None:
            # The parent's producer: its sockets and batches are the parent's. Marked closed so
            # that neither its atexit hook nor __del__ flushes or closes it here (kafka-python
            # 3.0.12 checks this attribute first in close()).
            self._kafka._closed = True
            self._kafka = None
        self._reset()  # the Spool resets itself (empty, own subdirectory) in its own fork hook


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _default_spool_dir(bootstrap_servers: str | Sequence[str]) -> Path:
    if configured := os.environ.get("CRM_SPOOL_DIR"):
        return Path(configured)
    servers = (
        bootstrap_servers if isinstance(bootstrap_servers, str) else ",".join(bootstrap_servers)
    )
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "crm-sdk" / "spool" / re.sub(r"[^A-Za-z0-9_.-]", "_", servers)


def _shut(kafka: KafkaProducer) -> None:
    """Close without waiting: sends not acknowledged yet fail (and `_settle` spools them)."""
    try:
        kafka.close(timeout=0)
    except KafkaError:
        # kafka-python 3.0.12's close() raises when its flush times out, before it force-closes
        # the I/O thread; force it here, as close() would have.
        kafka._sender.force_close()


def _reset_producers_in_child() -> None:
    for producer in list(_LIVE):
        producer._after_fork_in_child()


os.register_at_fork(after_in_child=_reset_producers_in_child)

__all__ = [
    "EventDropped",
    "EventOptions",
    "Item",
    "Money",
    "ProducerStats",
    "TouchpointProducer",
]
