"""The alert subscriber SDK: departments receive the platform's alerts from `crm.alerts`.

Subscribers of the same `group_id` share the alerts (each alert goes to one of them); each group
gets every alert. Delivery is at least once: an alert's offset is committed only after it was
handled, so an alert whose handling failed, or that was being handled when the process died, is
delivered again (to this group). Drop repeats by `alert_id` where handling twice matters.

Iterator style: an alert counts as handled when the next one is requested, on `commit()` and when
the `with` block ends normally; leaving it by an exception leaves the last alert uncommitted::

    from events import AlertSubscriber

    kinds = {"credit.limit.exceeded", "invoice.overdue"}
    with AlertSubscriber("kafka-1:9092", group_id="finance", kinds=kinds) as alerts:
        for alert in alerts:
            hold_orders(alert.customer_id, alert.details)  # raises: delivered again

Callback style: an alert is committed when the callback returns; if it raises, the alert is not
committed, `run` re-raises, and the alert comes again (from this subscriber too)::

    stop = threading.Event()  # set it from a signal handler or another thread to end `run`
    with AlertSubscriber("kafka-1:9092", group_id="sales") as alerts:
        alerts.run(lambda alert: notify_account_manager(alert), stop_event=stop)

A message that is not an alert (not JSON, a field missing or of the wrong type) is logged at
WARNING and skipped, never handed to you.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from events.metadata import exact
from events.topics import ALERTS

log = logging.getLogger(__name__)

_POLL_MS = 200  # longest wait of one poll: how soon `run` sees its stop event
_COMMIT_TIMEOUT_MS = 10_000  # a commit that fails is dropped: those alerts come again
_TEXT_FIELDS = ("alert_id", "kind", "customer_id", "raised_at", "suggested_action")


class MalformedAlert(ValueError):
    """A message of crm.alerts that is not an alert; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class ReceivedAlert:
    """One alert (see the README's alert contract) and where it was in crm.alerts."""

    alert_id: str
    kind: str
    customer_id: str
    raised_at: datetime
    """Timezone-aware."""
    details: dict[str, Any]
    """By kind; money as decimal strings, dates as "YYYY-MM-DD"."""
    suggested_action: str
    partition: int
    offset: int


