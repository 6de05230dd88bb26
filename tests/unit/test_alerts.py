"""The alert contract (stable ids, JSON) and the two alerts of the balance view: credit limit
exceeded, raised once per episode, and invoice overdue, keyed by the invoice."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from hypothesis import given

from projections.alerts import (
    ALERT_NAMESPACE,
    CREDIT_LIMIT_EXCEEDED,
    INVOICE_OVERDUE,
    Alert,
    alert_id,
)
from projections.balance import (
    Balance,
    alerts_between,
    credit_limit_exceeded,
    fold,
    invoice_overdue,
    overdue_alerts,
)
from projections.recorded import RecordedEvent
from tests.unit.examples import CUSTOMER_ID
from tests.unit.test_balance import (
    Step,
    balance_of,
    expected_totals,
    history,
    invoice,
    money_histories,
    payment,
    stored,
    terms,
)

RAISED_AT = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def alerts_step_by_step(
    events: list[RecordedEvent], kind: str = CREDIT_LIMIT_EXCEEDED, at: datetime | None = None
) -> list[Alert]:
    """The alerts of `kind` the projector would raise applying one event at a time."""
    raised: list[Alert] = []
    state: Balance | None = None
    for event in events:
        after = fold([event], state)
        assert after is not None
        raised += [a for a in alerts_between(state, after, at or RAISED_AT) if a.kind == kind]
        state = after
    return raised


def test_alert_id_is_a_uuid5_of_kind_customer_and_episode_that_never_changes() -> None:
    expected = uuid.uuid5(
        uuid.UUID("11ef527a-f56f-4707-a1f1-b8efd878d3d7"), "credit.limit.exceeded|C-0042|7"
    )

    assert str(ALERT_NAMESPACE) == "11ef527a-f56f-4707-a1f1-b8efd878d3d7"
    assert alert_id("credit.limit.exceeded", "C-0042", "7") == str(expected)
    assert (
        alert_id("credit.limit.exceeded", "C-0042", "7") == "c66161a9-ce2b-51d7-b22a-6b5b22d760ff"
    )


def test_alert_id_differs_by_kind_customer_and_episode() -> None:
    ids = {
        alert_id(CREDIT_LIMIT_EXCEEDED, "C-1", "7"),
        alert_id(INVOICE_OVERDUE, "C-1", "7"),
        alert_id(CREDIT_LIMIT_EXCEEDED, "C-2", "7"),
        alert_id(CREDIT_LIMIT_EXCEEDED, "C-1", "8"),
    }

    assert len(ids) == 4


def test_an_alert_round_trips_through_json_with_raised_at_in_utc() -> None:
    at = datetime(2026, 3, 1, 11, 30, 0, 250_000, tzinfo=timezone(timedelta(hours=2)))
    alert = Alert.for_episode(
        INVOICE_OVERDUE, "C-1", "INV-1", at, {"outstanding": "10.00"}, "Call."
    )

    doc = orjson.loads(orjson.dumps(alert.to_json()))

    assert doc == {
        "alert_id": alert_id(INVOICE_OVERDUE, "C-1", "INV-1"),
        "kind": "invoice.overdue",
        "customer_id": "C-1",
        "raised_at": "2026-03-01T09:30:00.250000Z",
        "details": {"outstanding": "10.00"},
        "suggested_action": "Call.",
    }
    assert Alert.from_json(doc) == alert


def test_an_alert_needs_an_aware_raised_at() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Alert("id", INVOICE_OVERDUE, "C-1", datetime(2026, 3, 1, 9, 30))


# --- credit limit exceeded --------------------------------------------------------------------


def test_the_credit_alert_is_raised_once_when_the_limit_is_first_exceeded() -> None:
    events = history(
        terms("1000"),
        invoice("INV-1", "800"),
        invoice("INV-2", "300"),  # 1100 > 1000: the episode starts at version 3
        invoice("INV-3", "50"),  # still above: same episode, nothing new
        payment("P-1", "100"),
    )

    [alert] = alerts_step_by_step(events)

    assert alert.to_json() == {
        "alert_id": alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, "3"),
        "kind": "credit.limit.exceeded",
        "customer_id": CUSTOMER_ID,
        "raised_at": "2026-03-01T09:30:00Z",
        "details": {"outstanding": "1100", "limit": "1000", "currency": "EUR"},
        "suggested_action": "Put new orders on hold and call the customer about payment.",
    }


def test_a_new_episode_after_recovery_raises_a_new_alert() -> None:
    events = history(
        terms("1000"),
        invoice("INV-1", "1200"),  # episode 2
        payment("P-1", "300"),  # 900: back within the limit
        invoice("INV-2", "100"),  # exactly 1000: not above
        invoice("INV-3", "0.01"),  # episode 5
    )

    alerts = alerts_step_by_step(events)

    assert [a.alert_id for a in alerts] == [
        alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, "2"),
        alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, "5"),
    ]
    assert alerts[1].details["outstanding"] == "1000.01"


def test_lowering_the_limit_below_the_outstanding_starts_an_episode() -> None:
    events = history(terms("1000"), invoice("INV-1", "600"), terms("500"), terms("400"))

    [alert] = alerts_step_by_step(events)

    assert alert.alert_id == alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, "3")
    assert alert.details["limit"] == "500"


def test_a_batch_raises_the_alert_of_the_episode_under_way_at_its_end() -> None:
    steps: list[Step] = [
        terms("100"),
        invoice("INV-1", "150"),  # episode 2, ends at 3
        payment("P-1", "150"),
        invoice("INV-2", "101"),  # episode 4, still on at the end of the batch
        invoice("INV-3", "1"),
    ]
    events = history(*steps)
    before = stored(balance_of(*steps[:1]))
    after = fold(events[1:], before)
    assert after is not None

    [alert] = alerts_between(before, after, RAISED_AT)

    assert alert.alert_id == alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, "4")
    assert alerts_between(stored(after), after, RAISED_AT) == []


def test_an_episode_over_within_one_batch_raises_nothing() -> None:
    events = history(terms("100"), invoice("INV-1", "150"), payment("P-1", "150"))
    after = fold(events)
    assert after is not None

    assert alerts_between(None, after, RAISED_AT) == []


def test_the_credit_alert_refuses_a_customer_within_the_limit() -> None:
    with pytest.raises(ValueError, match="within its credit limit"):
        credit_limit_exceeded(balance_of(terms("100"), invoice("INV-1", "100")), RAISED_AT)


@given(money_histories())
def test_a_credit_alert_is_raised_exactly_when_the_limit_becomes_exceeded(
    events: list[RecordedEvent],
) -> None:
    starts, exceeded = [], False
    for n, event in enumerate(events, start=1):
        limits = [e.envelope.payload for e in events[:n] if e.envelope.type == "credit.terms.set"]
        now = False
        if limits:
            figures = expected_totals(events[:n])[limits[-1]["currency"]]
            owed = figures["invoiced"] - figures["paid"] - figures["refunded"]
            now = owed > Decimal(limits[-1]["credit_limit"])
        if now and not exceeded:
            starts.append(str(event.version))
        exceeded = now

    alerts = alerts_step_by_step(events)

    assert [a.alert_id for a in alerts] == [
        alert_id(CREDIT_LIMIT_EXCEEDED, CUSTOMER_ID, s) for s in starts
    ]


# --- invoice overdue ------------------------------------------------------------------------


def test_an_overdue_invoice_alert_is_keyed_by_the_invoice_whatever_the_day() -> None:
    state = balance_of(
        invoice("INV-1", "100.00", "2026-02-01", "USD"), payment("P-1", "40", "INV-1", "USD")
    )
    [(currency, open_invoice)] = [("USD", i) for i in state.ledger("USD").open_invoices.values()]

    first = invoice_overdue(CUSTOMER_ID, currency, open_invoice, date(2026, 2, 2), RAISED_AT)
    later = invoice_overdue(CUSTOMER_ID, currency, open_invoice, date(2026, 3, 3), RAISED_AT)

    assert first.alert_id == later.alert_id == alert_id(INVOICE_OVERDUE, CUSTOMER_ID, "INV-1")
    assert first.kind == INVOICE_OVERDUE
    assert later.details == {
        "invoice_id": "INV-1",
        "amount": "100.00",
        "outstanding": "60.00",
        "currency": "USD",
        "due_date": "2026-02-01",
        "days_overdue": 30,
    }


def test_overdue_alerts_cover_the_open_invoices_past_due_only() -> None:
    state = balance_of(
        invoice("INV-1", "10", "2026-02-01"),
        invoice("INV-2", "10", "2026-01-01"),
        invoice("INV-3", "10", "2026-03-01"),  # due on the day: not overdue
        invoice("INV-4", "10", "2025-12-01"),
        payment("P-1", "10", "INV-4"),  # paid: not overdue
    )

    alerts = overdue_alerts(state, date(2026, 3, 1), RAISED_AT)

    assert [a.details["invoice_id"] for a in alerts] == ["INV-2", "INV-1"]
    assert [a.details["days_overdue"] for a in alerts] == [59, 28]
