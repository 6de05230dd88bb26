"""The follow-up work list and the management reports end to end: SDK → recorder → relay →
projector (real processes, real broker and PostgreSQL), read through GET /followups and
GET /reports/…; `followup.overdue` raised by the clock alone; `crm replay followups touchpoints`
equal to the live read models.

The reports' figures are computed in this file from the events it sends (in March-May 2031, which
no other test uses), with the SLA of this module's pipeline (high: a few seconds).
"""

from __future__ import annotations

import statistics
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest

from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from tests.integration.complaint_stack import Stack, alert_id, pipeline, rows, z

pytestmark = pytest.mark.integration

HIGH_S = 5
SLA = {"high": timedelta(seconds=HIGH_S), "medium": timedelta(hours=72), "low": timedelta(days=7)}
TAG = uuid.uuid4().hex[:6]
NOW = datetime.now(UTC).replace(microsecond=0)
ANA = f"{TAG}-ana"


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs, spool = tmp_path_factory.mktemp("followup-logs"), tmp_path_factory.mktemp("spool")
    with pipeline(broker, postgres, logs, spool, CRM_SLA_HIGH_HOURS=str(HIGH_S / 3600),
                  CRM_DEADLINE_CHECK_SECONDS="0.5") as world:  # fmt: skip
        yield world


def work(stack: Stack, **params: Any) -> list[tuple[str, str]]:
    answer = stack.api.get("/followups", params=params)
    assert answer.status_code == 200, answer.text
    return [(f["followup_id"], f["status"]) for f in answer.json()["followups"]]


# --- follow-ups ---------------------------------------------------------------------------------


def test_the_work_list_shows_each_follow_up_with_its_status_and_filters(stack: Stack) -> None:
    """F-late is due an hour ago (overdue at once); F-soon in 4 s (open, then overdue, alerted
    by the clock alone, then done); F-open in 2 days; F-done done; F-held completed before its
    scheduling arrived (done); F-moved rescheduled from tomorrow to in 3 days (open)."""
    customer_id = f"{TAG}-work"
    other = f"{TAG}-other"
    soon = NOW + timedelta(seconds=4)
    steps: list[tuple[str, str, dict[str, Any]]] = [
        ("followup_scheduled", customer_id, {"followup_id": "F-late", "reason": "Call back",
                                             "due_at": NOW - timedelta(hours=1), "assignee": ANA}),
        ("followup_scheduled", customer_id, {"followup_id": "F-soon", "reason": "Call back",
                                             "due_at": soon, "assignee": ANA}),
        ("followup_scheduled", customer_id, {"followup_id": "F-open", "reason": "Check",
                                             "due_at": NOW + timedelta(days=2)}),
        ("followup_scheduled", customer_id, {"followup_id": "F-done", "reason": "Check",
                                             "due_at": NOW + timedelta(days=1), "assignee": ANA}),
        ("followup_completed", customer_id, {"followup_id": "F-done", "outcome": "Fine."}),
        ("followup_completed", other, {"followup_id": "F-held", "outcome": "Early."}),
        ("followup_scheduled", other, {"followup_id": "F-held", "reason": "Check",
                                       "due_at": NOW + timedelta(days=1), "assignee": ANA}),
        ("followup_scheduled", other, {"followup_id": "F-moved", "reason": "Demo",
                                       "due_at": NOW + timedelta(days=1), "assignee": ANA}),
        ("followup_scheduled", other, {"followup_id": "F-moved", "reason": "Demo, later",
                                       "due_at": NOW + timedelta(days=3)}),
    ]  # fmt: skip
    for method, customer, fields in steps:
        stack.send(method, customer, **fields)
    stack.wait_projected({customer_id: 5, other: 4})

    late = alert_id("followup.overdue", customer_id, f"{z(NOW - timedelta(hours=1))}|F-late")
    stack.wait_alert(late, timeout=30)
    # earliest due first; F-soon is open until its due time
    assert work(stack, customer_id=customer_id) in (
        [("F-late", "overdue"), ("F-soon", "open"), ("F-done", "done"), ("F-open", "open")],
        [("F-late", "overdue"), ("F-soon", "overdue"), ("F-done", "done"), ("F-open", "open")],
    )
    # the same due time: by customer id ("…-other" before "…-work")
    assert work(stack, assignee=ANA, status="done") == [("F-held", "done"), ("F-done", "done")]
    assert work(stack, assignee=ANA, due_before=z(NOW + timedelta(hours=1))) in (
        [("F-late", "overdue"), ("F-soon", "open")],
        [("F-late", "overdue"), ("F-soon", "overdue")],
    )
    moved = stack.api.get("/followups", params={"customer_id": other, "status": "open"}).json()
    [item] = moved["followups"]
    assert item == {
        "customer_id": other, "followup_id": "F-moved", "due_at": z(NOW + timedelta(days=3)),
        "reason": "Demo, later", "assignee": ANA, "scheduled_at": item["scheduled_at"],
        "completed_at": None, "outcome": None, "status": "open",
    }  # fmt: skip

    soon_alert = alert_id("followup.overdue", customer_id, f"{z(soon)}|F-soon")
    stack.wait_alert(soon_alert, timeout=30)
    assert work(stack, customer_id=customer_id, status="overdue") == [
        ("F-late", "overdue"),
        ("F-soon", "overdue"),
    ]
    assert stack.published({late, soon_alert}).keys() == {late, soon_alert}
    stack.send("followup_completed", customer_id, followup_id="F-soon", outcome="Reached.")
    stack.wait_projected({customer_id: 6})
    statuses = {a: s for a, _, s in stack.alerts("followup.overdue", TAG)}
    assert statuses == {late: "open", soon_alert: "resolved"}, "no alert for the others"
    assert work(stack, customer_id=customer_id, status="done") == [
        ("F-soon", "done"),
        ("F-done", "done"),
    ]


