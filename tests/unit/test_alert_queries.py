"""The pure parts of reading and acknowledging the alert log: the queries GET /alerts and the
stream run, how a logged alert is shown, and what acknowledging does in each status."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import orjson
import pytest

from projections.alerts import (
    ALERT_FIELDS,
    CREDIT_LIMIT_EXCEEDED,
    INVOICE_OVERDUE,
    LOGGED_COLUMNS,
    AlertAlreadyResolved,
    AlertFilter,
    logged_alert,
    needs_ack,
    ordered_alert,
    select_after_sql,
    select_newest_sql,
)

FILTERS = [
    AlertFilter(kinds, customer_id, status)
    for kinds, customer_id, status in itertools.product(
        [(), (INVOICE_OVERDUE,), (INVOICE_OVERDUE, CREDIT_LIMIT_EXCEEDED)],
        [None, "C-1"],
        [None, "open"],
    )
]


def test_an_empty_filter_reads_the_whole_log_newest_first() -> None:
    query, params = select_newest_sql(AlertFilter(), None, 51)

    assert query == f"SELECT {LOGGED_COLUMNS} FROM crm_alerts ORDER BY seq DESC LIMIT %s"
    assert params == [51]


def test_every_filter_and_the_cursor_become_conditions_with_their_parameters_in_order() -> None:
    where = AlertFilter((INVOICE_OVERDUE, CREDIT_LIMIT_EXCEEDED), "C-1", "acknowledged")

    query, params = select_newest_sql(where, 90, 11)

    assert query == (
        f"SELECT {LOGGED_COLUMNS} FROM crm_alerts WHERE kind = ANY(%s::text[]) AND "
        "customer_id = %s AND status = %s AND seq < %s ORDER BY seq DESC LIMIT %s"
    )
    assert params == [[INVOICE_OVERDUE, CREDIT_LIMIT_EXCEEDED], "C-1", "acknowledged", 90, 11]


def test_a_stream_reads_after_its_last_seq_oldest_first() -> None:
    query, params = select_after_sql(AlertFilter((INVOICE_OVERDUE,)), 17, 500)

    assert query == (
        "SELECT seq, kind, alert::text FROM crm_alerts WHERE kind = ANY(%s::text[]) AND seq > %s "
        "ORDER BY seq LIMIT %s"
    )
    assert params == [[INVOICE_OVERDUE], 17, 500]


@pytest.mark.parametrize("where", FILTERS)
@pytest.mark.parametrize("before", [None, 5])
def test_each_query_has_as_many_placeholders_as_parameters(
    where: AlertFilter, before: int | None
) -> None:
    for query, params in (select_newest_sql(where, before, 10), select_after_sql(where, 3, 10)):
        assert query.count("%s") == len(params)


DOC = {
    "suggested_action": "Call.",
    "details": {"limit": "5000"},
    "customer_id": "C-1",
    "raised_at": "2026-02-01T09:00:00Z",
    "kind": CREDIT_LIMIT_EXCEEDED,
    "alert_id": "5b0c",
}


def test_an_alert_read_back_has_its_keys_in_the_documented_order_and_keeps_unknown_ones() -> None:
    shown = ordered_alert(orjson.dumps({**DOC, "extra": 1}).decode())

    assert list(shown) == [*ALERT_FIELDS, "extra"]
    assert shown == {**DOC, "extra": 1}


def test_a_logged_alert_shows_its_seq_and_status() -> None:
    at = datetime(2026, 2, 2, 10, 0, tzinfo=UTC)

    shown = logged_alert(7, orjson.dumps(DOC).decode(), "acknowledged", at, "ana")

    assert shown == {
        **DOC, "seq": 7, "status": "acknowledged", "status_at": "2026-02-02T10:00:00Z",
        "acknowledged_by": "ana",
    }  # fmt: skip
    assert list(shown)[: len(ALERT_FIELDS)] == list(ALERT_FIELDS)
    assert logged_alert(8, orjson.dumps(DOC).decode(), "open", None, None)["status_at"] is None


def test_only_an_open_alert_is_changed_by_an_acknowledgement() -> None:
    assert needs_ack("a-1", "open") is True
    assert needs_ack("a-1", "acknowledged") is False


def test_a_resolved_alert_cannot_be_acknowledged() -> None:
    with pytest.raises(AlertAlreadyResolved, match="alert a-1 is resolved"):
        needs_ack("a-1", "resolved")
