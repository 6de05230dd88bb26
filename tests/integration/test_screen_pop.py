"""The screen pop end to end: SDK → recorder → relay → projector (real processes, real broker and
PostgreSQL) → GET /customers/lookup and the 360's `offers` and `segments`; `crm replay
identifiers offers` equal to the live read models.

Every expected figure is worked out by hand below from what is sent. The co-purchase total N
(orders counted over every customer) is read from the database: the pipeline also projects what
other test modules sent on the shared topics. SKUs, phones, addresses and the tier currency (CHF)
are this module's own.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from events import Item
from infra.broker import EmbeddedBroker
from infra.postgres import EmbeddedPostgres
from tests.integration.complaint_stack import Stack, pipeline, rows
from tests.integration.helpers import query, wait_until

pytestmark = pytest.mark.integration

TAG = uuid.uuid4().hex[:6]
NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = NOW.date()
_DIGITS = f"{random.Random(TAG).randrange(20_000_000, 99_999_999):08d}"
_CALLER = f"{random.Random(TAG + 'c').randrange(20_000_000, 99_999_999):08d}"
ADA_PHONE = f"+4930{_DIGITS}"
"""Berlin, 8 digits: E.164 as the index keeps it, written by hand."""
CALLER_PHONE = f"+4930{_CALLER}"


def sku(name: str) -> str:
    return f"{TAG}-{name}"


def cid(name: str) -> str:
    return f"{TAG}-{name}"


A, B, C, D, E = (sku(x) for x in "ABCDE")
BASKETS: list[tuple[str, tuple[str, ...]]] = (
    [(f"ab{i}", (A, B)) for i in range(4)]
    + [(f"ac{i}", (A, C)) for i in range(3)]
    + [(f"bc{i}", (B, C)) for i in range(2)]
    + [(f"de{i}", (D, E)) for i in range(3)]
    + [(f"a{i}", (A,)) for i in range(2)]
)
"""One order per customer. n(A) = 4 + 3 + 2 = 9, n(B) = 4 + 2 = 6, n(C) = 3 + 2 = 5,
n(D) = n(E) = 3; n(A,B) = 4, n(A,C) = 3, n(B,C) = 2 (under the support of 3), n(D,E) = 3.
One more {D, E} order, refunded in full, counts nowhere."""

TIER_SPEND = {cid(f"tier{k}"): Decimal(100 * k) for k in range(1, 21)}
"""CHF net spend within the last 30 days; with `tier-old` (CHF 400 days ago: 0 in the window)
the currency has n = 21 customers. Sorted from highest, s_j = (21 - j) * 100 for j ≤ 20:
platinum cut s_⌈1.05⌉ = s_2 = 1900, gold s_⌈4.2⌉ = s_5 = 1600, silver s_⌈10.5⌉ = s_11 = 1000."""


def expected_tier(spend: Decimal) -> str:
    if spend >= 1900:
        return "platinum"
    if spend >= 1600:
        return "gold"
    return "silver" if spend >= 1000 else "bronze"


@pytest.fixture(scope="module")
def stack(
    broker: EmbeddedBroker, postgres: EmbeddedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    logs, spool = tmp_path_factory.mktemp("screen-pop-logs"), tmp_path_factory.mktemp("spool")
    with pipeline(broker, postgres, logs, spool, CRM_PHONE_REGION="DE",
                  CRM_TIER_REFRESH_SECONDS="0.5") as world:  # fmt: skip
        yield world


def buy(stack: Stack, customer: str, order: str, skus: tuple[str, ...], at: datetime,
        total: Decimal = Decimal("10.00"), currency: str = "EUR") -> None:  # fmt: skip
    items = [Item(sku=s, name=f"Product {s[-1]}", quantity=1, unit_price=Decimal(0)) for s in skus]
    items[0] = Item(sku=skus[0], name=f"Product {skus[0][-1]}", quantity=1, unit_price=total)
    stack.send("purchase_made", customer, order_id=order, items=items, total=total,
               currency=currency, occurred_at=at)  # fmt: skip


def noon(days_ago: int) -> datetime:
    return datetime.combine(TODAY - timedelta(days=days_ago), datetime.min.time(), UTC).replace(
        hour=12
    )


@pytest.fixture(scope="module")
def sent(stack: Stack) -> dict[str, int]:
    """Everything this module sends; returns each customer's number of events."""
    counts: dict[str, int] = {}

    def count(customer: str, n: int = 1) -> None:
        counts[customer] = counts.get(customer, 0) + n

    s = stack.send
    s("customer_registered", cid("ada"), name="Ada", phone=f"+49 30 {_DIGITS}",
      email=f"Ada.{TAG}@Example.com", occurred_at=NOW - timedelta(days=3))  # fmt: skip
    count(cid("ada"))
    s("customer_registered", cid("caller"), name="Cal", occurred_at=NOW - timedelta(days=2))
    s("call_logged", cid("caller"), direction="inbound", duration_seconds=60,
      phone=f"030 {_CALLER[:4]} {_CALLER[4:]}", occurred_at=NOW - timedelta(days=1))  # fmt: skip
    count(cid("caller"), 2)
    for n, name in enumerate(("shared1", "shared2")):
        s("customer_registered", cid(name), name=f"Family {n}",
          email=f" family.{TAG}@example.org", occurred_at=NOW - timedelta(days=5 - n))  # fmt: skip
        count(cid(name))
    s("customer_registered", cid("ph"), name="Nobody", phone="0000000",
      email="noemail@shop.de", occurred_at=NOW - timedelta(days=1))  # fmt: skip
    s("customer_updated", cid("ph"), phone="n/a", occurred_at=NOW)
    count(cid("ph"), 2)

    for i, (name, skus) in enumerate(BASKETS):
        buy(stack, cid(f"co-{name}"), f"O-{name}", skus, NOW - timedelta(hours=i + 1))
        count(cid(f"co-{name}"))
    buy(stack, cid("co-back"), "O-back", (D, E), NOW - timedelta(hours=30))
    s("purchase_refunded", cid("co-back"), order_id="O-back", amount=Decimal("10.00"),
      currency="EUR", occurred_at=NOW - timedelta(hours=29))  # fmt: skip
    count(cid("co-back"), 2)

    repeat = cid("repeat")
    plan = {"X1": (90, 60, 30), "X2": (50, 38, 26, 14), "X3": (200, 100), "X4": (330, 300, 270)}
    for name, days in plan.items():
        for d in days:
            buy(stack, repeat, f"O-{name}-{d}", (sku(name),), noon(d))
            count(repeat)
    web = cid("web")
    for at in (NOW - timedelta(days=2), NOW - timedelta(days=1)):
        s("web_visited", web, url=f"https://shop.example/p/{A.lower()}", product_sku=A,
          occurred_at=at)  # fmt: skip
    s("web_visited", web, url="https://shop.example/c/Audio", occurred_at=NOW - timedelta(hours=3))
    count(web, 3)

    for k, (customer, spend) in enumerate(TIER_SPEND.items(), start=1):
        if k == 19:  # 2200 then 300 back: net 1900
            buy(stack, customer, f"O-t{k}", (sku("T"),), NOW - timedelta(days=10),
                spend + 300, "CHF")  # fmt: skip
            s("purchase_refunded", customer, order_id=f"O-t{k}", amount=Decimal(300),
              currency="CHF", occurred_at=NOW - timedelta(days=9))  # fmt: skip
            count(customer, 2)
        else:
            buy(stack, customer, f"O-t{k}", (sku("T"),), NOW - timedelta(days=k), spend, "CHF")
            count(customer)
    buy(
        stack, cid("tier-old"), "O-old", (sku("T"),), NOW - timedelta(days=400), Decimal(400), "CHF"
    )
    count(cid("tier-old"))
    stack.wait_projected(counts)
    return counts


