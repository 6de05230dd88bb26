"""Impossible complaint transitions at intake, without I/O: the check of a sequence of events
(`check_transitions`), the recorder's guard of a batch and its backfill, and the HTTP 409 rule."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from api.ingest import ImpossibleTransitions, Record, refuse_impossible_transitions
from events.codec import encode
from events.envelope import Envelope, validate_envelope
from infra.case_ledger import ComplaintState, StoredCase
from projections.complaint_cases import case_state
from projections.complaints import case_from_json, case_key, check_transitions, transition
from services.intake_guards import backfill_cases, guard_complaints
from services.recorder import deadletter_headers
from tests.unit.examples import envelope

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def event(type_: str, customer: str = "C-1", at: datetime = T0, **payload: Any) -> Envelope:
    wire = envelope(type_, payload, event_id=str(uuid.uuid4()), customer_id=customer,
                    occurred_at=at.isoformat())  # fmt: skip
    return validate_envelope(wire)


def filed(complaint_id: str = "K-1", customer: str = "C-1") -> Envelope:
    return event("complaint.filed", customer, T0, complaint_id=complaint_id, category="delivery",
                 severity="high", description="Arrived broken.")  # fmt: skip


def assigned(complaint_id: str = "K-1", assignee: str = "grace", customer: str = "C-1") -> Envelope:
    return event("complaint.assigned", customer, T0 + HOUR, complaint_id=complaint_id,
                 assignee=assignee)  # fmt: skip


def resolved(complaint_id: str = "K-1", customer: str = "C-1") -> Envelope:
    return event("complaint.resolved", customer, T0 + 2 * HOUR, complaint_id=complaint_id,
                 resolution="Replaced it.")  # fmt: skip


def reopened(complaint_id: str = "K-1", customer: str = "C-1") -> Envelope:
    return event("complaint.reopened", customer, T0 + 3 * HOUR, complaint_id=complaint_id,
                 reason="Broken again.")  # fmt: skip


def call(customer: str = "C-1") -> Envelope:
    return event("call.logged", customer, T0, direction="inbound", duration_seconds=5)


def source(e: Envelope, offset: int) -> ConsumerRecord:
    return ConsumerRecord("crm.touchpoints", 2, None, offset, 0, 0, e.customer_id.encode(),
                          encode(e), [], None, 0, 0, 0)  # fmt: skip


def recorded(*events: Envelope, revision: int | None = None) -> ComplaintState:
    """The state of the store after `events` were recorded (one case)."""
    case = None
    for e in events:
        case = transition(case, e)
    assert case is not None
    stored = StoredCase(len(events) if revision is None else revision, case_state(case))
    return ComplaintState({e.event_id for e in events}, {case_key(events[0]): stored})


NOTHING = ComplaintState(set(), {})


# --- check_transitions ------------------------------------------------------------------------


def test_events_in_one_sequence_build_on_each_other() -> None:
    events = [filed(), assigned(), resolved(), reopened(), resolved()]

    checked = check_transitions({}, events)

    assert checked.refused == []
    assert checked.applied == {("C-1", "K-1"): tuple(e.event_id for e in events)}
    case = checked.cases[("C-1", "K-1")]
    assert (case.status, case.episode, case.assignee) == ("resolved", 2, "grace")


def test_a_refused_event_changes_nothing_for_the_events_after_it() -> None:
    events = [resolved(), filed(), resolved(), resolved(), assigned()]

    checked = check_transitions({}, events)

    assert [(r.index, r.case is None) for r in checked.refused] == [
        (0, True),
        (3, False),
        (4, False),
    ]
    assert checked.applied[("C-1", "K-1")] == (events[1].event_id, events[2].event_id)
    assert "needs a filed complaint" in checked.refused[0].error.message
    assert checked.refused[1].case is not None and checked.refused[1].case.status == "resolved"


def test_the_check_starts_from_the_recorded_cases_and_scopes_ids_by_customer() -> None:
    before = transition(None, filed())
    events = [resolved(), filed(customer="C-2"), filed(), call()]

    checked = check_transitions({("C-1", "K-1"): before}, events)

    assert [r.index for r in checked.refused] == [2]
    assert "was filed at" in checked.refused[0].error.message
    assert set(checked.cases) == {("C-1", "K-1"), ("C-2", "K-1")}
    assert checked.cases[("C-1", "K-1")].status == "resolved"


def test_other_event_types_are_skipped() -> None:
    checked = check_transitions({}, [call(), call("C-2")])

    assert (checked.cases, checked.applied, checked.refused) == ({}, {}, [])


# --- the recorder's guard ---------------------------------------------------------------------


def test_the_guard_dead_letters_an_impossible_transition_with_its_reason() -> None:
    events = [call(), resolved("K-9")]
    sources = [source(e, 10 + i) for i, e in enumerate(events)]

    guard = guard_complaints(events, sources, NOTHING)

    [rejection] = guard.refused
    assert rejection.record is sources[1]
    assert (rejection.error.code, rejection.error.field) == (
        "invalid_transition",
        "payload.complaint_id",
    )
    assert "K-9 is unknown for customer C-1" in rejection.error.message
    assert guard.refused_ids == {events[1].event_id}
    assert guard.cases.writes == []
    headers = dict(deadletter_headers(rejection))
    assert headers["crm.error.code"] == b"invalid_transition"
    assert headers["crm.error.message"].startswith(
        b"payload.complaint_id: complaint.resolved needs"
    )
    assert (headers["crm.source.partition"], headers["crm.source.offset"]) == (b"2", b"11")


def test_the_guard_writes_each_changed_case_over_the_revision_it_read() -> None:
    first = filed()
    state = recorded(first, revision=1)
    events = [assigned(), resolved(), filed("K-2")]

    guard = guard_complaints(events, [source(e, i) for i, e in enumerate(events)], state)

    assert guard.refused == []
    by_key = {(w.customer_id, w.complaint_id): w for w in guard.cases.writes}
    assert (by_key["C-1", "K-1"].revision, by_key["C-1", "K-1"].event_ids) == (
        1, (events[0].event_id, events[1].event_id),
    )  # fmt: skip
    assert (by_key["C-1", "K-2"].revision, by_key["C-1", "K-2"].event_ids) == (
        0, (events[2].event_id,),
    )  # fmt: skip
    assert by_key["C-1", "K-1"].state["status"] == "resolved"
    assert by_key["C-1", "K-1"].state["history"] == [], "the write side keeps no history"
    assert "complaint.resolved" in guard.cases.types


def test_a_resent_recorded_event_is_a_duplicate_not_a_transition() -> None:
    first, resolution = filed(), resolved()
    state = recorded(first, resolution)

    guard = guard_complaints([resolution], [source(resolution, 0)], state)

    assert (guard.refused, guard.cases.writes) == ([], [])


def test_an_event_id_repeated_in_a_batch_counts_once() -> None:
    first = filed()
    events = [first, first, resolved(), resolved()]

    guard = guard_complaints(events, [source(e, i) for i, e in enumerate(events)], NOTHING)

    [write] = guard.cases.writes
    assert write.event_ids == (first.event_id, events[2].event_id)
    assert [r.record.offset for r in guard.refused] == [3]


def test_a_case_stored_by_the_recorder_reads_back_into_the_same_rules() -> None:
    case = transition(transition(None, filed()), assigned())

    again = case_from_json(case_state(case))

    assert again.history == ()
    with pytest.raises(ValueError, match="already assigned to grace"):
        transition(again, assigned())


# --- backfill -----------------------------------------------------------------------------------


def test_the_backfill_folds_each_customers_stored_events_and_skips_impossible_ones() -> None:
    c1 = [filed(), resolved(), resolved(), reopened()]
    c2 = [resolved("K-5", "C-2"), filed("K-5", "C-2")]

    writes = {(w.customer_id, w.complaint_id): w for w in backfill_cases(iter(c1 + c2))}

    assert set(writes) == {("C-1", "K-1"), ("C-2", "K-5")}
    assert writes["C-1", "K-1"].event_ids == (c1[0].event_id, c1[1].event_id, c1[3].event_id)
    assert writes["C-1", "K-1"].state["status"] == "open"
    assert writes["C-1", "K-1"].state["episode"] == 2
    assert writes["C-2", "K-5"].event_ids == (c2[1].event_id,)
    assert all(w.revision == 0 for w in writes.values())


# --- HTTP: 409 ----------------------------------------------------------------------------------


def records(*events: Envelope) -> list[Record]:
    return [Record(e.event_id, e.customer_id.encode(), encode(e), e) for e in events]


def test_a_request_with_an_impossible_transition_is_refused_naming_event_case_and_state() -> None:
    state = recorded(filed(), resolved())

    with pytest.raises(ImpossibleTransitions) as caught:
        refuse_impossible_transitions(records(call(), assigned()), state)

    [error] = caught.value.errors
    assert error | {"message": ""} == {
        "index": 1, "code": "invalid_transition", "field": "payload.complaint_id",
        "message": "", "complaint_id": "K-1", "status": "resolved",
    }  # fmt: skip
    assert error["message"].startswith("complaint.assigned needs an open complaint; K-1 was")
    assert caught.value.detail.startswith(
        "1 of 2 events are impossible complaint transitions; nothing was accepted (event 1: "
        "complaint.assigned needs an open complaint"
    )


def test_transitions_within_one_request_are_checked_in_order() -> None:
    events = [filed(), resolved(), resolved(), reopened(), reopened(), filed()]

    with pytest.raises(ImpossibleTransitions) as caught:
        refuse_impossible_transitions(records(*events), NOTHING)

    assert [(e["index"], e["status"]) for e in caught.value.errors] == [
        (2, "resolved"), (4, "open"), (5, "open"),
    ]  # fmt: skip


def test_a_valid_request_and_a_resend_of_recorded_events_pass() -> None:
    first, resolution = filed(), resolved()
    state = recorded(first, resolution)

    refuse_impossible_transitions(records(first, resolution, reopened(), resolved()), state)
    refuse_impossible_transitions(records(filed("K-2"), assigned("K-2")), NOTHING)


def test_an_event_id_repeated_in_a_request_is_checked_once() -> None:
    first = filed()

    refuse_impossible_transitions(records(first, first, resolved()), NOTHING)
