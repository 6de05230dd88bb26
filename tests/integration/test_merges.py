"""Merges end to end: SDK → recorder → relay → projector (real processes, real broker and
PostgreSQL) → the survivor's 360, the 308 of a merged id, lookups through merged identifiers, a
chain of merges, events sent to a merged id after the merge, and `crm replay` equal to live.

Every expected figure is added up here from what is sent.
"""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from events import Item
from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from tests.integration.complaint_stack import Stack, pipeline, rows
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
NOW = datetime.now(UTC).replace(microsecond=0)
_DIGITS = [f"{random.Random(TAG + str(i)).randrange(20_000_000, 99_999_999):08d}" for i in (1, 2)]
SURVIVOR_PHONE, DUPLICATE_PHONE = (f"+4930{d}" for d in _DIGITS)


def cid(name: str) -> str:
    return f"{TAG}-{name}"


SURVIVOR, DUPLICATE, OLD, OLDER = cid("ada"), cid("ada-web"), cid("ada-old"), cid("ada-older")
"""DUPLICATE is merged into SURVIVOR; OLDER into OLD, then OLD into SURVIVOR (a chain)."""


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs, spool = tmp_path_factory.mktemp("merge-logs"), tmp_path_factory.mktemp("spool")
    with pipeline(broker, postgres, logs, spool, CRM_PHONE_REGION="DE",
                  CRM_TIER_REFRESH_SECONDS="0.5") as world:  # fmt: skip
        yield world