def test_the_work_list_pages_with_a_cursor(stack: Stack) -> None:
    customer_id = f"{TAG}-pages"
    for n in range(5):
        stack.send("followup_scheduled", customer_id, followup_id=f"P-{n}", reason="Call",
                   due_at=NOW + timedelta(days=10, minutes=n))  # fmt: skip
    stack.wait_projected({customer_id: 5})
    pages, cursor = [], None
    while True:
        params = {"customer_id": customer_id, "limit": 2, **({"cursor": cursor} if cursor else {})}
        answer = stack.api.get("/followups", params=params).json()
        pages.append([f["followup_id"] for f in answer["followups"]])
        if (cursor := answer["next_cursor"]) is None:
            break
    assert pages == [["P-0", "P-1"], ["P-2", "P-3"], ["P-4"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "late"}, "status must be one of open, done, overdue; got 'late'"),
        ({"due_before": "tomorrow"}, "due_before must be an RFC 3339 timestamp with offset"),
        ({"due_before": "2026-11-23T10:00:00"}, "due_before must be an RFC 3339 timestamp"),
    ],
)
def test_bad_work_list_parameters_are_a_422(
    stack: Stack, params: dict[str, str], message: str
) -> None:
    answer = stack.api.get("/followups", params=params)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


# --- reports ----------------------------------------------------------------------------------

MARCH = datetime(2031, 3, 1, tzinfo=UTC)
H = timedelta(hours=1)


@dataclass(frozen=True)
class Complaint:
    """A complaint of the report's data set: when it was filed, resolved, reopened (offsets)."""

    category: str
    sku: str | None
    severity: str
    filed: timedelta
    resolved: tuple[timedelta, ...] = ()
    reopened: tuple[timedelta, ...] = ()


COMPLAINTS = [
    Complaint("delivery", "P1", "medium", 0 * H, (10 * H,)),
    Complaint("delivery", "P1", "high", 1 * H, (30 * H,)),  # late: HIGH_S seconds allowed
    Complaint("delivery", "P2", "low", 2 * H),  # open; due in 2031
    Complaint("billing", "P2", "medium", 3 * H, (83 * H,)),  # late: 80 h > 72 h
    Complaint("billing", None, "low", 4 * H, (9 * H, 11 * H), (10 * H,)),  # both in time
    Complaint("billing", None, "high", 5 * H),  # open; due in 2031
    Complaint("quality", "P1", "medium", 6 * H, (26 * H,), (36 * H,)),  # reopened: open
    Complaint("quality", "P1", "medium", 40 * 24 * H, (41 * 24 * H,)),  # in April: outside
    Complaint("quality", "P3", "low", 9 * 24 * H, (9 * 24 * H + 30 * timedelta(minutes=1),)),
]
"""Filed from MARCH on; the report covers March 2031."""