def screen(stack: Stack, customer: str) -> dict[str, Any]:
    answer = stack.api.get(f"/customers/{customer}")
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def lookup(stack: Stack, **params: str) -> Any:
    return stack.api.get("/customers/lookup", params=params)


# --- lookup ------------------------------------------------------------------------------------


def test_differently_formatted_numbers_of_one_phone_find_the_customer(
    stack: Stack, sent: dict[str, int]
) -> None:
    a, b = _DIGITS[:4], _DIGITS[4:]
    formats = [f"030 {a} {b}", f"+49 (0)30 {a}-{b}", f"0049 30 {_DIGITS}", f"030/{_DIGITS}",
               f"+49 30 {a} {b}", f"(030) {a} {b}"]  # fmt: skip
    for written in formats:
        answer = lookup(stack, phone=written)

        assert answer.status_code == 200, (written, answer.text)
        body = answer.json()
        assert body["customer_id"] == cid("ada")
        assert body == screen(stack, cid("ada")) | {"matched_by": body["matched_by"]}
        assert body["matched_by"] == {
            "kind": "phone", "value": ADA_PHONE, "seen_on": cid("ada"),
            "source": "customer.registered",
            "first_seen": _z(NOW - timedelta(days=3)), "last_seen": _z(NOW - timedelta(days=3)),
        }  # fmt: skip
        assert list(body)[-3:] == ["offers", "segments", "matched_by"]