class Sent:
    """What the module sent, per customer: event types and EUR spend."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.types: dict[str, list[str]] = {}
        self.spend: dict[str, Decimal] = {}

    def __call__(self, method: str, customer: str, **fields: Any) -> None:
        self.stack.send(method, customer, **fields)
        self.types.setdefault(customer, []).append(method)

    def buy(self, customer: str, order: str, total: str, at: datetime) -> None:
        item = Item(sku=f"{TAG}-SKU", name="Kettle", quantity=1, unit_price=Decimal(total))
        self("purchase_made", customer, order_id=order, items=[item], total=Decimal(total),
             currency="EUR", occurred_at=at)  # fmt: skip
        self.spend[customer] = self.spend.get(customer, Decimal(0)) + Decimal(total)

    def versions(self) -> dict[str, int]:
        return {customer: len(types) for customer, types in self.types.items()}


@pytest.fixture(scope="module")
def sent(stack: Stack) -> Sent:
    s = Sent(stack)
    day = timedelta(days=1)
    s("customer_registered", SURVIVOR, name="Ada Lovelace", phone=f"030 {_DIGITS[0]}",
      email=f"ada.{TAG}@example.com", occurred_at=NOW - 30 * day)  # fmt: skip
    s.buy(SURVIVOR, "O-1", "200.00", NOW - 20 * day)
    s("customer_registered", DUPLICATE, name="A. Lovelace", phone=f"+49 30 {_DIGITS[1]}",
      occurred_at=NOW - 10 * day)  # fmt: skip
    s.buy(DUPLICATE, "O-1", "100.00", NOW - 9 * day)  # the same order id: unique per customer
    s("invoice_issued", DUPLICATE, invoice_id="INV-1", amount=Decimal("100.00"), currency="EUR",
      due_date=(NOW + 14 * day).date(), occurred_at=NOW - 9 * day)  # fmt: skip
    s("complaint_filed", DUPLICATE, complaint_id="K-1", category="delivery", severity="low",
      description="Late", occurred_at=NOW - 8 * day)  # fmt: skip
    s("customer_registered", OLDER, name="Ada L.", occurred_at=NOW - 60 * day)
    s.buy(OLDER, "O-9", "7.50", NOW - 59 * day)
    s("customer_registered", OLD, name="Ada (old)", email=f"lovelace.{TAG}@example.org",
      occurred_at=NOW - 50 * day)  # fmt: skip
    stack.wait_projected(s.versions())  # a merge names a customer the recorder knows
    s("customer_merged", OLDER, into_customer_id=OLD, occurred_at=NOW - 40 * day)
    stack.wait_projected(s.versions())
    s("customer_merged", DUPLICATE, into_customer_id=SURVIVOR, occurred_at=NOW - 5 * day)
    s("customer_merged", OLD, into_customer_id=SURVIVOR, occurred_at=NOW - 5 * day)
    stack.wait_projected(s.versions())
    # after the merge, for the merged id (a late order of the web shop, a call)
    s.buy(DUPLICATE, "O-2", "30.00", NOW - 2 * day)
    s("call_logged", DUPLICATE, direction="inbound", duration_seconds=90,
      occurred_at=NOW - 1 * day)  # fmt: skip
    stack.wait_projected(s.versions())
    return s


def survivor_screen(stack: Stack) -> dict[str, Any]:
    answer = stack.api.get(f"/customers/{SURVIVOR}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_the_survivor_counts_the_history_of_every_customer_merged_into_it(
    stack: Stack, sent: Sent
) -> None:
    body = survivor_screen(stack)

    everyone = (SURVIVOR, DUPLICATE, OLD, OLDER)
    types = Counter(m.replace("_", ".", 1) for c in everyone for m in sent.types[c])
    assert body["customer_id"] == SURVIVOR
    assert body["merged_customer_ids"] == sorted([DUPLICATE, OLD, OLDER])
    assert body["touchpoints"]["total"] == sum(types.values())
    assert body["touchpoints"]["by_type"] == dict(types)
    assert types["customer.merged"] == 3 and types["customer.registered"] == 4
    assert body["purchases"]["count"] == 4  # two orders O-1 of two customers count twice
    assert Decimal(body["purchases"]["total_spent"]["EUR"]) == sum(sent.spend.values())
    assert body["complaints"] == {"open": 1, "total": 1}
    assert [(c["customer_id"], c["complaint_id"]) for c in body["open_complaints"]] == [
        (DUPLICATE, "K-1")
    ]
    assert body["balance"]["outstanding"] == {"EUR": "100.00"}
    assert body["profile"]["name"] == "Ada Lovelace"  # the survivor's own
    assert body["version"] == len(sent.types[SURVIVOR])
    newest = body["recent"][0]
    assert (newest["type"], newest["customer_id"]) == ("call.logged", DUPLICATE)
    assert all("customer_id" not in r for r in body["recent"] if r["type"] == "purchase.made"
               and r["summary"].endswith("200.00 EUR"))  # fmt: skip


def test_a_merged_id_answers_308_to_its_survivor_even_through_a_chain(
    stack: Stack, sent: Sent
) -> None:
    for merged in (DUPLICATE, OLD, OLDER):
        answer = stack.api.get(f"/customers/{merged}", follow_redirects=False)

        assert answer.status_code == 308, answer.text
        assert answer.headers["location"] == f"/customers/{SURVIVOR}"
        assert answer.json()["merged_into"] == SURVIVOR
        assert merged in answer.json()["detail"]
        followed = stack.api.get(f"/customers/{merged}")
        assert followed.status_code == 200 and followed.json() == survivor_screen(stack)

    balance = stack.api.get(f"/customers/{DUPLICATE}/balance", follow_redirects=False)
    assert balance.status_code == 308
    assert balance.headers["location"] == f"/customers/{SURVIVOR}/balance"
    own = stack.api.get(f"/customers/{SURVIVOR}/balance").json()
    assert own["balances"]["EUR"]["outstanding"] == "0"  # the survivor's own ledger
    merged = {m["customer_id"]: m for m in own["merged"]}
    assert list(merged) == sorted([DUPLICATE, OLD, OLDER])  # a row each, zero or not
    assert merged[DUPLICATE]["balances"]["EUR"]["outstanding"] == "100.00"


def test_identifiers_of_a_merged_customer_lead_to_the_survivor(stack: Stack, sent: Sent) -> None:
    by_phone = stack.api.get("/customers/lookup", params={"phone": f"030 {_DIGITS[1]}"})
    assert by_phone.status_code == 200, by_phone.text
    assert by_phone.json()["customer_id"] == SURVIVOR
    assert by_phone.json()["matched_by"]["seen_on"] == DUPLICATE
    assert by_phone.json()["matched_by"]["value"] == DUPLICATE_PHONE

    by_chain = stack.api.get("/customers/lookup", params={"email": f"LOVELACE.{TAG}@example.org"})
    assert by_chain.status_code == 200, by_chain.text
    assert by_chain.json()["customer_id"] == SURVIVOR
    assert by_chain.json()["matched_by"]["seen_on"] == OLD

    own = stack.api.get("/customers/lookup", params={"phone": f"+49 30 {_DIGITS[0]}"}).json()
    assert own["customer_id"] == SURVIVOR and own["matched_by"]["seen_on"] == SURVIVOR


def test_the_survivor_s_timeline_pages_through_every_merged_stream(
    stack: Stack, sent: Sent
) -> None:
    everyone = (SURVIVOR, DUPLICATE, OLD, OLDER)
    seen: list[tuple[str, int, int]] = []
    before: int | None = None
    while True:
        params = {"limit": 4} | ({} if before is None else {"before": before})
        page = stack.api.get(f"/customers/{SURVIVOR}/timeline", params=params).json()
        seen += [(e["customer_id"], e["version"], e["position"]) for e in page["events"]]
        before = page["next_before"]
        if before is None:
            break

    assert sorted((c, v) for c, v, _ in seen) == sorted(
        (c, v) for c in everyone for v in range(1, len(sent.types[c]) + 1)
    )
    positions = [p for *_, p in seen]
    assert positions == sorted(positions, reverse=True)


def test_a_merged_customer_keeps_its_own_timeline(stack: Stack, sent: Sent) -> None:
    answer = stack.api.get(f"/customers/{DUPLICATE}/timeline")

    assert answer.status_code == 200, answer.text
    events = answer.json()["events"]
    assert [e["version"] for e in events] == list(range(len(sent.types[DUPLICATE]), 0, -1))
    assert {e["customer_id"] for e in events} == {DUPLICATE}


# --- replay (last: it stops and restarts the projector) ----------------------------------------


def test_replay_rebuilds_the_merges_and_the_survivor_identical_to_live(
    stack: Stack, sent: Sent
) -> None:
    mine = f"'{TAG}-%%'"
    merges_sql = "SELECT * FROM rm_merges WHERE customer_id LIKE " + mine + " ORDER BY 1"
    wait_until(lambda: survivor_screen(stack)["segments"]["tier"] is not None, timeout=60,
               what="the tier cut points", log=stack.log)  # fmt: skip
    live, screen = rows(stack.dsn, merges_sql), survivor_screen(stack)
    assert [(r[0], r[1]) for r in live] == sorted(
        [(DUPLICATE, SURVIVOR), (OLD, SURVIVOR), (OLDER, OLD)]
    )

    stack.replay("merges", "customer_360", "balance", "complaints", "offers", "identifiers")

    assert rows(stack.dsn, merges_sql) == live
    assert comparable(survivor_screen(stack)) == comparable(screen)


def comparable(screen: dict[str, Any]) -> dict[str, Any]:
    """The 360 without the times of the last scans (a replay judges and cuts tiers again)."""
    del screen["segments"]["tier_cuts_at"]
    del screen["churn_risk"]["judged_at"]
    return screen
