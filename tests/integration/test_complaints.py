"""Complaint cases end to end: SDK → recorder → relay → projector (real processes, real broker
and PostgreSQL), read through GET /complaints and the customer 360; the SLA breach raised by the
clock alone (a high severity SLA of a few seconds in this module), the product spike with a quiet
and a noisy product, and `crm replay complaints` equal to the live read models.

Every expected figure is worked out by hand below from what each scenario sends; nothing here
calls projections.complaints to compute an expectation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from tests.integration.complaint_stack import Stack, alert_id, pipeline, rows, z
from tests.integration.helpers import query, wait_until

pytestmark = pytest.mark.integration

HIGH_S = 6
"""The high severity SLA of this module's pipeline, in seconds (medium and low: 72 h, 7 days)."""
MEDIUM, LOW = timedelta(hours=72), timedelta(days=7)
START = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
TAG = uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class Step:
    method: str
    fields: dict[str, Any]


def filed(severity: str = "medium", sku: str | None = "SKU-A", category: str = "delivery",
          complaint_id: str = "K-1") -> Step:  # fmt: skip
    fields = {"complaint_id": complaint_id, "category": category, "severity": severity,
              "description": "It arrived broken.", "product_sku": sku}  # fmt: skip
    return Step("complaint_filed", fields)


def assigned(assignee: str, complaint_id: str = "K-1") -> Step:
    return Step("complaint_assigned", {"complaint_id": complaint_id, "assignee": assignee})


def resolved(satisfied: bool | None, complaint_id: str = "K-1") -> Step:
    fields = {"complaint_id": complaint_id, "resolution": "Replaced.", "satisfied": satisfied}
    return Step("complaint_resolved", fields)


def reopened(complaint_id: str = "K-1") -> Step:
    return Step("complaint_reopened", {"complaint_id": complaint_id, "reason": "Broken again."})


ANA, BO = f"{TAG}-ana", f"{TAG}-bo"
SCENARIOS: dict[str, tuple[Step, ...]] = {
    "filed": (filed(),),
    "assigned": (filed("low", sku=None), assigned(ANA), assigned(BO)),
    "happy": (filed(), assigned(ANA), resolved(True)),
    "unhappy": (filed("low"), resolved(False)),
    "no_verdict": (filed(), resolved(None)),
    "reopened": (filed(), resolved(True), reopened()),
    "resolved_again": (filed(), resolved(True), reopened(), assigned(ANA), resolved(False)),
    "two": (filed(), resolved(True), filed("low", complaint_id="K-2")),
}
"""Medium and low severities only: nothing here reaches its deadline during the test."""


@dataclass
class Sent:
    """What one scenario sent: each step's event id and occurred_at."""

    customer_id: str
    steps: list[tuple[Step, str, datetime]]


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs, spool = tmp_path_factory.mktemp("complaint-logs"), tmp_path_factory.mktemp("spool")
    with pipeline(broker, postgres, logs, spool, CRM_SLA_HIGH_HOURS=str(HIGH_S / 3600),
                  CRM_DEADLINE_CHECK_SECONDS="0.5") as world:  # fmt: skip
        yield world


@pytest.fixture(scope="module")
def sent(stack: Stack) -> dict[str, Sent]:
    """Every scenario, its events a second apart from START; each event sent twice (same
    event_id: recorded once)."""
    found = {}
    for n, (name, steps) in enumerate(SCENARIOS.items()):
        customer_id = f"{TAG}-{name}"
        record = Sent(customer_id, [])
        for i, step in enumerate(steps):
            at = START + timedelta(minutes=n, seconds=i)
            event_id = str(uuid.uuid4())
            for _ in range(2):
                stack.send(step.method, customer_id, **step.fields, occurred_at=at,
                           event_id=event_id)  # fmt: skip
            record.steps.append((step, event_id, at))
        found[name] = record
    stack.wait_projected({s.customer_id: len(s.steps) for s in found.values()})
    return found