def test_e_mail_case_and_spaces_do_not_matter(stack: Stack, sent: dict[str, int]) -> None:
    for written in (
        f"ada.{TAG}@example.com",
        f"  ADA.{TAG}@EXAMPLE.COM ",
        f"Ada.{TAG}@Example.com",
    ):
        answer = lookup(stack, email=written)

        assert answer.status_code == 200, answer.text
        assert answer.json()["customer_id"] == cid("ada")
        assert answer.json()["matched_by"]["value"] == f"ada.{TAG}@example.com"


def test_the_phone_of_a_logged_call_finds_its_customer(stack: Stack, sent: dict[str, int]) -> None:
    answer = lookup(stack, phone=f"+49-30-{_CALLER}")

    assert answer.status_code == 200, answer.text
    assert answer.json()["customer_id"] == cid("caller")
    assert answer.json()["matched_by"]["source"] == "call.logged"
    assert answer.json()["matched_by"]["value"] == CALLER_PHONE


def test_several_customers_with_one_address_give_a_list(stack: Stack, sent: dict[str, int]) -> None:
    answer = lookup(stack, email=f"FAMILY.{TAG}@example.org")

    assert answer.status_code == 200, answer.text
    value = f"family.{TAG}@example.org"
    assert answer.json() == {
        "kind": "email",
        "value": value,
        "matches": [  # most recently seen first
            {
                "customer_id": cid(f"shared{n + 1}"),
                "name": f"Family {n}",
                "kind": "email",
                "value": value,
                "seen_on": cid(f"shared{n + 1}"),
                "source": "customer.registered",
                "first_seen": _z(NOW - timedelta(days=5 - n)),
                "last_seen": _z(NOW - timedelta(days=5 - n)),
            }
            for n in (1, 0)
        ],
        "truncated": False,
    }


def test_placeholders_never_enter_the_index_nor_match(stack: Stack, sent: dict[str, int]) -> None:
    assert (
        query(stack.dsn, "SELECT * FROM rm_identifiers WHERE customer_id = %s", (cid("ph"),)) == []
    )
    cases = {
        ("phone", "0000000"): "is a placeholder",
        ("phone", "n/a"): "is a placeholder",
        ("email", "noemail@shop.de"): "placeholder",
        ("email", "  "): "not an e-mail address",
        ("phone", "call me"): "not a phone number",
        ("phone", "030 12"): "phone number (read in region DE)",
    }
    for (kind, text), says in cases.items():
        answer = lookup(stack, **{kind: text})

        assert answer.status_code == 422, (kind, text, answer.text)
        assert says in answer.json()["detail"], (kind, text, answer.json())
        assert "matches no customer" in answer.json()["detail"]


