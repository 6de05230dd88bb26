"""The producer SDK against the real broker: delivery, the spool across broker outages, fork.

The broker fixture is shared by the whole session: every test that stops it starts it again and
recreates the topics in a `finally`, so it is always left running with its topics.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from events.envelope import new_event_id
from events.producer import TouchpointProducer
from events.topics import TOUCHPOINTS
from infra.broker import EmbeddedBroker
from infra.topics import TopicMismatchError, ensure_topics

pytestmark = pytest.mark.integration

TOPIC_PARTITIONS = 6  # as the broker fixture creates the platform topics
PARTITIONS = [TopicPartition(TOUCHPOINTS, p) for p in range(TOPIC_PARTITIONS)]
Offsets = dict[TopicPartition, int]


def end_offsets(broker: EmbeddedBroker) -> Offsets:
    """Where crm.touchpoints ends now, or earlier: the embedded broker reports the base offset
    of a partition's last batch + 1 as its end (so only a lower bound for reading new records)."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)
    try:
        return consumer.end_offsets(PARTITIONS)
    finally:
        consumer.close()


def topic_names(broker: EmbeddedBroker) -> list[str]:
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        return admin.list_topics()
    finally:
        admin.close()


def delivered(broker: EmbeddedBroker, sent: list[str], since: Offsets | None = None) -> list[str]:
    """The event_ids of `sent` found on crm.touchpoints from `since` (default: the beginning),
    once per copy, sorted; read without a consumer group until all are found and no more come."""
    wanted = set(sent)
    found: list[str] = []
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    try:
        consumer.assign(PARTITIONS)
        for tp in PARTITIONS:
            consumer.seek(tp, (since or {}).get(tp, 0))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batches = consumer.poll(timeout_ms=500).values()
            if not batches and wanted <= set(found):
                break
            for records in batches:
                ids = (orjson.loads(r.value)["event_id"] for r in records)
                found.extend(i for i in ids if i in wanted)
    finally:
        consumer.close()
    return sorted(found)


@contextmanager
def broker_down(broker: EmbeddedBroker) -> Iterator[None]:
    """The broker stopped for the block; then started again (empty) with the topics recreated."""
    broker.stop()
    try:
        yield
    finally:
        broker.start()
        ensure_topics(broker.bootstrap, TOPIC_PARTITIONS)


def visit(producer: TouchpointProducer, i: int, event_id: str | None = None) -> str:
    url = f"https://shop.example/p/{i}"
    if event_id is None:
        return producer.web_visited(f"C-{i % 97}", url=url)
    return producer.web_visited(f"C-{i % 97}", url=url, event_id=event_id)


def test_every_event_sent_is_on_the_topic_once_after_flush(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    since = end_offsets(broker)
    with TouchpointProducer(broker.bootstrap, source="test", spool_dir=tmp_path) as producer:
        sent = [visit(producer, i) for i in range(2000)]
        assert producer.flush(timeout=30) == 0
        assert (producer.stats.sent, producer.stats.spooled) == (2000, 0)
    assert delivered(broker, sent, since) == sorted(sent)


def test_events_sent_while_the_broker_is_down_are_spooled_then_delivered(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    with TouchpointProducer(broker.bootstrap, source="test", spool_dir=tmp_path) as producer:
        with broker_down(broker):
            began = time.monotonic()
            sent = [visit(producer, i) for i in range(500)]
            elapsed = time.monotonic() - began
            assert elapsed < 5, f"500 sends took {elapsed:.1f} s with the broker down"
            assert (producer.stats.spooled, producer.pending()) == (500, 500)
        assert producer.flush(timeout=60) == 0
        assert producer.stats.sent == 500
    assert delivered(broker, sent) == sorted(sent)


def test_forked_child_sends_with_its_own_connection(broker: EmbeddedBroker, tmp_path: Path) -> None:
    since = end_offsets(broker)
    child_ids = [new_event_id() for _ in range(50)]
    with TouchpointProducer(broker.bootstrap, source="test", spool_dir=tmp_path) as producer:
        sent = [visit(producer, 0)]
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                for i, event_id in enumerate(child_ids):
                    visit(producer, i, event_id)
                code = 0 if producer.flush(timeout=30) == 0 else 1
                producer.close()
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stderr.flush()
                os._exit(code)
        sent += [visit(producer, i) for i in range(50)]
        assert producer.flush(timeout=30) == 0
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert delivered(broker, sent + child_ids, since) == sorted(sent + child_ids)


def test_a_new_producer_delivers_what_a_closed_one_left_in_the_spool(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    with TouchpointProducer(broker.bootstrap, source="test", spool_dir=tmp_path) as first:
        visit(first, 0)
        assert first.flush(timeout=10) == 0  # connected
        with broker_down(broker):
            sent = [visit(first, i) for i in range(20)]  # taken by kafka-python, unacknowledged
            first.close(timeout=1)
            assert (first.stats.spooled, first.pending()) == (20, 20)  # closed, still on disk
            assert list(tmp_path.glob("*/*.seg"))
    with TouchpointProducer(broker.bootstrap, source="test", spool_dir=tmp_path) as second:
        assert second.flush(timeout=30) == 0
        assert second.stats.sent == 20
    assert delivered(broker, sent) == sorted(sent)
    assert not list(tmp_path.glob("*/*.seg"))


def test_the_sdk_never_creates_the_topic_on_a_broker_that_came_back_without_it(
    broker: EmbeddedBroker, restart_broker: Callable[[], None], tmp_path: Path
) -> None:
    # kafka-python gives a send up after delivery_timeout_ms (2 min by default): bound it.
    bounded = {"request_timeout_ms": 10_000, "delivery_timeout_ms": 15_000}
    with TouchpointProducer(
        broker.bootstrap, source="test", spool_dir=tmp_path, **bounded
    ) as producer:
        visit(producer, 0)
        assert producer.flush(timeout=10) == 0  # connected, with the topic's metadata
        broker.stop()
        broker.start()  # empty: the embedded broker would auto-create a topic asked about
        try:
            sent = [visit(producer, i) for i in range(50)]
            # Sends taken on the cached metadata fail only after kafka-python gives up on the
            # restarted broker; then they are spooled. The drain thread retries meanwhile.
            deadline = time.monotonic() + 60
            while producer.stats.spooled < 50 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert TOUCHPOINTS not in topic_names(broker)
            assert producer.stats.spooled == 50
        finally:
            try:
                ensure_topics(broker.bootstrap, TOPIC_PARTITIONS)
            except TopicMismatchError:
                restart_broker()  # leave the shared broker usable
                raise
        assert producer.flush(timeout=30) == 0
    assert delivered(broker, sent) == sorted(sent)