def expected_complaints(group_by: str) -> list[dict[str, Any]]:
    """The report worked out from COMPLAINTS, by hand-written rules: resolved = resolved as many
    times as filed or reopened; breached = an episode resolved after its deadline (open ones are
    due in 2031, not breached now); median over the resolved of filing to last resolution."""
    groups: dict[Any, list[Complaint]] = defaultdict(list)
    for c in COMPLAINTS:
        if c.filed < 31 * 24 * H:
            key = {"category": c.category, "product_sku": c.sku, "severity": c.severity}[group_by]
            groups[key].append(c)
    found = []
    for key in sorted(groups, key=lambda k: (k is None, k or "")):
        cases = groups[key]
        done = [c for c in cases if len(c.resolved) == len(c.reopened) + 1]
        opened = [[c.filed, *c.reopened] for c in cases]
        late = sum(
            any(r - o > SLA[c.severity] for o, r in zip(starts, c.resolved, strict=False))
            for c, starts in zip(cases, opened, strict=True)
        )
        hours = [Decimal((c.resolved[-1] - c.filed) / H) for c in done]
        median = statistics.median(hours) if hours else None
        found.append({
            "key": key, "filed": len(cases), "resolved": len(done),
            "open": len(cases) - len(done), "breached": late,
            "breach_rate": str((Decimal(late) / len(cases)).quantize(Decimal("0.0001"))),
            "median_hours_to_resolve": None if median is None
            else str(median.quantize(Decimal("0.01"), ROUND_HALF_EVEN)),
        })  # fmt: skip
    return found


@pytest.fixture(scope="module")
def report_data(stack: Stack) -> dict[str, int]:
    """COMPLAINTS, one customer each, from source "support"; plus calls from "call-center" and
    web visits from "web" in March and April 2031. Returns each customer's number of events."""
    versions: dict[str, int] = {}
    for n, c in enumerate(COMPLAINTS):
        customer_id = f"{TAG}-rep-{n}"
        events = [
            (
                c.filed,
                "complaint_filed",
                {
                    "category": c.category,
                    "severity": c.severity,
                    "description": "Bad.",
                    "product_sku": c.sku,
                },
            )
        ]
        events += [(at, "complaint_resolved", {"resolution": "Fixed."}) for at in c.resolved]
        events += [(at, "complaint_reopened", {"reason": "Again."}) for at in c.reopened]
        for at, method, fields in sorted(events, key=lambda e: e[0]):
            stack.send(method, customer_id, complaint_id="K-1", **fields, occurred_at=MARCH + at)
        versions[customer_id] = len(events)
    for n, (source, days) in enumerate([("call-center", 3), ("call-center", 35), ("web", 5),
                                        ("web", 33), ("web", 70)]):  # fmt: skip
        customer_id = f"{TAG}-rep-{n % 3}"
        at = MARCH + timedelta(days=days)
        if source == "web":
            stack.send("web_visited", customer_id, url="https://shop/p1", occurred_at=at,
                       source=source)  # fmt: skip
        else:
            stack.send("call_logged", customer_id, direction="inbound", duration_seconds=60,
                       occurred_at=at, source=source)  # fmt: skip
        versions[customer_id] += 1
    stack.wait_projected(versions)
    return versions


@pytest.mark.parametrize("group_by", ["category", "product_sku", "severity"])
def test_the_complaint_report_has_the_figures_worked_out_from_what_was_sent(
    stack: Stack, report_data: dict[str, int], group_by: str
) -> None:
    answer = stack.api.get(
        "/reports/complaints",
        params={"from": "2031-03-01", "to": "2031-04-01", "group_by": group_by},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["from"], body["to"], body["group_by"]) == (
        "2031-03-01T00:00:00Z",
        "2031-04-01T00:00:00Z",
        group_by,
    )
    assert list(body) == ["from", "to", "group_by", "as_of", "groups"]
    assert body["groups"] == expected_complaints(group_by)


