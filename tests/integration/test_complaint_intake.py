"""Impossible complaint transitions are rejected at intake: dead-lettered by the recorder (code
invalid_transition), refused with 409 by POST /events. Real broker, real PostgreSQL; the
recorder runs as a real process, and in-process where a test needs one exact batch."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from kafka import KafkaProducer

from events import topics
from events.codec import decode
from infra.broker import EmbeddedBroker
from infra.case_ledger import CaseConflict, CaseWrite, CaseWrites, ComplaintState
from infra.eventstore import EventStore
from projections.complaints import COMPLAINT_TYPES
from services.intake_guards import backfill_cases
from services.recorder import Recorder
from tests.integration.helpers import (
    Service,
    end_offsets,
    pipeline_env,
    query,
    recorded_ids,
    wait_until,
)
from tests.integration.intake import (
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


def filed(customer: str, complaint_id: str = "K-1") -> Message:
    return event("complaint.filed", customer, complaint_id=complaint_id, category="delivery",
                  severity="high", description="Arrived broken.")  # fmt: skip


def assigned(customer: str, complaint_id: str = "K-1", assignee: str = "grace") -> Message:
    return event("complaint.assigned", customer, complaint_id=complaint_id, assignee=assignee)


def resolved(customer: str, complaint_id: str = "K-1") -> Message:
    return event("complaint.resolved", customer, complaint_id=complaint_id,
                  resolution="Replaced it.", satisfied=True)  # fmt: skip


def reopened(customer: str, complaint_id: str = "K-1") -> Message:
    return event("complaint.reopened", customer, complaint_id=complaint_id, reason="Broken again.")


# --- broker and database ------------------------------------------------------------------------


def case_row(dsn: str, customer: str, complaint_id: str = "K-1") -> tuple[int, dict[str, Any]]:
    [(revision, state)] = query(dsn, "SELECT revision, state FROM crm_complaint_cases "
                                "WHERE customer_id = %s AND complaint_id = %s",
                                (customer, complaint_id))  # fmt: skip
    return int(revision), state  # type: ignore[call-overload, return-value]


@pytest.fixture
def prefix() -> str:
    return f"k{uuid.uuid4().hex[:8]}-"


# --- the recorder process -----------------------------------------------------------------------


def test_each_impossible_transition_is_dead_lettered_with_its_reason_and_not_recorded(
    broker: EmbeddedBroker, producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    c = {name: f"{prefix}{name}" for name in ("unknown", "twice", "assign", "reopen", "refile")}
    setup = [filed(c["twice"]), resolved(c["twice"]), filed(c["assign"]), resolved(c["assign"]),
             filed(c["reopen"]), filed(c["refile"])]  # fmt: skip
    send(producer, setup)
    wait_recorded(database, prefix, len(setup), recorder)
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    bad = {"unknown": resolved(c["unknown"]), "twice": resolved(c["twice"]),
           "assign": assigned(c["assign"]), "reopen": reopened(c["reopen"]),
           "refile": filed(c["refile"])}  # fmt: skip
    sentinels = [call(customer) for customer in c.values()]
    send(producer, [*bad.values(), *sentinels])
    wait_recorded(database, prefix, len(setup) + len(sentinels), recorder)

    letters = deadletters(broker.bootstrap, before, prefix, expected=len(bad))
    by_customer = {key.decode(): (value, headers) for key, value, headers in letters if key}
    assert len(letters) == len(bad) and set(by_customer) == set(c.values())
    reasons = {
        "unknown": "complaint.resolved needs a filed complaint; K-1 is unknown for customer",
        "twice": "complaint.resolved needs an open complaint; K-1 was resolved at",
        "assign": "complaint.assigned needs an open complaint; K-1 was resolved at",
        "reopen": "complaint.reopened needs a resolved complaint; K-1 is open (episode 1",
        "refile": "complaint.filed needs a new complaint_id; K-1 was filed at",
    }
    for name, message in bad.items():
        value, headers = by_customer[c[name]]
        assert value == orjson.dumps(message), "the original bytes are kept"
        assert headers["crm.error.code"] == b"invalid_transition"
        assert (
            headers["crm.error.message"]
            .decode()
            .startswith(f"payload.complaint_id: {reasons[name]}")
        )
        assert headers["crm.source.topic"] == topics.TOUCHPOINTS.encode()
        assert int(headers["crm.source.offset"]) >= 0
        assert 0 <= int(headers["crm.source.partition"]) < 6
    assert not set(ids(list(bad.values()))) & set(recorded_ids(database, prefix))


def test_the_whole_lifecycle_is_recorded_and_the_case_follows_it(
    producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    customer = f"{prefix}life"
    path = [filed(customer), assigned(customer), resolved(customer), reopened(customer),
            resolved(customer)]  # fmt: skip
    for count, message in enumerate(path, 1):  # one batch each
        send(producer, [message])
        wait_recorded(database, prefix, count, recorder)

    assert stream_ids(database, customer) == ids(path)
    revision, state = case_row(database, customer)
    assert revision == 5
    assert (state["status"], state["episode"], state["assignee"]) == ("resolved", 2, "grace")


def test_a_resent_valid_resolution_is_a_duplicate_not_a_dead_letter(
    broker: EmbeddedBroker, producer: KafkaProducer, recorder: Service, database: str, prefix: str
) -> None:
    customer = f"{prefix}resend"
    first, resolution = filed(customer), resolved(customer)
    send(producer, [first, resolution])
    wait_recorded(database, prefix, 2, recorder)
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    sentinel = call(customer)
    send(producer, [resolution, first, resolution, sentinel])
    wait_recorded(database, prefix, 3, recorder)

    assert deadletters(broker.bootstrap, before, prefix, expected=0) == []
    assert stream_ids(database, customer) == ids([first, resolution, sentinel])
    assert case_row(database, customer)[0] == 2


# --- one exact batch, in process --------------------------------------------------------------


def test_transitions_within_one_batch_build_on_each_other(
    broker: EmbeddedBroker, producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    a, b = f"{prefix}a", f"{prefix}b"
    messages = [filed(a), call(b), resolved(a), resolved(a), reopened(a), assigned(a), assigned(a),
                resolved(a), filed(b), filed(b), resolved(b, "K-2"), resolved(b)]  # fmt: skip
    refused = [messages[i] for i in (3, 6, 9, 10)]
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)

    in_process(store, producer).process(batch(messages, first_offset=100))

    valid = [m for m in messages if m not in refused]
    assert stream_ids(store.dsn, a) == ids([m for m in valid if m["customer_id"] == a])
    assert stream_ids(store.dsn, b) == ids([m for m in valid if m["customer_id"] == b])
    letters = deadletters(broker.bootstrap, before, prefix, expected=len(refused))
    letters.sort(key=lambda letter: int(letter[2]["crm.source.offset"]))
    assert [value for _, value, _ in letters] == [orjson.dumps(m) for m in refused]
    assert [h["crm.source.offset"] for _, _, h in letters] == [b"103", b"106", b"109", b"110"]
    assert b"already assigned to grace" in letters[1][2]["crm.error.message"]
    assert case_row(store.dsn, a)[1]["status"] == "resolved"
    assert case_row(store.dsn, a)[0] == 5


def test_a_case_that_moved_on_after_the_check_makes_the_recorder_check_again(
    broker: EmbeddedBroker,
    producer: KafkaProducer,
    store: EventStore,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    customer = f"{prefix}race"
    recorder = in_process(store, producer)
    first = filed(customer)
    stale = store.complaint_state([], [(customer, "K-1")])  # read before the filing
    recorder.process(batch([first]))
    reads: list[ComplaintState] = [stale]
    fresh_state = store.complaint_state
    monkeypatch.setattr(
        store, "complaint_state", lambda *a: reads.pop() if reads else fresh_state(*a)
    )
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    # Against the stale state (no case yet) both events look fine, but the case row exists: the
    # write conflicts and nothing is recorded; checked again, the second filing is refused.
    again, resolution = filed(customer), resolved(customer)

    with caplog.at_level(logging.WARNING, logger="crm.recorder"):
        recorder.process(batch([again, resolution], first_offset=1))

    assert "event=complaint_case_conflict attempt=1" in caplog.text
    assert stream_ids(store.dsn, customer) == ids([first, resolution])
    [(_, value, headers)] = deadletters(broker.bootstrap, before, prefix, expected=1)
    assert (value, headers["crm.error.code"]) == (orjson.dumps(again), b"invalid_transition")
    assert case_row(store.dsn, customer)[0] == 2


def test_the_store_refuses_case_writes_that_count_an_event_recorded_meanwhile(
    producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    customer = f"{prefix}twice"
    first = filed(customer)
    in_process(store, producer).process(batch([first]))
    stale = CaseWrite(customer, "K-1", 0, {"status": "open"}, (str(first["event_id"]),))

    with pytest.raises(CaseConflict, match="1 already recorded"):
        store.record([decode(orjson.dumps(first))], cases=CaseWrites(COMPLAINT_TYPES, [stale]))
    later = decode(orjson.dumps(resolved(customer)))
    behind = CaseWrite(customer, "K-1", 0, {"status": "resolved"}, (later.event_id,))
    with pytest.raises(CaseConflict, match="wrote 0"):  # the case is at revision 1, not 0
        store.record([later], cases=CaseWrites(COMPLAINT_TYPES, [behind]))

    assert stream_ids(store.dsn, customer) == ids([first])
    assert case_row(store.dsn, customer)[0] == 1


def test_complaints_stored_before_the_case_table_are_backfilled(
    producer: KafkaProducer, store: EventStore, prefix: str
) -> None:
    customer = f"{prefix}old"
    old = [filed(customer), resolved(customer), resolved(customer), filed(customer, "K-2")]
    store.record([decode(orjson.dumps(m)) for m in old])  # recorded before the rule existed

    assert store.create_complaint_cases(COMPLAINT_TYPES, backfill_cases) == 2
    assert store.create_complaint_cases(COMPLAINT_TYPES, backfill_cases) is None
    revision, state = case_row(store.dsn, customer)
    assert (revision, state["status"]) == (2, "resolved"), "the second resolution changed nothing"
    reopening, assigning = reopened(customer), assigned(customer, "K-2")
    Recorder(None, producer, store, max_event_bytes=65536, batch_size=10).process(  # type: ignore[arg-type]
        batch([reopening, assigning])
    )
    assert stream_ids(store.dsn, customer) == [*ids(old), *ids([reopening, assigning])]


def test_a_kill_9_at_any_moment_loses_no_event_and_records_none_twice(
    broker: EmbeddedBroker, producer: KafkaProducer, fresh_database: str, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    customers = [f"{prefix}{n}" for n in range(1_500)]
    sent: list[Message] = []
    refused: list[Message] = []
    for customer in customers:  # the second resolution of each customer is refused
        sequence = [filed(customer), resolved(customer), resolved(customer), reopened(customer),
                    resolved(customer), call(customer)]  # fmt: skip
        refused.append(sequence[2])
        sent.extend(sequence)
    refused_ids = set(ids(refused))
    valid = [m for m in sent if m["event_id"] not in refused_ids]
    before = end_offsets(broker.bootstrap, topics.DEADLETTER)
    send(producer, sent)
    env = pipeline_env(broker.bootstrap, fresh_database, CRM_RECORDER_BATCH_SIZE="100")
    recorder = Service("services.recorder", env, tmp_path / "recorder.log").start()
    try:
        wait_until(lambda: len(recorded_ids(fresh_database, prefix)) >= 1_000, timeout=120,
                   what="1,000", log=recorder.log)  # fmt: skip
        recorder.kill9()
        assert len(recorded_ids(fresh_database, prefix)) < len(valid), "killed mid-stream"
        recorder.start()
        wait_recorded(fresh_database, prefix, len(valid), recorder)
    finally:
        recorder.stop()

    assert sorted(recorded_ids(fresh_database, prefix)) == sorted(ids(valid))
    letters = deadletters(broker.bootstrap, before, prefix, expected=len(refused))
    assert {orjson.loads(v)["event_id"] for _, v, _ in letters} == refused_ids
    rows = query(fresh_database, "SELECT revision, state->>'status', (state->>'episode')::int "
                 "FROM crm_complaint_cases WHERE customer_id LIKE %s", (prefix + "%",))  # fmt: skip
    assert len(rows) == len(customers) and set(rows) == {(4, "resolved", 2)}


# --- HTTP ---------------------------------------------------------------------------------------


def test_an_impossible_transition_is_a_409_saying_what_is_wrong_and_nothing_is_accepted(
    broker: EmbeddedBroker, client: TestClient, prefix: str
) -> None:
    customer = f"{prefix}http"
    unchanged = nothing_produced(broker.bootstrap)

    response = client.post("/events", json=[call(customer), resolved(customer, "K-404")])

    assert response.status_code == 409
    body = response.json()
    assert body["detail"] == (
        "1 of 2 events are impossible complaint transitions; nothing was accepted (event 1: "
        f"complaint.resolved needs a filed complaint; K-404 is unknown for customer {customer} "
        "(complaint.filed must come first))"
    )
    [error] = body["errors"]
    assert error | {"message": ""} == {
        "index": 1, "code": "invalid_transition", "field": "payload.complaint_id", "message": "",
        "complaint_id": "K-404", "status": "unknown",
    }  # fmt: skip
    unchanged()


def test_transitions_within_one_request_are_checked_in_order(
    broker: EmbeddedBroker, client: TestClient, prefix: str
) -> None:
    customer = f"{prefix}http"
    unchanged = nothing_produced(broker.bootstrap)
    events = [filed(customer), resolved(customer), call(customer), resolved(customer),
              assigned(customer)]  # fmt: skip

    response = client.post("/events", json=events)

    assert response.status_code == 409
    errors = response.json()["errors"]
    assert [(e["index"], e["status"]) for e in errors] == [(3, "resolved"), (4, "resolved")]
    assert errors[0]["message"].startswith("complaint.resolved needs an open complaint; K-1 was")
    unchanged()


def test_the_409_checks_against_the_cases_recorded_so_far(
    client: TestClient, recorder: Service, database: str, prefix: str
) -> None:
    customer = f"{prefix}http"
    assert client.post("/events", json=filed(customer)).status_code == 202
    wait_recorded(database, prefix, 1, recorder)

    refiled = client.post("/events", json=filed(customer))
    assert refiled.status_code == 409
    assert refiled.json()["errors"][0]["status"] == "open"
    reopening = client.post("/events", json=[call(customer), reopened(customer)])
    assert reopening.status_code == 409
    assert "needs a resolved complaint; K-1 is open" in reopening.json()["detail"]
    assert client.post("/events", json=resolved(customer)).status_code == 202
    wait_recorded(database, prefix, 2, recorder)
    assigning = client.post("/events", json=assigned(customer))
    assert assigning.status_code == 409
    assert assigning.json()["errors"][0]["status"] == "resolved"


def test_a_valid_sequence_is_accepted_and_recorded_and_resending_it_is_safe(
    client: TestClient, recorder: Service, database: str, prefix: str
) -> None:
    customer = f"{prefix}http"
    events = [filed(customer), assigned(customer), resolved(customer), reopened(customer),
              resolved(customer)]  # fmt: skip

    response = client.post("/events", json=events)

    assert response.status_code == 202
    assert response.json() == {"accepted": 5, "event_ids": ids(events)}
    wait_recorded(database, prefix, 5, recorder)
    assert client.post("/events", json=events).status_code == 202, "a resend is no transition"
    assert stream_ids(database, customer) == ids(events)


def test_the_409_is_documented_in_openapi(client: TestClient) -> None:
    responses = client.get("/openapi.json").json()["paths"]["/events"]["post"]["responses"]

    assert set(responses) >= {"202", "409", "422", "503"}
    assert "complaint" in responses["409"]["description"]