def test_no_match_is_404_and_neither_or_both_parameters_are_422(
    stack: Stack, sent: dict[str, int]
) -> None:
    unknown = lookup(stack, phone="+49 30 90184417" if _DIGITS != "90184417" else "+49 30 90184418")
    neither = stack.api.get("/customers/lookup")
    both = lookup(stack, phone=ADA_PHONE, email=f"ada.{TAG}@example.com")

    assert unknown.status_code == 404
    assert unknown.json()["detail"].startswith("no customer has the phone +4930")
    for answer in (neither, both):
        assert answer.status_code == 422
        assert answer.json()["detail"] == "give exactly one of the query parameters phone and email"


# --- offers and segments -----------------------------------------------------------------------


def orders_counted(stack: Stack) -> int:
    return int(query(stack.dsn, "SELECT orders FROM rm_copurchase_orders WHERE id = 1")[0][0])  # type: ignore[call-overload]


def test_goes_well_with_follows_the_co_purchase_pattern(stack: Stack, sent: dict[str, int]) -> None:
    n = orders_counted(stack)
    lift_b, lift_c = round(n * 4 / (9 * 6), 4), round(n * 3 / (9 * 5), 4)

    has_a = screen(stack, cid("co-a0"))["offers"]["goes_well_with"]
    has_b_c = screen(stack, cid("co-bc0"))["offers"]["goes_well_with"]
    has_d_e = screen(stack, cid("co-de0"))["offers"]["goes_well_with"]
    returned = screen(stack, cid("co-back"))["offers"]["goes_well_with"]

    assert has_a == [
        {"sku": B, "name": "Product B", "score": lift_b, "together": 4, "because": A},
        {"sku": C, "name": "Product C", "score": lift_c, "together": 3, "because": A},
    ]
    assert has_b_c == [
        {"sku": A, "name": "Product A", "score": lift_b, "together": 4, "because": B}
    ]
    assert has_d_e == [], "both of the only pair are had"
    assert returned == [], "a returned order is nothing had"
    counts = dict(query(stack.dsn, "SELECT sku, orders FROM rm_copurchase_items WHERE sku LIKE %s",
                        (f"{TAG}-%",)))  # fmt: skip
    assert {k: counts[k] for k in (A, B, C, D, E)} == {A: 9, B: 6, C: 5, D: 3, E: 3}
    pairs = query(stack.dsn, "SELECT a, b, together FROM rm_copurchase_pairs WHERE a LIKE %s "
                  "AND together > 0 ORDER BY a, b", (f"{TAG}-%",))  # fmt: skip
    assert pairs == [(A, B, 4), (A, C, 3), (B, A, 4), (B, C, 2), (C, A, 3), (C, B, 2),
                     (D, E, 3), (E, D, 3)]  # fmt: skip


def test_likely_next_gives_repeat_purchases_with_their_interval(
    stack: Stack, sent: dict[str, int]
) -> None:
    likely = screen(stack, cid("repeat"))["offers"]["likely_next"]

    # X1 every 30 days, last 30 days ago: due today; X2 every 12 days, last 14 days ago: due
    # 2 days ago (first); X3 bought on 2 days only; X4 lapsed (expected 240 days ago).
    assert likely == [
        {"sku": sku("X2"), "name": "Product 2", "interval_days": 12,
         "last_on": (TODAY - timedelta(days=14)).isoformat(),
         "expected_at": (TODAY - timedelta(days=2)).isoformat(), "due": True},
        {"sku": sku("X1"), "name": "Product 1", "interval_days": 30,
         "last_on": (TODAY - timedelta(days=30)).isoformat(),
         "expected_at": TODAY.isoformat(), "due": True},
    ]  # fmt: skip


