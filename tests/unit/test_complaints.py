"""Complaint cases: every lifecycle path and each rejected transition, the SLA on its boundaries,
the breach alert once per episode, the read-model fold and its JSON; then the product spike rule
(a quiet and a noisy product) and the satisfaction indicator. Figures are worked out by hand."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events.envelope import Envelope, validate_envelope
from projections.alerts import COMPLAINT_SLA_BREACHED, PRODUCT_COMPLAINTS_SPIKE, alert_id
from projections.complaint_signals import (
    ProductComplaint,
    SpikePolicy,
    product_complaints,
    product_spike,
    read_spike,
    satisfaction,
    spike_episodes,
)
from projections.complaints import (
    ComplaintCase,
    CustomerComplaints,
    InvalidTransition,
    SlaPolicy,
    apply,
    breach_alerts,
    breached,
    case_from_json,
    case_report,
    case_to_json,
    complaints_view,
    ended_between,
    episodes,
    ever_breached,
    from_json,
    open_complaints,
    sla_breached,
    to_json,
    transition,
)
from projections.recorded import RecordedEvent, VersionGap, rfc3339
from tests.unit.examples import CUSTOMER_ID, envelope

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
SLA = SlaPolicy()


def wire(type_: str, at: datetime, payload: dict[str, Any]) -> dict[str, Any]:
    return envelope(type_, payload, event_id=str(uuid.uuid4()), occurred_at=at.isoformat())


def event(type_: str, at: datetime, **payload: Any) -> Envelope:
    return validate_envelope(wire(type_, at, payload))


def filed(
    complaint_id: str = "K-1",
    at: datetime = T0,
    severity: str = "high",
    sku: str | None = "KB-01",
    category: str = "delivery",
) -> Envelope:
    payload = {"complaint_id": complaint_id, "category": category, "severity": severity,
               "description": "The keyboard arrived broken."}  # fmt: skip
    if sku is not None:
        payload["product_sku"] = sku
    return event("complaint.filed", at, **payload)


def assigned(complaint_id: str, assignee: str, at: datetime) -> Envelope:
    return event("complaint.assigned", at, complaint_id=complaint_id, assignee=assignee)


def resolved(complaint_id: str, at: datetime, satisfied: bool | None = None) -> Envelope:
    payload: dict[str, Any] = {"complaint_id": complaint_id, "resolution": "Replaced it."}
    if satisfied is not None:
        payload["satisfied"] = satisfied
    return event("complaint.resolved", at, **payload)


def reopened(complaint_id: str, at: datetime) -> Envelope:
    return event("complaint.reopened", at, complaint_id=complaint_id, reason="Broken again.")


def case_of(*events: Envelope, policy: SlaPolicy = SLA) -> ComplaintCase:
    case = None
    for e in events:
        case = transition(case, e, policy)
    assert case is not None
    return case


def rejection(*events: Envelope) -> InvalidTransition:
    *before, last = events
    case = case_of(*before) if before else None
    with pytest.raises(InvalidTransition) as caught:
        transition(case, last)
    assert caught.value.code == "invalid_transition"
    return caught.value


def actions(case: ComplaintCase) -> list[str]:
    return [step.action for step in case.history]


# --- lifecycle ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "allowed"),
    [("high", timedelta(hours=24)), ("medium", timedelta(hours=72)), ("low", timedelta(days=7))],
)
def test_a_filed_complaint_is_open_and_due_by_the_time_its_severity_allows(
    severity: str, allowed: timedelta
) -> None:
    case = case_of(filed(severity=severity))

    assert (case.status, case.episode, case.assignee) == ("open", 1, None)
    assert (case.filed_at, case.opened_at, case.due_at) == (T0, T0, T0 + allowed)
    assert actions(case) == ["filed"]
    assert case.history[0].details == {"severity": severity, "due_at": rfc3339(T0 + allowed)}


def test_the_sla_comes_from_the_policy_passed_in() -> None:
    policy = SlaPolicy(high=4 * HOUR, medium=8 * HOUR, low=2 * DAY)

    assert case_of(filed(severity="high"), policy=policy).due_at == T0 + 4 * HOUR
    assert case_of(filed(severity="low"), policy=policy).due_at == T0 + 2 * DAY


def test_filed_assigned_resolved_records_each_step_with_its_time() -> None:
    case = case_of(
        filed(),
        assigned("K-1", "maria", T0 + HOUR),
        resolved("K-1", T0 + 5 * HOUR, satisfied=True),
    )

    assert (case.status, case.assignee, case.resolved_at) == ("resolved", "maria", T0 + 5 * HOUR)
    assert (case.resolution, case.satisfied) == ("Replaced it.", True)
    assert actions(case) == ["filed", "assigned", "resolved"]
    assert [step.at for step in case.history] == [T0, T0 + HOUR, T0 + 5 * HOUR]
    assert case.history[1].details == {"assignee": "maria", "previous": None}
    assert case.history[2].details == {"resolution": "Replaced it.", "satisfied": True}


def test_a_complaint_can_be_resolved_without_being_assigned() -> None:
    case = case_of(filed(), resolved("K-1", T0 + HOUR))

    assert (case.status, case.assignee, case.satisfied) == ("resolved", None, None)


def test_an_open_complaint_can_be_reassigned_to_someone_else() -> None:
    case = case_of(
        filed(), assigned("K-1", "maria", T0 + HOUR), assigned("K-1", "li", T0 + 2 * HOUR)
    )

    assert case.assignee == "li"
    assert case.history[-1].details == {"assignee": "li", "previous": "maria"}


def test_reopening_starts_a_new_episode_with_the_full_sla_from_the_reopening() -> None:
    reopened_at = T0 + 10 * DAY  # long after the first deadline (T0 + 24 h)
    case = case_of(
        filed(severity="high"),
        assigned("K-1", "maria", T0 + HOUR),
        resolved("K-1", T0 + 2 * HOUR, satisfied=False),
        reopened("K-1", reopened_at),
    )

    assert (case.status, case.episode) == ("open", 2)
    assert (case.opened_at, case.due_at) == (reopened_at, reopened_at + 24 * HOUR)
    assert case.filed_at == T0
    assert case.assignee == "maria"  # whoever resolved it keeps it
    assert actions(case) == ["filed", "assigned", "resolved", "reopened"]
    assert case.history[-1].details == {"reason": "Broken again.", "due_at": "2026-03-13T09:00:00Z"}


def test_a_reopened_complaint_can_be_assigned_and_resolved_again() -> None:
    case = case_of(
        filed(),
        resolved("K-1", T0 + HOUR, satisfied=False),
        reopened("K-1", T0 + 2 * HOUR),
        assigned("K-1", "li", T0 + 3 * HOUR),
        resolved("K-1", T0 + 4 * HOUR, satisfied=True),
    )

    assert (case.status, case.assignee, case.episode) == ("resolved", "li", 2)
    assert (case.resolved_at, case.satisfied) == (T0 + 4 * HOUR, True)
    assert [e.number for e in episodes(case)] == [1, 2]


def test_a_case_is_scoped_by_customer_and_complaint_id() -> None:
    other = validate_envelope(
        wire("complaint.resolved", T0, {"complaint_id": "K-1", "resolution": "x"})
        | {"customer_id": "C-9"}
    )

    with pytest.raises(ValueError, match="not about complaint K-1"):
        transition(case_of(filed()), other)
    with pytest.raises(ValueError, match="not about complaint K-1"):
        transition(case_of(filed()), resolved("K-2", T0))
    with pytest.raises(ValueError, match=r"web\.visited is not a complaint event"):
        transition(None, validate_envelope(envelope("web.visited")))


# --- rejected transitions -----------------------------------------------------------------


def test_filing_an_id_that_exists_is_rejected() -> None:
    error = rejection(filed(), filed(at=T0 + HOUR))

    assert error.message == (
        "complaint.filed needs a new complaint_id; K-1 was filed at 2026-03-02T09:00:00Z "
        "(reopen it with complaint.reopened instead)"
    )
    assert error.as_dict() == {
        "code": "invalid_transition",
        "field": "payload.complaint_id",
        "message": error.message,
    }


def test_filing_the_id_of_a_resolved_complaint_is_rejected_too() -> None:
    assert "needs a new complaint_id" in rejection(filed(), resolved("K-1", T0), filed()).message


@pytest.mark.parametrize(
    "unknown",
    [
        assigned("K-1", "maria", T0),
        resolved("K-1", T0),
        reopened("K-1", T0),
    ],
    ids=["assign", "resolve", "reopen"],
)
def test_acting_on_an_unknown_complaint_is_rejected(unknown: Envelope) -> None:
    error = rejection(unknown)

    assert error.message == (
        f"{unknown.type} needs a filed complaint; K-1 is unknown for customer {CUSTOMER_ID} "
        "(complaint.filed must come first)"
    )
    assert error.complaint_id == "K-1"


def test_resolving_an_already_resolved_complaint_is_rejected() -> None:
    error = rejection(filed(), resolved("K-1", T0 + HOUR), resolved("K-1", T0 + 2 * HOUR))

    assert error.message == (
        "complaint.resolved needs an open complaint; K-1 was resolved at 2026-03-02T10:00:00Z "
        "(reopen it with complaint.reopened first)"
    )


def test_assigning_a_resolved_complaint_is_rejected() -> None:
    error = rejection(filed(), resolved("K-1", T0 + HOUR), assigned("K-1", "maria", T0 + 2 * HOUR))

    assert error.message.startswith("complaint.assigned needs an open complaint; K-1 was resolved")


def test_assigning_a_complaint_to_the_person_who_has_it_is_rejected() -> None:
    error = rejection(filed(), assigned("K-1", "maria", T0), assigned("K-1", "maria", T0 + HOUR))

    assert error.message == (
        "complaint.assigned needs another assignee; K-1 is already assigned to maria"
    )


def test_reopening_an_open_complaint_is_rejected() -> None:
    error = rejection(filed(), reopened("K-1", T0 + HOUR))

    assert error.message == (
        "complaint.reopened needs a resolved complaint; K-1 is open "
        "(episode 1, due 2026-03-03T09:00:00Z)"
    )


def test_reopening_a_reopened_complaint_is_rejected() -> None:
    events = [filed(), resolved("K-1", T0 + HOUR), reopened("K-1", T0 + 2 * HOUR)]

    assert "K-1 is open (episode 2" in rejection(*events, reopened("K-1", T0 + 3 * HOUR)).message


# --- SLA and the breach alert -------------------------------------------------------------


def test_a_case_is_breached_from_exactly_its_deadline_while_open() -> None:
    case = case_of(filed(severity="high"))  # due T0 + 24 h
    deadline = T0 + 24 * HOUR

    assert not breached(case, deadline - US)
    assert breached(case, deadline)
    assert breached(case, deadline + 30 * DAY)


def test_a_resolved_case_is_not_breached_but_remembers_a_late_resolution() -> None:
    deadline = T0 + 24 * HOUR
    on_time = case_of(filed(), resolved("K-1", deadline))  # not open at the deadline
    late = case_of(filed(), resolved("K-1", deadline + US))

    assert not breached(on_time, deadline + DAY) and not breached(late, deadline + DAY)
    assert not ever_breached(on_time, deadline + DAY)
    assert ever_breached(late, deadline + DAY)


def test_the_breach_alert_is_raised_at_the_deadline_with_the_case_details() -> None:
    case = case_of(filed(severity="medium"), assigned("K-1", "maria", T0 + HOUR))
    deadline = T0 + 72 * HOUR

    assert sla_breached(case, deadline - US) is None
    alert = sla_breached(case, deadline)

    assert alert is not None
    assert alert.alert_id == alert_id(COMPLAINT_SLA_BREACHED, CUSTOMER_ID, "K-1|1")
    assert (alert.kind, alert.customer_id, alert.raised_at) == (
        "complaint.sla.breached",
        CUSTOMER_ID,
        deadline,
    )
    assert alert.details == {
        "complaint_id": "K-1",
        "category": "delivery",
        "product_sku": "KB-01",
        "severity": "medium",
        "assignee": "maria",
        "episode": 1,
        "opened_at": "2026-03-02T09:00:00Z",
        "due_at": "2026-03-05T09:00:00Z",
    }


def test_the_breach_alert_is_one_per_episode() -> None:
    first = case_of(filed())
    late_again = case_of(
        filed(), resolved("K-1", T0 + 30 * HOUR), reopened("K-1", T0 + 2 * DAY)
    )  # episode 2 due T0 + 3 days

    asked = [sla_breached(first, T0 + 24 * HOUR + k * HOUR) for k in range(3)]
    second = sla_breached(late_again, T0 + 3 * DAY)

    assert {a.alert_id if a else None for a in asked} == {
        alert_id(COMPLAINT_SLA_BREACHED, CUSTOMER_ID, "K-1|1")
    }
    assert second is not None
    assert second.alert_id == alert_id(COMPLAINT_SLA_BREACHED, CUSTOMER_ID, "K-1|2")
    assert sla_breached(late_again, T0 + 3 * DAY - US) is None


def test_breach_alerts_lists_the_breached_open_cases_earliest_deadline_first() -> None:
    now = T0 + 4 * DAY
    cases = [
        case_of(filed("K-low", severity="low")),  # due T0 + 7 days: not yet
        case_of(filed("K-med", severity="medium")),  # due T0 + 3 days
        case_of(filed("K-high", severity="high", at=T0 + HOUR)),  # due T0 + 25 h
        case_of(filed("K-done"), resolved("K-done", T0 + 2 * DAY)),  # resolved late
    ]

    alerts = breach_alerts(cases, now)

    assert [a.details["complaint_id"] for a in alerts] == ["K-high", "K-med"]
    assert {a.raised_at for a in alerts} == {now}


def test_episodes_come_from_the_history() -> None:
    case = case_of(filed(), resolved("K-1", T0 + HOUR), reopened("K-1", T0 + DAY))

    assert [tuple(e) for e in episodes(case)] == [
        (1, T0, T0 + DAY, T0 + HOUR),
        (2, T0 + DAY, T0 + 2 * DAY, None),
    ]


# --- the read-model fold ------------------------------------------------------------------


def recorded(version: int, envelope_: Envelope) -> RecordedEvent:
    return RecordedEvent(position=100 + version, version=version, envelope=envelope_)


def fold(*events: Envelope, policy: SlaPolicy = SLA) -> CustomerComplaints:
    state = None
    for version, e in enumerate(events, start=1):
        state = apply(state, recorded(version, e), policy)
    assert state is not None
    return state


def test_the_fold_keeps_each_case_by_id_and_counts_every_event() -> None:
    state = fold(
        filed("K-1"),
        validate_envelope(envelope("web.visited")),
        filed("K-2", severity="low"),
        resolved("K-1", T0 + HOUR),
    )

    assert (state.version, state.position) == (4, 104)
    assert sorted(state.cases) == ["K-1", "K-2"]
    assert (state.cases["K-1"].status, state.cases["K-2"].status) == ("resolved", "open")
    assert state.rejected == ()


def test_a_recorded_invalid_transition_is_kept_as_rejected_and_changes_no_case() -> None:
    bad = resolved("K-9", T0)
    state = fold(filed("K-1"), bad)

    assert list(state.cases) == ["K-1"]
    [rejected] = state.rejected
    assert (rejected.event_id, rejected.type, rejected.complaint_id) == (
        bad.event_id,
        "complaint.resolved",
        "K-9",
    )
    assert rejected.message.startswith("complaint.resolved needs a filed complaint; K-9")


def test_the_fold_skips_redelivered_events_and_refuses_gaps() -> None:
    first = recorded(1, filed())
    state = apply(None, first)

    assert apply(state, first) == state
    with pytest.raises(VersionGap):
        apply(state, recorded(3, resolved("K-1", T0)))


def test_the_fold_uses_the_sla_it_is_given() -> None:
    policy = SlaPolicy(high=2 * HOUR)
    view = complaints_view(policy)

    state = view.apply(None, recorded(1, filed()))

    assert state.cases["K-1"].due_at == T0 + 2 * HOUR
    assert view.table == "rm_complaints"


def test_a_resolution_ends_the_breach_episode_of_its_case() -> None:
    before = fold(filed("K-1"), filed("K-2"))
    after = apply(before, recorded(3, resolved("K-1", T0 + 2 * DAY)))
    reopened_state = apply(after, recorded(4, reopened("K-1", T0 + 3 * DAY)))

    assert ended_between(before, after) == [alert_id(COMPLAINT_SLA_BREACHED, CUSTOMER_ID, "K-1|1")]
    assert ended_between(after, reopened_state) == []
    assert ended_between(None, before) == []
    assert complaints_view().ended is ended_between


def test_the_case_document_is_json_with_its_full_history() -> None:
    f = filed()
    a = assigned("K-1", "maria", T0 + HOUR)
    case = case_of(f, a)

    assert case_to_json(case) == {
        "complaint_id": "K-1",
        "customer_id": CUSTOMER_ID,
        "category": "delivery",
        "product_sku": "KB-01",
        "severity": "high",
        "description": "The keyboard arrived broken.",
        "status": "open",
        "assignee": "maria",
        "episode": 1,
        "filed_at": "2026-03-02T09:00:00Z",
        "opened_at": "2026-03-02T09:00:00Z",
        "due_at": "2026-03-03T09:00:00Z",
        "resolved_at": None,
        "resolution": None,
        "satisfied": None,
        "history": [
            {
                "action": "filed",
                "at": "2026-03-02T09:00:00Z",
                "event_id": f.event_id,
                "details": {"severity": "high", "due_at": "2026-03-03T09:00:00Z"},
            },
            {
                "action": "assigned",
                "at": "2026-03-02T10:00:00Z",
                "event_id": a.event_id,
                "details": {"assignee": "maria", "previous": None},
            },
        ],
    }
    assert case_report(case, T0 + DAY)["breached"] is True
    assert case_from_json(orjson.loads(orjson.dumps(case_to_json(case)))) == case


def test_the_read_model_document_round_trips_through_json() -> None:
    state = fold(
        filed("K-1"),
        resolved("K-1", T0 + HOUR, satisfied=True),
        reopened("K-1", T0 + DAY),
        filed("K-2", sku=None, severity="low"),
        resolved("K-9", T0),  # rejected
    )

    doc = orjson.loads(orjson.dumps(to_json(state)))

    assert from_json(doc) == state
    assert doc["rejected"][0]["complaint_id"] == "K-9"
    assert list(doc["cases"]) == ["K-1", "K-2"]


def test_the_360_lists_open_complaints_with_their_deadline_and_breach() -> None:
    cases = [
        case_of(filed("K-1", severity="low")),
        case_of(filed("K-2", severity="high")),
        case_of(filed("K-3"), resolved("K-3", T0)),
    ]

    assert open_complaints(cases, T0 + 2 * DAY) == [
        {"complaint_id": "K-2", "category": "delivery", "severity": "high",
         "due_at": "2026-03-03T09:00:00Z", "breached": True},
        {"complaint_id": "K-1", "category": "delivery", "severity": "low",
         "due_at": "2026-03-09T09:00:00Z", "breached": False},
    ]  # fmt: skip


# --- properties ---------------------------------------------------------------------------

IDS = ["K-1", "K-2", "K-3"]
PEOPLE = ["maria", "li"]


@st.composite
def complaint_events(draw: st.DrawFn) -> list[Envelope]:
    """Any complaint events on a few ids, valid or not, at growing times."""
    at, found = T0, []
    for _ in range(draw(st.integers(1, 30))):
        at += draw(st.integers(0, 50)) * HOUR
        kind = draw(st.sampled_from(["filed", "assigned", "resolved", "reopened"]))
        complaint_id = draw(st.sampled_from(IDS))
        if kind == "filed":
            severity = draw(st.sampled_from(["low", "medium", "high"]))
            found.append(filed(complaint_id, at, severity))
        elif kind == "assigned":
            found.append(assigned(complaint_id, draw(st.sampled_from(PEOPLE)), at))
        elif kind == "resolved":
            found.append(resolved(complaint_id, at, draw(st.sampled_from([None, True, False]))))
        else:
            found.append(reopened(complaint_id, at))
    return found


def allowed_by_a_simple_model(
    model: dict[str, tuple[str, str | None]], e: Envelope
) -> tuple[str, str | None] | None:
    """The (status, assignee) after `e` by the lifecycle table, or None if it is impossible."""
    current = model.get(e.payload["complaint_id"])
    kind = e.type.removeprefix("complaint.")
    if kind == "filed":
        return None if current else ("open", None)
    if current is None:
        return None
    status, assignee = current
    if kind == "assigned":
        ok = status == "open" and e.payload["assignee"] != assignee
        return ("open", e.payload["assignee"]) if ok else None
    if kind == "resolved":
        return ("resolved", assignee) if status == "open" else None
    return ("open", assignee) if status == "resolved" else None


@given(complaint_events())
def test_any_sequence_is_taken_exactly_where_the_lifecycle_allows_and_stays_consistent(
    events: list[Envelope],
) -> None:
    model: dict[str, tuple[str, str | None]] = {}
    cases: dict[str, ComplaintCase] = {}
    for e in events:
        complaint_id = e.payload["complaint_id"]
        expected = allowed_by_a_simple_model(model, e)
        try:
            cases[complaint_id] = transition(cases.get(complaint_id), e)
        except InvalidTransition:
            assert expected is None
        else:
            assert expected is not None
            model[complaint_id] = expected
    for complaint_id, case in cases.items():
        assert (case.status, case.assignee) == model[complaint_id]
        lifecycle = [a for a in actions(case) if a != "assigned"]
        assert lifecycle[0] == "filed" and "filed" not in lifecycle[1:]
        # open and resolved alternate: filed, resolved, reopened, resolved, ...
        assert all(a == ("resolved" if i % 2 else "reopened") for i, a in enumerate(lifecycle) if i)
        assert case.is_open == (lifecycle[-1] != "resolved")
        assert case.episode == 1 + lifecycle.count("reopened") == len(episodes(case))
        assert case.due_at == case.opened_at + SlaPolicy().allowed(case.severity)
        assert (case.resolved_at is None) == ("resolved" not in lifecycle)


@given(complaint_events(), st.data())
def test_folding_in_batches_stored_between_them_equals_folding_at_once(
    events: list[Envelope], data: st.DataObject
) -> None:
    recorded_events = [recorded(v, e) for v, e in enumerate(events, start=1)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    state: CustomerComplaints | None = None
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        for e in recorded_events[start:end]:
            state = apply(state, e)
        state = None if state is None else from_json(orjson.loads(orjson.dumps(to_json(state))))

    at_once = None
    for e in recorded_events:
        at_once = apply(at_once, e)
    assert state == at_once


# --- product spikes -----------------------------------------------------------------------

SPIKE = SpikePolicy(minimum=5, window=24 * HOUR, baseline=28 * DAY, factor=Decimal(3))
BURST_DAY = datetime(2026, 4, 1, tzinfo=UTC)


def complaints_at(*times: datetime, prefix: str = "K") -> list[ProductComplaint]:
    return [ProductComplaint(t, f"C-{i}", f"{prefix}-{i}") for i, t in enumerate(times)]


def burst(count: int, start: datetime = BURST_DAY + 13 * HOUR) -> list[datetime]:
    return [start + k * timedelta(minutes=1) for k in range(count)]


# A noisy product: 3 complaints every day at 12:00-12:20 over the 28 days before the burst day,
# so its usual count per 24 h is 84 / 28 = 3 and a spike needs 3 x 3 = 9 in a day.
NOISY_BASELINE = [
    BURST_DAY - d * DAY + 12 * HOUR + m * timedelta(minutes=10)
    for d in range(1, 29)
    for m in range(3)
]


def test_a_quiet_product_spikes_with_the_minimum_count_in_a_day() -> None:
    complaints = complaints_at(*burst(5))
    now = BURST_DAY + 13 * HOUR + 4 * timedelta(minutes=1)

    alert = product_spike("KB-01", complaints, now, SPIKE)

    assert alert is not None
    assert alert.alert_id == alert_id(
        PRODUCT_COMPLAINTS_SPIKE, "product", "2026-04-01T13:04:00Z|KB-01"
    )
    assert (alert.kind, alert.customer_id, alert.raised_at) == (
        "product.complaints.spike",
        "C-4",
        now,
    )
    assert alert.details == {
        "product_sku": "KB-01",
        "since": "2026-04-01T13:04:00Z",
        "complaints": 5,
        "window_seconds": 86400,
        "usual": "0.00",
        "baseline_days": 28,
        "complaint_ids": ["K-0", "K-1", "K-2", "K-3", "K-4"],
        "customer_ids": ["C-0", "C-1", "C-2", "C-3", "C-4"],
    }


def test_a_quiet_product_below_the_minimum_does_not_spike() -> None:
    assert product_spike("KB-01", complaints_at(*burst(4)), BURST_DAY + 2 * DAY, SPIKE) is None
    assert product_spike("KB-01", complaints_at(*burst(4)), BURST_DAY + 14 * HOUR, SPIKE) is None


def test_a_noisy_product_does_not_spike_on_what_is_a_quiet_products_spike() -> None:
    complaints = complaints_at(*NOISY_BASELINE, *burst(8))
    now = BURST_DAY + 14 * HOUR
    reading = read_spike(sorted(complaints), now, SPIKE)

    assert (reading.count, reading.baseline_count, reading.usual) == (8, 84, Decimal(3))
    assert product_spike("KB-01", complaints, now, SPIKE) is None


def test_a_noisy_product_spikes_at_the_factor_times_its_usual_rate() -> None:
    complaints = complaints_at(*NOISY_BASELINE, *burst(9))
    now = BURST_DAY + 14 * HOUR

    alert = product_spike("KB-01", complaints, now, SPIKE)

    assert alert is not None
    assert alert.details["since"] == "2026-04-01T13:08:00Z"  # the 9th complaint of the day
    assert (alert.details["complaints"], alert.details["usual"]) == (9, "3.00")


def test_the_window_is_the_24_hours_up_to_the_reading() -> None:
    last = BURST_DAY + 13 * HOUR
    four_after = [last - k * HOUR for k in range(4)]

    just_out = complaints_at(last - 24 * HOUR, *four_after)
    just_in = complaints_at(last - 24 * HOUR + US, *four_after)

    assert product_spike("KB-01", just_out, last, SPIKE) is None
    assert product_spike("KB-01", just_in, last, SPIKE) is not None


def test_a_spike_is_one_alert_for_its_episode_however_often_it_is_asked() -> None:
    complaints = complaints_at(*burst(12))
    asked = [  # from 14:00 to 13:00 the next day, within a day of the last complaint (13:11)
        product_spike("KB-01", complaints, BURST_DAY + 13 * HOUR + k * HOUR, SPIKE)
        for k in range(1, 25)
    ]

    assert all(a is not None for a in asked)
    assert len({(a.alert_id, a.customer_id) for a in asked if a is not None}) == 1
    assert {a.details["since"] for a in asked if a is not None} == {"2026-04-01T13:04:00Z"}


def test_a_spike_ends_a_window_after_its_last_spiking_reading_and_a_later_one_is_new() -> None:
    first = burst(6)
    second = burst(6, start=BURST_DAY + 5 * DAY)
    complaints = complaints_at(*first, *second)
    last_spiking = first[-1]

    during = product_spike("KB-01", complaints, last_spiking + 24 * HOUR - US, SPIKE)
    after = product_spike("KB-01", complaints, last_spiking + 24 * HOUR, SPIKE)
    later = product_spike("KB-01", complaints, second[-1], SPIKE)

    assert during is not None and after is None and later is not None
    assert later.alert_id != during.alert_id
    assert len(spike_episodes(complaints, second[-1], SPIKE)) == 2


def test_complaints_after_now_are_not_known_yet() -> None:
    complaints = complaints_at(*burst(5))

    assert product_spike("KB-01", complaints, burst(5)[3], SPIKE) is None


@pytest.mark.parametrize(
    "settings",
    [{"minimum": 0}, {"window": timedelta(0)}, {"baseline": -DAY}],
    ids=["no minimum", "empty window", "negative baseline"],
)
def test_a_spike_rule_without_a_minimum_or_with_empty_windows_is_refused(
    settings: dict[str, Any],
) -> None:
    with pytest.raises(ValueError, match="minimum >= 1 and positive windows"):
        SpikePolicy(**settings)


def test_product_complaints_are_the_filings_by_product() -> None:
    cases = [
        case_of(filed("K-2", at=T0 + HOUR)),
        case_of(filed("K-1")),
        case_of(filed("K-3", sku="MUG-1")),
        case_of(filed("K-4", sku=None)),
    ]

    assert product_complaints(cases) == {
        "KB-01": [ProductComplaint(T0, CUSTOMER_ID, "K-1"),
                  ProductComplaint(T0 + HOUR, CUSTOMER_ID, "K-2")],
        "MUG-1": [ProductComplaint(T0, CUSTOMER_ID, "K-3")],
    }  # fmt: skip


# --- satisfaction -------------------------------------------------------------------------

NOW = T0 + 30 * DAY


def done(complaint_id: str, at: datetime, satisfied: bool | None) -> ComplaintCase:
    return case_of(filed(complaint_id, at), resolved(complaint_id, at + HOUR, satisfied))


def test_a_customer_without_complaints_is_neutral() -> None:
    assert satisfaction([], NOW) == "neutral"


def test_a_satisfied_resolution_and_nothing_open_is_happy() -> None:
    assert satisfaction([done("K-1", T0, True)], NOW) == "happy"


def test_an_unsatisfied_latest_resolution_is_unhappy() -> None:
    assert satisfaction([done("K-1", T0, False)], NOW) == "unhappy"


def test_the_latest_verdict_counts() -> None:
    earlier_unhappy = [done("K-1", T0, False), done("K-2", T0 + DAY, True)]
    later_unhappy = [done("K-1", T0, True), done("K-2", T0 + DAY, False)]

    assert satisfaction(earlier_unhappy, NOW) == "happy"
    assert satisfaction(later_unhappy, NOW) == "unhappy"


def test_resolutions_without_a_verdict_leave_the_customer_neutral() -> None:
    assert satisfaction([done("K-1", T0, None)], NOW) == "neutral"
    assert satisfaction([done("K-1", T0, True), done("K-2", T0 + DAY, None)], NOW) == "happy"


def test_a_complaint_open_within_its_sla_makes_a_happy_customer_neutral() -> None:
    within = case_of(filed("K-2", NOW - HOUR, severity="high"))

    assert satisfaction([done("K-1", T0, True), within], NOW) == "neutral"


def test_a_breached_open_complaint_makes_the_customer_unhappy() -> None:
    late = case_of(filed("K-2", NOW - 24 * HOUR, severity="high"))  # due exactly now

    assert satisfaction([done("K-1", T0, True), late], NOW) == "unhappy"
    assert satisfaction([done("K-1", T0, True), late], NOW - US) == "neutral"


def test_a_reopened_complaint_counts_as_open_and_its_old_verdict_no_longer_counts() -> None:
    again = case_of(
        filed("K-2", T0 + DAY), resolved("K-2", T0 + 2 * DAY, False), reopened("K-2", NOW - HOUR)
    )

    assert satisfaction([done("K-1", T0, True), again], NOW) == "neutral"