def decode_alert(value: bytes | None, partition: int, offset: int) -> ReceivedAlert:
    """The alert in a crm.alerts message value; MalformedAlert if it is not one."""
    try:
        doc = orjson.loads(value or b"")
    except orjson.JSONDecodeError as error:
        raise MalformedAlert(f"not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise MalformedAlert(f"expected a JSON object, got {type(doc).__name__}")
    for name in _TEXT_FIELDS:
        if not isinstance(doc.get(name), str):
            raise MalformedAlert(f"{name}: expected a string, got {doc.get(name)!r}")
    if not isinstance(doc.get("details"), dict):
        raise MalformedAlert(f"details: expected an object, got {doc.get('details')!r}")
    return ReceivedAlert(
        doc["alert_id"],
        doc["kind"],
        doc["customer_id"],
        _aware(doc["raised_at"]),
        doc["details"],
        doc["suggested_action"],
        partition,
        offset,
    )


def _aware(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedAlert(f"raised_at: expected an RFC 3339 time, got {text!r}") from None
    if moment.utcoffset() is None:
        raise MalformedAlert(f"raised_at: expected a time with its offset, got {text!r}")
    return moment


class AlertSubscriber:
    """Receives alerts of crm.alerts in a consumer group, at least once; not thread-safe.

    `bootstrap_servers`: the Kafka cluster ("host:port,host:port" or a list).
    `group_id`: your consumer group; alerts are shared among the subscribers of a group, and a
    new group starts where `auto_offset_reset` says ("earliest": every alert Kafka still has).
    `kinds`: the alert kinds to receive (None: all); the others are skipped and committed.
    `idle_timeout`: seconds without an alert after which iteration stops (None: never; `run`
    ignores it). `session_timeout_ms`: as in kafka-python; short, because a group join takes
    about half of it on the embedded broker. `kafka_config`: more `KafkaConsumer` settings
    (security, …); they override the defaults. Use `with`, or call `close()` when done.
    """

    def __init__(
        self,
        bootstrap_servers: str | Sequence[str],
        *,
        group_id: str,
        kinds: Iterable[str] | None = None,
        idle_timeout: float | None = None,
        auto_offset_reset: str = "earliest",
        session_timeout_ms: int = 6000,
        topic: str = ALERTS,
        **kafka_config: Any,
    ) -> None:
        self.topic = topic
        self.kinds = None if kinds is None else frozenset(kinds)
        self.idle_timeout = idle_timeout
        self._consumer = KafkaConsumer(
            **{
                "bootstrap_servers": bootstrap_servers,
                "group_id": group_id,
                "client_id": "crm-alert-subscriber",
                "enable_auto_commit": False,
                "auto_offset_reset": auto_offset_reset,
                "session_timeout_ms": session_timeout_ms,
                "heartbeat_interval_ms": min(1000, session_timeout_ms // 3),
                # The embedded broker does not answer a waiting fetch early.
                "fetch_max_wait_ms": 100,
                "allow_auto_create_topics": False,
                **kafka_config,
            }
        )
        # A pattern, so kafka-python asks for the metadata of all topics, never creating one.
        self._consumer.subscribe(pattern=exact(topic))
        self._current: ReceivedAlert | None = None  # handed out by the iterator, not handled yet
        self._pending: dict[int, int] = {}  # partition → next offset, handled, not committed
        self._closed = False

    def __enter__(self) -> AlertSubscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(commit=exc_type is None)

    def __iter__(self) -> Iterator[ReceivedAlert]:
        return self

    def __next__(self) -> ReceivedAlert:
        """The next alert; the one returned before counts as handled and is committed."""
        self.commit()
        deadline = None if self.idle_timeout is None else time.monotonic() + self.idle_timeout
        while not self._closed:
            alert = self._next_alert()
            if alert is not None:
                self._current = alert
                return alert
            if deadline is not None and time.monotonic() >= deadline:
                break
        raise StopIteration

    def run(
        self,
        callback: Callable[[ReceivedAlert], object],
        stop_event: threading.Event | None = None,
    ) -> None:
        """Call `callback` with each alert, committing it when the callback returns, until
        `stop_event` is set. If the callback raises, the alert is not committed, this subscriber
        will deliver it again, and the exception propagates."""
        self.commit()
        while not self._closed and not (stop_event is not None and stop_event.is_set()):
            alert = self._next_alert()
            if alert is None:
                continue
            try:
                callback(alert)
            except BaseException:
                self._consumer.seek(TopicPartition(self.topic, alert.partition), alert.offset)
                raise
            self._handled(alert.partition, alert.offset)
            self._commit_pending()

    def commit(self) -> None:
        """Commit every alert received so far (in iterator style, the current one too)."""
        if self._current is not None:
            self._handled(self._current.partition, self._current.offset)
            self._current = None
        self._commit_pending()

    def close(self, commit: bool = True) -> None:
        """Leave the group. `commit=False`: the alert the iterator returned last was not
        handled, so it is delivered again (the `with` block does so when left by an exception)."""
        if self._closed:
            return
        if not commit:
            self._current = None
        self.commit()
        self._closed = True
        self._consumer.close(autocommit=False)

    def _next_alert(self) -> ReceivedAlert | None:
        """The next alert to hand out, or None after one poll brought none. Messages skipped
        (other kinds, malformed) are committed with the next alert, or when none is waiting."""
        polled = self._consumer.poll(timeout_ms=_POLL_MS, max_records=1)
        records = [record for batch in polled.values() for record in batch]
        if not records:
            self._commit_pending()
            return None
        [record] = records
        try:
            alert = decode_alert(record.value, record.partition, record.offset)
        except MalformedAlert as error:
            log.warning("event=alert_skipped topic=%s partition=%d offset=%d reason=%r",
                        record.topic, record.partition, record.offset, str(error))  # fmt: skip
            alert = None
        if alert is None or (self.kinds is not None and alert.kind not in self.kinds):
            self._handled(record.partition, record.offset)
            return None
        return alert

    def _handled(self, partition: int, offset: int) -> None:
        self._pending[partition] = offset + 1

    def _commit_pending(self) -> None:
        if not self._pending:
            return
        offsets = {
            TopicPartition(self.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in self._pending.items()
        }
        self._pending.clear()
        try:
            self._consumer.commit(offsets, timeout_ms=_COMMIT_TIMEOUT_MS)
        except KafkaError as error:  # e.g. the partitions moved to another subscriber
            log.warning("event=commit_failed error=%r action=delivered_again", str(error))
