"""Impossible customer merges are rejected at intake: dead-lettered by the recorder with the
rule's code (merge_into_self, already_merged, merge_into_merged, unknown_customer), refused
with 409 by POST /events. Real broker, real PostgreSQL; the recorder runs as a real process,
and in-process where a test needs one exact batch."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.partitioner.default import murmur2

from events import topics
from events.codec import decode
from infra.broker import EmbeddedBroker
from infra.case_ledger import COMPLAINT_CASES_TABLE
from infra.eventstore import EventStore
from infra.merge_ledger import MergeConflict, MergeRow, MergeState, MergeWrites
from infra.topics import ensure_topics
from projections.merges import CUSTOMER_MERGED
from services.intake_guards import backfill_merges
from tests.conftest import TOPIC_PARTITIONS
from tests.integration.helpers import (
    Service,
    end_offsets,
    pipeline_env,
    query,
    recorded_ids,
    wait_until,
)
from tests.integration.intake import (
    MERGE_WAIT,
    Message,
    batch,
    call,
    deadletters,
    event,
    ids,
    in_process,
    nothing_produced,
    send,
    stream_ids,
    wait_recorded,
)

pytestmark = pytest.mark.integration


# --- events -------------------------------------------------------------------------------------


def merged(customer: str, into: str) -> Message:
    return event("customer.merged", customer, into_customer_id=into)


# --- broker and database ------------------------------------------------------------------------


def partition(producer: KafkaProducer, customer: str, topic: str) -> int:
    """The partition of `topic` the producer sends a customer's events to (Kafka's default
    partitioner)."""
    partitions = sorted(producer.partitions_for(topic))
    return partitions[(murmur2(customer.encode()) & 0x7FFFFFFF) % len(partitions)]


def merge_rows(dsn: str, prefix: str) -> set[tuple[str, str]]:
    rows = query(dsn, "SELECT customer_id, into_customer_id FROM crm_customer_merges "
                 "WHERE customer_id LIKE %s", (prefix + "%",))  # fmt: skip
    return {(str(c), str(i)) for c, i in rows}


def positions_agree(dsn: str, prefix: str) -> bool:
    """Whether every merge row of the prefix holds the position of its own event."""
    rows = query(dsn, "SELECT m.position = e.notification_id FROM crm_customer_merges m "
                 "JOIN crm_intake i ON i.event_id = m.event_id JOIN crm_events e "
                 "ON e.originator_id = i.customer_id AND e.originator_version = i.version "
                 "WHERE m.customer_id LIKE %s", (prefix + "%",))  # fmt: skip
    return bool(rows) and all(ok for (ok,) in rows)


@pytest.fixture
def prefix() -> str:
    return f"m{uuid.uuid4().hex[:8]}-"


# --- the recorder process -----------------------------------------------------------------------


def test_each_impossible_merge_is_dead_lettered_with_its_code_and_not_recorded(
    broker: EmbeddedBroker, producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    c = {name: f"{prefix}{name}" for name in
         ("self", "twice", "t1", "t2", "gone", "into", "unknown", "bad")}  # fmt: skip
    calls = [call(c[n]) for n in ("self", "twice", "t1", "t2", "gone", "into", "unknown")]
    setup = [*calls, merged(c["twice"], c["t1"]), merged(c["gone"], c["t1"])]
    send(producer, calls)  # recorded first: the merges travel on other partitions
    wait_recorded(database, prefix, len(calls), recorder)
    send(producer, setup[len(calls) :])
    wait_recorded(database, prefix, len(setup), recorder)
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    bad = {
        "self": merged(c["self"], c["self"]),
        "twice": merged(c["twice"], c["t2"]),
        "into": merged(c["into"], c["gone"]),
        "unknown": merged(c["unknown"], f"{prefix}nobody"),
        "bad": {**merged(c["bad"], c["t1"]), "payload": {}},  # the wire contract refuses it
    }
    sentinels = [call(c[name]) for name in bad]
    send(producer, [*bad.values(), *sentinels])
    wait_recorded(database, prefix, len(setup) + len(sentinels), recorder)

    letters = deadletters(broker.bootstrap, before, prefix, expected=len(bad))
    by_customer = {key.decode(): (value, headers) for key, value, headers in letters if key}
    assert len(letters) == len(bad) and set(by_customer) == {c[name] for name in bad}
    expected = {
        "self": ("merge_into_self",
                 f"payload.into_customer_id: customer {c['self']} cannot be merged into itself"),
        "twice": ("already_merged",
                  f"customer_id: customer {c['twice']} was already merged into {c['t1']}"),
        "into": ("merge_into_merged",
                 f"payload.into_customer_id: customer {c['gone']} was itself merged away; merge "
                 f"{c['into']} into {c['t1']} instead"),
        "unknown": ("unknown_customer",
                    f"payload.into_customer_id: no customer {prefix}nobody to merge "
                    f"{c['unknown']} into"),
        "bad": ("schema_violation", "payload.into_customer_id: is required"),
    }  # fmt: skip
    for name, message in bad.items():
        value, headers = by_customer[c[name]]
        assert value == orjson.dumps(message), "the original bytes are kept"
        code, reason = expected[name]
        assert (headers["crm.error.code"].decode(), headers["crm.error.message"].decode()) == (
            code, reason
        )  # fmt: skip
        assert headers["crm.source.topic"] == topics.TOUCHPOINTS.encode()
    assert not set(ids(list(bad.values()))) & set(recorded_ids(database, prefix))
    assert merge_rows(database, prefix) == {(c["twice"], c["t1"]), (c["gone"], c["t1"])}


def test_a_chain_is_accepted_and_a_merge_into_its_middle_is_refused(
    broker: EmbeddedBroker, producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    c1, c2, c3, c4 = (f"{prefix}{n}" for n in range(1, 5))
    setup = [call(c) for c in (c1, c2, c3, c4)]
    send(producer, setup)
    wait_recorded(database, prefix, 4, recorder)
    first, second = merged(c1, c2), merged(c2, c3)
    send(producer, [first])  # a batch each
    wait_recorded(database, prefix, 5, recorder)
    send(producer, [second])
    wait_recorded(database, prefix, 6, recorder)
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    refused, sentinel = merged(c4, c1), call(c4)
    send(producer, [refused, sentinel])
    wait_recorded(database, prefix, 7, recorder)

    [(_, value, headers)] = deadletters(broker.bootstrap, before, prefix, expected=1)
    assert (value, headers["crm.error.code"]) == (orjson.dumps(refused), b"merge_into_merged")
    assert headers["crm.error.message"].decode().endswith(f"merge {c4} into {c3} instead")
    assert merge_rows(database, prefix) == {(c1, c2), (c2, c3)}
    assert positions_agree(database, prefix)
    assert stream_ids(database, c4) == ids([setup[3], sentinel])


def test_a_resent_merge_is_a_duplicate_not_a_dead_letter(
    broker: EmbeddedBroker, producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    setup, merge = [call(a), call(b)], merged(a, b)
    send(producer, setup)
    wait_recorded(database, prefix, 2, recorder)
    send(producer, [merge])
    wait_recorded(database, prefix, 3, recorder)
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    sentinel = call(a)
    send(producer, [merge, merge, sentinel])
    wait_recorded(database, prefix, 4, recorder)

    assert deadletters(broker.bootstrap, before, prefix, expected=0) == []
    assert stream_ids(database, a) == ids([setup[0], merge, sentinel])
    assert merge_rows(database, prefix) == {(a, b)}


def test_events_on_a_merged_away_stream_are_recorded_as_usual(
    producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    events = [call(a), call(b), merged(a, b), call(a), call(a)]
    send(producer, events[:2])
    wait_recorded(database, prefix, 2, recorder)
    send(producer, events[2:])
    wait_recorded(database, prefix, len(events), recorder)

    assert stream_ids(database, a) == ids([events[0], *events[2:]])


def test_a_merge_waits_for_its_targets_first_event_on_a_partition_read_less_far(
    broker: EmbeddedBroker, producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    topic = f"intake-{prefix}"  # a topic of its own: only this test's records on it
    ensure_topics(broker.bootstrap, TOPIC_PARTITIONS, names=[topic])
    source = f"{prefix}a"
    target = next(t for n in range(100) if partition(producer, t := f"{prefix}b{n}", topic)
                  != partition(producer, source, topic))  # fmt: skip
    lagging = TopicPartition(topic, partition(producer, target, topic))
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=f"hold-{prefix}",
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             fetch_max_wait_ms=50)  # fmt: skip
    recorder = in_process(store, producer, consumer, merge_wait=MERGE_WAIT)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(TOPIC_PARTITIONS)])
        consumer.pause(lagging)  # read less far: not at all, for now
        before = end_offsets(broker.bootstrap, topics.DEADLETTER)
        first, registered = call(source), event("customer.registered", target, name="Bea")
        merge, after = merged(source, target), call(source)
        send(producer, [first, registered], topic)
        send(producer, [merge, after], topic)
        deadline = time.monotonic() + MERGE_WAIT / 2
        while time.monotonic() < deadline:
            recorder.turn()
        held = recorded_ids(store.dsn, prefix), merge_rows(store.dsn, prefix)
        consumer.resume(lagging)
        wait_until(lambda: recorder.turn() or len(recorded_ids(store.dsn, prefix)) == 4,
                   timeout=30, what="4 recorded")  # fmt: skip
    finally:
        consumer.close(autocommit=False)

    assert held == (ids([first]), set()), "the merge and what follows it on its partition wait"
    assert merge_rows(store.dsn, prefix) == {(source, target)}
    assert stream_ids(store.dsn, source) == ids([first, merge, after])
    assert deadletters(broker.bootstrap, before, prefix, expected=0) == []


# --- one exact batch, in process --------------------------------------------------------------


def test_merges_within_one_batch_build_on_each_other(
    broker: EmbeddedBroker, producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    a, b, c, d = (f"{prefix}{n}" for n in "abcd")
    messages = [call(a), call(b), call(c), merged(a, b), merged(b, a), merged(b, c),
                merged(c, d), call(d), merged(d, a), merged(d, c), merged(a, c)]  # fmt: skip
    refused = {4: b"merge_into_merged", 6: b"unknown_customer", 8: b"merge_into_merged",
               10: b"already_merged"}  # fmt: skip
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)

    in_process(store, producer).process(batch(messages, first_offset=100))

    letters = deadletters(broker.bootstrap, before, prefix, expected=len(refused))
    letters.sort(key=lambda letter: int(letter[2]["crm.source.offset"]))
    assert [(int(h["crm.source.offset"]) - 100, h["crm.error.code"]) for _, _, h in letters] == (
        list(refused.items())
    )
    valid = [m for i, m in enumerate(messages) if i not in refused]
    assert sorted(recorded_ids(store.dsn, prefix)) == sorted(ids(valid))
    assert merge_rows(store.dsn, prefix) == {(a, b), (b, c), (d, c)}
    assert positions_agree(store.dsn, prefix)


def test_a_batch_without_merge_events_reads_no_merge(
    producer: KafkaProducer, store: EventStore, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = in_process(store, producer)

    def forbidden(*_: object) -> MergeState:
        raise AssertionError("a batch without merge events must not read the merges")

    monkeypatch.setattr(store, "merge_state", forbidden)
    recorder.process(batch([call(f"{prefix}a"), call(f"{prefix}b")]))

    assert len(recorded_ids(store.dsn, prefix)) == 2


def test_a_merge_recorded_after_the_check_makes_the_recorder_check_again(
    broker: EmbeddedBroker,
    producer: KafkaProducer,
    store: EventStore,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    recorder = in_process(store, producer)
    setup = [call(a), call(b)]
    recorder.process(batch(setup))
    stale = store.merge_state([], {a, b})  # read before a is merged into b
    first = merged(a, b)
    recorder.process(batch([first], first_offset=2))
    reads: list[MergeState] = [stale]
    fresh_state = store.merge_state
    monkeypatch.setattr(store, "merge_state", lambda *a: reads.pop() if reads else fresh_state(*a))
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    # Against the stale state b -> a looks fine (the concurrent merge a -> b both would pass),
    # but a is merged now: the write conflicts, nothing is recorded; checked again, it is refused.
    back, sentinel = merged(b, a), call(b)

    with caplog.at_level(logging.WARNING, logger="crm.recorder"):
        recorder.process(batch([back, sentinel], first_offset=3))

    assert "event=customer_merge_conflict attempt=1" in caplog.text
    [(_, value, headers)] = deadletters(broker.bootstrap, before, prefix, expected=1)
    assert (value, headers["crm.error.code"]) == (orjson.dumps(back), b"merge_into_merged")
    assert stream_ids(store.dsn, b) == ids([setup[1], sentinel])
    assert merge_rows(store.dsn, prefix) == {(a, b)}


def test_two_writers_merging_two_customers_into_each_other_at_once_cannot_both_succeed(
    producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    in_process(store, producer).process(batch([call(a), call(b)]))
    there, back = decode(orjson.dumps(merged(a, b))), decode(orjson.dumps(merged(b, a)))
    both_unmerged = frozenset({a, b})
    writes = {
        there.event_id: MergeWrites(
            CUSTOMER_MERGED, [MergeRow(a, b, there.event_id)], both_unmerged
        ),
        back.event_id: MergeWrites(CUSTOMER_MERGED, [MergeRow(b, a, back.event_id)], both_unmerged),
    }  # both checked against the same state: no merge yet
    outcomes: dict[str, str] = {}
    other = EventStore(store.dsn)

    def write(writer: EventStore, envelope_: Any) -> None:
        try:
            writer.record([envelope_], merges=writes[envelope_.event_id])
            outcomes[envelope_.event_id] = "recorded"
        except MergeConflict:
            outcomes[envelope_.event_id] = "conflict"

    with psycopg.connect(store.dsn) as holder:  # holds the writers at the event table's lock
        holder.execute("LOCK TABLE crm_events IN EXCLUSIVE MODE")
        threads = [threading.Thread(target=write, args=(s, e))
                   for s, e in ((store, there), (other, back))]  # fmt: skip
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert outcomes == {}, "both writers wait for the lock"
    for thread in threads:
        thread.join(timeout=30)
    other.close()

    assert sorted(outcomes.values()) == ["conflict", "recorded"]
    assert len(merge_rows(store.dsn, prefix)) == 1


def test_the_store_refuses_merge_rows_that_count_an_event_recorded_meanwhile(
    producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    first, only = merged(a, b), call(c)
    in_process(store, producer).process(batch([call(b), only, first]))
    envelope_ = decode(orjson.dumps(first))
    stale = MergeWrites(CUSTOMER_MERGED, [MergeRow(a, b, envelope_.event_id)], frozenset({a, b}))

    with pytest.raises(MergeConflict, match="1 already recorded"):
        store.record([envelope_], merges=stale)
    later = decode(orjson.dumps(merged(c, a)))
    behind = MergeWrites(CUSTOMER_MERGED, [MergeRow(c, a, later.event_id)], frozenset({c, a}))
    with pytest.raises(MergeConflict, match=f"merged {a} -> {b} meanwhile"):
        store.record([later], merges=behind)

    assert stream_ids(store.dsn, c) == ids([only])
    assert merge_rows(store.dsn, prefix) == {(a, b)}


def test_merges_stored_before_the_merge_table_are_backfilled(
    producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    old = [merged(a, b), merged(b, a), merged(b, c), merged(a, c)]
    store.record([decode(orjson.dumps(m)) for m in old])  # recorded before the rule existed

    assert store.create_customer_merges(CUSTOMER_MERGED, backfill_merges) == 2
    assert store.create_customer_merges(CUSTOMER_MERGED, backfill_merges) is None
    assert merge_rows(store.dsn, prefix) == {(a, b), (b, c)}, "the refused ones merged nothing"
    assert positions_agree(store.dsn, prefix)
    assert query(store.dsn, f"SELECT to_regclass('{COMPLAINT_CASES_TABLE}')") == [(None,)]


def test_a_kill_9_at_any_moment_loses_no_event_and_records_no_merge_twice(
    broker: EmbeddedBroker, producer: KafkaProducer, fresh_database: str, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    pairs = [(f"{prefix}{n}", f"{prefix}{n}-into") for n in range(800)]
    first = [call(into) for _, into in pairs]  # recorded before the merges into them are sent
    sent: list[Message] = []
    refused: list[Message] = []
    for customer, into in pairs:  # the second merge of each customer is refused
        sequence = [call(customer), merged(customer, into), merged(customer, into),
                    call(customer)]  # fmt: skip
        refused.append(sequence[2])
        sent.extend(sequence)
    refused_ids = set(ids(refused))
    valid = [m for m in [*first, *sent] if m["event_id"] not in refused_ids]
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    send(producer, first)
    env = pipeline_env(broker.bootstrap, fresh_database, CRM_RECORDER_BATCH_SIZE="100")
    recorder = Service("services.recorder", env, tmp_path / "recorder.log").start()
    try:
        wait_recorded(fresh_database, prefix, len(first), recorder)
        send(producer, sent)
        wait_until(lambda: len(recorded_ids(fresh_database, prefix)) >= 1_500, timeout=120,
                   what="1,500", log=recorder.log)  # fmt: skip
        recorder.kill9()
        assert len(recorded_ids(fresh_database, prefix)) < len(valid), "killed mid-stream"
        recorder.start()
        wait_recorded(fresh_database, prefix, len(valid), recorder)
    finally:
        recorder.stop()

    assert sorted(recorded_ids(fresh_database, prefix)) == sorted(ids(valid))
    letters = deadletters(broker.bootstrap, before, prefix, expected=len(refused))
    assert {orjson.loads(v)["event_id"] for _, v, _ in letters} == refused_ids
    assert {h["crm.error.code"] for _, _, h in letters} == {b"already_merged"}
    assert merge_rows(fresh_database, prefix) == set(pairs)


# --- HTTP ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def merged_pair(client: TestClient, recorder: Service, database: str) -> tuple[str, str, str, str]:
    """(prefix, a, b, c): customers with an event each, a merged into b (recorded)."""
    prefix = f"h{uuid.uuid4().hex[:8]}-"
    a, b, c = f"{prefix}a", f"{prefix}b", f"{prefix}c"
    assert client.post("/events", json=[call(a), call(b), call(c)]).status_code == 202
    wait_recorded(database, prefix, 3, recorder)
    assert client.post("/events", json=merged(a, b)).status_code == 202
    wait_recorded(database, prefix, 4, recorder)
    return prefix, a, b, c


@pytest.mark.parametrize(
    ("name", "code", "reason"),
    [
        ("self", "merge_into_self", "customer {c} cannot be merged into itself"),
        ("twice", "already_merged", "customer {a} was already merged into {b}"),
        ("into_merged", "merge_into_merged",
         "customer {a} was itself merged away; merge {c} into {b} instead"),
        ("unknown", "unknown_customer", "no customer {p}nobody to merge {c} into"),
    ],
)  # fmt: skip
def test_an_impossible_merge_is_a_409_naming_index_code_and_reason_and_nothing_is_accepted(
    broker: EmbeddedBroker,
    client: TestClient,
    merged_pair: tuple[str, str, str, str],
    name: str,
    code: str,
    reason: str,
) -> None:
    p, a, b, c = merged_pair
    merge = {"self": merged(c, c), "twice": merged(a, c), "into_merged": merged(c, a),
             "unknown": merged(c, f"{p}nobody")}[name]  # fmt: skip
    unchanged = nothing_produced(broker.bootstrap)

    response = client.post("/events", json=[call(c), merge])

    assert response.status_code == 409
    message = reason.format(p=p, a=a, b=b, c=c)
    body = response.json()
    assert body["detail"] == (
        f"1 of 2 events are impossible merges; nothing was accepted (event 1: {code}: {message})"
    )
    [error] = body["errors"]
    assert (error["index"], error["code"], error["message"]) == (1, code, message)
    assert (error["customer_id"], error["into_customer_id"]) == (
        merge["customer_id"], merge["payload"]["into_customer_id"]
    )  # fmt: skip
    unchanged()


def test_merges_within_one_request_are_checked_in_order(
    broker: EmbeddedBroker, client: TestClient, merged_pair: tuple[str, str, str, str]
) -> None:
    p, _, b, c = merged_pair
    unchanged = nothing_produced(broker.bootstrap)
    events = [merged(c, b), call(f"{p}new"), merged(f"{p}x", f"{p}new"), merged(b, c)]

    response = client.post("/events", json=events)

    assert response.status_code == 409
    errors = response.json()["errors"]
    # {p}new's call may be recorded after the merge into it (another partition): not known yet
    assert [(e["index"], e["code"]) for e in errors] == [
        (2, "unknown_customer"),
        (3, "merge_into_merged"),
    ]
    unchanged()


def test_an_invalid_merge_payload_is_a_422(
    client: TestClient, merged_pair: tuple[str, str, str, str]
) -> None:
    _, a, b, _ = merged_pair

    response = client.post("/events", json={**merged(b, a), "payload": {"into": a}})

    assert response.status_code == 422
    assert response.json()["errors"][0]["code"] == "schema_violation"


def test_a_valid_merge_is_accepted_and_recorded_and_resending_it_is_safe(
    client: TestClient, recorder: Service, database: str, prefix: str
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    events = [call(a), call(b), merged(a, b)]
    assert client.post("/events", json=events[:2]).status_code == 202
    wait_recorded(database, prefix, 2, recorder)

    response = client.post("/events", json=events[2:])

    assert response.status_code == 202
    wait_recorded(database, prefix, 3, recorder)
    assert client.post("/events", json=events).status_code == 202, "a resend is no second merge"
    assert stream_ids(database, a) == ids([events[0], events[2]])
    assert merge_rows(database, prefix) == {(a, b)}


def test_the_merge_409_is_documented_in_openapi(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/events"]["post"]["responses"]

    assert "customer.merged" in responses["409"]["description"]
    assert "RefusedMerges" in orjson.dumps(responses["409"]).decode()
