"""decode_alert: what the AlertSubscriber hands out, and what it skips as malformed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from events.alert_subscriber import MalformedAlert, ReceivedAlert, decode_alert
from projections.alerts import INVOICE_OVERDUE, Alert

ALERT = Alert.for_episode(
    INVOICE_OVERDUE,
    "C-0042",
    "INV-7",
    datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
    {"invoice_id": "INV-7", "outstanding": "120.00", "currency": "EUR", "due_date": "2026-02-01"},
    "Send a reminder.",
)


def test_an_alert_as_logged_is_decoded_field_by_field() -> None:
    received = decode_alert(orjson.dumps(ALERT.to_json()), partition=3, offset=41)

    assert received == ReceivedAlert(
        ALERT.alert_id,
        INVOICE_OVERDUE,
        "C-0042",
        datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
        ALERT.details,
        "Send a reminder.",
        partition=3,
        offset=41,
    )


def test_raised_at_keeps_its_offset() -> None:
    doc = {**ALERT.to_json(), "raised_at": "2026-03-01T10:30:00+01:00"}

    raised_at = decode_alert(orjson.dumps(doc), 0, 0).raised_at

    assert raised_at.utcoffset() == timedelta(hours=1)
    assert raised_at == ALERT.raised_at


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in ALERT.to_json().items() if k != name}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b"{oops", "not JSON"),
        (None, "not JSON"),
        (b'["a"]', "expected a JSON object, got list"),
        (orjson.dumps(without("alert_id")), "alert_id: expected a string, got None"),
        (orjson.dumps({**ALERT.to_json(), "kind": 7}), "kind: expected a string, got 7"),
        (orjson.dumps(without("suggested_action")), "suggested_action: expected a string"),
        (orjson.dumps({**ALERT.to_json(), "details": []}), "details: expected an object"),
        (orjson.dumps({**ALERT.to_json(), "raised_at": "yesterday"}), "expected an RFC 3339"),
        (
            orjson.dumps({**ALERT.to_json(), "raised_at": "2026-03-01T09:30:00"}),
            "expected a time with its offset",
        ),
    ],
)
def test_a_message_that_is_not_an_alert_is_malformed_with_the_reason(
    value: bytes | None, message: str
) -> None:
    with pytest.raises(MalformedAlert, match=message):
        decode_alert(value, 0, 0)
