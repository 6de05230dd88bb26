"""Follow-ups: the work-list fold and its statuses on the due-time boundary, the overdue alert once
per due time, the JSON document, and the post-purchase policy with its deterministic ids."""

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
from projections.alerts import FOLLOWUP_OVERDUE, alert_id
from projections.followups import (
    FOLLOWUP_NAMESPACE,
    FOLLOWUPS,
    FollowUp,
    FollowUps,
    PostPurchasePolicy,
    apply,
    ended_between,
    followup_event_id,
    followup_overdue,
    from_json,
    overdue_alerts,
    post_purchase_envelope,
    post_purchase_followup,
    status_at,
    to_json,
    work_item,
    work_list,
)
from projections.recorded import RecordedEvent, VersionGap
from tests.unit.examples import CUSTOMER_ID, envelope

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
DUE = datetime(2026, 5, 6, 15, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
US = timedelta(microseconds=1)
PURCHASE_ID = "9d2b6c1e-4f3a-4e8b-a1c7-5b0e2d3f4a61"


def event(type_: str, at: datetime, payload: dict[str, Any], **fields: Any) -> Envelope:
    data = envelope(type_, payload, event_id=str(uuid.uuid4()), occurred_at=at.isoformat())
    return validate_envelope(data | fields)


def scheduled(
    followup_id: str = "F-1",
    due: datetime = DUE,
    at: datetime = T0,
    assignee: str | None = "ana",
    reason: str = "Check the delivery arrived.",
) -> Envelope:
    payload = {"followup_id": followup_id, "due_at": due.isoformat(), "reason": reason}
    if assignee is not None:
        payload["assignee"] = assignee
    return event("followup.scheduled", at, payload)


def completed(followup_id: str = "F-1", at: datetime = T0 + HOUR, outcome: str = "ok") -> Envelope:
    return event("followup.completed", at, {"followup_id": followup_id, "outcome": outcome})


def fold(*events: Envelope) -> FollowUps:
    state = None
    for version, e in enumerate(events, start=1):
        state = apply(state, RecordedEvent(100 + version, version, e))
    assert state is not None
    return state


def item(*events: Envelope, followup_id: str = "F-1") -> FollowUp:
    return fold(*events).items[followup_id]


# --- the fold and the statuses ----------------------------------------------------------


def test_a_scheduled_follow_up_is_open_up_to_its_due_time_then_overdue() -> None:
    followup = item(scheduled())

    assert (followup.due_at, followup.reason, followup.assignee) == (
        DUE,
        "Check the delivery arrived.",
        "ana",
    )
    assert followup.scheduled_at == T0
    assert status_at(followup, T0) == "open"
    assert status_at(followup, DUE) == "open"  # at the due time it is not late yet
    assert status_at(followup, DUE + US) == "overdue"


def test_a_completed_follow_up_is_done_even_after_its_due_time() -> None:
    followup = item(scheduled(), completed(at=DUE + 5 * HOUR, outcome="Happy customer."))

    assert (followup.completed_at, followup.outcome) == (DUE + 5 * HOUR, "Happy customer.")
    assert status_at(followup, DUE + 30 * HOUR) == "done"
    assert status_at(followup, T0) == "done"


def test_the_first_completion_wins() -> None:
    followup = item(
        scheduled(), completed(at=T0 + HOUR, outcome="a"), completed(at=DUE, outcome="b")
    )

    assert (followup.completed_at, followup.outcome) == (T0 + HOUR, "a")


def test_a_completion_before_its_scheduling_is_held_until_it_arrives() -> None:
    early = fold(completed(at=T0 + HOUR))

    assert early.items == {}
    assert list(early.held) == ["F-1"]

    state = fold(completed(at=T0 + HOUR), scheduled(at=T0 + 2 * HOUR))
    assert state.held == {}
    assert status_at(state.items["F-1"], DUE + HOUR) == "done"
    assert state.items["F-1"].completed_at == T0 + HOUR


def test_scheduling_an_open_follow_up_again_reschedules_it_keeping_its_assignee() -> None:
    later = DUE + 24 * HOUR
    followup = item(scheduled(), scheduled(due=later, at=T0 + HOUR, assignee=None, reason="Later"))

    assert (followup.due_at, followup.reason, followup.assignee) == (later, "Later", "ana")
    assert followup.scheduled_at == T0 + HOUR


def test_scheduling_a_done_follow_up_again_changes_nothing() -> None:
    done = fold(scheduled(), completed())
    again = apply(done, RecordedEvent(103, 3, scheduled(due=DUE + 24 * HOUR)))

    assert again.items == done.items
    assert again.version == 3


def test_other_events_only_move_the_version_and_redelivery_changes_nothing() -> None:
    state = fold(scheduled(), validate_envelope(envelope("web.visited")))

    assert (state.version, state.position, len(state.items)) == (2, 102, 1)
    first = RecordedEvent(101, 1, scheduled())
    assert apply(state, first) == state
    with pytest.raises(VersionGap):
        apply(state, RecordedEvent(104, 4, completed()))


def test_the_work_list_filters_by_assignee_due_time_and_status_earliest_due_first() -> None:
    state = fold(
        scheduled("F-1", due=DUE, assignee="ana"),
        scheduled("F-2", due=DUE - 24 * HOUR, assignee="ben"),
        scheduled("F-3", due=DUE + 24 * HOUR, assignee="ana"),
        scheduled("F-4", due=DUE - 48 * HOUR, assignee="ana"),
        completed("F-4"),
    )
    now = DUE + HOUR  # F-1 and F-2 overdue, F-3 open, F-4 done
    items = state.items.values()

    def ids(found: list[FollowUp]) -> list[str]:
        return [f.followup_id for f in found]

    assert ids(work_list(items, now)) == ["F-4", "F-2", "F-1", "F-3"]
    assert ids(work_list(items, now, assignee="ana")) == ["F-4", "F-1", "F-3"]
    assert ids(work_list(items, now, status="overdue")) == ["F-2", "F-1"]
    assert ids(work_list(items, now, status="open")) == ["F-3"]
    assert ids(work_list(items, now, status="done")) == ["F-4"]
    assert ids(work_list(items, now, due_before=DUE)) == ["F-4", "F-2"]
    assert ids(work_list(items, now, assignee="ana", status="overdue", due_before=DUE + US)) == [
        "F-1"
    ]


def test_a_work_item_shows_its_customer_and_status() -> None:
    followup = item(scheduled())

    assert work_item(followup, DUE + US) == {
        "customer_id": CUSTOMER_ID,
        "followup_id": "F-1",
        "due_at": "2026-05-06T15:00:00Z",
        "reason": "Check the delivery arrived.",
        "assignee": "ana",
        "scheduled_at": "2026-05-04T09:00:00Z",
        "completed_at": None,
        "outcome": None,
        "status": "overdue",
    }


# --- the overdue alert --------------------------------------------------------------------


def test_the_overdue_alert_comes_just_after_the_due_time_once_per_due_time() -> None:
    followup = item(scheduled())

    assert followup_overdue(followup, DUE) is None
    alert = followup_overdue(followup, DUE + US)
    later = followup_overdue(followup, DUE + 48 * HOUR)

    assert alert is not None and later is not None
    assert alert.alert_id == later.alert_id
    assert alert.alert_id == alert_id(FOLLOWUP_OVERDUE, CUSTOMER_ID, "2026-05-06T15:00:00Z|F-1")
    assert (alert.kind, alert.customer_id, alert.raised_at) == (
        "followup.overdue",
        CUSTOMER_ID,
        DUE + US,
    )
    assert alert.details == {
        "followup_id": "F-1",
        "due_at": "2026-05-06T15:00:00Z",
        "reason": "Check the delivery arrived.",
        "assignee": "ana",
    }


def test_a_rescheduled_follow_up_falling_overdue_again_is_a_new_alert() -> None:
    first = item(scheduled())
    moved = item(scheduled(), scheduled(due=DUE + 24 * HOUR, at=DUE + HOUR))

    a = followup_overdue(first, DUE + HOUR)
    b = followup_overdue(moved, DUE + 25 * HOUR)

    assert a is not None and b is not None and a.alert_id != b.alert_id


def test_overdue_alerts_lists_only_the_overdue_ones() -> None:
    state = fold(
        scheduled("F-1", due=DUE),
        scheduled("F-2", due=DUE - HOUR),
        scheduled("F-3", due=DUE + HOUR),
        scheduled("F-4", due=DUE - HOUR),
        completed("F-4"),
    )

    alerts = overdue_alerts(state.items.values(), DUE + US)

    assert [a.details["followup_id"] for a in alerts] == ["F-2", "F-1"]


def test_completing_or_moving_a_follow_up_ends_its_overdue_episode() -> None:
    before = fold(scheduled("F-1"), scheduled("F-2"))
    key = alert_id(FOLLOWUP_OVERDUE, CUSTOMER_ID, "2026-05-06T15:00:00Z|F-1")

    completed_state = apply(before, RecordedEvent(103, 3, completed("F-1")))
    moved = apply(before, RecordedEvent(103, 3, scheduled("F-1", due=DUE + HOUR)))
    renamed = apply(before, RecordedEvent(103, 3, scheduled("F-1", reason="Same time")))

    assert ended_between(before, completed_state) == [key]
    assert ended_between(before, moved) == [key]
    assert ended_between(before, renamed) == []
    assert ended_between(None, before) == []
    assert FOLLOWUPS.ended is ended_between
    assert FOLLOWUPS.table == "rm_followups"


# --- JSON ---------------------------------------------------------------------------------


def test_the_document_holds_items_and_held_completions_and_round_trips() -> None:
    state = fold(
        scheduled("F-1"), completed("F-1"), scheduled("F-2", assignee=None), completed("F-9")
    )

    doc = orjson.loads(orjson.dumps(to_json(state)))

    assert doc == {
        "customer_id": CUSTOMER_ID,
        "version": 4,
        "position": 104,
        "items": {
            "F-1": {
                "followup_id": "F-1",
                "due_at": "2026-05-06T15:00:00Z",
                "reason": "Check the delivery arrived.",
                "assignee": "ana",
                "scheduled_at": "2026-05-04T09:00:00Z",
                "completed_at": "2026-05-04T10:00:00Z",
                "outcome": "ok",
            },
            "F-2": {
                "followup_id": "F-2",
                "due_at": "2026-05-06T15:00:00Z",
                "reason": "Check the delivery arrived.",
                "assignee": None,
                "scheduled_at": "2026-05-04T09:00:00Z",
                "completed_at": None,
                "outcome": None,
            },
        },
        "held": {"F-9": {"completed_at": "2026-05-04T10:00:00Z", "outcome": "ok"}},
    }
    assert from_json(doc) == state


# --- post-purchase follow-ups ---------------------------------------------------------------

POLICY = PostPurchasePolicy(
    thresholds={"EUR": Decimal("500"), "USD": Decimal("600")},
    delay=timedelta(days=3),
    assignee="sales-desk",
)


def purchase(total: str, currency: str = "EUR", event_id: str = PURCHASE_ID) -> Envelope:
    payload = {
        "order_id": "O-77",
        "items": [{"sku": "LAP-1", "quantity": 1, "unit_price": total}],
        "total": total,
        "currency": currency,
    }
    return event("purchase.made", T0, payload, event_id=event_id)


def test_a_purchase_above_the_threshold_schedules_a_call_n_days_later() -> None:
    assert post_purchase_followup(purchase("500.01"), POLICY) == {
        "followup_id": f"post-purchase-{PURCHASE_ID}",
        "due_at": "2026-05-07T09:00:00Z",  # T0 + 3 days
        "reason": "Post-purchase call about order O-77 (500.01 EUR)",
        "assignee": "sales-desk",
    }


@pytest.mark.parametrize(
    ("total", "currency"),
    [("500", "EUR"), ("499.99", "EUR"), ("550", "USD"), ("100000", "JPY")],
    ids=["at the threshold", "below", "below its currency's threshold", "no threshold"],
)
def test_a_purchase_not_above_its_currencys_threshold_schedules_nothing(
    total: str, currency: str
) -> None:
    assert post_purchase_followup(purchase(total, currency), POLICY) is None


def test_only_purchases_schedule_follow_ups() -> None:
    assert post_purchase_followup(validate_envelope(envelope("web.visited")), POLICY) is None


def test_a_follow_up_already_due_at_now_is_not_scheduled() -> None:
    due = T0 + timedelta(days=3)

    assert post_purchase_followup(purchase("900"), POLICY, now=due - US) is not None
    assert post_purchase_followup(purchase("900"), POLICY, now=due) is None


def test_the_default_policy_needs_no_assignee() -> None:
    payload = post_purchase_followup(purchase("900"), PostPurchasePolicy())

    assert payload is not None and "assignee" not in payload
    assert payload["due_at"] == "2026-05-11T09:00:00Z"  # 7 days


def test_every_delivery_of_a_purchase_yields_the_same_followup_event() -> None:
    deliveries = [purchase("900"), purchase("900"), purchase("900", event_id=PURCHASE_ID.upper())]

    built = [post_purchase_envelope(p, POLICY) for p in deliveries]

    assert built[0] is not None
    assert all(b == built[0] for b in built)
    expected_id = str(uuid.uuid5(FOLLOWUP_NAMESPACE, f"followup.scheduled|{PURCHASE_ID}"))
    assert built[0]["event_id"] == followup_event_id(PURCHASE_ID) == expected_id
    assert str(FOLLOWUP_NAMESPACE) == "6b0d7f0e-3c1a-4a5e-9b7d-2f4c8e1a9d53"


def test_another_purchase_yields_another_follow_up() -> None:
    other = "0c4e7a9b-2d1f-4b3c-8e5a-6f7d9c1b2a30"

    first = post_purchase_envelope(purchase("900"), POLICY)
    second = post_purchase_envelope(purchase("900", event_id=other), POLICY)

    assert first is not None and second is not None
    assert first["event_id"] != second["event_id"]
    assert first["payload"]["followup_id"] != second["payload"]["followup_id"]


def test_the_followup_envelope_passes_the_wire_contract_and_folds_into_one_item() -> None:
    wire = post_purchase_envelope(purchase("900"), POLICY)
    assert wire is not None

    scheduled_event = validate_envelope(orjson.loads(orjson.dumps(wire)))

    assert (scheduled_event.type, scheduled_event.source) == ("followup.scheduled", "crm")
    assert scheduled_event.correlation_id == PURCHASE_ID
    assert scheduled_event.occurred_at == T0
    # recorded twice anyway (it cannot be: same event id), it is still one follow-up
    state = fold(scheduled_event, scheduled_event)
    assert list(state.items) == [f"post-purchase-{PURCHASE_ID}"]
    assert state.items[f"post-purchase-{PURCHASE_ID}"].due_at == T0 + timedelta(days=3)


# --- properties ---------------------------------------------------------------------------


@st.composite
def followup_events(draw: st.DrawFn) -> list[Envelope]:
    found = []
    for _ in range(draw(st.integers(1, 20))):
        followup_id = draw(st.sampled_from(["F-1", "F-2", "F-3"]))
        at = T0 + draw(st.integers(0, 100)) * HOUR
        if draw(st.booleans()):
            due = T0 + draw(st.integers(0, 100)) * HOUR
            assignee = draw(st.sampled_from([None, "ana", "ben"]))
            found.append(scheduled(followup_id, due=due, at=at, assignee=assignee))
        else:
            found.append(completed(followup_id, at=at))
    return found


@given(followup_events(), st.data())
def test_folding_in_batches_stored_between_them_equals_folding_at_once(
    events: list[Envelope], data: st.DataObject
) -> None:
    recorded = [RecordedEvent(100 + v, v, e) for v, e in enumerate(events, start=1)]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=4)))
    state: FollowUps | None = None
    for start, end in zip([0, *cuts], [*cuts, len(events)], strict=True):
        for e in recorded[start:end]:
            state = apply(state, e)
        state = None if state is None else from_json(orjson.loads(orjson.dumps(to_json(state))))

    assert state == fold(*events)


@given(followup_events(), st.integers(0, 120))
def test_an_item_is_done_exactly_when_a_completion_of_its_id_was_recorded(
    events: list[Envelope], hours: int
) -> None:
    state = fold(*events)
    now = T0 + hours * HOUR
    completed_ids = {e.payload["followup_id"] for e in events if e.type == "followup.completed"}

    for followup_id, followup in state.items.items():
        assert (status_at(followup, now) == "done") == (followup_id in completed_ids)
        if status_at(followup, now) != "done":
            assert (status_at(followup, now) == "overdue") == (now > followup.due_at)
    assert set(state.held) == completed_ids - set(state.items)