def test_tiers_follow_the_spend_distribution_of_the_currency(
    stack: Stack, sent: dict[str, int]
) -> None:
    def computed() -> bool:
        return screen(stack, cid("tier20"))["segments"]["tier"] == "platinum"

    wait_until(computed, timeout=60, what="the tier cut points", log=stack.log)
    cuts = query(stack.dsn, "SELECT customers, platinum, gold, silver FROM rm_tier_cuts "
                 "WHERE currency = 'CHF'")  # fmt: skip
    assert cuts == [(21, Decimal(1900), Decimal(1600), Decimal(1000))]
    for customer, spend in TIER_SPEND.items():
        segments = screen(stack, customer)["segments"]

        assert segments["tier"] == expected_tier(spend), customer
        assert segments["net_spend_12m"] == {"currency": "CHF", "amount": str(spend)}
        assert segments["tier_cuts_at"] is not None
    old = screen(stack, cid("tier-old"))["segments"]
    assert (old["tier"], old["net_spend_12m"]) == ("bronze", {"currency": "CHF", "amount": "0"})
    assert screen(stack, cid("ada"))["segments"]["tier"] is None, "never spent"


def test_interests_are_the_products_and_categories_viewed(
    stack: Stack, sent: dict[str, int]
) -> None:
    interests = screen(stack, cid("web"))["segments"]["interests"]

    assert [(i["sku"], i["views"]) for i in interests["products"]] == [(A, 2)]
    assert [(i["category"], i["views"]) for i in interests["categories"]] == [("audio", 1)]
    assert interests["products"][0]["last_viewed_at"] == _z(NOW - timedelta(days=1))
    assert 0 < interests["products"][0]["weight"] < 2


# --- replay (last: it stops and restarts the projector) ----------------------------------------


def test_replay_rebuilds_the_screen_pop_read_models_identical_to_the_live_ones(
    stack: Stack, sent: dict[str, int]
) -> None:
    mine = f"'{TAG}-%%'"
    tables = {
        "identifiers": "SELECT * FROM rm_identifiers WHERE customer_id LIKE " + mine,
        "offers": "SELECT customer_id, version, position, doc FROM rm_offers "
        "WHERE customer_id LIKE " + mine,
        "spend": "SELECT * FROM rm_offer_spend WHERE customer_id LIKE " + mine,
        "items": f"SELECT * FROM rm_copurchase_items WHERE sku LIKE {mine} AND orders > 0",
        "pairs": f"SELECT * FROM rm_copurchase_pairs WHERE a LIKE {mine} AND together > 0",
        "orders": "SELECT orders FROM rm_copurchase_orders",
        "cuts": "SELECT currency, customers, platinum, gold, silver FROM rm_tier_cuts "
        "WHERE currency = 'CHF'",
    }
    live = {name: rows(stack.dsn, sql) for name, sql in tables.items()}
    customers = (cid("co-a0"), cid("repeat"), cid("tier19"), cid("web"))
    screens = {c: offers_and_segments(screen(stack, c)) for c in customers}
    assert len(live["identifiers"]) == 5 and len(live["offers"]) == len(sent) - 5

    stack.replay("identifiers", "offers")

    assert {name: rows(stack.dsn, sql) for name, sql in tables.items()} == live
    assert {c: offers_and_segments(screen(stack, c)) for c in customers} == screens


def offers_and_segments(document: dict[str, Any]) -> dict[str, Any]:
    """What the 360 says to offer, without the time the cut points were computed (every 0.5 s)
    and the interests' weights (they decay with the clock, read twice at different times)."""
    segments = {k: v for k, v in document["segments"].items() if k != "tier_cuts_at"}
    segments["interests"] = {
        kind: [{k: v for k, v in item.items() if k != "weight"} for item in items]
        for kind, items in segments["interests"].items()
    }
    return {"offers": document["offers"], "segments": segments}


def _z(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