def touchpoints(group_by: str, start: timedelta, end: timedelta) -> list[dict[str, Any]]:
    """The touchpoint report worked out from what report_data sent."""
    sent: list[tuple[str, str, str, datetime]] = []  # (customer, type, source, occurred_at)
    for n, c in enumerate(COMPLAINTS):
        customer_id = f"{TAG}-rep-{n}"
        sent.append((customer_id, "complaint.filed", "support", MARCH + c.filed))
        sent += [(customer_id, "complaint.resolved", "support", MARCH + at) for at in c.resolved]
        sent += [(customer_id, "complaint.reopened", "support", MARCH + at) for at in c.reopened]
    for n, (type_, source, days) in enumerate([
        ("call.logged", "call-center", 3), ("call.logged", "call-center", 35),
        ("web.visited", "web", 5), ("web.visited", "web", 33), ("web.visited", "web", 70),
    ]):  # fmt: skip
        sent.append((f"{TAG}-rep-{n % 3}", type_, source, MARCH + timedelta(days=days)))
    groups: dict[str, list[str]] = defaultdict(list)
    for customer_id, type_, source, at in sent:
        if MARCH + start <= at < MARCH + end:
            key = {"type": type_, "source": source, "month": at.strftime("%Y-%m")}[group_by]
            groups[key].append(customer_id)
    return [
        {"key": k, "count": len(groups[k]), "customers": len(set(groups[k]))}
        for k in sorted(groups)
    ]


@pytest.mark.parametrize("group_by", ["type", "source", "month"])
def test_the_touchpoint_report_counts_the_events_that_occurred_in_the_range(
    stack: Stack, report_data: dict[str, int], group_by: str
) -> None:
    params = {"from": "2031-03-01T00:00:00Z", "to": "2031-04-05T00:00:00+02:00",
              "group_by": group_by}  # fmt: skip
    answer = stack.api.get("/reports/touchpoints", params=params)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["to"] == "2031-04-04T22:00:00Z"
    # to = 4 April 22:00 UTC: March and the first days of April (the call of 4 April: day 35)
    end = datetime(2031, 4, 4, 22, tzinfo=UTC) - MARCH
    assert body["groups"] == touchpoints(group_by, timedelta(0), end)


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("complaints", {"from": "2031-03-01", "to": "2031-04-01", "group_by": "colour"},
         "group_by must be one of category, product_sku, severity; got 'colour'"),
        ("touchpoints", {"from": "2031-03-01", "to": "2031-04-01", "group_by": "week"},
         "group_by must be one of type, source, month; got 'week'"),
        ("complaints", {"from": "March", "to": "2031-04-01"},
         "from must be an RFC 3339 timestamp with offset"),
        ("touchpoints", {"from": "2031-03-01", "to": "2031-02-30"},
         "to must be an RFC 3339 timestamp with offset"),
        ("complaints", {"from": "2031-04-01", "to": "2031-03-01"},
         "from must be before to, got from=2031-04-01T00:00:00Z and to=2031-03-01T00:00:00Z"),
        ("touchpoints", {"from": "2031-03-01", "to": "2031-03-01"}, "from must be before to"),
    ],
)  # fmt: skip
def test_bad_report_parameters_are_a_422_that_says_what_was_expected(
    stack: Stack, path: str, params: dict[str, str], message: str
) -> None:
    answer = stack.api.get(f"/reports/{path}", params=params)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_a_report_without_its_range_is_a_422(stack: Stack) -> None:
    answer = stack.api.get("/reports/complaints", params={"to": "2031-04-01"})
    assert answer.status_code == 422
    assert answer.json()["detail"][0]["loc"] == ["query", "from"]


# --- replay (last: it stops and restarts the projector) ------------------------------------------


def test_replay_rebuilds_the_follow_ups_and_the_touchpoint_index_identical_to_the_live_ones(
    stack: Stack, report_data: dict[str, int]
) -> None:
    """Compared on this module's customers: the pipeline also gets what other modules sent on the
    shared topics (crm.touchpoints, crm.events), under other positions than in this store."""
    mine = f" WHERE customer_id LIKE '{TAG}-%%'"
    queries = [
        "SELECT customer_id, version, position, doc FROM rm_followups" + mine,
        "SELECT customer_id, followup_id, assignee, due_at, scheduled_at, completed_at, doc "
        "FROM rm_followup_items" + mine,
        "SELECT customer_id, version, position, type, source, occurred_at FROM rm_touchpoints"
        + mine,
    ]
    live = [rows(stack.dsn, q) for q in queries]
    assert all(live)
    recorded = rows(
        stack.dsn, f"SELECT count(*) FROM crm_events WHERE originator_id LIKE '{TAG}-%%'"
    )
    assert len(live[2]) == int(recorded[0][0]), "every recorded event of ours, once"

    stack.replay("followups", "touchpoints")

    assert [rows(stack.dsn, q) for q in queries] == live
