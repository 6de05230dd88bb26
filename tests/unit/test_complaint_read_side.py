"""The pure parts of the complaint and follow-up read side: the sparse folds (only their own
event types, versions skipping the customer's other events), the rows kept per case and per
follow-up, the spike check's filings, the satisfaction rule on what the 360 reads, the 360's
public document, and the reports built from database rows. Figures are worked out by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from events.envelope import validate_envelope
from projections.alerts import COMPLAINT_KINDS, KINDS
from projections.complaint_cases import COMPLAINT_CASES, case_rows
from projections.complaint_signals import (
    ProductComplaint,
    new_filings,
    satisfaction,
    satisfaction_of,
)
from projections.complaints import (
    COMPLAINT_TYPES,
    ComplaintCase,
    CustomerComplaints,
    apply,
    apply_own,
    complaints_view,
    from_json,
    late_episodes,
    to_json,
    transition,
)
from projections.customer_360 import CUSTOMER_360, public_document
from projections.customer_360 import apply as apply_360
from projections.customer_360 import to_json as to_json_360
from projections.followups import FOLLOWUP_ITEMS, FOLLOWUPS, item_rows
from projections.followups import apply as apply_followups
from projections.followups import apply_own as apply_own_followups
from projections.recorded import RecordedEvent
from projections.reports import ComplaintGroup, report_from_rows
from tests.unit.examples import CUSTOMER_ID, envelope

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def recorded(version: int, type_: str, at: datetime, **payload: Any) -> RecordedEvent:
    data = envelope(type_, payload or None, event_id=str(uuid.uuid4()), occurred_at=at.isoformat())
    return RecordedEvent(version * 10, version, validate_envelope(data).upcast())


def filing(
    version: int, complaint_id: str, at: datetime, sku: str | None = "KB-01"
) -> RecordedEvent:
    payload = {"complaint_id": complaint_id, "category": "delivery", "severity": "high",
               "description": "Broken."}  # fmt: skip
    if sku is not None:
        payload["product_sku"] = sku
    return recorded(version, "complaint.filed", at, **payload)


def resolution(
    version: int, complaint_id: str, at: datetime, satisfied: bool | None = None
) -> RecordedEvent:
    payload: dict[str, Any] = {"complaint_id": complaint_id, "resolution": "Replaced."}
    if satisfied is not None:
        payload["satisfied"] = satisfied
    return recorded(version, "complaint.resolved", at, **payload)


def call(version: int, at: datetime) -> RecordedEvent:
    return recorded(version, "call.logged", at)


# A customer's stream: complaint events among others (versions 1..7).
STREAM = [
    call(1, T0),
    filing(2, "K-1", T0 + HOUR),
    call(3, T0 + 2 * HOUR),
    filing(4, "K-2", T0 + 3 * HOUR, sku=None),
    call(5, T0 + 4 * HOUR),
    resolution(6, "K-1", T0 + 5 * HOUR, satisfied=True),
    call(7, T0 + 6 * HOUR),
]


# --- sparse folds ---------------------------------------------------------------------------


def test_the_complaint_view_folds_only_complaint_events_and_equals_the_full_fold() -> None:
    full = None
    for e in STREAM:
        full = apply(full, e)
    own = None
    for e in STREAM:
        if e.envelope.type in COMPLAINT_TYPES:
            own = apply_own(own, e)
    assert own is not None and full is not None
    assert own.cases == full.cases
    assert (own.version, own.position) == (6, 60), "the last complaint event's"
    view = complaints_view()
    assert (view.types, view.tables, view.table) == (COMPLAINT_TYPES, (COMPLAINT_CASES,),
                                                     "rm_complaints")  # fmt: skip
    assert apply_own(own, STREAM[5]) is own, "a redelivery changes nothing"


def test_the_follow_up_view_folds_only_follow_up_events_and_equals_the_full_fold() -> None:
    due = "2026-03-05T09:00:00Z"
    stream = [
        call(1, T0),
        recorded(2, "followup.scheduled", T0, followup_id="F-1", due_at=due, reason="Call"),
        call(3, T0 + HOUR),
        recorded(4, "followup.completed", T0 + 2 * HOUR, followup_id="F-1"),
    ]
    full = own = None
    for e in stream:
        full = apply_followups(full, e)
        if e.envelope.type in (FOLLOWUPS.types or ()):
            own = apply_own_followups(own, e)
    assert own is not None and full is not None
    assert own.items == full.items
    assert own.version == 4
    assert FOLLOWUPS.tables == (FOLLOWUP_ITEMS,)
    assert FOLLOWUP_ITEMS.table == "rm_followup_items"


def test_a_view_with_tables_returns_the_customers_it_wrote() -> None:
    assert complaints_view().upsert_sql().endswith("RETURNING customer_id")
    assert "RETURNING" not in CUSTOMER_360.upsert_sql()


# --- rows per case and per follow-up -----------------------------------------------------------


def fold(events: list[RecordedEvent]) -> CustomerComplaints:
    state = None
    for e in events:
        state = apply(state, e)
    assert state is not None
    return state


def fold_on(state: CustomerComplaints, events: list[RecordedEvent]) -> CustomerComplaints:
    for e in events:
        state = apply(state, e)
    return state


def test_case_rows_are_those_of_the_cases_the_batch_changed() -> None:
    before = fold(STREAM[:5])  # K-1 and K-2 open
    after = fold_on(before, STREAM[5:])  # K-1 resolved
    [row] = case_rows(before, after)
    assert len(row) == 15
    customer_id, complaint_id, status, *_, satisfied, late, doc = row
    assert (customer_id, complaint_id, status) == (CUSTOMER_ID, "K-1", "resolved")
    assert (satisfied, late) == (True, 0)
    assert orjson.loads(doc)["resolution"] == "Replaced."
    assert [r[1] for r in case_rows(None, after)] == ["K-1", "K-2"], "a new customer: every case"
    assert case_rows(after, fold_on(after, [call(8, T0 + 7 * HOUR)])) == []


def test_case_rows_after_a_json_round_trip_hold_only_what_changed() -> None:
    before = from_json(orjson.loads(orjson.dumps(to_json(fold(STREAM[:5])))))
    assert [r[1] for r in case_rows(before, fold_on(before, STREAM[5:]))] == ["K-1"]


def test_late_episodes_count_the_resolutions_after_their_deadline() -> None:
    filed = filing(1, "K-1", T0).envelope  # high: 24 h
    late = resolution(2, "K-1", T0 + 25 * HOUR).envelope
    again = recorded(3, "complaint.reopened", T0 + 26 * HOUR, complaint_id="K-1",
                     reason="Again").envelope  # fmt: skip
    in_time = resolution(4, "K-1", T0 + 27 * HOUR).envelope
    case: ComplaintCase | None = None
    for e in (filed, late, again, in_time):
        case = transition(case, e)
    assert case is not None and late_episodes(case) == 1
    on_time = transition(transition(None, filed), resolution(2, "K-1", T0 + 24 * HOUR).envelope)
    assert late_episodes(on_time) == 0, "resolved exactly at its deadline: not breached"


def test_item_rows_are_those_of_the_follow_ups_the_batch_changed() -> None:
    due = "2026-03-05T09:00:00Z"
    one = recorded(1, "followup.scheduled", T0, followup_id="F-1", due_at=due, reason="Call")
    two = recorded(2, "followup.scheduled", T0, followup_id="F-2", due_at=due, reason="Call",
                   assignee="ana")  # fmt: skip
    first = apply_followups(None, one)
    second = apply_followups(first, two)
    [row] = item_rows(first, second)
    assert row[:3] == (CUSTOMER_ID, "F-2", "ana")
    assert row[3] == datetime(2026, 3, 5, 9, tzinfo=UTC)
    assert row[5] is None, "not completed"
    held = apply_followups(second, recorded(3, "followup.completed", T0, followup_id="F-9"))
    assert item_rows(second, held) == [], "a held completion has no row yet"


# --- the spike check's filings, the satisfaction rule --------------------------------------------


def test_new_filings_are_the_complaints_about_a_product_a_batch_filed() -> None:
    before = fold(STREAM[:2])  # K-1 about KB-01
    after = fold(STREAM)  # K-2 (no product) filed, K-1 resolved
    assert new_filings([(before, after)]) == {}
    assert new_filings([(None, after)]) == {
        "KB-01": [ProductComplaint(T0 + HOUR, CUSTOMER_ID, "K-1")]
    }


@pytest.mark.parametrize(
    ("open_breached", "verdict", "expected"),
    [
        ([], None, "neutral"),
        ([], True, "happy"),
        ([], False, "unhappy"),
        ([False], True, "neutral"),
        ([False], None, "neutral"),
        ([True], True, "unhappy"),
        ([False, True], None, "unhappy"),
    ],
)
def test_the_satisfaction_rule_on_what_the_360_reads(
    open_breached: list[bool], verdict: bool | None, expected: str
) -> None:
    assert satisfaction_of(open_breached, verdict) == expected


def test_the_rule_on_cases_and_on_what_the_360_reads_agree() -> None:
    state = fold(STREAM)  # K-1 resolved satisfied, K-2 open (high: due T0 + 27 h)
    cases = list(state.cases.values())
    assert satisfaction(cases, T0 + 26 * HOUR) == satisfaction_of([False], True) == "neutral"
    assert satisfaction(cases, T0 + 27 * HOUR) == satisfaction_of([True], True) == "unhappy"


def test_the_public_360_shows_the_open_complaints_and_satisfaction_after_the_counts() -> None:
    view = None
    for e in STREAM:
        view = apply_360(view, e)
    assert view is not None
    doc = to_json_360(view)
    open_k2 = {"complaint_id": "K-2", "category": "delivery", "severity": "high",
               "due_at": "2026-03-03T12:00:00Z", "breached": False}  # fmt: skip
    public = public_document(doc, [open_k2], True)
    assert list(public) == ["customer_id", "version", "position", "profile", "touchpoints",
                            "purchases", "complaints", "open_complaints", "satisfaction",
                            "recent"]  # fmt: skip
    assert (public["open_complaints"], public["satisfaction"]) == ([open_k2], "neutral")
    assert public_document(doc)["satisfaction"] == "neutral"
    assert public_document(doc, [], True)["satisfaction"] == "happy"


# --- reports from database rows, alert kinds --------------------------------------------------


def test_a_report_from_rows_sorts_its_groups_like_the_pure_report() -> None:
    rows = [
        ("b", 2, 1, 1, 1, timedelta(hours=3)),
        (None, 1, 0, 1, 0, None),
        ("a", 4, 4, 0, 1, timedelta(minutes=90)),
    ]
    report = report_from_rows("complaints", rows, start=T0, end=T0 + HOUR, group_by="product_sku")
    assert [g.key for g in report.groups] == ["a", "b", None]
    assert report.to_json()["groups"][0] == {
        "key": "a", "filed": 4, "resolved": 4, "open": 0, "breached": 1, "breach_rate": "0.2500",
        "median_hours_to_resolve": "1.50",
    }  # fmt: skip
    assert isinstance(report.groups[0], ComplaintGroup)
    with pytest.raises(ValueError, match="from must be before to"):
        report_from_rows("touchpoints", [], start=T0, end=T0, group_by="type")


def test_the_complaint_kinds_are_known_kinds() -> None:
    assert COMPLAINT_KINDS <= KINDS
    assert sorted(KINDS)[0] == "complaint.sla.breached"
