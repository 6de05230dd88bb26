"""Management reports against figures worked out by hand in this file: complaints grouped by
category, severity and product (counts, median time to resolve, breach rate), touchpoints grouped
by type, source and month, on the boundaries of the range."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from events.envelope import Envelope, validate_envelope
from projections.complaints import ComplaintCase, transition
from projections.reports import (
    ComplaintGrouping,
    TouchpointGrouping,
    complaint_report,
    median,
    touchpoint_report,
)
from tests.unit.examples import envelope

START = datetime(2026, 6, 1, tzinfo=UTC)
END = datetime(2026, 7, 1, tzinfo=UTC)
NOW = datetime(2026, 7, 15, tzinfo=UTC)
D = datetime(2026, 6, 10, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def event(type_: str, at: datetime, payload: dict[str, Any], **fields: Any) -> Envelope:
    data = envelope(type_, payload, event_id=str(uuid.uuid4()), occurred_at=at.isoformat())
    return validate_envelope(data | fields)


def case(
    complaint_id: str,
    category: str,
    severity: str,
    sku: str | None,
    filed_at: datetime,
    *steps: tuple[str, datetime],
) -> ComplaintCase:
    """A case filed at `filed_at`, then ("resolved" | "reopened", at) steps."""
    payload = {"complaint_id": complaint_id, "category": category, "severity": severity,
               "description": "x"} | ({} if sku is None else {"product_sku": sku})  # fmt: skip
    current = transition(None, event("complaint.filed", filed_at, payload))
    for action, at in steps:
        if action == "resolved":
            step = {"complaint_id": complaint_id, "resolution": "done"}
        else:
            step = {"complaint_id": complaint_id, "reason": "again"}
        current = transition(current, event(f"complaint.{action}", at, step))
    return current


RESOLVED_K5 = [
    ("resolved", D + DAY + 9 * HOUR),
    ("reopened", D + 2 * DAY + 8 * HOUR),  # episode 2 due D + 3 days 08:00
    ("resolved", D + 2 * DAY + 20 * HOUR),  # 36 h after filing, on time
]
CASES = [
    # delivery; K-2: 96 h to resolve, due after 72 h: breached
    case("K-1", "delivery", "high", "KB-01", D + 9 * HOUR, ("resolved", D + 15 * HOUR)),  # 6 h
    case("K-2", "delivery", "medium", "KB-01", D + 10 * HOUR, ("resolved", D + 106 * HOUR)),
    case("K-3", "delivery", "low", "MUG-1", D + 11 * HOUR),  # open; due D + 7 days 11:00: breached
    # billing
    case("K-4", "billing", "high", None, D + 12 * HOUR, ("resolved", D + DAY + 10 * HOUR)),  # 22 h
    case("K-5", "billing", "high", "KB-01", D + DAY + 8 * HOUR, *RESOLVED_K5),
    case("K-8", "billing", "high", None, START, ("resolved", START + HOUR)),  # 1 h, on `from`
    # outside [from, to)
    case("K-6", "billing", "low", None, START - timedelta(seconds=1)),
    case("K-7", "delivery", "low", "KB-01", END),
]  # fmt: skip


def groups(group_by: ComplaintGrouping, now: datetime = NOW) -> list[dict[str, Any]]:
    report = complaint_report(CASES, start=START, end=END, group_by=group_by, now=now)
    return report.to_json()["groups"]


def test_complaints_by_category() -> None:
    assert groups("category") == [
        # K-4 22 h, K-5 36 h, K-8 1 h: median 22 h
        {"key": "billing", "filed": 3, "resolved": 3, "open": 0, "breached": 0,
         "breach_rate": "0.0000", "median_hours_to_resolve": "22.00"},
        # K-1 6 h, K-2 96 h: median (6 + 96) / 2 = 51 h; breached K-2, K-3: 2 of 3
        {"key": "delivery", "filed": 3, "resolved": 2, "open": 1, "breached": 2,
         "breach_rate": "0.6667", "median_hours_to_resolve": "51.00"},
    ]  # fmt: skip


def test_complaints_by_severity() -> None:
    assert groups("severity") == [
        # 1, 6, 22, 36 h: median (6 + 22) / 2 = 14 h
        {"key": "high", "filed": 4, "resolved": 4, "open": 0, "breached": 0,
         "breach_rate": "0.0000", "median_hours_to_resolve": "14.00"},
        {"key": "low", "filed": 1, "resolved": 0, "open": 1, "breached": 1,
         "breach_rate": "1.0000", "median_hours_to_resolve": None},
        {"key": "medium", "filed": 1, "resolved": 1, "open": 0, "breached": 1,
         "breach_rate": "1.0000", "median_hours_to_resolve": "96.00"},
    ]  # fmt: skip


def test_complaints_by_product_with_the_ones_without_a_product_last() -> None:
    assert groups("product_sku") == [
        # K-1 6 h, K-2 96 h, K-5 36 h: median 36 h; K-2 breached: 1 of 3
        {"key": "KB-01", "filed": 3, "resolved": 3, "open": 0, "breached": 1,
         "breach_rate": "0.3333", "median_hours_to_resolve": "36.00"},
        {"key": "MUG-1", "filed": 1, "resolved": 0, "open": 1, "breached": 1,
         "breach_rate": "1.0000", "median_hours_to_resolve": None},
        # K-4 22 h, K-8 1 h: median 11.5 h
        {"key": None, "filed": 2, "resolved": 2, "open": 0, "breached": 0,
         "breach_rate": "0.0000", "median_hours_to_resolve": "11.50"},
    ]  # fmt: skip


def test_an_open_complaint_counts_as_breached_only_once_its_deadline_has_come_by_now() -> None:
    deadline = D + 7 * DAY + 11 * HOUR  # K-3, low, filed D 11:00

    before = {g["key"]: g["breached"] for g in groups("category", now=deadline - HOUR)}
    at = {g["key"]: g["breached"] for g in groups("category", now=deadline)}

    assert (before["delivery"], at["delivery"]) == (1, 2)


def test_a_late_episode_of_a_reopened_complaint_counts_as_a_breach() -> None:
    late = case(
        "K-9", "returns", "high", None, D,
        ("resolved", D + HOUR),
        ("reopened", D + DAY),
        ("resolved", D + 3 * DAY),  # episode 2 was due D + 2 days
    )  # fmt: skip

    report = complaint_report([late], start=START, end=END, group_by="category", now=NOW)

    assert report.to_json()["groups"] == [
        {"key": "returns", "filed": 1, "resolved": 1, "open": 0, "breached": 1,
         "breach_rate": "1.0000", "median_hours_to_resolve": "72.00"},
    ]  # fmt: skip


def test_the_report_document_names_its_range_and_grouping() -> None:
    report = complaint_report([], start=START, end=END, group_by="severity", now=NOW)

    assert report.to_json() == {
        "from": "2026-06-01T00:00:00Z",
        "to": "2026-07-01T00:00:00Z",
        "group_by": "severity",
        "groups": [],
    }


def test_the_median_of_durations() -> None:
    assert median([]) is None
    assert median([3 * HOUR, HOUR, 2 * HOUR]) == 2 * HOUR
    assert median([4 * HOUR, HOUR, 2 * HOUR, 3 * HOUR]) == 2 * HOUR + 30 * timedelta(minutes=1)


@pytest.mark.parametrize(
    ("start", "end", "group_by", "message"),
    [
        (START, END, "colour", "group_by must be one of category, product_sku, severity"),
        (END, START, "category", "from must be before to"),
        (START, START, "category", "from must be before to"),
        (START.replace(tzinfo=None), END, "category", "timezone-aware"),
    ],
)
def test_a_bad_range_or_grouping_is_refused(
    start: datetime, end: datetime, group_by: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        complaint_report(CASES, start=start, end=end, group_by=cast(Any, group_by), now=NOW)


# --- touchpoints --------------------------------------------------------------------------

T_START = datetime(2026, 1, 1, tzinfo=UTC)
T_END = datetime(2026, 3, 1, tzinfo=UTC)


def touch(type_: str, source: str, customer: str, at: str) -> Envelope:
    data = envelope(type_, event_id=str(uuid.uuid4()), occurred_at=at)
    return validate_envelope(data | {"source": source, "customer_id": customer})


TOUCHPOINTS = [
    touch("call.logged", "call-center", "C-1", "2026-01-15T10:00:00Z"),
    touch("call.logged", "call-center", "C-2", "2026-01-20T10:00:00Z"),
    touch("web.visited", "web", "C-1", "2026-02-01T00:00:00Z"),
    touch("call.logged", "call-center", "C-1", "2026-01-31T23:30:00-02:00"),  # February in UTC
    touch("purchase.made", "sales", "C-3", "2026-02-10T12:00:00Z"),
    touch("web.visited", "web", "C-1", "2026-03-01T00:00:00Z"),  # on `to`: out
    touch("web.visited", "web", "C-2", "2025-12-31T23:59:59Z"),  # before `from`: out
]


def touch_groups(group_by: TouchpointGrouping) -> list[dict[str, Any]]:
    report = touchpoint_report(TOUCHPOINTS, start=T_START, end=T_END, group_by=group_by)
    return report.to_json()["groups"]


def test_touchpoints_by_type() -> None:
    assert touch_groups("type") == [
        {"key": "call.logged", "count": 3, "customers": 2},
        {"key": "purchase.made", "count": 1, "customers": 1},
        {"key": "web.visited", "count": 1, "customers": 1},
    ]


def test_touchpoints_by_source() -> None:
    assert touch_groups("source") == [
        {"key": "call-center", "count": 3, "customers": 2},
        {"key": "sales", "count": 1, "customers": 1},
        {"key": "web", "count": 1, "customers": 1},
    ]


def test_touchpoints_by_utc_month() -> None:
    assert touch_groups("month") == [
        {"key": "2026-01", "count": 2, "customers": 2},
        {"key": "2026-02", "count": 3, "customers": 2},
    ]


def test_a_touchpoint_report_refuses_an_unknown_grouping() -> None:
    with pytest.raises(ValueError, match="group_by must be one of type, source, month"):
        touchpoint_report(TOUCHPOINTS, start=T_START, end=T_END, group_by=cast(Any, "day"))