def case(stack: Stack, customer_id: str, complaint_id: str = "K-1") -> dict[str, Any]:
    answer = stack.api.get(f"/complaints/{customer_id}/{complaint_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def screen(stack: Stack, customer_id: str) -> dict[str, Any]:
    answer = stack.api.get(f"/customers/{customer_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


# --- lifecycle ----------------------------------------------------------------------------------


def test_every_lifecycle_path_is_the_case_with_its_full_history(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    """Status, assignee, episode, deadline and the history of each scenario, worked out by hand:
    the deadline is the filing (or the reopening) + 72 h (medium) or 7 days (low)."""
    t = {name: [at for _, _, at in s.steps] for name, s in sent.items()}
    expected = {
        "filed": ("open", None, 1, t["filed"][0] + MEDIUM, None, None),
        "assigned": ("open", BO, 1, t["assigned"][0] + LOW, None, None),
        "happy": ("resolved", ANA, 1, t["happy"][0] + MEDIUM, t["happy"][2], True),
        "unhappy": ("resolved", None, 1, t["unhappy"][0] + LOW, t["unhappy"][1], False),
        "no_verdict": ("resolved", None, 1, t["no_verdict"][0] + MEDIUM, t["no_verdict"][1], None),
        # a reopening starts episode 2 with the full 72 h from the reopening
        "reopened": ("open", None, 2, t["reopened"][2] + MEDIUM, t["reopened"][1], True),
        "resolved_again": ("resolved", ANA, 2, t["resolved_again"][2] + MEDIUM,
                           t["resolved_again"][4], False),
        "two": ("resolved", None, 1, t["two"][0] + MEDIUM, t["two"][1], True),
    }  # fmt: skip
    for name, (status, assignee, episode, due, resolved_at, satisfied) in expected.items():
        customer_id = sent[name].customer_id
        doc = case(stack, customer_id)
        assert (doc["customer_id"], doc["complaint_id"]) == (customer_id, "K-1")
        assert (doc["status"], doc["assignee"], doc["episode"]) == (status, assignee, episode), name
        assert doc["due_at"] == z(due), name
        assert doc["filed_at"] == z(t[name][0])
        assert doc["resolved_at"] == (None if resolved_at is None else z(resolved_at)), name
        assert doc["satisfied"] is satisfied, name
        assert doc["breached"] is False
        k1 = [(s, e, at) for s, e, at in sent[name].steps if s.fields["complaint_id"] == "K-1"]
        actions = [s.method.removeprefix("complaint_") for s, _, _ in k1]
        assert [h["action"] for h in doc["history"]] == actions, name
        assert [h["event_id"] for h in doc["history"]] == [e for _, e, _ in k1]
        assert [h["at"] for h in doc["history"]] == [z(at) for _, _, at in k1]
    history = case(stack, sent["assigned"].customer_id)["history"]
    assert [h["details"] for h in history[1:]] == [
        {"assignee": ANA, "previous": None},
        {"assignee": BO, "previous": ANA},
    ]
    second = case(stack, sent["two"].customer_id, "K-2")
    assert (second["status"], second["severity"], second["product_sku"]) == ("open", "low", "SKU-A")


def test_the_360_shows_each_open_complaint_and_the_satisfaction_indicator(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    """happy: nothing open and the latest verdict satisfied; unhappy: the latest verdict not
    satisfied (or a complaint past its deadline: see the breach test); neutral otherwise."""
    t = {name: [at for _, _, at in s.steps] for name, s in sent.items()}
    open_k1 = {"complaint_id": "K-1", "category": "delivery", "severity": "medium",
               "breached": False}  # fmt: skip
    expected = {
        "filed": ([open_k1 | {"due_at": z(t["filed"][0] + MEDIUM)}], "neutral"),
        "assigned": ([open_k1 | {"severity": "low", "due_at": z(t["assigned"][0] + LOW)}],
                     "neutral"),
        "happy": ([], "happy"),
        "unhappy": ([], "unhappy"),
        "no_verdict": ([], "neutral"),
        # open again: its earlier verdict no longer counts
        "reopened": ([open_k1 | {"due_at": z(t["reopened"][2] + MEDIUM)}], "neutral"),
        "resolved_again": ([], "unhappy"),
        # satisfied with K-1, but K-2 is open
        "two": ([open_k1 | {"complaint_id": "K-2", "severity": "low",
                            "due_at": z(t["two"][2] + LOW)}], "neutral"),
    }  # fmt: skip
    for name, (open_complaints, satisfaction) in expected.items():
        doc = screen(stack, sent[name].customer_id)
        assert list(doc)[6:9] == ["complaints", "open_complaints", "satisfaction"]
        assert [dict(sorted(c.items())) for c in doc["open_complaints"]] == [
            dict(sorted((c | {"customer_id": sent[name].customer_id}).items()))
            for c in open_complaints
        ], name
        assert doc["satisfaction"] == satisfaction, name
        assert doc["complaints"]["open"] == len(open_complaints), name
    keys = list(screen(stack, sent["filed"].customer_id)["open_complaints"][0])
    assert keys == ["complaint_id", "customer_id", "category", "severity", "due_at", "breached"]


def test_a_transition_the_case_cannot_take_changes_nothing(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    """Resolving the resolved K-1 of "happy" again (unsatisfied): intake rejects it, or the fold
    keeps it aside; either way the case and the indicator stay as they were."""
    customer_id = sent["happy"].customer_id
    before = case(stack, customer_id)
    stack.send("complaint_resolved", customer_id, complaint_id="K-1", resolution="Again.",
               satisfied=False)  # fmt: skip
    stack.send("call_logged", customer_id, direction="inbound", duration_seconds=5)
    stack.flush()

    def call_projected() -> bool:
        by_type = screen(stack, customer_id)["touchpoints"]["by_type"]
        return by_type.get("call.logged", 0) == 1

    wait_until(call_projected, timeout=60, what="the call", log=stack.log)
    assert case(stack, customer_id) == before
    assert screen(stack, customer_id)["satisfaction"] == "happy"


def test_the_list_filters_by_status_assignee_product_and_customer_and_pages(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    def listed(**params: Any) -> list[tuple[str, str]]:
        answer = stack.api.get("/complaints", params=params)
        assert answer.status_code == 200, answer.text
        return [(c["customer_id"], c["complaint_id"]) for c in answer.json()["complaints"]]

    ids = {name: s.customer_id for name, s in sent.items()}
    # newest filed first: each scenario one minute after the one before
    assert listed(assignee=ANA) == [(ids["resolved_again"], "K-1"), (ids["happy"], "K-1")]
    assert listed(assignee=BO, status="open") == [(ids["assigned"], "K-1")]
    assert listed(assignee=ANA, status="open") == []
    assert listed(customer_id=ids["two"]) == [(ids["two"], "K-2"), (ids["two"], "K-1")]
    assert listed(customer_id=ids["two"], status="resolved") == [(ids["two"], "K-1")]
    assert listed(customer_id=ids["assigned"], product_sku="SKU-A") == []
    assert listed(customer_id=ids["two"], severity="low", category="delivery") == [
        (ids["two"], "K-2")
    ]
    assert listed(customer_id=ids["filed"], breached="false") == [(ids["filed"], "K-1")]
    assert listed(customer_id=ids["filed"], breached="true") == []

    everyone = [*((s.customer_id, "K-1") for s in sent.values()), (ids["two"], "K-2")]
    pages, cursor = [], None
    while True:
        params = {"limit": 3, **({} if cursor is None else {"cursor": cursor})}
        answer = stack.api.get("/complaints", params=params).json()
        pages.append([(c["customer_id"], c["complaint_id"]) for c in answer["complaints"]])
        cursor = answer["next_cursor"]
        if cursor is None:
            break
    seen = [c for page in pages for c in page if c[0] in ids.values()]
    assert sorted(seen) == sorted(everyone), "every case once, across pages"
    assert all(len(page) == 3 for page in pages[:-1])
    item = stack.api.get("/complaints", params={"customer_id": ids["happy"]}).json()
    assert list(item["complaints"][0]) == [
        "customer_id", "complaint_id", "category", "product_sku", "severity", "description",
        "status", "assignee", "episode", "filed_at", "opened_at", "due_at", "resolved_at",
        "resolution", "satisfied", "breached",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "closed"}, "status must be one of open, resolved; got 'closed'"),
        ({"severity": "urgent"}, "severity must be one of low, medium, high; got 'urgent'"),
        ({"cursor": "not-a-cursor"}, "cursor must be the next_cursor of a page"),
        ({"customer_id": "no spaces"}, "customer_id must be 1-64 characters"),
    ],
)
def test_bad_parameters_are_a_422_that_says_what_was_expected(
    stack: Stack, params: dict[str, str], message: str
) -> None:
    answer = stack.api.get("/complaints", params=params)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_an_unknown_case_is_a_404(stack: Stack, sent: dict[str, Sent]) -> None:
    answer = stack.api.get(f"/complaints/{sent['filed'].customer_id}/K-9")
    assert answer.status_code == 404
    assert "complaint K-9 of customer" in answer.json()["detail"]


def test_a_case_can_be_read_by_its_id_alone_unless_several_customers_have_that_id(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    owner = sent["two"].customer_id  # the only customer with a K-2
    alone = stack.api.get("/complaints/K-2")
    several = stack.api.get("/complaints/K-1")
    unknown = stack.api.get("/complaints/K-404")

    assert alone.status_code == 200, alone.text
    assert alone.json() == case(stack, owner, "K-2")
    assert several.status_code == 409
    k1_owners = [s.customer_id for s in sent.values()]
    assert all(c in several.json()["detail"] for c in sorted(k1_owners)[:5])
    assert unknown.status_code == 404
    assert "no customer has a complaint K-404" in unknown.json()["detail"]


# --- the SLA, by the clock alone --------------------------------------------------------------


def test_a_case_still_open_at_its_deadline_is_alerted_by_the_clock_and_resolved_with_it(
    stack: Stack,
) -> None:
    """Two high complaints filed now (deadline: HIGH_S seconds later); K-2 is resolved in
    time, K-1 is not: the clock alone raises K-1's breach, once, and it reaches crm.alerts."""
    customer_id = f"{TAG}-late"
    now = datetime.now(UTC)
    for step in (filed("high"), filed("high", complaint_id="K-2"), resolved(None, "K-2")):
        stack.send(step.method, customer_id, **step.fields, occurred_at=now)
    stack.wait_projected({customer_id: 3})
    assert case(stack, customer_id)["breached"] is False
    breach = alert_id("complaint.sla.breached", customer_id, "K-1|1")
    stack.wait_alert(breach, timeout=HIGH_S + 30)

    assert case(stack, customer_id)["breached"] is True
    doc = screen(stack, customer_id)
    assert [(c["complaint_id"], c["breached"]) for c in doc["open_complaints"]] == [("K-1", True)]
    assert doc["satisfaction"] == "unhappy"
    listed = stack.api.get("/complaints", params={"customer_id": customer_id, "breached": "true"})
    assert [c["complaint_id"] for c in listed.json()["complaints"]] == ["K-1"]
    [(ident, alert, status)] = stack.alerts("complaint.sla.breached", customer_id)
    assert (ident, status) == (breach, "open")
    assert alert["details"]["due_at"] == z(now + timedelta(seconds=HIGH_S))
    assert stack.published({breach})[breach] == alert

    stack.send("complaint_resolved", customer_id, complaint_id="K-1", resolution="Late.")
    stack.wait_projected({customer_id: 4})
    assert [s for _, _, s in stack.alerts("complaint.sla.breached", customer_id)] == ["resolved"]
    assert case(stack, customer_id)["breached"] is False
    assert screen(stack, customer_id)["satisfaction"] == "neutral"
    time.sleep(2)  # a few more turns of the clock
    assert len(stack.alerts("complaint.sla.breached", customer_id)) == 1, "K-2 was in time"


# --- product spikes -----------------------------------------------------------------------------


def file_about(stack: Stack, sku: str, at: datetime, n: int) -> str:
    customer_id = f"{TAG}-{sku}-{n}"
    stack.send("complaint_filed", customer_id, complaint_id="K-1", category="quality",
               severity="low", description="Broke.", product_sku=sku, occurred_at=at)  # fmt: skip
    return customer_id


def product_spikes(stack: Stack, *skus: str) -> list[tuple[str, dict[str, Any], str]]:
    """The spike alerts of these products (the scenarios above make SKU-A spike too)."""
    found = stack.alerts("product.complaints.spike", TAG)
    return [a for a in found if a[1]["details"]["product_sku"] in skus]


def test_a_quiet_product_spikes_at_its_fifth_complaint_in_a_day_and_a_noisy_one_does_not(
    stack: Stack,
) -> None:
    """Spike: at least 5 in 24 h and at least 3 x the usual 24 h over the 28 days before. The
    quiet product has no complaints before; the noisy one 2 a day for 28 days (usual 2: a spike
    needs 6). Both get 5 complaints in the last minutes; then each one more."""
    quiet, noisy = f"{TAG}-QUIET", f"{TAG}-NOISY"
    now = datetime.now(UTC) - timedelta(minutes=5)
    customers = [
        file_about(stack, noisy, now - timedelta(days=d, hours=2 - m), 100 + 2 * d + m)
        for d in range(1, 29)
        for m in range(2)
    ]
    for k in range(5):
        customers.append(file_about(stack, quiet, now + timedelta(seconds=k), k))
        customers.append(file_about(stack, noisy, now + timedelta(seconds=k), k))
    stack.wait_projected(dict.fromkeys(customers, 1))
    spikes = product_spikes(stack, quiet, noisy)
    assert [(a["details"]["product_sku"], a["details"]["complaints"]) for _, a, _ in spikes] == [
        (quiet, 5)
    ]
    _, alert, _ = spikes[0]
    assert alert["details"]["usual"] == "0.00"
    assert alert["details"]["since"] == z(now + timedelta(seconds=4))
    assert alert["details"]["customer_ids"] == sorted(f"{TAG}-{quiet}-{k}" for k in range(5))
    assert alert["customer_id"] == f"{TAG}-{quiet}-4"

    more = [file_about(stack, quiet, now + timedelta(seconds=5), 5),
            file_about(stack, noisy, now + timedelta(seconds=5), 5)]  # fmt: skip
    stack.wait_projected(dict.fromkeys(more, 1))
    spikes = product_spikes(stack, quiet, noisy)
    assert [(a["details"]["product_sku"], a["details"]["complaints"], a["details"]["usual"])
            for _, a, _ in spikes] == [(quiet, 5, "0.00"), (noisy, 6, "2.00")]  # fmt: skip
    assert spikes[0][0] == alert_id("product.complaints.spike", "product",
                                    f"{z(now + timedelta(seconds=4))}|{quiet}")  # fmt: skip


# --- replay (last: it stops and restarts the projector) ------------------------------------------


def test_replay_rebuilds_the_complaint_read_models_identical_to_the_live_ones(
    stack: Stack, sent: dict[str, Sent]
) -> None:
    """Compared on this module's customers: the pipeline also gets what other modules sent on the
    shared topics (crm.touchpoints, crm.events), under other positions than in this store."""
    mine = f" WHERE customer_id LIKE '{TAG}-%%'"
    views = "SELECT customer_id, version, position, doc FROM rm_complaints" + mine
    cases = (
        "SELECT customer_id, complaint_id, status, assignee, product_sku, severity, category, "
        "episode, filed_at, opened_at, due_at, resolved_at, satisfied, late_episodes, doc "
        "FROM rm_complaint_cases" + mine
    )
    alerts = "SELECT alert_id, status FROM crm_alerts" + mine + " ORDER BY seq"
    live_views, live_cases = rows(stack.dsn, views), rows(stack.dsn, cases)
    alerts_before = query(stack.dsn, alerts)
    assert len(live_cases) >= len(SCENARIOS) + 1 + 2 + 56 + 12

    stack.replay("complaints")

    assert rows(stack.dsn, views) == live_views
    assert rows(stack.dsn, cases) == live_cases
    time.sleep(3)  # the restarted projector's clock looks at the rebuilt rows
    assert query(stack.dsn, alerts) == alerts_before, "nothing raised twice"
